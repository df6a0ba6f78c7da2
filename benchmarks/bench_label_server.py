"""Overlapping inference requests against the MONAI Label server, against the same requests one after another,
measured in the same run.

The server: ``monailabel start_server`` of ``apps/pixelcam`` behind the guard
(:func:`monai_pixelcam.label.local_server.running_server`), with ``--conf max_pending_infers`` = ``--requests``
so that no request is refused and every one is timed. The model: a random-init ``build_pixelcam(--encoder)``
exported at ``--image-size`` (speed does not depend on the weights). The requests: ``--requests`` distinct
synthetic H&E tiles of ``--tile`` px (``render_tile``, GlaS-like and CAMELYON-like alternating), each
uploaded to ``POST /infer/pixelcam?output=json`` as QuPath uploads a region it does not hold.

Order ABA: the tiles one after another, then all at once from as many client threads, then one after another
again; the baseline is the mean of the two sequential passes (a drifting machine load hits both alike).
Reported: wall time of each pass, the ratio concurrent / sequential (<= 1 + noise: overlapping requests cost
no more than sequential ones), per-request latency percentiles (p50, p95), errors (any status but 200), and
whether ``/info/`` answers afterwards.

Usage: ``python benchmarks/bench_label_server.py [--requests 32] [--tile 512]``. Writes
``benchmarks/results/bench_label_server.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.data.synthetic import render_tile
from monai_pixelcam.export import export_model
from monai_pixelcam.label.local_server import running_server
from monai_pixelcam.networks import build_pixelcam
from monai_pixelcam.transforms import NetworkInput

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pixelcam" / "configs"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _bundle(root: Path, encoder: str, image_size: int) -> Path:
    bundle = root / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    network = {"encoder": encoder, "num_classes": 2}
    checkpoint = root / "pixelcam.pt"
    torch.manual_seed(0)
    torch.save(build_pixelcam(**network).state_dict(), checkpoint)
    export_model(checkpoint, bundle / "models", network, ["benign", "malignant"], NetworkInput(image_size), threshold=0.5)
    return bundle


def _tiles(n: int, size: int) -> list[bytes]:
    return [_png(render_tile(("glas", "camelyon")[k % 2], k % 2, size, seed=3, index=k)[0]) for k in range(n)]


def _one(url: str, k: int, tile: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    r = requests.post(
        f"{url}/infer/pixelcam", params={"output": "json"}, files={"file": (f"tile_{k}.png", tile)}, timeout=600
    )
    return r.status_code, time.perf_counter() - start


def _sequential(url: str, tiles: Sequence[bytes]) -> tuple[float, list[tuple[int, float]]]:
    start = time.perf_counter()
    results = [_one(url, k, t) for k, t in enumerate(tiles)]
    return time.perf_counter() - start, results


def _concurrent(url: str, tiles: Sequence[bytes]) -> tuple[float, list[tuple[int, float]]]:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(tiles)) as pool:
        results = list(pool.map(lambda kt: _one(url, *kt), enumerate(tiles)))
    return time.perf_counter() - start, results


def _summary(wall: float, results: list[tuple[int, float]]) -> dict:
    latencies = np.asarray([t for _, t in results])
    return {
        "wall_s": round(wall, 3),
        "errors": sum(s != 200 for s, _ in results),
        "statuses": sorted({s for s, _ in results}),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tile", type=int, default=512, help="side of the uploaded tiles, px")
    parser.add_argument("--encoder", default="resnet18_slim")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_label_server.json")
    args = parser.parse_args(argv)

    tiles = _tiles(args.requests, args.tile)
    with tempfile.TemporaryDirectory(prefix="bench_label_server_") as tmp:
        root = Path(tmp)
        studies = root / "studies"
        studies.mkdir()
        bundle = _bundle(root, args.encoder, args.image_size)
        conf = {"max_pending_infers": args.requests, "upload_dir": root / "uploads"}
        with running_server(root, studies, bundle, conf) as (url, _):
            _one(url, -1, tiles[0])  # the model is loaded on the first request
            seq_a = _sequential(url, tiles)
            conc = _concurrent(url, tiles)
            seq_b = _sequential(url, tiles)
            info_status = requests.get(f"{url}/info/", timeout=60).status_code
            leftovers = sorted(p.name for p in (root / "uploads").iterdir())
    baseline = (seq_a[0] + seq_b[0]) / 2
    result = {
        "requests": args.requests,
        "tile_px": args.tile,
        "encoder": args.encoder,
        "image_size": args.image_size,
        "sequential_a": _summary(*seq_a),
        "concurrent": _summary(*conc),
        "sequential_b": _summary(*seq_b),
        "ratio_concurrent_over_sequential": round(conc[0] / baseline, 3),
        "info_status_after": info_status,
        "upload_leftovers": leftovers,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, args.out)
    return result


if __name__ == "__main__":
    main()
