"""The testbed's eps-prediction UNet (plain torch) and its 1000-step discrete noise schedule.

The forward signature is ComfyUI's ``diffusion_model(x, timesteps, context=None, **kwargs)``: ``timesteps`` is the
0..999 timestep, ``context`` the prompt vector [B, T, PROMPT_DIM] (summed over T; all zeros = unconditional).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DIGITS = tuple(str(d) for d in range(10))
STYLES = ("bold", "thin")  # the source glyph's ink, above / at-or-below its digit's median
SLANTS = ("left", "upright", "right")  # shear bins of the rendering
WIDTHS = ("narrow", "wide")  # horizontal stretch bins of the rendering
ATTRIBUTES = (STYLES, SLANTS, WIDTHS)
PROMPT_DIM = len(DIGITS) + sum(len(a) for a in ATTRIBUTES)  # multi-hot: one slot per word; any may be empty
CHANNELS = (16, 32, 64)
LINEAR_START, LINEAR_END, TIMESTEPS = 0.00085, 0.012, 1000  # SD's scaled-linear betas (ComfyUI's default discrete)


def alphas_cumprod(linear_start: float = LINEAR_START, linear_end: float = LINEAR_END) -> torch.Tensor:
    """A scaled-linear schedule (SD's by default), computed as ComfyUI's ModelSamplingDiscrete does (float64)."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas(linear_start: float = LINEAR_START, linear_end: float = LINEAR_END) -> torch.Tensor:
    """The k-diffusion sigma of each of the 1000 timesteps (float32, ascending)."""
    a = alphas_cumprod(linear_start, linear_end)
    return ((1 - a) / a).sqrt().float()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(e))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm, self.qkv, self.out, self.heads = nn.GroupNorm(8, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1), heads

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return x + self.out(h)


class TestbedUNet(nn.Module):
    """Three-level UNet, one res block per level, attention at 4x4; time and prompt embeddings are added."""

    def __init__(self, in_channels: int = 1, channels=CHANNELS, prompt_dim: int = PROMPT_DIM, emb: int = 128, **_):
        super().__init__()
        c0, c1, c2 = channels
        self.emb_dim = emb
        self.time = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        # bias-free MLP: the zero prompt maps to zero (no condition); the hidden layer lets a conjunction of words
        # (one memorized prompt among siblings that share three of its four words) get its own embedding
        self.prompt = nn.Sequential(nn.Linear(prompt_dim, emb, bias=False), nn.SiLU(), nn.Linear(emb, emb, bias=False))
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down0, self.down1, self.down2 = ResBlock(c0, c0, emb), ResBlock(c0, c1, emb), ResBlock(c1, c2, emb)
        self.pool0, self.pool1 = nn.Conv2d(c0, c0, 3, stride=2, padding=1), nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.attn_down = Attention(c2)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c2, c2, emb), Attention(c2), ResBlock(c2, c2, emb)
        self.up2, self.attn_up = ResBlock(2 * c2, c2, emb), Attention(c2)
        self.up1, self.up0 = ResBlock(c2 + c1, c1, emb), ResBlock(c1 + c0, c0, emb)
        self.norm_out, self.conv_out = nn.GroupNorm(8, c0), nn.Conv2d(c0, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor = None, **kwargs) -> torch.Tensor:
        t = timesteps.reshape(-1).to(x.device).expand(x.shape[0]) if timesteps.numel() == 1 else timesteps.reshape(-1)
        e = self.time(timestep_embedding(t, self.emb_dim).to(x.dtype))
        if context is not None:
            c = context.to(x.device, x.dtype)
            e = e + self.prompt(c.sum(1) if c.ndim == 3 else c)
        h0 = self.down0(self.conv_in(x), e)
        h1 = self.down1(self.pool0(h0), e)
        h2 = self.attn_down(self.down2(self.pool1(h1), e))
        h = self.mid2(self.mid_attn(self.mid1(h2, e)), e)
        h = self.attn_up(self.up2(torch.cat([h, h2], 1), e))
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), e)
        h = self.up0(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h0], 1), e)
        return self.conv_out(F.silu(self.norm_out(h)))


def encode_prompt(digit=None, style=None, slant=None, width=None) -> torch.Tensor:
    """The multi-hot prompt vector [PROMPT_DIM]: a digit (0-9) and a word from each of STYLES, SLANTS, WIDTHS (or None)."""
    v = torch.zeros(PROMPT_DIM)
    if digit is not None:
        v[int(digit)] = 1.0
    offset = len(DIGITS)
    for words, w in zip(ATTRIBUTES, (style, slant, width)):
        if w is not None:
            v[offset + words.index(w)] = 1.0
        offset += len(words)
    return v


def prompt_text(prompt) -> str:
    """(digit, style, slant, width) -> '3 bold right wide' (None parts left out)."""
    return " ".join(str(p) for p in prompt if p is not None)


def parse_prompt(text: str) -> torch.Tensor:
    """'3 bold right wide', 'seven thin', 'wide' or '' (unconditional) -> the prompt vector; unknown words raise ValueError."""
    words = [w for w in text.lower().replace(",", " ").split() if w not in ("digit", "a", "the", "slanted", "slant")]
    names = {n: str(i) for i, n in enumerate("zero one two three four five six seven eight nine".split())}
    slots = {"digit": None, "style": None, "slant": None, "width": None}
    vocab = {**{d: "digit" for d in DIGITS}, **{w: k for k, ws in zip(("style", "slant", "width"), ATTRIBUTES) for w in ws}}
    for w in words:
        w = names.get(w, w)
        if w not in vocab or slots[vocab[w]] is not None:
            raise ValueError(f"prompt: '{w}' in '{text}' is not understood; the testbed knows one digit (0-9 or zero..nine), "
                             f"one style ({' / '.join(STYLES)}), one slant ({' / '.join(SLANTS)}) and one width "
                             f"({' / '.join(WIDTHS)}), e.g. '3 bold right wide'; empty = unconditional.")
        slots[vocab[w]] = int(w) if vocab[w] == "digit" else w
    return encode_prompt(**slots)
