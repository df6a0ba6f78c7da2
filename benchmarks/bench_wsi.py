"""Whole-slide inference speed and memory on a large synthetic slide, against the pure forward pass of the same
windows measured in the same run.

The slide: a pyramidal JPEG TIFF in the Aperio SVS layout (``--size`` at level 0, default 20000 x 20000; levels
1, 4, 16; JPEG quality 80; ``MPP = --slide-mpp``), written by ``monai_pixelcam.inference.write_pyramid_tiff``
tile by tile from synthetic CAMELYON tissue: 24 tiles of 256 px drawn once with
``monai_pixelcam.data.synthetic.render_tile`` (normal lymph node, and tumour for the nests), placed rotated and
flipped over a tissue outline of smooth blobs covering about half the slide, on glass. It is kept under
``benchmarks/results/slides/`` and reused.

The model: a random-init ``build_pixelcam(--encoder)`` (speed does not depend on the weights), exported with
``monai_pixelcam.export.export_model`` at ``--image-size`` and ``--model-mpp``, loaded with
``PixelCAMPredictor.from_model_dir``.

The measurement runs in a fresh child process, so that its peak RSS is the inference's alone (the parent held
the slide's reduced levels while writing it): ``localize_slide`` with the bundle's settings (overlap 0.5,
``--workers`` DataLoader processes, ``--threads`` torch threads), then the baseline: ``forward_prepared`` on
as many windows in batches of the same size (real windows of the slide), timed half before and half after the
slide (ABA, so that a drifting machine load hits both alike). Reported:

- tiles/s (windows predicted per second of slide wall time);
- the wall-time split: tissue (open, thumbnail, mask), read wait (reading not hidden behind the network),
  forward, merge (and PatchInferer's batching), write; and the workers' summed read + decode + resize time;
- peak memory: the largest sum of the proportional set sizes (PSS: a page shared by n processes counts 1/n
  in each) of the main process and its DataLoader workers, sampled every 0.5 s, i.e. the memory the run
  occupies; and each process's peak RSS (``getrusage``; a forked worker's RSS counts the pages it shares with
  the main process again);
- ratio = slide wall time / pure forward time. Targets on CPU: ratio <= 1.3; peak RSS <= 2 GB for a
  40000 x 30000 slide.

Usage: ``python benchmarks/bench_wsi.py [--size 20000x20000] [--workers 1] [--threads 1]``. Writes
``benchmarks/results/bench_wsi.json`` (or ``--out``) and the slide's outputs to
``benchmarks/results/bench_wsi_outputs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.data.synthetic import render_tile
from monai_pixelcam.export import export_model
from monai_pixelcam.inference import (
    PixelCAMPredictor,
    SlideSettings,
    SlideWindowDataset,
    localize_slide,
    plan_slide,
    write_pyramid_tiff,
)
from monai_pixelcam.networks import build_pixelcam
from monai_pixelcam.transforms import NetworkInput

RESULTS = Path(__file__).resolve().parent / "results"
TILE = 256
TARGETS = {"ratio": 1.3, "peak_memory_gb_40k_x_30k": 2.0}


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 20000x20000, got {text!r}") from None
    if h < TILE or w < TILE:
        raise argparse.ArgumentTypeError(f"the slide must be at least {TILE} x {TILE}")
    return h, w


class SyntheticSlide:
    """Level-0 pixels of a synthetic lymph-node slide, region by region (``write_pyramid_tiff``'s source).

    A tissue outline on a grid of ``TILE`` px cells (smooth random blobs, about half the slide) decides, per
    cell, glass or tissue; tumour nests are blobs inside the tissue. Each cell is one of the pre-rendered
    tiles, rotated and flipped by the cell's hash.
    """

    def __init__(self, shape: tuple[int, int], seed: int = 0, pool: int = 12) -> None:
        rng = np.random.default_rng(seed)
        self.shape = shape
        rows, cols = math.ceil(shape[0] / TILE), math.ceil(shape[1] / TILE)
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        field, tumour = np.zeros((rows, cols), np.float32), np.zeros((rows, cols), np.float32)
        for _ in range(6):  # smooth blobs: sums of wide Gaussians
            cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
            sy, sx = rng.uniform(0.1, 0.3) * rows, rng.uniform(0.1, 0.3) * cols
            field += np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
        for _ in range(3):
            cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
            tumour += np.exp(-(((yy - cy) / (0.06 * rows)) ** 2 + ((xx - cx) / (0.06 * cols)) ** 2))
        self.tissue = field > np.quantile(field, 0.5)
        self.tumour = self.tissue & (tumour > 0.5)
        self.tiles = {
            label: [render_tile("camelyon", label, TILE, seed=seed, index=k)[0] for k in range(pool)] for label in (0, 1)
        }
        noise = rng.normal(0, 2.0, (TILE, TILE, 3))
        self.glass = np.clip(238 + noise, 0, 255).astype(np.uint8)

    def cell(self, r: int, c: int) -> np.ndarray:
        if not self.tissue[r, c]:
            return self.glass
        h = (r * 7919 + c * 104729) & 0xFFFF
        tile = self.tiles[int(self.tumour[r, c])][h % len(self.tiles[0])]
        tile = np.rot90(tile, k=(h >> 4) % 4)
        return tile[:, ::-1] if (h >> 6) & 1 else tile

    def __call__(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """``height x width x 3`` uint8 from level-0 ``(row, col)``; the writer asks for whole cells."""
        out = np.empty((height, width, 3), np.uint8)
        for r0 in range(row - row % TILE, row + height, TILE):
            for c0 in range(col - col % TILE, col + width, TILE):
                tile = self.cell(r0 // TILE, c0 // TILE)
                ya, yb = max(r0, row), min(r0 + TILE, row + height)
                xa, xb = max(c0, col), min(c0 + TILE, col + width)
                out[ya - row : yb - row, xa - col : xb - col] = tile[ya - r0 : yb - r0, xa - c0 : xb - c0]
        return out


def make_slide(shape: tuple[int, int], mpp: float, seed: int) -> Path:
    path = RESULTS / "slides" / f"synthetic_{shape[0]}x{shape[1]}_mpp{mpp:g}_seed{seed}.svs"
    if not path.is_file():
        start = time.perf_counter()
        print(f"writing {path} ...", flush=True)
        write_pyramid_tiff(path, SyntheticSlide(shape, seed), shape=shape, mpp=mpp, downsamples=(4, 16),
                           tile=TILE, quality=80, app_mag=20.0 if mpp >= 0.4 else 40.0)
        print(f"  {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def make_model(model_dir: Path, encoder: str, image_size: int, mpp: float, seed: int) -> Path:
    torch.manual_seed(seed)
    network = {"encoder": encoder, "head": "cam", "num_classes": 2}
    checkpoint = model_dir / "random_init.pt"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(build_pixelcam(**network).state_dict(), checkpoint)
    export_model(checkpoint, model_dir, network, ["normal", "tumor"], NetworkInput(image_size), threshold=0.5, mpp=mpp)
    return model_dir


class PeakMemory(threading.Thread):
    """Largest PSS sum of this process and all its descendants, sampled every ``interval`` seconds (Linux)."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_gb, self._stop_event = interval, 0.0, threading.Event()

    @staticmethod
    def _pss_kib(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except OSError:  # the process ended between listing and reading
            pass
        return 0

    @staticmethod
    def _family(pid: int) -> list[int]:
        pids, todo = [], [pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            for task in Path(f"/proc/{p}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return pids

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = sum(self._pss_kib(p) for p in self._family(os.getpid())) / 2**20
            self.peak_gb = max(self.peak_gb, total)
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_gb


def _time_forward(predictor: PixelCAMPredictor, batch: torch.Tensor, windows: int) -> float:
    """Seconds of ``forward_prepared`` over ``windows`` windows in batches of ``len(batch)``."""
    start = time.perf_counter()
    for k in range(0, windows, len(batch)):
        predictor.forward_prepared(batch[: min(len(batch), windows - k)])
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    """The child process: one slide run and its forward baseline."""
    torch.set_num_threads(args.threads)
    predictor = PixelCAMPredictor.from_model_dir(args.model_dir, device="cpu", batch_size=args.batch)
    out_dir = RESULTS / "bench_wsi_outputs"
    settings = SlideSettings(
        overlap=args.overlap, backend=args.backend, max_heatmap_pixels=args.max_heatmap_pixels,
        num_workers=args.workers, batch_size=args.batch,
    )
    # the windows localize_slide will predict, and a batch of them (read as it reads them) for the baseline
    plan = plan_slide(args.slide, predictor, dataclasses.replace(settings, num_workers=0))
    windows = len(plan.splitter.windows)
    reads = SlideWindowDataset(args.slide, plan.backend, plan.scale, plan.window, [w[0] for w in plan.splitter.windows],
                               predictor.prepare, plan.splitter.block_span)
    parts, block = [], 0
    while sum(len(p) for p in parts) < args.batch and block < len(reads):
        parts.append(reads[block][0])
        block += 1
    batch = torch.cat(parts)[: args.batch]
    reads.close()
    _time_forward(predictor, batch, 2 * args.batch)  # warm-up

    before = _time_forward(predictor, batch, windows // 2)
    memory = PeakMemory()
    memory.start()
    res = localize_slide(args.slide, predictor, out_dir, settings)
    peak_pss = memory.stop()
    rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    after = _time_forward(predictor, batch, windows - windows // 2)
    scale = res.scale
    return {
        "windows": res.tiles_predicted,
        "positions": res.tiles_total,
        "level": res.level,
        "read_size": list(res.read_size),
        "slide_mpp": scale.slide_mpp[1] if scale.slide_mpp else None,
        "model_mpp": scale.model_mpp,
        "heatmap_shape": list(res.heatmap.shape),
        "heatmap_level0_px": res.heatmap_pixel[1],
        "timings_s": res.timings,
        "forward_baseline_s": before + after,
        "forward_baseline_halves_s": [before, after],
        "peak_memory_gb": {"pss_total": peak_pss, "rss_main": rss_main, "rss_largest_worker": rss_workers},
        "outputs": sorted(str(p) for p in res.paths.values()),
    }


def report(result: dict) -> str:
    t, m = result["timings_s"], result
    split = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
    return (
        f"{m['size'][0]} x {m['size'][1]} slide at {m['slide_mpp']} µm/px, model at {m['model_mpp']} µm/px: level "
        f"{m['level']}, windows {m['read_size'][0]} px resized to {m['image_size']}; {m['windows']} of {m['positions']} "
        f"windows on tissue\n"
        f"  slide {t['total']:.1f} s = {m['tiles_per_s']:.1f} tiles/s; pure forward {m['forward_baseline_s']:.1f} s; "
        f"ratio {m['ratio']:.3f} (target <= {TARGETS['ratio']})\n"
        f"  split (s): {split}\n"
        f"  peak memory (GB): PSS of main + workers {m['peak_memory_gb']['pss_total']:.2f} (target <= "
        f"{TARGETS['peak_memory_gb_40k_x_30k']} for 40000 x 30000); RSS main {m['peak_memory_gb']['rss_main']:.2f}, "
        f"largest worker {m['peak_memory_gb']['rss_largest_worker']:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=_size, default=(20000, 20000), help="level-0 HEIGHTxWIDTH")
    parser.add_argument("--slide-mpp", type=float, default=0.5)
    parser.add_argument("--model-mpp", type=float, default=1.0)
    parser.add_argument("--encoder", default="resnet18_slim")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes reading windows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the forward pass")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-heatmap-pixels", type=int, default=2048 * 2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_wsi.json")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)), flush=True)
        return {}

    start, load_start = time.perf_counter(), os.getloadavg()
    slide = make_slide(args.size, args.slide_mpp, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_wsi_model_") as tmp:
        model_dir = make_model(Path(tmp), args.encoder, args.image_size, args.model_mpp, args.seed)
        child = [sys.executable, __file__, "--measure", "--slide", str(slide), "--model-dir", str(model_dir)]
        for name in ("batch", "overlap", "workers", "threads", "backend", "max_heatmap_pixels"):
            child += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        proc = subprocess.run(child, stdout=subprocess.PIPE, text=True, check=True)
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    total = measured["timings_s"]["total"]
    result = {
        "size": list(args.size),
        "image_size": args.image_size,
        "encoder": args.encoder,
        **measured,
        "tiles_per_s": measured["windows"] / total,
        "ratio": total / measured["forward_baseline_s"],
        "targets": {"ratio": f"<= {TARGETS['ratio']}", "peak_memory_gb (40000 x 30000)": f"<= {TARGETS['peak_memory_gb_40k_x_30k']}"},
        "meets_ratio": total / measured["forward_baseline_s"] <= TARGETS["ratio"],
        "meets_memory": measured["peak_memory_gb"]["pss_total"] <= TARGETS["peak_memory_gb_40k_x_30k"],
        "slide_file": str(slide),
        "slide_mib": slide.stat().st_size / 2**20,
        "load_average_1min": [load_start[0], os.getloadavg()[0]],
        "wall_s": time.perf_counter() - start,
        "environment": {
            "torch": torch.__version__,
            "workers": args.workers,
            "torch_threads": args.threads,
            "batch": args.batch,
            "overlap": args.overlap,
            "backend": args.backend,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    print(report(result), flush=True)
    write_json_atomic(result, args.out)
    print(f"written to {args.out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
