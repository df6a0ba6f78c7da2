"""benchmarks/bench_cost.py: the FLOP counter (FlopCounterMode), the alternating timer (torch.utils.benchmark.Timer),
and a tiny end-to-end run of the script."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_cost")


def test_count_flops_conv_and_linear(bench):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    flops = bench.count_flops(model, torch.rand(3, 3, 8, 8))
    conv_macs = 4 * 8 * 8 * 3 * 9 + 4 * 8 * 8 * 2 * 9  # per image: outputs x (in_channels / groups) x kernel
    assert flops["conv"] == 2 * conv_macs
    assert flops["linear"] == 2 * 2 * 4
    assert flops["total"] == flops["conv"] + flops["linear"]


def test_count_flops_includes_matrix_products_outside_linear_layers(bench):
    """A ViT's attention (q k^T, weights v) is no ``nn.Linear``: FlopCounterMode counts it, module hooks did not."""

    class Attention(nn.Module):
        def forward(self, x):  # B x N x D
            return torch.softmax(x @ x.transpose(1, 2), dim=-1) @ x

    flops = bench.count_flops(Attention(), torch.rand(2, 5, 8))
    assert flops["conv"] == 0 and flops["linear"] == 2 * (2 * 5 * 5 * 8) == flops["total"]


def test_interleaved_alternates_after_warmup(bench):
    calls = []
    fns = {name: (lambda n=name: calls.append((n, torch.get_num_threads()))) for name in ("a", "b")}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        times = bench.interleaved(fns, rounds=3, warmup=1)
    finally:
        torch.set_num_threads(threads)
    # one warm-up round, then per round and function Timer.timeit(1): two warm-up calls and the timed one
    assert [name for name, _ in calls] == ["a", "b"] + (["a"] * 3 + ["b"] * 3) * 3
    assert {n for _, n in calls} == {2}  # timed at the thread count the caller set (Timer's default is 1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t > 0 for v in times.values() for t in v)


def test_script_smoke_run_writes_json(bench, tmp_path):
    out = tmp_path / "bench_cost.json"
    threads_before = torch.get_num_threads()
    result = bench.main(
        ["--size", "32", "--batch", "2", "--repeats", "1", "--warmup", "1", "--split-rounds", "1",
         "--threads", "1", "--matmul-sizes", "64", "--probe-gflop", "0.01", "--out", str(out)]
    )  # fmt: skip
    assert torch.get_num_threads() == threads_before
    saved = json.loads(out.read_text())
    assert saved["meets_targets"] == result["meets_targets"]
    (cfg,) = saved["configs"]
    assert (cfg["encoder"], cfg["image_size"], cfg["batch_size"], cfg["torch_threads"]) == ("resnet18_slim", 32, 2, 1)
    assert set(cfg["ratios"]) == {"train", "localization", "inference"}
    for r in cfg["ratios"].values():
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("of_medians", "of_minima", "paired_median"))
        assert isinstance(r["met"], bool)
    assert cfg["forward_gflop_per_image"]["pixelcam"] >= cfg["forward_gflop_per_image"]["classifier"] > 0
    assert cfg["rates"]["matmul_reference"] == "matmul_64"
    assert cfg["throughput"]["pixelcam_step"]["utilisation_median"] > 0
    assert cfg["timing_splits_ms"]["pixelcam_step"]["seeding_alone"] > 0
    assert len(cfg["load_average"]["start"]) == 3
