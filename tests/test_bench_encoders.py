"""The encoder cost benchmark runs its whole path (ResNets, a DINOv2 snapshot fine-tuned, frozen and with cached
features) on tiny sizes, and its ratios are to the ResNet50 fine-tune of the same run."""

from __future__ import annotations

import tempfile

import pytest

from conftest import load_benchmark

pytest.importorskip("transformers")


def test_smoke_run_gives_every_row(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's snapshot goes
    result = load_benchmark("bench_encoders").main(["--smoke", "--rounds", "1", "--out", str(tmp_path / "b.json")])
    assert not list(scratch.glob("vit_b_dinov2_*"))  # the snapshot is not left behind
    rows = result["rows"]
    assert list(rows) == ["resnet50 fine-tuned", "resnet18_slim fine-tuned", "resnet50 fine-tuned, channels_last",
                          "resnet18_slim fine-tuned, channels_last", "dinov2 ViT-B/16 fine-tuned",
                          "dinov2 ViT-B/16 frozen", "dinov2 ViT-B/16 frozen, features cached"]
    assert rows["resnet50 fine-tuned"]["train_ratio"] == rows["resnet50 fine-tuned"]["infer_ratio"] == 1.0
    assert all(r["train_ms_per_image"] > 0 for r in rows.values())
    assert "infer_ratio" not in rows["dinov2 ViT-B/16 frozen, features cached"]  # inference runs the encoder
    cl, plain = rows["resnet50 fine-tuned, channels_last"], rows["resnet50 fine-tuned"]
    assert cl["train_ratio_to_contiguous"] == pytest.approx(cl["train_ms_per_image"] / plain["train_ms_per_image"])
