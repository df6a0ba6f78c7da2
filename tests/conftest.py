"""Shared fixtures: one tiny synthetic GlaS-like dataset per test session (24 images of 64 x 64), and one
bundle trained end to end on it through ``ConfigWorkflow``, which every test that only needs a trained bundle
shares (evaluation, inference, export, the CAM store, the seed-precision and cost scripts).

The tests that train again do so because training is what they check, each on the same tiny set: the stage
steps one by one with other options (``test_options_...``), a command-line override (``train_source``), 2 data
workers against the shared bundle, a killed and resumed run (``test_engines.py``), the input definition with
non-default settings (``test_round_trip.py``), the two-process run (``test_bundle_ddp.py``), the MONAI Label
train task and server (tiles and slide annotations), a foundation-model snapshot encoder
(``test_foundation_bundle.py``), a bf16 run (``test_precision.py``), the GPU benchmark's CPU smoke run, and, on a
larger set of its own, that training learns (``test_learning.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pixelcam" / "configs"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Why the MONAI Label tests are skipped when it is missing (``pytest.importorskip(..., reason=...)``).
MONAILABEL_MISSING = (
    "monailabel is not installed: pip install -e .[label] && pip install --no-deps monailabel==0.8.5 "
    "pydicom-seg==0.4.1 (see README, MONAI Label)"
)
#: Bundle overrides that make a whole run take seconds on a CPU.
TINY_BUNDLE = dict(
    source_epochs=2, pixelcam_epochs=2, image_size=56, crop_size=48, batch_size=8, num_workers=0, val_interval=1,
    tensorboard_images=2,
)


@pytest.fixture(scope="session")
def tiny_glas(tmp_path_factory):
    """Path of the datalist JSON of 24 synthetic 64 x 64 glas images (written once per session)."""
    from monai_pixelcam.data.synthetic import synthesize

    return synthesize("glas", tmp_path_factory.mktemp("tiny_glas"), n_images=24, image_size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, tiny_glas):
    """A bundle root trained end to end (``training``: source, CAMs, PixelCAM, evaluation, export) on
    ``tiny_glas`` through ``ConfigWorkflow``; ``models/`` holds its checkpoints, metrics, figures and logs.
    Tests must not modify it."""
    from monai.bundle import ConfigWorkflow

    root = tmp_path_factory.mktemp("bundle")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", bundle_root=str(root),
        datalist=str(tiny_glas), **TINY_BUNDLE,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests, restored after: for tiny networks a second thread brings
    nothing, and on a busy 2-core machine (the suite runs beside other jobs) the threads' synchronisation made
    one 64 x 64 forward ~1 s, not ~2 ms. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_store(root, model, items, method, checkpoint, batch_size=8, dtype="float16", **kwargs):
    """A CAM store of ``items`` (a list of dicts or a DataLoader) the way the bundle builds one:
    ``prepare_seed_maps`` (``kwargs``), then ``CAMStore.build``."""
    from monai.data import DataLoader

    from monai_pixelcam.cams import CAMStore, prepare_seed_maps

    loader = items if isinstance(items, DataLoader) else DataLoader(items, batch_size=batch_size)
    maps = prepare_seed_maps(method, model, loader, **kwargs)
    return CAMStore(root).build(maps, loader, checkpoint, dtype=dtype)


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py``. The benchmarks are scripts, not a package: run from their folder
    they import each other, so that folder goes on the path here too."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
