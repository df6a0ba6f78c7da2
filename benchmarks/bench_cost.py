"""Cost of PixelCAM against its baselines, measured in one run on one encoder, batch and image size.

Three ratios (issue 4); numerator and denominator are timed in strict alternation (ABAB...), so that load drifts
on a shared machine hit both alike. Each measurement is one call timed by ``torch.utils.benchmark.Timer``
(``timeit(1)``: two warm-up calls of the same function, then the timed one; the Timer fixes the torch thread count
and synchronises an accelerator before reading its clock):

(a) ``train``: one PixelCAM training iteration (forward, seeds drawn from a CAM batch by the bundle's seeder
    inside ``PixelCAMLoss``, backward, SGD step) over one plain CE iteration of the same
    classifier (forward, CE, backward, step); both use the paper's SGD (``sgd_optimizer``). Target <= 1.10.
(b) ``localization``: a GradCAM++ map (``build_cam("gradcampp", classifier).extract(..., upsample=True)``:
    forward, gradient, upsampling, normalisation) over a PixelCAM map (``PixelCAMNet.localization_map``: one
    forward, foreground channel upsampled to the input), reported as a speed-up. Target >= 2.5. Two references
    are timed alongside: an eval-mode forward with autograd recording (the extractor takes the gradient at the
    target layer, the encoder output, so its backward runs through the head only), and a forward plus a
    backward of the class scores through every parameter (what CAM libraries that call ``score.backward()``
    run, e.g. pytorch-grad-cam).
(c) ``inference``: PixelCAM inference (``PixelCAMInferer``: class logits + map) over a plain classifier
    forward (``ClassifierInferer``). Target <= 1.05.

The CAM fed to the seeder is what the trainer gets: ``B x 1 x H x W`` at input resolution (``LoadStoredCAMd``
resizes stored maps to the image), here the random-init classifier's CAM of the batch. Each ratio is given as
the ratio of the medians (the figure the target is judged on), the ratio of the minima (the usual estimate of
uncontended time: other processes only ever add time) and the median of the per-round paired ratios.

Threads: every thread count of ``--threads`` (default 1) is measured in turn. On a 2-core machine that other
processes load, two intra-op threads stall on each other (one is descheduled while the other waits at the
barrier): at load 5-8 a forward took a median 280-570 ms with 2 threads against 78 ms with 1, and a training
iteration 2.5-4.3 s against 0.28 s, with minima 2-8x below the medians. So the default is 1 thread, whose
figures are stable there; ``--threads 1,2`` adds the all-core figures, realistic on an idle machine.

Throughput: training images/s against the fp32 matmul rate (square ``torch.mm`` at each size of
``--matmul-sizes``, timed in alternation right after (a); the reference is the best median over the sizes).
Utilisation = FLOPs/image x images/s over that rate. Model FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (2 x MACs of convolutions and of matrix products: linear layers and
a ViT's attention; norms, activations and pooling are left out); a training iteration counts as 3 x forward. The matmul is not
always the machine's peak: torch's CPU build multiplies with MKL's sgemm and convolves with oneDNN (AVX-512
kernels where present), and on the AMD EPYC of the development machines sgemm reached about 95 GFLOP/s on one
core where a oneDNN 3x3 convolution reached up to 190 (MKL is reported to choose slower code paths on non-Intel
processors), so utilisation can exceed 100%. A 3x3 convolution (64 channels, 32 x 32, batch 16) is therefore
timed with the matmuls and the utilisation against the fastest probe is reported too. Timing splits of both
training iterations (forward / loss / backward / step, and the seeding alone) show where the time goes;
``--profile`` adds torch.profiler's top operators of the PixelCAM iteration.

Usage: ``python benchmarks/bench_cost.py [--encoder resnet18_slim] [--size 128] [--batch 16] [--repeats 15]
[--threads 1,2] [--paper] [--profile]``; ``--paper`` adds resnet50 at 224 px, batch 8,
with the seeder of ``configs/paper.json`` (``ProbabilitySeeder(5, 5, 0.2)`` at input resolution); minutes on a CPU.
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
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from monai_pixelcam.cams import build_cam
from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.engines import ClassifierInferer, PixelCAMInferer, sgd_optimizer
from monai_pixelcam.losses import PixelCAMLoss, resize_cam
from monai_pixelcam.networks import build_classifier, build_pixelcam
from monai_pixelcam.seeding import PixelSeeder, ProbabilitySeeder, ThresholdSeeder

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cost.json"

# name: (numerator, denominator, kind, threshold); "max": ratio <= threshold, "min": ratio >= threshold
TARGETS = {
    "train": ("pixelcam_step", "classifier_step", "max", 1.10),
    "localization": ("gradcampp_map", "pixelcam_map", "min", 2.5),
    "inference": ("pixelcam_infer", "classifier_forward", "max", 1.05),
}
# the seeders of bundles/pixelcam/configs/train.json (CPU default) and paper.json
DEFAULT_SEEDING = {"seeder": lambda: ThresholdSeeder(n_fg=16, n_bg=16, bg_fraction=0.4), "seed_resolution": "feature"}
PAPER_CONFIG = {
    "encoder": "resnet50",
    "size": 224,
    "batch": 8,
    "seeder": lambda: ProbabilitySeeder(n_fg=5, n_bg=5, bg_fraction=0.2),
    "seed_resolution": "input",
}


def _noop(_: str) -> None:
    pass


def count_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per image of ``model(x)``, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Args:
        model: any module; it is run once under ``no_grad`` (its train/eval mode is kept).
        x: ``B x C x H x W`` input; the counts are divided by ``B``.

    Returns:
        ``{"conv": FLOPs, "linear": FLOPs, "total": FLOPs}`` per image: convolutions, matrix products (linear
        layers, attention) and both; 2 x multiply-accumulates, bias additions not counted.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    per_op = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in per_op.items() if "convolution" in str(op))
    total = counter.get_total_flops()
    return {"conv": conv / x.shape[0], "linear": (total - conv) / x.shape[0], "total": total / x.shape[0]}


def _sync_for(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` over ``rounds`` rounds of one measurement each, always in the same order (ABAB...).

    Every function is run ``warmup`` times first (allocator, thread pool, optimiser state), untimed. A measurement
    is ``torch.utils.benchmark.Timer.timeit(1)`` at the current torch thread count: two warm-up calls of the
    function, then one timed call (the Timer synchronises an accelerator before it reads the clock).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    threads = torch.get_num_threads()
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer.timeit(1).times[0])
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

    ``classifier`` is the plain WSOL classifier (CAM head) trained with CE; ``pixelcam`` is
    ``build_pixelcam(...).load_source(classifier)`` trained with ``PixelCAMLoss(seeder, seed_resolution=...)``; the
    default seeder is the bundle's (``ThresholdSeeder(n_fg=16, n_bg=16, bg_fraction=0.4)`` at feature resolution).
    """

    def __init__(
        self,
        encoder: str,
        size: int,
        batch: int,
        num_classes: int = 2,
        device: str = "cpu",
        seed: int = 0,
        seeder: PixelSeeder | None = None,
        seed_resolution: str = "feature",
        network_kwargs: dict | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        kwargs = dict(network_kwargs or {})  # e.g. encoder_snapshot and trainable_blocks (bench_encoders.py)
        self.classifier = build_classifier(encoder, "cam", num_classes, **kwargs).to(self.device)
        self.pixelcam = build_pixelcam(encoder, "cam", num_classes, **kwargs).load_source(self.classifier)
        self.pixelcam = self.pixelcam.to(self.device)
        self.opt_classifier = sgd_optimizer(self.classifier, lr=0.01)
        self.opt_pixelcam = sgd_optimizer(self.pixelcam, lr=0.01)
        seeder = DEFAULT_SEEDING["seeder"]() if seeder is None else seeder
        self.loss = PixelCAMLoss(seeder, lambda_pix=1.0, seed_resolution=seed_resolution)
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
        """The seeding part of ``PixelCAMLoss`` alone: the seeder on the CAM at the seeding resolution."""
        with torch.no_grad():
            cam = resize_cam(self.cam, self.feature_size) if self.loss.seed_resolution == "feature" else self.cam
            return self.loss.seeder(cam, labels=self.y)

    # (b) localization maps, (c) inference
    def gradcampp_map(self) -> torch.Tensor:
        return self.gradcampp.extract(self.x, labels=self.y, upsample=True)[0]

    def pixelcam_map(self) -> torch.Tensor:
        with torch.no_grad():
            return self.pixelcam.localization_map(self.x)

    def classifier_forward_graph(self) -> torch.Tensor:
        """Eval-mode forward with autograd recording, as a gradient-based CAM runs it (reference for (b))."""
        with torch.enable_grad():
            return self.classifier(self.x)

    def classifier_full_backward(self) -> None:
        """Eval-mode forward and a backward of the true-class scores through every parameter: the gradient pass
        of CAM libraries that call ``score.backward()`` (e.g. pytorch-grad-cam), a reference for (b)."""
        with torch.enable_grad():
            self.classifier(self.x).gather(1, self.y[:, None]).sum().backward()
        self.classifier.zero_grad(set_to_none=True)

    def pixelcam_infer(self) -> dict:
        with torch.no_grad():
            return self.pixelcam_inferer(self.x, self.pixelcam)

    def classifier_forward(self) -> dict:
        with torch.no_grad():
            return self.classifier_inferer(self.x, self.classifier)


def matmul_fn(n: int, device: torch.device, flops_per_call: float = 2.0 * 2048**3) -> tuple[Callable, float]:
    """A function doing enough fp32 ``n x n`` matmuls to make about ``flops_per_call`` FLOPs, and its FLOPs."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    repeats = max(1, round(flops_per_call / (2.0 * n**3)))

    def fn() -> None:
        for _ in range(repeats):
            torch.mm(a, b, out=c)

    return fn, repeats * 2.0 * n**3


def conv_fn(device: torch.device, flops_per_call: float = 2.0 * 2048**3) -> tuple[Callable, float]:
    """A function doing enough 3x3 convolutions (16 x 64 x 32 x 32, 64 -> 64 channels) to make about
    ``flops_per_call`` FLOPs, and its FLOPs: the oneDNN rate that the encoders' convolutions can reach."""
    x = torch.randn(16, 64, 32, 32, device=device)
    w = torch.randn(64, 64, 3, 3, device=device)
    flops = 2.0 * x.shape[0] * 32 * 32 * 64 * 64 * 9
    repeats = max(1, round(flops_per_call / flops))

    def fn() -> None:
        with torch.no_grad():
            for _ in range(repeats):
                F.conv2d(x, w, padding=1)

    return fn, repeats * flops


def timing_splits(work: Workload, rounds: int, sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Median milliseconds of each phase of both training iterations (alternated), and of the seeding alone.

    The phases lie inside one call, which a ``Timer`` (it times whole statements) cannot split: they are read
    off ``time.perf_counter`` at ``tick``s, the accelerator synchronised first.
    """
    splits: dict[str, dict[str, list[float]]] = {"classifier_step": {}, "pixelcam_step": {}}
    seeding_timer = Timer(stmt="work.seeding()", globals={"work": work}, num_threads=torch.get_num_threads())

    def recorder(store: dict[str, list[float]]) -> Callable[[str], None]:
        sync()
        last = [time.perf_counter()]

        def tick(phase: str) -> None:
            sync()
            now = time.perf_counter()
            store.setdefault(phase, []).append(now - last[0])
            last[0] = now

        return tick

    seeding: list[float] = []
    work.train(True)
    for _ in range(rounds):
        work.classifier_step(recorder(splits["classifier_step"]))
        work.pixelcam_step(recorder(splits["pixelcam_step"]))
        seeding.append(seeding_timer.timeit(1).times[0])
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
    matmul_sizes: Sequence[int] = (512, 2048),
    probe_gflop: float = 2.0 * 2048**3 / 1e9,
    split_rounds: int = 5,
    device: str = "cpu",
    profile: bool = False,
    seed: int = 0,
    seeder: PixelSeeder | None = None,
    seed_resolution: str = "feature",
) -> dict:
    """All measurements of one (encoder, image size, batch) configuration at the current torch thread count.

    ``rounds`` timed rounds for the training ratio, twice as many for the cheaper (b) and (c). ``seeder`` and
    ``seed_resolution`` configure the ``PixelCAMLoss`` (default: the bundle's CPU configuration).
    """
    work = Workload(encoder, size, batch, device=device, seed=seed, seeder=seeder, seed_resolution=seed_resolution)
    sync = _sync_for(work.device)
    load = {"start": os.getloadavg()}

    work.train(True)
    steps = {"classifier_step": work.classifier_step, "pixelcam_step": work.pixelcam_step}
    train = interleaved(steps, rounds, warmup)
    probe_flops = probe_gflop * 1e9
    probes = {f"matmul_{n}": matmul_fn(n, work.device, probe_flops) for n in matmul_sizes}
    probes["conv3x3_64ch"] = conv_fn(work.device, probe_flops)
    probe_times = interleaved({k: fn for k, (fn, _) in probes.items()}, max(3, rounds // 3), 1)
    load["after_train"] = os.getloadavg()
    work.train(False)
    maps = interleaved(
        {
            "pixelcam_map": work.pixelcam_map,
            "gradcampp_map": work.gradcampp_map,
            "classifier_forward_graph": work.classifier_forward_graph,
            "classifier_full_backward": work.classifier_full_backward,
        },
        2 * rounds,
        warmup,
    )
    infer = interleaved(
        {"classifier_forward": work.classifier_forward, "pixelcam_infer": work.pixelcam_infer},
        2 * rounds,
        warmup,
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

    rates = {
        k: {
            "median_gflops": flops / statistics.median(probe_times[k]) / 1e9,
            "best_gflops": flops / min(probe_times[k]) / 1e9,
        }
        for k, (_, flops) in probes.items()
    }
    matmul = {k: v for k, v in rates.items() if k.startswith("matmul_")}
    reference = max(matmul, key=lambda k: matmul[k]["median_gflops"])
    ref_median, ref_best = matmul[reference]["median_gflops"], max(m["best_gflops"] for m in matmul.values())
    fastest = max(r["median_gflops"] for r in rates.values())

    work.train(False)
    probe = work.x[:1]
    forward_flops = {
        "pixelcam_step": count_flops(work.pixelcam, probe),
        "classifier_step": count_flops(work.classifier, probe),
    }
    throughput = {}
    for name, flops in forward_flops.items():
        ips_med, ips_best = batch / statistics.median(train[name]), batch / min(train[name])
        train_gflop = 3 * flops["total"] / 1e9
        throughput[name] = {
            "images_per_s_median": ips_med,
            "images_per_s_best": ips_best,
            "train_gflop_per_image": train_gflop,
            "achieved_gflops_median": train_gflop * ips_med,
            # matched estimates: median over median, best over best
            "utilisation_median": train_gflop * ips_med / ref_median,
            "utilisation_best": train_gflop * ips_best / ref_best,
            "utilisation_vs_fastest_probe_median": train_gflop * ips_med / fastest,
        }
    return {
        "encoder": encoder,
        "torch_threads": torch.get_num_threads(),
        "image_size": size,
        "batch_size": batch,
        "feature_size": work.feature_size,
        "rounds": rounds,
        "warmup": warmup,
        "seeder": repr(work.loss.seeder),
        "seed_resolution": work.loss.seed_resolution,
        "times": {name: _stats(t) for name, t in times.items()},
        "ratios": ratios,
        "forward_gflop_per_image": {
            "pixelcam": forward_flops["pixelcam_step"]["total"] / 1e9,
            "classifier": forward_flops["classifier_step"]["total"] / 1e9,
        },
        "rates": {
            "per_probe": rates,
            "matmul_reference": reference,
            "reference_median_gflops": ref_median,
            "reference_best_gflops": ref_best,
        },
        "throughput": throughput,
        "timing_splits_ms": splits,
        "profile_top_ops": top_ops,
        "load_average": load,
        "meets_targets": all(r["met"] for r in ratios.values()),
    }


def format_report(res: dict) -> str:
    """Human-readable table of one :func:`run_config` result."""
    la, t = res["load_average"], res["times"]
    lines = [
        f"{res['encoder']} at {res['image_size']} px, batch {res['batch_size']} (features "
        f"{res['feature_size'][0]}x{res['feature_size'][1]}), {res['torch_threads']} torch thread(s), "
        f"{res['rounds']} rounds (ABAB; 2x for (b), (c)) after {res['warmup']} warm-up; load average (1 min) "
        f"{la['start'][0]:.2f} -> {la['end'][0]:.2f}",
        f"  {'measure':<31}{'numerator ms med/min':>22}{'denominator ms med/min':>24}"
        f"{'ratio med':>11}{'min':>7}{'paired':>8}{'target':>9}{'met':>5}",
    ]
    labels = {
        "train": "(a) train PixelCAM / CE",
        "localization": "(b) map GradCAM++ / PixelCAM",
        "inference": "(c) infer PixelCAM / forward",
    }
    for name, r in res["ratios"].items():
        num, den = t[r["numerator"]], t[r["denominator"]]
        lines.append(
            f"  {labels[name]:<31}{num['median_ms']:>12.1f} /{num['min_ms']:>8.1f}"
            f"{den['median_ms']:>14.1f} /{den['min_ms']:>8.1f}"
            f"{r['of_medians']:>11.3f}{r['of_minima']:>7.3f}{r['paired_median']:>8.3f}{r['target']:>9}"
            f"{'yes' if r['met'] else 'NO':>5}"
        )
    full, pix_map = t["classifier_full_backward"]["median_ms"], t["pixelcam_map"]["median_ms"]
    lines.append(
        f"  reference for (b), medians: eval forward {t['classifier_forward']['median_ms']:.1f} ms, recording "
        f"autograd {t['classifier_forward_graph']['median_ms']:.1f} (GradCAM++ here backpropagates through the head "
        f"only); forward + backward through all parameters {full:.1f} = {full / pix_map:.2f}x the PixelCAM map"
    )
    mm, gf = res["rates"], res["forward_gflop_per_image"]
    probes = ", ".join(f"{k} {v['median_gflops']:.1f}" for k, v in mm["per_probe"].items())
    lines.append(
        f"  fp32 GFLOP/s median: {probes}; matmul reference {mm['reference_median_gflops']:.1f} median, "
        f"{mm['reference_best_gflops']:.1f} best; forward GFLOP/image {gf['pixelcam']:.3f} (PixelCAM), "
        f"{gf['classifier']:.3f} (classifier)"
    )
    for name, tp in res["throughput"].items():
        lines.append(
            f"  {name:<16} {tp['images_per_s_median']:7.2f} img/s median ({tp['images_per_s_best']:.2f} best), "
            f"{tp['train_gflop_per_image']:.3f} GFLOP/image -> {tp['achieved_gflops_median']:.1f} GFLOP/s, "
            f"utilisation {100 * tp['utilisation_median']:.0f}% of matmul (best/best "
            f"{100 * tp['utilisation_best']:.0f}%), {100 * tp['utilisation_vs_fastest_probe_median']:.0f}% of the "
            "fastest probe"
        )
    for name, phases in res["timing_splits_ms"].items():
        parts = ", ".join(f"{p} {ms:.1f}" for p, ms in phases.items())
        lines.append(f"  split {name} (ms, median): {parts}")
    if res["profile_top_ops"]:
        lines.append("  top ops of the PixelCAM iteration (self CPU ms per iteration):")
        lines += [f"    {op['self_cpu_ms']:8.2f}  x{op['calls']:<4} {op['op']}" for op in res["profile_top_ops"]]
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in str(text).split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18_slim")
    parser.add_argument("--size", type=int, default=128, help="image size (square)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds of (a); (b) and (c) get twice as many")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--split-rounds", type=int, default=5, help="rounds of the timing splits")
    parser.add_argument("--paper", action="store_true", help="also resnet50 at 224 px, batch 8")
    parser.add_argument("--paper-repeats", type=int, default=3, help="timed rounds of the --paper configuration")
    parser.add_argument(
        "--threads",
        type=_int_list,
        default=[1],
        help="comma-separated torch thread counts, each measured in turn (default 1; e.g. 1,2)",
    )
    parser.add_argument("--matmul-sizes", type=_int_list, default=[512, 2048])
    parser.add_argument(
        "--probe-gflop", type=float, default=2.0 * 2048**3 / 1e9, help="GFLOP per timed call of a rate probe"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops of the PixelCAM iteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    configs = [
        {
            "encoder": args.encoder,
            "size": args.size,
            "batch": args.batch,
            **DEFAULT_SEEDING,
            "rounds": args.repeats,
            "warmup": args.warmup,
            "split_rounds": args.split_rounds,
        }
    ]
    if args.paper:
        configs.append(
            {**PAPER_CONFIG, "rounds": args.paper_repeats, "warmup": 1, "split_rounds": min(2, args.split_rounds)}
        )

    threads_before = torch.get_num_threads()
    load_start = os.getloadavg()
    start = time.perf_counter()
    results = []
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for cfg in configs:
                res = run_config(
                    cfg["encoder"],
                    cfg["size"],
                    cfg["batch"],
                    rounds=cfg["rounds"],
                    warmup=cfg["warmup"],
                    matmul_sizes=args.matmul_sizes,
                    probe_gflop=args.probe_gflop,
                    split_rounds=cfg["split_rounds"],
                    seeder=cfg["seeder"](),
                    seed_resolution=cfg["seed_resolution"],
                    device=args.device,
                    profile=args.profile,
                    seed=args.seed,
                )
                results.append(res)
                print(format_report(res), flush=True)
    finally:
        torch.set_num_threads(threads_before)
    result = {
        "configs": results,
        "targets": {name: f"{'<=' if kind == 'max' else '>='} {t}" for name, (_, _, kind, t) in TARGETS.items()},
        "meets_targets": all(r["meets_targets"] for r in results),
        "load_average_1min": [load_start[0], os.getloadavg()[0]],
        "wall_s": time.perf_counter() - start,
        "environment": {
            "torch": torch.__version__,
            "device": args.device,
            "torch_threads": args.threads,
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
