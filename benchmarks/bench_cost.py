"""Cost of PixelCAM against its baselines, measured in one run on one encoder, batch and image size.

Three ratios (issue 4), each numerator and denominator timed in alternation (ABBA...) so that load drifts on a
shared machine cancel:

(a) ``train``: one PixelCAM training iteration (forward, seeds drawn from a CAM batch by the bundle's
    ``ThresholdSeeder`` inside ``PixelCAMLoss``, backward, SGD step) over one plain CE iteration of the same
    classifier (forward, CE, backward, step); both use the paper's SGD (``sgd_optimizer``). Target <= 1.10.
(b) ``localization``: a GradCAM++ map (``build_cam("gradcampp", classifier).extract(..., upsample=True)``:
    forward, gradient, upsampling, normalisation) over a PixelCAM map (``PixelCAMNet.localization_map``: one
    forward, foreground channel upsampled to the input), reported as a speed-up. Target >= 2.5.
(c) ``inference``: PixelCAM inference (``PixelCAMInferer``: class logits + map) over a plain classifier
    forward (``ClassifierInferer``). Target <= 1.05.

The CAM fed to the seeder is what the trainer gets: ``B x 1 x H x W`` at input resolution (``LoadStoredCAMd``
resizes stored maps to the image), here the random-init classifier's CAM of the batch. Each ratio is given as
the ratio of the medians (the figure the target is judged on), the ratio of the minima (the usual estimate of
uncontended time: other processes only ever add time) and the median of the per-round paired ratios.

Throughput: training images/s against the fp32 matmul rate measured in the same rounds as (a) (a square
``torch.mm``). Model FLOPs are counted with forward hooks on ``Conv2d`` and ``Linear`` (2 x MACs; norms,
activations and pooling are left out, and so are attention products not done by a ``Linear`` module, so a
ViT is undercounted); a training iteration counts as 3 x forward. Utilisation = FLOPs/image x images/s over the
matmul FLOP/s. Timing splits of both training iterations (forward / loss / backward / step, and the seeding
alone) show where the time goes; ``--profile`` adds torch.profiler's top operators of the PixelCAM iteration.

Usage: ``python benchmarks/bench_cost.py [--encoder resnet18_slim] [--size 128] [--batch 16] [--repeats 15]
[--threads N] [--paper]``; ``--paper`` adds resnet50 at 224 px, batch 8 (slow on a CPU: minutes).
Writes ``benchmarks/results/bench_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.cams import build_cam
from monai_pixelcam.engines import ClassifierInferer, PixelCAMInferer, sgd_optimizer, write_json_atomic
from monai_pixelcam.losses import PixelCAMLoss, resize_cam
from monai_pixelcam.networks import PixelCAMNet, build_classifier
from monai_pixelcam.seeding import ThresholdSeeder

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cost.json"

# name: (numerator, denominator, kind, threshold); "max": ratio <= threshold, "min": ratio >= threshold
TARGETS = {
    "train": ("pixelcam_step", "classifier_step", "max", 1.10),
    "localization": ("gradcampp_map", "pixelcam_map", "min", 2.5),
    "inference": ("pixelcam_infer", "classifier_forward", "max", 1.05),
}
PAPER_CONFIG = {"encoder": "resnet50", "size": 224, "batch": 8}


def _noop(_: str) -> None:
    pass


def count_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per image of ``model(x)``: 2 x multiply-accumulates of every ``Conv2d`` and ``Linear`` call.

    Args:
        model: any module; it is run once under ``no_grad`` (its train/eval mode is kept).
        x: ``B x C x H x W`` input; the counts are divided by ``B``.

    Returns:
        ``{"conv": FLOPs, "linear": FLOPs, "total": FLOPs}`` per image (bias additions not counted).
    """
    totals = {"conv": 0, "linear": 0}

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        kh, kw = module.kernel_size
        totals["conv"] += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        totals["linear"] += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    batch = x.shape[0]
    flops = {k: 2.0 * v / batch for k, v in totals.items()}
    flops["total"] = flops["conv"] + flops["linear"]
    return flops


def _sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` over ``rounds`` rounds, the order reversed every other round (ABBA...).

    Every function is run ``warmup`` times first (allocator, thread pool, optimiser state), untimed.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    return {"median_ms": 1000 * statistics.median(seconds), "min_ms": 1000 * min(seconds), "n": len(seconds)}


def _ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    return {
        "of_medians": statistics.median(num) / statistics.median(den),
        "of_minima": min(num) / min(den),
        "paired_median": statistics.median(a / b for a, b in zip(num, den)),
    }


class Workload:
    """The two networks (same encoder weights), their optimisers, the loss and one fixed batch.

    ``classifier`` is the plain WSOL classifier trained with CE; ``pixelcam`` is
    ``PixelCAMNet.from_source(classifier)`` trained with ``PixelCAMLoss`` and the bundle's default seeder
    (``ThresholdSeeder(n_fg=16, n_bg=16, bg_fraction=0.4)``, seeds at feature resolution).
    """

    def __init__(
        self, encoder: str, size: int, batch: int, num_classes: int = 2, device: str = "cpu", seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.classifier = build_classifier(encoder, "cam", num_classes).to(self.device)
        self.pixelcam = PixelCAMNet.from_source(self.classifier).to(self.device)
        self.opt_classifier = sgd_optimizer(self.classifier, lr=0.01)
        self.opt_pixelcam = sgd_optimizer(self.pixelcam, lr=0.01)
        self.loss = PixelCAMLoss(ThresholdSeeder(n_fg=16, n_bg=16, bg_fraction=0.4), lambda_pix=1.0)
        self.x = torch.rand(batch, 3, size, size, device=self.device)
        self.y = torch.randint(0, num_classes, (batch,), device=self.device)
        self.cam, _ = build_cam("cam", self.classifier).extract(self.x, labels=self.y, upsample=True)
        self.gradcampp = build_cam("gradcampp", self.classifier)
        self.pixelcam_inferer, self.classifier_inferer = PixelCAMInferer(), ClassifierInferer()
        with torch.no_grad():
            self.feature_size = list(self.pixelcam(self.x[:1])["pix"].shape[2:])

    def train(self, mode: bool = True) -> None:
        self.classifier.train(mode)
        self.pixelcam.train(mode)

    # (a) training iterations; ``tick(phase)`` marks the end of each phase for the timing splits
    def classifier_step(self, tick: Callable[[str], None] = _noop) -> None:
        self.opt_classifier.zero_grad(set_to_none=True)
        logits = self.classifier(self.x)
        tick("forward")
        loss = F.cross_entropy(logits, self.y)
        tick("loss")
        loss.backward()
        tick("backward")
        self.opt_classifier.step()
        tick("step")

    def pixelcam_step(self, tick: Callable[[str], None] = _noop) -> None:
        self.opt_pixelcam.zero_grad(set_to_none=True)
        out = self.pixelcam(self.x)
        tick("forward")
        loss = self.loss(out, {"label": self.y, "cam": self.cam})
        tick("loss")
        loss.backward()
        tick("backward")
        self.opt_pixelcam.step()
        tick("step")

    def seeding(self) -> torch.Tensor:
        """The seeding part of ``PixelCAMLoss`` alone: CAM resized to feature resolution, then the seeder."""
        with torch.no_grad():
            return self.loss.seeder(resize_cam(self.cam, self.feature_size), labels=self.y)

    # (b) localization maps, (c) inference
    def gradcampp_map(self) -> torch.Tensor:
        return self.gradcampp.extract(self.x, labels=self.y, upsample=True)[0]

    def pixelcam_map(self) -> torch.Tensor:
        with torch.no_grad():
            return self.pixelcam.localization_map(self.x)

    def pixelcam_infer(self) -> dict:
        with torch.no_grad():
            return self.pixelcam_inferer(self.x, self.pixelcam)

    def classifier_forward(self) -> dict:
        with torch.no_grad():
            return self.classifier_inferer(self.x, self.classifier)


def matmul_fn(n: int, device: torch.device) -> tuple[Callable[[], None], float]:
    """A function doing one fp32 ``n x n`` matmul, and its FLOPs (``2 n^3``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    return (lambda: torch.mm(a, b, out=c)), 2.0 * n**3


def timing_splits(work: Workload, rounds: int, sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Median milliseconds of each phase of both training iterations, and of the seeding alone."""
    splits: dict[str, dict[str, list[float]]] = {"classifier_step": {}, "pixelcam_step": {}}

    def recorder(store: dict[str, list[float]]) -> Callable[[str], None]:
        last = [time.perf_counter()]

        def tick(phase: str) -> None:
            sync()
            now = time.perf_counter()
            store.setdefault(phase, []).append(now - last[0])
            last[0] = now

        return tick

    seeding: list[float] = []
    work.train(True)
    for r in range(rounds):
        for name in ("classifier_step", "pixelcam_step") if r % 2 == 0 else ("pixelcam_step", "classifier_step"):
            sync()
            getattr(work, name)(recorder(splits[name]))
        sync()
        start = time.perf_counter()
        work.seeding()
        sync()
        seeding.append(time.perf_counter() - start)
    out = {name: {p: 1000 * statistics.median(t) for p, t in phases.items()} for name, phases in splits.items()}
    for phases in out.values():
        phases["total"] = sum(phases.values())
    out["pixelcam_step"]["seeding_alone"] = 1000 * statistics.median(seeding)
    return out


def profile_top_ops(work: Workload, iterations: int = 3, top: int = 12) -> list[dict]:
    """torch.profiler's operators of the PixelCAM iteration with the most self CPU time (ms per iteration)."""
    from torch.profiler import ProfilerActivity, profile

    work.train(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            work.pixelcam_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000 / iterations, "calls": e.count // iterations}
        for e in events
    ]


def run_config(
    encoder: str,
    size: int,
    batch: int,
    rounds: int = 15,
    warmup: int = 2,
    matmul_size: int = 2048,
    split_rounds: int = 5,
    device: str = "cpu",
    profile: bool = False,
    seed: int = 0,
) -> dict:
    """All measurements of one (encoder, image size, batch) configuration; see the module docstring."""
    work = Workload(encoder, size, batch, device=device, seed=seed)
    sync = _sync_for(work.device)
    matmul, matmul_flops = matmul_fn(matmul_size, work.device)
    load = {"start": os.getloadavg()}

    work.train(True)
    train = interleaved(
        {"classifier_step": work.classifier_step, "pixelcam_step": work.pixelcam_step, "matmul": matmul},
        rounds,
        warmup,
        sync,
    )
    load["after_train"] = os.getloadavg()
    work.train(False)
    maps = interleaved({"pixelcam_map": work.pixelcam_map, "gradcampp_map": work.gradcampp_map}, rounds, warmup, sync)
    infer = interleaved(
        {"classifier_forward": work.classifier_forward, "pixelcam_infer": work.pixelcam_infer}, rounds, warmup, sync
    )
    load["after_inference"] = os.getloadavg()
    splits = timing_splits(work, split_rounds, sync)
    top_ops = profile_top_ops(work) if profile else None
    load["end"] = os.getloadavg()

    times = {**train, **maps, **infer}
    ratios = {}
    for name, (num, den, kind, threshold) in TARGETS.items():
        r = _ratio(times[num], times[den])
        met = r["of_medians"] <= threshold if kind == "max" else r["of_medians"] >= threshold
        target = f"{'<=' if kind == 'max' else '>='} {threshold}"
        ratios[name] = {**r, "numerator": num, "denominator": den, "target": target, "met": bool(met)}

    work.train(False)
    probe = work.x[:1]
    flops_pixelcam = count_flops(work.pixelcam, probe)
    flops_classifier = count_flops(work.classifier, probe)
    matmul_rate = {
        "median_gflops": matmul_flops / statistics.median(train["matmul"]) / 1e9,
        "max_gflops": matmul_flops / min(train["matmul"]) / 1e9,
    }
    throughput = {}
    for name, flops in (("pixelcam_step", flops_pixelcam), ("classifier_step", flops_classifier)):
        ips_med = batch / statistics.median(train[name])
        ips_best = batch / min(train[name])
        train_flops = 3 * flops["total"]
        throughput[name] = {
            "images_per_s_median": ips_med,
            "images_per_s_best": ips_best,
            "train_gflop_per_image": train_flops / 1e9,
            "achieved_gflops_median": train_flops * ips_med / 1e9,
            # matched estimates: median over median, best over best
            "utilisation_median": train_flops * ips_med / (matmul_rate["median_gflops"] * 1e9),
            "utilisation_best": train_flops * ips_best / (matmul_rate["max_gflops"] * 1e9),
        }
    return {
        "encoder": encoder,
        "image_size": size,
        "batch_size": batch,
        "feature_size": work.feature_size,
        "rounds": rounds,
        "warmup": warmup,
        "seeder": repr(work.loss.seeder),
        "times": {name: _stats(t) for name, t in times.items()},
        "ratios": ratios,
        "forward_gflop_per_image": {
            "pixelcam": flops_pixelcam["total"] / 1e9,
            "classifier": flops_classifier["total"] / 1e9,
        },
        "matmul": {"size": matmul_size, **matmul_rate},
        "throughput": throughput,
        "timing_splits_ms": splits,
        "profile_top_ops": top_ops,
        "load_average": load,
        "meets_targets": all(r["met"] for r in ratios.values()),
    }


def format_report(res: dict, threads: int) -> str:
    la = res["load_average"]
    lines = [
        f"{res['encoder']} at {res['image_size']} px, batch {res['batch_size']} (features "
        f"{res['feature_size'][0]}x{res['feature_size'][1]}), {threads} torch threads, {res['rounds']} rounds "
        f"(ABBA) after {res['warmup']} warm-up; load average (1 min) {la['start'][0]:.2f} -> {la['end'][0]:.2f}",
        f"  {'measure':<34}{'numerator ms med/min':>22}{'denominator ms med/min':>24}"
        f"{'ratio med':>11}{'min':>7}{'paired':>8}{'target':>9}{'met':>5}",
    ]
    labels = {
        "train": "(a) train PixelCAM / CE",
        "localization": "(b) map GradCAM++ / PixelCAM",
        "inference": "(c) infer PixelCAM / forward",
    }
    for name, r in res["ratios"].items():
        num, den = res["times"][r["numerator"]], res["times"][r["denominator"]]
        lines.append(
            f"  {labels[name]:<34}{num['median_ms']:>12.1f} /{num['min_ms']:>8.1f}"
            f"{den['median_ms']:>14.1f} /{den['min_ms']:>8.1f}"
            f"{r['of_medians']:>11.3f}{r['of_minima']:>7.3f}{r['paired_median']:>8.3f}{r['target']:>9}"
            f"{'yes' if r['met'] else 'NO':>5}"
        )
    mm, gf = res["matmul"], res["forward_gflop_per_image"]
    lines.append(
        f"  matmul {mm['size']}^2 fp32: {mm['median_gflops']:.1f} GFLOP/s median, {mm['max_gflops']:.1f} best; "
        f"forward {gf['pixelcam']:.3f} GFLOP/image (PixelCAM), {gf['classifier']:.3f} (classifier)"
    )
    for name, t in res["throughput"].items():
        lines.append(
            f"  {name:<16} {t['images_per_s_median']:7.1f} img/s median ({t['images_per_s_best']:.1f} best), "
            f"{t['train_gflop_per_image']:.3f} GFLOP/image -> {t['achieved_gflops_median']:.1f} GFLOP/s, "
            f"utilisation {100 * t['utilisation_median']:.1f}% (best/best {100 * t['utilisation_best']:.1f}%)"
        )
    for name, phases in res["timing_splits_ms"].items():
        parts = ", ".join(f"{p} {ms:.1f}" for p, ms in phases.items())
        lines.append(f"  split {name} (ms, median): {parts}")
    if res["profile_top_ops"]:
        lines.append("  top ops of the PixelCAM iteration (self CPU ms per iteration):")
        lines += [f"    {op['self_cpu_ms']:8.2f}  x{op['calls']:<4} {op['op']}" for op in res["profile_top_ops"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18_slim")
    parser.add_argument("--size", type=int, default=128, help="image size (square)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per ratio")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--split-rounds", type=int, default=5, help="rounds of the timing splits")
    parser.add_argument("--paper", action="store_true", help="also resnet50 at 224 px, batch 8")
    parser.add_argument("--paper-repeats", type=int, default=3, help="timed rounds of the --paper configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPU cores)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops of the PixelCAM iteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    threads = torch.get_num_threads()
    configs = [{"encoder": args.encoder, "size": args.size, "batch": args.batch, "rounds": args.repeats,
                "warmup": args.warmup}]
    if args.paper:
        configs.append({**PAPER_CONFIG, "rounds": args.paper_repeats, "warmup": 1})

    load_start = os.getloadavg()
    start = time.perf_counter()
    results = []
    for cfg in configs:
        res = run_config(
            cfg["encoder"], cfg["size"], cfg["batch"], rounds=cfg["rounds"], warmup=cfg["warmup"],
            matmul_size=args.matmul_size, split_rounds=args.split_rounds, device=args.device,
            profile=args.profile, seed=args.seed,
        )
        results.append(res)
        print(format_report(res, threads), flush=True)
    result = {
        "configs": results,
        "targets": {name: f"{'<=' if kind == 'max' else '>='} {t}" for name, (_, _, kind, t) in TARGETS.items()},
        "meets_targets": all(r["meets_targets"] for r in results),
        "load_average_1min": [load_start[0], os.getloadavg()[0]],
        "wall_s": time.perf_counter() - start,
        "environment": {
            "torch": torch.__version__,
            "torch_threads": threads,
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
    }
    write_json_atomic(result, args.out)
    print(f"written to {args.out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
