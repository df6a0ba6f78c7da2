"""The GPU mixed-precision benchmark runs its whole path (bundle stages in fp32 and bf16, slide inference,
ratios to fp32) on the CPU with ``--smoke``; what it measures is for a GPU machine."""

from __future__ import annotations

import json
import tempfile

import torch

from conftest import load_benchmark


def test_smoke_run_writes_every_figure(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's datasets and bundles go
    bench = load_benchmark("bench_gpu_amp")
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--device", "cpu", "--amp", "bf16", "--channels-last-with", "fp32", "--epochs",
                       "1", "--images", "24", "--out", str(out)]) == 0
    assert not list(scratch.glob("bench_gpu_amp_*"))  # no dataset, bundle or slide is left behind
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"fp32", "bf16", "fp32+channels_last"}
    assert set(result["ratio_to_fp32"]) == {"bf16", "fp32+channels_last"}
    for run in result["runs"].values():
        assert set(run["train"]["stages"]) == set(bench.STAGES)
        assert run["train"]["stages"]["train_pixelcam"]["train_images_per_s"] > 0
        assert run["slide"]["windows"] > 0 and 0 <= run["train"]["pixelcam_test_pxap"] <= 100
    assert set(result["ratio_to_fp32"]["fp32+channels_last"]) == {
        "peak_memory", "slide_windows_per_s", "train_source_images_per_s", "train_pixelcam_images_per_s"}
    if not torch.cuda.is_available():  # without a GPU the real run says so and stops
        assert bench.main(["--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
