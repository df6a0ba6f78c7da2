"""Speed and shortcut check of the embedded synthetic datasets (``monai_pixelcam.data.synthetic``).

For each kind (glas, camelyon), in one process on one thread:

* ``render``: ``render_tile`` of ``--n`` tiles of ``--size`` px (tissue + stain rendering, in memory);
* ``synthesize``: the whole ``synthesize`` call for ``--n`` images (render, PNG image + mask writes,
  datalist, preview), the number a user sees;
* baseline ``png_write``: writing the same image and mask PNGs only, the floor of any generator that
  stores PNGs; ``render_vs_png_write`` is render time / PNG-write time.

Target (issue 2): under 100 ms per 256 x 256 image on one core. Per-tile times are wall-clock and
process CPU time; on a shared machine other processes only ever add wall time, so the CPU time and the
best wall time are the fairer estimates; the load average is recorded.

Shortcut check (``measure_shortcut``): cross-validated accuracy of a logistic regression on colour
statistics outside the undilated mask (must stay near 0.5) and inside it (must be high).

Usage: ``python benchmarks/bench_synthetic.py [--n 40] [--size 256] [--shortcut-n 160] [--seed 0]``;
writes ``benchmarks/results/bench_synthetic.json`` and ``synthetic_preview_<kind>.png`` there.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, as the target says

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from monai_pixelcam.atomic import write_json_atomic  # noqa: E402
from monai_pixelcam.atomic import write_png_atomic  # noqa: E402
from monai_pixelcam.data.synthetic import KINDS, measure_shortcut, render_tile, synthesize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_MS = 100.0


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench_kind(kind: str, n: int, size: int, seed: int, shortcut_n: int, shortcut_size: int) -> dict:
    spec = KINDS[kind]
    render_tile(kind, 0, size, seed=seed, index=10_000)  # warm caches (coordinate grids)
    tiles, wall, cpu = [], [], []
    for i in range(n):
        tile, w, c = _timed(lambda: render_tile(kind, i % len(spec.classes), size, seed=seed, index=i))
        tiles.append(tile)
        wall.append(w)
        cpu.append(c)
    with tempfile.TemporaryDirectory() as tmp:
        png_wall, png_cpu = [], []
        for i, (img, mask) in enumerate(tiles):
            _, w, c = _timed(
                lambda: (write_png_atomic(f"{tmp}/{i}.png", img), write_png_atomic(f"{tmp}/{i}_m.png", mask * 255))
            )
            png_wall.append(w)
            png_cpu.append(c)
        _, syn_wall, syn_cpu = _timed(lambda: synthesize(kind, f"{tmp}/ds", n, size, seed, progress=False))
        shutil.copyfile(f"{tmp}/ds/preview.png", RESULTS / f"synthetic_preview_{kind}.png")
    shortcut, sc_wall, _ = _timed(lambda: measure_shortcut(kind, shortcut_n, shortcut_size, seed))
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    row = {
        "images": n,
        "size": size,
        "render_ms_median_wall": ms(wall),
        "render_ms_best_wall": 1000 * min(wall),
        "render_ms_median_cpu": ms(cpu),
        "render_images_per_s_cpu": 1.0 / statistics.median(cpu),
        "png_write_ms_median_cpu": ms(png_cpu),
        "render_vs_png_write": statistics.median(cpu) / statistics.median(png_cpu),
        "synthesize_s_wall": syn_wall,
        "synthesize_s_cpu": syn_cpu,
        "synthesize_images_per_s_wall": n / syn_wall,
        "synthesize_images_per_s_cpu": n / syn_cpu,
        "synthesize_ms_per_image_cpu": 1000 * syn_cpu / n,
        "within_budget_100ms_cpu": 1000 * syn_cpu / n < BUDGET_MS,
        "shortcut": {"images": shortcut_n, "size": shortcut_size, **shortcut, "seconds": sc_wall},
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="images per kind for the timing")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortcut-n", type=int, default=160, help="images per kind for the shortcut check")
    parser.add_argument("--shortcut-size", type=int, default=256)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    report = {
        "benchmark": "bench_synthetic",
        "target": f"under {BUDGET_MS:.0f} ms per {args.size}x{args.size} image on one core (synthesize, CPU time)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__},
        "load_average_before": load_before,
        "kinds": {},
    }
    for kind in sorted(KINDS):
        row = bench_kind(kind, args.n, args.size, args.seed, args.shortcut_n, args.shortcut_size)
        report["kinds"][kind] = row
        sc = row["shortcut"]
        print(
            f"{kind:9s} render {row['render_ms_median_cpu']:6.1f} ms cpu ({row['render_ms_median_wall']:6.1f} wall), "
            f"png write {row['png_write_ms_median_cpu']:5.1f} ms, render/png {row['render_vs_png_write']:4.1f}x | "
            f"synthesize {row['synthesize_images_per_s_cpu']:5.1f} img/s cpu "
            f"({row['synthesize_images_per_s_wall']:5.1f} wall), {row['synthesize_ms_per_image_cpu']:5.1f} ms/img "
            f"[{'ok' if row['within_budget_100ms_cpu'] else 'OVER BUDGET'}] | shortcut outside "
            f"{sc['outside']:.2f} inside {sc['inside']:.2f}"
            + (f" mask-area {sc['mask_area']:.2f}" if "mask_area" in sc else "")
        )
    report["load_average_after"] = os.getloadavg()
    path = RESULTS / "bench_synthetic.json"
    write_json_atomic(report, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
