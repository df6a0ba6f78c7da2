"""Multi-process training of the bundle (``configs/multi_gpu_train.json``) on CPU with the gloo backend.

One end-to-end run: ``torchrun --nproc_per_node=2`` of ``monai.bundle run training`` with both config files,
on tiny data; then a check, in two spawned processes, that validation over sharded loaders reduces to the
single-process figures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CONFIGS, TINY_BUNDLE

# Imported here, not in the spawned workers after init_process_group: importing ignite or MONAI pulls in
# torch.distributed.nn.functional, whose functions take ``group=group.WORLD`` as a default argument. Imported while
# a process group exists, those defaults hold the default group for good, so destroy_process_group cannot free it:
# its gloo threads (and rank 0's TCPStore server) then live on into interpreter teardown, where a rank can abort
# with "terminate called without an active exception". Imported first (the spawned workers import this module
# before they run), the defaults are None.
from monai.data import DataLoader, Dataset, DistributedSampler

from monai_pixelcam.data import load_datalist
from monai_pixelcam.engines import CAMInferer, localization_evaluator, roi_transform
from monai_pixelcam.metrics import PxAP
from monai_pixelcam.networks import build_classifier
from monai_pixelcam.transforms import eval_transforms

CONFIG_FILES = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

# Runs monai.bundle exactly as `-m monai.bundle` would, with torch.save reporting which rank calls it.
AUDITED_BUNDLE = """
import os, runpy, sys, torch
_save = torch.save
def _audited_save(obj, f, *args, **kwargs):
    print(f"[torch.save] rank={os.environ['RANK']}", file=sys.stderr, flush=True)
    return _save(obj, f, *args, **kwargs)
torch.save = _audited_save
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """stdout + stderr of each rank, as torchrun's ``--log-dir`` / ``--redirects`` wrote them."""
    logs = {}
    for rank_dir in sorted(log_dir.glob("*/attempt_*/*")):
        text = "".join((rank_dir / f).read_text(errors="replace") for f in ("stdout.log", "stderr.log"))
        logs[int(rank_dir.name)] = text
    return logs


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(tmp_path):
    root, log_dir = tmp_path / "bundle", tmp_path / "logs"
    launcher = tmp_path / "audited_bundle.py"
    launcher.write_text(AUDITED_BUNDLE)
    overrides = {
        **TINY_BUNDLE, "bundle_root": str(root), "source_epochs": 2, "pixelcam_epochs": 1, "batch_size": 4,
        "tensorboard_images": 0, "cam_methods": "['cam']", "backend": "gloo",
    }
    cmd = [
        # --standalone: a c10d rendezvous on localhost:0, a port the OS gives torchrun's store while bound (a port
        # found free beforehand can be taken by another process before the store binds it)
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--log-dir", str(log_dir), "--redirects", "3",
        str(launcher), "run", "training", "--config_file", CONFIG_FILES,
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parents[2])}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = _rank_logs(log_dir)
    tails = "\n".join(f"--- rank {r} ---\n{text[-3000:]}" for r, text in logs.items())
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stderr[-3000:]}\n{tails}"
    assert sorted(logs) == [0, 1]

    # the synthetic data are generated once and the CAMs stored once, by rank 0
    assert "generating synthetic glas data" in logs[0] and "generating synthetic" not in logs[1]
    assert "stored" in logs[0] and "stored" not in logs[1]
    # both ranks evaluate their shard of test (the metrics reduce); rank 0 alone writes checkpoints, metrics,
    # the exported model and TensorBoard logs
    assert logs[0].count("[torch.save] rank=0") >= 7  # last, B-LOC, B-CL of each stage, model.pt
    assert "[torch.save]" not in logs[1]
    models = root / "models"
    for name in ("source_last", "source_bloc", "source_bcl", "pixelcam_last", "pixelcam_bloc", "pixelcam_bcl"):
        assert (models / f"{name}.pt").is_file(), name
    for stage in ("source", "pixelcam"):  # one TensorBoard writer per stage, on rank 0
        assert len(list((models / "tb" / stage).glob("events.out.tfevents.*"))) == 1, stage
    assert len(list(models.rglob("events.out.tfevents.*"))) == 2
    metrics = json.loads((models / "metrics.json").read_text())
    assert {"source", "pixelcam"} <= set(metrics) and "pxap" in metrics["pixelcam"]["bloc"]
    assert (models / "model.pt").is_file() and (models / "model_meta.json").is_file()

    # DistributedSampler: each rank ran half the epoch (padded shard, last partial batch dropped); the
    # checkpoint holds the unwrapped network
    n_train = len(json.loads(Path(root / "data" / "synthetic_glas" / "datalist.json").read_text())["train"])
    last = torch.load(models / "source_last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["epoch_length"] == math.ceil(n_train / 2) // 4
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    assert not any(k.startswith("module.") for k in last["network"])


def _valpx_figures(datalist_path: str, distributed: bool) -> dict:
    """PxAP, accuracy and the pooled score histogram of a fixed random source model's CAM on valpx, over a
    sharded loader when ``distributed`` (the metrics reduce over the ranks)."""
    torch.manual_seed(0)
    network = build_classifier("resnet18", "cam", 2, base_width=8).eval()
    dataset = Dataset(load_datalist(datalist_path)["valpx"], eval_transforms(48))
    sampler = DistributedSampler(dataset, even_divisible=False, shuffle=False) if distributed else None
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    pxap = PxAP(output_transform=roi_transform([]))
    evaluator = localization_evaluator(network, loader, CAMInferer("cam"), "valpx", pxap=pxap)
    evaluator.run()
    return {
        "pxap": float(evaluator.state.metrics["valpx_pxap"]),
        "accuracy": float(evaluator.state.metrics["valpx_accuracy"]),
        "histogram": pxap.metric_fn.histogram().tolist(),
        "items": len(loader.dataset) if sampler is None else len(sampler),
    }


def _sharded_worker(rank: int, init_method: str, datalist_path: str, out_dir: str) -> None:
    """One rank of the sharded validation: rendezvous through a file (no port to collide on), validate, write the
    figures, and leave together: a barrier, so that neither rank tears down its group while the other still
    communicates, then the group destroyed, also when validation fails (mp.spawn then ends the other rank)."""
    os.environ["LOCAL_RANK"] = str(rank)  # ignite reads it instead of guessing the local rank from host names
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2, timeout=timedelta(minutes=5))
    try:
        figures = _valpx_figures(datalist_path, distributed=True)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(figures))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sharded_validation_matches_single_process(tiny_glas, tmp_path):
    """Each rank validates its exact shard (3 and 2 of 5 images: no padding) and the metrics reduce to the
    single-process figures on every rank.

    The two runs push different batches through the network (2+1 and 2 images per rank against 2+2+1), and
    convolution results depend on the batch at the 1e-7 level, so a score lying that close to one of the
    histogram's 0.001-wide bin edges may land in the neighbouring bin. What is invariant: the pixel counts
    (per class, in total) and the accuracy. The histograms may differ only by such one-bin moves, and each
    pixel moved one bin changes PxAP by at most 2 / (positive pixels): one recall step and one precision step.
    """
    from monai_pixelcam.data import load_datalist

    datalist = load_datalist(tiny_glas)
    datalist["valpx"] = datalist["valpx"] + datalist["test"][:1]  # an odd count: uneven shards
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    rendezvous = (tmp_path / "rendezvous").as_uri()  # a FileStore: file:///... in this test's own directory
    mp.spawn(_sharded_worker, args=(rendezvous, str(path), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = _valpx_figures(str(path), distributed=False)
    assert sorted(r["items"] for r in ranks) == [2, 3] and reference["items"] == 5
    ref_hist = np.asarray(reference["histogram"])
    positives = ref_hist[1].sum()
    for result in ranks:
        hist = np.asarray(result["histogram"])
        assert result["accuracy"] == reference["accuracy"]
        assert np.array_equal(hist.sum(axis=1), ref_hist.sum(axis=1)), "every pixel is counted once"
        # a one-bin move changes two neighbouring bins by one count each: cumulative counts differ by at most
        # the number of moved pixels, which must be a tiny share of the pixels
        moved = int(np.abs(np.cumsum(hist - ref_hist, axis=1)).sum())
        assert moved <= 1e-3 * ref_hist.sum()
        assert result["pxap"] == pytest.approx(reference["pxap"], abs=2 * moved / positives + 1e-12)
