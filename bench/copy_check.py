"""Copy Check at scale (issue 20): first run (every reference embedded and cached) against a cached run (nothing
embedded), time and peak memory, for N synthetic references on the CPU.

    COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=1 python bench/copy_check.py [--n 10000] [--size 256] [--chunk 4096]

N smooth random RGB pictures (size x size PNGs) are written into a temporary folder that serves as ComfyUI's input
directory (its user directory, where the cache goes, beside it; both deleted at the end). Each run is a fresh
process (the real ComfyUI stack in process, the model-free descriptor, 'references leave-one-out' calibration, 4
outputs: two copies of references and two new pictures), so the peak resident memory it reports (ru_maxrss) is that
run's own. Prints one row per run and the cached / first ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERIES = 4


def picture(i: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    coarse = Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8"))
    return coarse.resize((size, size), Image.BICUBIC)


def write_references(root: Path, n: int, size: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        sub = root / "input" / "bench_refs" / f"part_{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        picture(i, size).save(sub / f"ref_{i:06d}.png", compress_level=1)
    return time.perf_counter() - t


def child(root: Path, n: int, size: int, chunk: int) -> None:
    """One Copy Check run in this process; prints a JSON line."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import host

    torch.set_num_threads(1)
    host.import_comfy()
    host.load_pack()
    import folder_paths
    from memsafe_cfg.nodes.copy_check import MemSafeCopyCheck

    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_user_directory(str(root / "user"))
    q = [np.asarray(picture(i, size), dtype=np.float32) / 255 for i in (3, n // 2, n + 1, n + 2)]
    images = torch.from_numpy(np.stack(q))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = MemSafeCopyCheck.execute(images, "bench_refs", "references leave-one-out", 0.96, 0.01, "", chunk)
    seconds = time.perf_counter() - t
    _, report, mx, copies = out.args if hasattr(out, "args") else out.result
    line = next(ln for ln in report.splitlines() if ln.startswith("references: "))
    print(json.dumps({"seconds": seconds, "rss_before_mb": before / 1024, "rss_peak_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "references": line, "copies": copies, "max_similarity": mx}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.n, args.size, args.chunk)
        return 0
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    root = Path(tempfile.mkdtemp(prefix="memsafe_copy_bench_"))
    try:
        (root / "user").mkdir()
        wrote = write_references(root, args.n, args.size)
        print(f"{args.n} references, {args.size} x {args.size} PNG, written in {wrote:.1f} s; chunk {args.chunk}; "
              f"{QUERIES} outputs; model-free descriptor; references leave-one-out")
        rows = {}
        for run in ("first", "cached"):
            res = subprocess.run([sys.executable, __file__, "--child", str(root), "--n", str(args.n), "--size",
                                  str(args.size), "--chunk", str(args.chunk)], capture_output=True, text=True, check=True)
            rows[run] = json.loads(res.stdout.strip().splitlines()[-1])
            r = rows[run]
            print(f"| {run} run | {r['seconds']:.1f} s | peak RSS {r['rss_peak_mb']:.0f} MB (after imports "
                  f"{r['rss_before_mb']:.0f} MB, +{r['rss_peak_mb'] - r['rss_before_mb']:.0f} MB) | {r['references']} | "
                  f"copies {r['copies']}, max {r['max_similarity']:.4f} |")
        cache = sum(p.stat().st_size for p in (root / "user").rglob("*") if p.is_file())
        f, c = rows["first"], rows["cached"]
        print(f"cached / first: time {c['seconds'] / f['seconds']:.3f}, peak-RSS growth "
              f"{(c['rss_peak_mb'] - c['rss_before_mb']) / max(f['rss_peak_mb'] - f['rss_before_mb'], 1e-9):.3f}; "
              f"cache on disk {cache / 2 ** 20:.1f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
