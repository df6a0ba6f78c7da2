"""PxAP speed and agreement: ``PxAPMetric`` (1000-bin histograms) vs ``sklearn.metrics.average_precision_score``.

200 structured maps of 224 x 224 (about 10M pixels): masks of random elliptic blobs, scores = Gaussian-blurred
mask + Gaussian noise, clipped to [0, 1]. Our metric is fed in batches of 20 as an evaluator would feed it;
sklearn gets the same pixels already pooled into flat arrays (pooling is not timed). Both are timed in the same
run, in alternation; the speed ratio is sklearn time / our time, each the best of its repeated runs (the usual
estimate of the uncontended time, as other processes on a shared machine only ever add time); the ratio of the
medians and the load average are recorded too.

Targets (issue 3): ratio >= 20, |PxAP - sklearn AP| <= 0.005. sklearn ranks the exact scores whereas PxAP
thresholds them on a 0.001 grid; the same comparison on scores rounded to 3 decimals isolates that effect
(near-exact agreement expected).

Usage: ``python benchmarks/bench_pxap.py [--n 200] [--size 224] [--batch 20] [--seed 0]``; writes
``benchmarks/results/bench_pxap.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.metrics import PxAPMetric

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pxap.json"


def structured_maps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n x 1 x size x size`` float32 scores in [0, 1] and binary masks of 1-4 elliptic blobs per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    masks = np.zeros((n, 1, size, size), dtype=np.float32)
    scores = np.empty_like(masks)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.05, 0.2, 2) * size
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
            masks[i, 0][u * u + v * v <= 1] = 1
        blurred = gaussian_filter(masks[i, 0], sigma=rng.uniform(3, 10))
        scores[i, 0] = np.clip(blurred + rng.normal(0, 0.2, blurred.shape), 0, 1)
    return scores, masks


def run_ours(scores: torch.Tensor, masks: torch.Tensor, batch: int) -> tuple[float, float]:
    """PxAP and seconds of one evaluation pass: batches fed to the metric, then aggregate."""
    metric = PxAPMetric()
    start = time.perf_counter()
    for b in range(0, len(scores), batch):
        metric(scores[b : b + batch], masks[b : b + batch])
    value = metric.aggregate()
    return value, time.perf_counter() - start


def run_sklearn(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    start = time.perf_counter()
    value = float(average_precision_score(y_true, y_score))
    return value, time.perf_counter() - start


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed sklearn runs; ours runs 4x as often")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    scores_np, masks_np = structured_maps(args.n, args.size, args.seed)
    scores, masks = torch.from_numpy(scores_np), torch.from_numpy(masks_np)
    y_true, y_score = masks_np.ravel(), scores_np.ravel()

    load_before = os.getloadavg()[0]
    run_ours(scores, masks, args.batch)  # warm-up: first-touch allocations, thread pool start
    times_ours, times_ref = [], []
    for _ in range(args.repeats):
        for _ in range(4):
            ours, t = run_ours(scores, masks, args.batch)
            times_ours.append(t)
        ref, t = run_sklearn(y_true, y_score)
        times_ref.append(t)
    t_ours, t_ref = min(times_ours), min(times_ref)
    load_after = os.getloadavg()[0]

    # the same comparison on scores already on the 0.001 grid: only float rounding should remain
    scores_q = np.round(scores_np, 3).astype(np.float32)
    ours_q, _ = run_ours(torch.from_numpy(scores_q), masks, args.batch)
    ref_q, _ = run_sklearn(y_true, scores_q.ravel())

    result = {
        "images": args.n,
        "image_size": args.size,
        "pixels": int(y_true.size),
        "positive_fraction": float(y_true.mean()),
        "batch_size": args.batch,
        "pxap_ours": ours,
        "ap_sklearn": ref,
        "abs_difference": abs(ours - ref),
        "abs_difference_scores_rounded_3_decimals": abs(ours_q - ref_q),
        "time_ours_s": t_ours,
        "time_sklearn_s": t_ref,
        "time_ours_median_s": statistics.median(times_ours),
        "time_sklearn_median_s": statistics.median(times_ref),
        "speed_ratio": t_ref / t_ours,
        "speed_ratio_of_medians": statistics.median(times_ref) / statistics.median(times_ours),
        "load_average_1min": [load_before, load_after],
        "targets": {"speed_ratio_min": 20.0, "abs_difference_max": 0.005},
        "meets_targets": bool(t_ref / t_ours >= 20.0 and abs(ours - ref) <= 0.005),
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    write_json_atomic(result, args.out)
    print(
        f"PxAP on {args.n} maps of {args.size}x{args.size} ({result['pixels'] / 1e6:.1f}M pixels, "
        f"{100 * result['positive_fraction']:.1f}% positive)\n"
        f"  ours (batches of {args.batch}): {ours:.6f} in {1000 * t_ours:.1f} ms (best of {len(times_ours)})\n"
        f"  sklearn average_precision_score: {ref:.6f} in {1000 * t_ref:.1f} ms (best of {len(times_ref)})\n"
        f"  speed ratio {result['speed_ratio']:.1f}x (target >= 20; ratio of medians "
        f"{result['speed_ratio_of_medians']:.1f}x, load average {load_before:.1f} -> {load_after:.1f}), "
        f"|difference| {result['abs_difference']:.2e} "
        f"(target <= 0.005); scores rounded to 3 decimals: |difference| "
        f"{result['abs_difference_scores_rounded_3_decimals']:.1e}\n"
        f"  written to {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
