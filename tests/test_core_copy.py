"""Issue 20, core tier (no ComfyUI): Copy Check's descriptor, folder and image reading, embedding cache, chunked
search, calibration, report and pairs picture (guidance/copy_*.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from memsafe_cfg.guidance import copy_cache as C
from memsafe_cfg.guidance import copy_descriptor as D
from memsafe_cfg.guidance import copy_index as X
from memsafe_cfg.guidance import copy_report as R


def pictures(n: int, seed: int = 0, size: int = 48) -> torch.Tensor:
    """n distinct smooth random pictures, IMAGE [n, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1).movedim(1, -1)


def save(img: torch.Tensor, path, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (img.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(a).convert(mode).save(path)


class Counting(D.PixelEmbedder):
    def __init__(self):
        self.calls = 0

    def embed(self, prepared):
        self.calls += len(prepared)
        return super().embed(prepared)


# -- descriptor ----------------------------------------------------------------------------------------------------
def test_pixel_descriptor_sees_resized_and_brightened_copies_not_flips():
    img = pictures(2)
    d = D.pixel_descriptor(img)
    assert d.shape == (2, D.PIXEL_SIZE ** 2) and torch.allclose(d.norm(dim=1), torch.ones(2), atol=1e-5)
    big = torch.nn.functional.interpolate(img.movedim(-1, 1), size=(96, 96), mode="bilinear").movedim(1, -1)
    brighter = (img * 0.8 + 0.15).clamp(0, 1)
    assert float(D.pixel_descriptor(big)[0] @ d[0]) > 0.99
    assert float(D.pixel_descriptor(brighter)[0] @ d[0]) > 0.999  # correlation ignores gain and offset
    flipped = D.pixel_descriptor(img.flip(2))
    assert float(flipped[0] @ d[0]) < 0.9 and float(d[1] @ d[0]) < 0.9
    flat = D.pixel_descriptor(torch.full((1, 8, 8, 3), 0.5))
    assert float(flat.abs().max()) == 0.0  # no contrast: similarity 0 to everything


def test_fit_crop_takes_the_centre_of_the_shortest_side():
    x = torch.zeros(1, 20, 40, 3)
    x[:, :, 10:30] = 1.0  # the centre square is white, the sides black
    assert float(D.fit(x, 20, crop=True).min()) == 1.0
    assert float(D.fit(x, 20, crop=False).min()) < 0.5


def test_weights_fingerprint_tells_weights_apart():
    a = {"w": torch.arange(10000.0), "b": torch.zeros(3)}
    b = {"w": torch.arange(10000.0), "b": torch.zeros(3)}
    assert D.weights_fingerprint(a, "k") == D.weights_fingerprint(b, "k")
    b["w"][0] = 5.0
    assert D.weights_fingerprint(a, "k") != D.weights_fingerprint(b, "k")
    assert D.weights_fingerprint(a, "k") != D.weights_fingerprint(a, "other")


# -- search --------------------------------------------------------------------------------------------------------
def brute(q, r, exclude=None):
    s = q @ r.T
    if exclude is not None:
        s[torch.arange(len(q)), exclude] = -float("inf")
    v, i = s.sort(dim=1, descending=True, stable=True)
    return v[:, :2], i[:, :2]


@pytest.mark.parametrize("chunk", [1, 2, 7, 50, 1000])
def test_nearest_two_equals_brute_force_for_any_chunk_size(chunk):
    g = torch.Generator().manual_seed(1)
    r, q = D.normalize(torch.randn(50, 16, generator=g)), D.normalize(torch.randn(5, 16, generator=g))
    r[30] = r[4]  # a tie: the lower index wins
    q[2] = r[4]
    whole = X.nearest_two(q, [r])
    parts = X.nearest_two(q, (r[a:a + chunk] for a in range(0, len(r), chunk)))
    assert torch.equal(whole[1], parts[1]) and torch.equal(whole[0], parts[0])
    bv, bi = brute(q, r)
    assert torch.equal(parts[1][:, 0], bi[:, 0]) and torch.allclose(parts[0], bv)
    assert parts[1][2, 0] == 4 and parts[1][2, 1] == 30
    ex = torch.tensor([-1, -1, 4, -1, -1])
    out = X.nearest_two(q, (r[a:a + chunk] for a in range(0, len(r), chunk)), exclude=ex)
    assert out[1][2, 0] == 30


def test_nearest_two_with_one_reference_has_no_second():
    s, i = X.nearest_two(D.normalize(torch.ones(2, 4)), [D.normalize(torch.ones(1, 4))])
    assert i[:, 1].tolist() == [-1, -1] and torch.isinf(s[:, 1]).all()


def test_threshold_at_lets_fewer_than_the_rate_exceed():
    v = torch.arange(200.0)
    t = X.threshold_at(v, 0.01)
    assert int((v > t).sum()) < 0.01 * 200 and int((v >= t).sum()) >= 2


# -- files ---------------------------------------------------------------------------------------------------------
def test_resolve_inside_refuses_paths_that_leave_the_base(tmp_path):
    base = tmp_path / "input"
    (base / "train" / "sub").mkdir(parents=True)
    (base / "file.png").write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (base / "out").symlink_to(outside)
    (base / "inlink").symlink_to(base / "train")
    assert C.resolve_inside(base, "train", "f") == (base / "train").resolve()
    assert C.resolve_inside(base, "inlink", "f") == (base / "train").resolve()  # a link that stays inside is fine
    for typed, words in (("../elsewhere", "'..'"), ("train/../../elsewhere", "'..'"), (str(outside), "absolute"),
                         ("out", "leads out"), ("nope", "does not exist"), ("file.png", "not a folder"), ("  ", "empty")):
        with pytest.raises(ValueError, match="reference_folder") as e:
            C.resolve_inside(base, typed, "reference_folder")
        assert words in str(e.value), typed


def test_list_images_recurses_and_names_what_it_skips(tmp_path):
    base = tmp_path / "input"
    img = pictures(1)[0]
    save(img, base / "t" / "a.png")
    save(img, base / "t" / "deep" / "b.jpg")
    (base / "t" / "notes.txt").write_text("hi")
    outside = tmp_path / "secret.png"
    save(img, outside)
    (base / "t" / "link.png").symlink_to(outside)
    found, skipped = C.list_images(base / "t", base)
    assert [r for r, _ in found] == ["a.png", "deep/b.jpg"]
    assert dict(skipped) == {"link.png": "a link that leads out of the input directory",
                             "notes.txt": "not an image file (.txt)"}


def test_load_image_reads_every_mode(tmp_path):
    rgb = pictures(1)[0]
    a8 = (rgb.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "rgb.png")
    rgba = np.dstack([a8, np.full(a8.shape[:2], 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # a transparent corner: white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    gray = Image.fromarray(a8).convert("L")
    gray.save(tmp_path / "gray.png")
    g16 = (np.asarray(gray, dtype=np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # mode I;16
    Image.fromarray(a8).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "pal.png")
    base = C.load_image(tmp_path / "rgb.png")
    assert base.shape == (48, 48, 3) and torch.allclose(base, torch.from_numpy(a8 / 255.0).float())
    ra = C.load_image(tmp_path / "rgba.png")
    assert float(ra[:8, :8].min()) == 1.0 and torch.equal(ra[8:, 8:], base[8:, 8:])
    g = C.load_image(tmp_path / "gray.png")
    assert torch.equal(g[..., 0], g[..., 2])
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    assert torch.allclose(C.load_image(tmp_path / "g16.png"), g, atol=1e-6)
    assert float(C.load_image(tmp_path / "pal.png")[..., :3].sub(base).abs().mean()) < 0.05


def test_corrupt_truncated_and_huge_files_are_skipped_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    img = pictures(1, size=64)[0]
    save(img, tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("bad.png", "cut.png"):
        with pytest.raises(C.Skipped):
            C.load_image(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # 64 x 64 is over the limit, over 2x is an error
    with pytest.raises(C.Skipped, match="too large"):
        C.load_image(tmp_path / "ok.png")


# -- cache -----------------------------------------------------------------------------------------------------------
def test_cache_embeds_once_reembeds_a_changed_file_and_prunes(tmp_path):
    base = tmp_path / "input"
    imgs = pictures(5)
    for i in range(5):
        save(imgs[i], base / "t" / f"{i}.png")
    emb = Counting()
    cache = lambda: C.EmbeddingCache(tmp_path / "cache", emb.identity, "t")  # noqa: E731
    first = X.embed_folder(base / "t", base, emb, cache(), batch=2)
    assert emb.calls == 5 and first.embedded == 5 and len(first) == 5
    emb.calls = 0
    second = X.embed_folder(base / "t", base, emb, cache(), batch=2)
    assert emb.calls == 0 and second.embedded == 0
    assert torch.equal(torch.cat(list(first.stored(3))), torch.cat(list(second.stored(2))))
    save(imgs[0].flip(0), base / "t" / "3.png")
    st = (base / "t" / "3.png").stat()
    os.utime(base / "t" / "3.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = X.embed_folder(base / "t", base, emb, cache(), batch=2)
    assert emb.calls == 1 and third.embedded == 1
    rows = torch.cat(list(third.stored(4)))
    assert torch.equal(rows[3], D.pixel_descriptor(C.load_image(base / "t" / "3.png")[None])[0])
    (base / "t" / "4.png").unlink()
    fourth = X.embed_folder(base / "t", base, emb, cache(), batch=2)
    assert fourth.names == ["0.png", "1.png", "2.png", "3.png"]
    other = C.EmbeddingCache(tmp_path / "cache", "another-descriptor", "t")
    assert not other.rows  # a different identity shares nothing
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".safetensors" for p in files), files


def test_leave_one_out_sets_near_duplicates_aside(tmp_path):
    g = torch.Generator().manual_seed(3)
    r = D.normalize(torch.randn(40, 32, generator=g))
    r[1] = r[0]
    refs = X.References(names=[str(i) for i in range(40)], batch=r)
    cal = X.leave_one_out(refs, 0.05, chunk=7)
    s, _ = X.nearest_two(r, [r], exclude=torch.arange(40))
    kept = s[2:, 0]
    assert cal.threshold == pytest.approx(X.threshold_at(kept, 0.05))
    assert "2 near-duplicates" in cal.source and cal.threshold < 0.98
    with pytest.raises(ValueError, match="at least 3"):
        X.leave_one_out(X.References(names=["a", "b"], batch=r[:2]), 0.05, 7)


def test_report_and_pairs():
    sim = torch.tensor([[0.99, 0.5], [0.4, 0.3]])
    idx = torch.tensor([[1, 0], [0, -1]])
    text = R.report(sim, idx, ["a.png", "b.png"], 0.9, "fixed threshold (the threshold input)", "pixel", "blind", 2,
                    [("x.txt", "not an image file (.txt)")], 1, 1)
    assert "1 of 2 outputs are copies" in text and "threshold 0.9000: fixed threshold" in text
    assert "output 0: nearest b.png 0.9900; second a.png 0.5000  COPY" in text and "second none" in text
    assert "skipped 1 files" in text and "x.txt" in text
    img = pictures(2)
    out = R.pairs(img, [img[1], img[0]], sim[:, 0], ["b.png", "a.png"], 0.9)
    assert out.shape == (2, R.CELL + 2 * R.BORDER + R.CAPTION, 2 * R.CELL + R.GAP + 2 * R.BORDER, 3)
    red = torch.tensor(R.COPY_RED) / 255.0
    assert torch.allclose(out[0, 0, 0], red) and not torch.allclose(out[1, 0, 0], red)


def test_search_in_query_blocks_equals_one_pass():
    g = torch.Generator().manual_seed(5)
    r = D.normalize(torch.randn(30, 8, generator=g))
    refs = X.References(names=[str(i) for i in range(30)], batch=r)
    q = D.normalize(torch.randn(9, 8, generator=g))
    ex = torch.arange(9)
    one = X.nearest_two(q, refs.chunks(7), exclude=ex)
    for block in (1, 2, 4, 100):
        blocked = X.search(q, refs, 7, exclude=ex, block=block)
        assert torch.equal(blocked[0], one[0]) and torch.equal(blocked[1], one[1])
