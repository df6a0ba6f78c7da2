"""Multi-process training of the bundle (``configs/multi_gpu_train.json``) on CPU with the gloo backend.

One end-to-end run: ``torchrun --nproc_per_node=2`` of ``monai.bundle run training`` with both config files,
on tiny data; then a quick check, in two spawned processes, that validation over sharded loaders reduces to
the single-process figures and that rank-0-only steps share results and failures.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pixelcam" / "configs"
CONFIG_FILES = str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
BATCH = 4

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        "bundle_root": str(root), "source_epochs": 2, "pixelcam_epochs": 1, "val_interval": 1,
        "image_size": 56, "crop_size": 48, "batch_size": BATCH, "num_workers": 0, "tensorboard_images": 0,
        "cam_methods": "['cam']", "backend": "gloo", "device": "cpu",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "--log-dir", str(log_dir), "--redirects", "3",
        str(launcher), "run", "training", "--config_file", CONFIG_FILES,
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = _rank_logs(log_dir)
    tails = "\n".join(f"--- rank {r} ---\n{text[-3000:]}" for r, text in logs.items())
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stderr[-3000:]}\n{tails}"
    assert sorted(logs) == [0, 1]

    for rank in (0, 1):  # both ranks joined, trained both stages in DDP and finished
        assert f"rank {rank}/2: process group up (gloo, device cpu)" in logs[rank]
        assert f"rank {rank}/2: WSOLClassifier in DistributedDataParallel" in logs[rank]
        assert f"rank {rank}/2: PixelCAMNet in DistributedDataParallel" in logs[rank]
        assert f"rank {rank}: left the process group" in logs[rank]
        assert f"rank {rank}: finished" in logs[rank]
    # the synthetic data are generated once, the CAMs stored once, the evaluation run once: all by rank 0
    assert "generating synthetic glas data" in logs[0] and "generating synthetic" not in logs[1]
    assert "waiting for rank 0 to run prepare_datalist" in logs[1]
    assert "waiting for rank 0 to run store_cams" in logs[1] and "stored" not in logs[1]
    assert "test PixelCAM bloc" in logs[0] and "skipped evaluate_pipeline" in logs[1]
    assert "skipped export_model" in logs[1]
    # rank 0 alone writes checkpoints: last, B-LOC and B-CL of each stage
    assert logs[0].count("[torch.save] rank=0") >= 6
    assert "[torch.save]" not in logs[1]

    models = root / "models"
    for name in ("source_last", "source_bloc", "source_bcl", "pixelcam_last", "pixelcam_bloc", "pixelcam_bcl"):
        assert (models / f"{name}.pt").is_file(), name
    assert not [p for p in models.rglob("*") if "tmp" in p.name], "temporary files left behind"
    for stage in ("source", "pixelcam"):  # one TensorBoard writer per stage, on rank 0
        assert len(list((models / "tb" / stage).glob("events.out.tfevents.*"))) == 1, stage
    metrics = json.loads((models / "metrics.json").read_text())
    assert {"source", "pixelcam"} <= set(metrics) and "pxap" in metrics["pixelcam"]["bloc"]
    assert (models / "model.pt").is_file() and (models / "model_meta.json").is_file()

    # DistributedSampler: each rank ran half the epoch (padded shard, last partial batch dropped); the
    # checkpoint holds the unwrapped network
    n_train = len(json.loads(Path(root / "data" / "synthetic_glas" / "datalist.json").read_text())["train"])
    last = torch.load(models / "source_last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["epoch_length"] == math.ceil(n_train / 2) // BATCH
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    assert not any(k.startswith("module.") for k in last["network"])


def _sharded_worker(rank: int, port: int, datalist_path: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    from monai_pixelcam.engines import distributed as ddp

    ddp.init_distributed("cpu")
    results = {"valpx": _evaluate_valpx(datalist_path, distributed=True)}
    results["shared"] = ddp.on_rank0(lambda: ddp.get_rank() + 41)()
    try:
        ddp.on_rank0(_fail_on_rank0)()
    except Exception as e:  # rank 0 re-raises its own error, the others learn of it instead of hanging
        results["failure"] = f"{type(e).__name__}: {e}"
    ddp.leave_distributed()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def _fail_on_rank0():
    raise OSError("disk full")


def _evaluate_valpx(datalist_path: str, distributed: bool) -> dict:
    from monai_pixelcam.data import load_datalist
    from monai_pixelcam.engines import CAMInferer, build_dataloader, build_evaluator
    from monai_pixelcam.networks import build_classifier
    from monai_pixelcam.transforms import eval_transforms

    datalist = load_datalist(datalist_path)
    torch.manual_seed(0)
    network = build_classifier(encoder="resnet18_slim", head="cam", num_classes=2)
    loader = build_dataloader(datalist["valpx"], eval_transforms(image_size=48), batch_size=1, distributed=distributed)
    evaluator = build_evaluator(
        network, loader, CAMInferer("cam"), "valpx", negative_classes=datalist["negative_classes"]
    )
    evaluator.run()
    return {k: float(v) for k, v in evaluator.state.metrics.items()}


def test_sharded_validation_matches_single_process(tiny_glas, tmp_path):
    """Each rank validates its exact shard (3 and 2 of 5 images: no padding) and the metrics reduce to the
    single-process figures on every rank."""
    from monai_pixelcam.data import load_datalist

    datalist = load_datalist(tiny_glas)
    datalist["valpx"] = datalist["valpx"] + datalist["test"][:1]  # an odd count: uneven shards
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    mp.spawn(_sharded_worker, args=(_free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = _evaluate_valpx(str(path), distributed=False)
    for result in ranks:
        assert result["valpx"] == pytest.approx(reference, abs=1e-9)
        assert result["shared"] == 41
        assert result["failure"].endswith("disk full")
    assert ranks[1]["failure"].startswith("RuntimeError: rank 0 failed in _fail_on_rank0")
