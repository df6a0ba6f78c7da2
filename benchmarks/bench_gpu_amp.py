"""Mixed precision on a GPU, prepared for a machine that has one: the paper-scale bundle trained for a few epochs
in float32 and in each ``amp`` dtype, and slide inference, in one run of at most about 10 minutes.

For each precision (``fp32``, then ``--amp``, default ``bf16 fp16``; then each of ``--channels-last-with``,
default ``bf16``, again with the ``channels_last`` memory format, named e.g. ``bf16+channels_last``), on the
same synthetic data and seed:

- training: ``configs/train.json`` + ``configs/paper.json`` (resnet50, 256 -> 224 px, batch 32) with
  ``--epochs`` epochs per stage, the stages run one by one as the bundle lists them; seconds and training
  images per second of each stage, and the GPU's peak allocated memory (``torch.cuda.max_memory_allocated``);
- slide inference: the exported model over a synthetic slide (``localize_slide``, the bundle's settings):
  windows per second and peak memory.

Every figure of an ``amp`` dtype is also given as a ratio to float32 measured in the same run (the machines are
shared: compare ratios, not seconds across runs). The PixelCAM test PxAP of each run is reported beside, to
show what the precision costs in quality on this short schedule.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/bench_gpu_amp.py                       # cuda, 2 epochs per stage, bf16 and fp16
    python benchmarks/bench_gpu_amp.py --smoke --device cpu   # the same path in seconds (tests)

Writes ``benchmarks/results/bench_gpu_amp.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from monai_pixelcam.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "pixelcam" / "configs"
STAGES = ("train_source", "store_cams", "train_pixelcam", "evaluate", "export")
#: --smoke: the same path on tiny settings (a test runs it on the CPU)
SMOKE = {"encoder": "resnet18_slim", "image_size": 48, "crop_size": 40, "batch_size": 4, "num_workers": 0,
         "val_interval": 1, "tensorboard_images": 0}


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak RSS on a CPU (GiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train(datalist: Path, root: Path, amp: str | None, channels_last: bool, args, device: torch.device) -> dict:
    """One bundle run in ``root``: per stage seconds (and images/s for the two training stages), peak memory,
    PixelCAM test PxAP."""
    from monai.bundle import ConfigWorkflow

    overrides = {**(SMOKE if args.smoke else {}), "source_epochs": args.epochs, "pixelcam_epochs": args.epochs}
    files = [str(CONFIGS / "train.json")] + ([] if args.smoke else [str(CONFIGS / "paper.json")])
    workflow = ConfigWorkflow(
        config_file=files, logging_file=False, workflow_type=None, run_id="training", bundle_root=str(root),
        datalist=str(datalist), device=device, amp=amp, channels_last=channels_last, seed=args.seed, **overrides,
    )
    workflow.initialize()
    n_train = len(workflow.parser.get_parsed_content("data#datalist")["train"])
    stages, peak = {}, 0.0
    for stage in STAGES:
        _peak_reset(device)
        start = time.perf_counter()
        items = workflow.parser[stage]
        for k in range(len(items)) if isinstance(items, list) else [None]:
            workflow.parser.get_parsed_content(stage if k is None else f"{stage}#{k}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        stages[stage] = {"seconds": seconds, "peak_memory_gb": _peak_gb(device)}
        if stage in ("train_source", "train_pixelcam"):
            # validation runs inside the stage too: images/s is a lower bound of the trainer's own rate
            stages[stage]["train_images_per_s"] = n_train * args.epochs / seconds
        peak = max(peak, stages[stage]["peak_memory_gb"])
    workflow.finalize()
    metrics = json.loads((root / "models" / "metrics.json").read_text())
    return {"stages": stages, "peak_memory_gb": peak, "pixelcam_test_pxap": metrics["pixelcam"]["bloc"]["pxap"]}


def slide(
    model_dir: Path, slide_path: Path, out: Path, amp: str | None, channels_last: bool, device: torch.device
) -> dict:
    """Slide inference with the bundle's settings: windows/s and peak memory."""
    from monai_pixelcam.inference import PixelCAMPredictor, SlideSettings, localize_slide

    predictor = PixelCAMPredictor.from_model_dir(model_dir, device=device, amp=amp, channels_last=channels_last)
    _peak_reset(device)
    start = time.perf_counter()
    result = localize_slide(slide_path, predictor, out, SlideSettings(num_workers=2), progress=False)
    seconds = time.perf_counter() - start
    return {"windows": result.tiles_predicted, "seconds": seconds, "windows_per_s": result.tiles_predicted / seconds,
            "peak_memory_gb": _peak_gb(device)}


def _ratios(run: dict, base: dict) -> dict:
    """The figures of ``run`` over those of ``base`` (same keys), for speeds and memory."""
    out = {"peak_memory": run["train"]["peak_memory_gb"] / max(base["train"]["peak_memory_gb"], 1e-9),
           "slide_windows_per_s": run["slide"]["windows_per_s"] / base["slide"]["windows_per_s"]}
    for stage in ("train_source", "train_pixelcam"):
        out[f"{stage}_images_per_s"] = (run["train"]["stages"][stage]["train_images_per_s"]
                                        / base["train"]["stages"][stage]["train_images_per_s"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", nargs="*", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--channels-last-with", nargs="*", default=["bf16"], choices=["fp32", "bf16", "fp16"],
                        help="precisions to run once more with the channels_last memory format")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training stage")
    parser.add_argument("--images", type=int, default=200, help="synthetic training-set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny settings: the same path in seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_gpu_amp.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark is for a GPU machine (or use --device cpu --smoke)",
              file=sys.stderr)
        return 2
    from monai_pixelcam.data.synthetic import synthesize
    from monai_pixelcam.data.synthetic.slides import synthetic_slide

    # the datasets, bundles and slide outputs are scratch: only the JSON figures are kept
    with tempfile.TemporaryDirectory(prefix="bench_gpu_amp_") as scratch:
        work = Path(scratch)
        size = 64 if args.smoke else 256
        datalist = synthesize("glas", work / "data", n_images=args.images, image_size=size, seed=args.seed, progress=False)
        grid = [[(r + c) % 2 for c in range(3 if args.smoke else 16)] for r in range(2 if args.smoke else 16)]
        slide_path = synthetic_slide(work / "slide.svs", grid, block=64 if args.smoke else 256, seed=args.seed).path
        runs = {}
        variants = [(amp or "fp32", amp, False) for amp in [None, *args.amp]]
        variants += [(f"{p}+channels_last", None if p == "fp32" else p, True) for p in args.channels_last_with]
        for name, amp, channels_last in variants:
            root = work / name
            runs[name] = {"train": train(datalist, root, amp, channels_last, args, device)}
            runs[name]["slide"] = slide(root / "models", slide_path, root / "slide_out", amp, channels_last, device)
            print(f"{name}: {json.dumps(runs[name], indent=None)}", flush=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "settings": vars(args) | {"out": str(args.out)}, "runs": runs,
        "ratio_to_fp32": {name: _ratios(runs[name], runs["fp32"]) for name in runs if name != "fp32"},
    }
    write_json_atomic(result, args.out, indent=1)
    print(json.dumps(result["ratio_to_fp32"], indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
