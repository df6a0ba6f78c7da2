"""The MONAI bundle, model-zoo style: metadata, ConfigWorkflow for train / evaluate / inference, the ids and
command-line overrides MONAI users rely on, network verification and TorchScript export."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_BUNDLE
from monai.bundle import ConfigWorkflow
from monai.bundle.scripts import ckpt_export, verify_net_in_out
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
TRAIN = str(CONFIGS / "train.json")


def test_metadata_follows_the_bundle_specification():
    meta = json.loads(Path(META).read_text())
    jsonschema.validate(meta, json.loads((ROOT / "tests" / "data" / "bundle_meta_schema.json").read_text()))
    for tensors in meta["network_data_format"].values():
        for spec in tensors.values():
            assert len(spec["channel_def"]) == spec["num_channels"]
    # the declared input is what the exported model is fed: a whole image at the training resize
    train = json.loads(Path(TRAIN).read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [train["image_size"]] * 2
    assert "monai-pixelcam" in meta["required_packages_version"]
    assert any("2503.24135" in ref for ref in meta["references"])


def _pretty_json_problems(path: Path) -> bool:
    """What the model zoo's pre-commit hook ``pretty-format-json --indent=4 --no-sort-keys`` would rewrite."""
    text = path.read_text()
    return text != json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_configs_are_formatted_as_the_model_zoo_requires(name):
    assert not _pretty_json_problems(CONFIGS / name), f"{name}: run json.dumps(..., indent=4) on it"


def _scalars(folder: Path) -> dict[str, list]:
    files = glob.glob(str(folder / "events.out.tfevents.*"))
    assert len(files) == 1, f"one writer per run, got {files}"
    acc = EventAccumulator(files[0])
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {**scalars, **{tag: [] for tag in acc.Tags()["images"]}}


def test_train_workflow_writes_models_metrics_logs_and_figures(trained_bundle, tiny_glas):
    models = trained_bundle / "models"
    for name in ("model.pt", "model_meta.json", "metrics.json", "source_bloc.pt", "source_bcl.pt",
                 "pixelcam_bloc.pt", "pixelcam_bcl.pt", "source_last.pt", "pixelcam_last.pt",
                 "figures/pr_curves.png", "figures/maps.png"):
        assert (models / name).is_file(), name
    net = ConfigWorkflow(config_file=TRAIN, workflow_type="train").parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # strict: a plain state dict
    metrics = json.loads((models / "metrics.json").read_text())
    assert set(metrics["source"]) == {"cam", "gradcam", "gradcampp", "layercam"}
    for figures in [metrics["pixelcam"]["bloc"], metrics["pixelcam"]["bcl"], metrics["source"]["cam"]["bloc"]]:
        assert {"accuracy", "pxap", "pxap_benign", "pxap_malignant", "dice", "miou", "dice@0.5", "threshold"} <= set(
            figures
        )
    meta = json.loads((models / "model_meta.json").read_text())
    assert meta["threshold"] == metrics["pixelcam"]["bloc"]["threshold"]
    # the scale the network sees: the 64 px tiles' own mpp, resized to image_size for training (before its
    # crops), evaluation and inference
    tiles = json.loads(Path(tiny_glas).read_text())
    assert meta["mpp"] == pytest.approx(tiles["mpp"] * 64 / TINY_BUNDLE["image_size"])
    pixelcam = _scalars(models / "tb" / "pixelcam")
    assert {"loss", "loss_cls", "loss_pix", "valpx_pxap", "valcl_accuracy", "valpx/maps"} <= set(pixelcam)
    # LossTermsHandler puts the terms beside the loss they add up to (lambda_pix = 1)
    for (step, total), (_, cls), (_, pix) in zip(pixelcam["loss"], pixelcam["loss_cls"], pixelcam["loss_pix"]):
        assert total == pytest.approx(cls + pix, rel=1e-4), step
    source = _scalars(models / "tb" / "source")
    assert {"loss", "valpx_pxap", "valcl_accuracy"} <= set(source) and "loss_pix" not in source
    # val_interval 1: both stages validate every epoch
    assert [s for s, _ in source["valpx_pxap"]] == [1, 2] and [s for s, _ in pixelcam["valcl_accuracy"]] == [1, 2]


def test_evaluate_workflow_in_and_out_of_distribution(trained_bundle, tiny_glas, tmp_path):
    from monai_pixelcam.data.synthetic import synthesize

    ood = synthesize("camelyon", tmp_path / "camelyon", n_images=16, image_size=64, seed=1, progress=False)
    eval_dir = tmp_path / "eval"
    workflow = ConfigWorkflow(
        config_file=[TRAIN, str(CONFIGS / "evaluate.json")], meta_file=META, logging_file=LOGGING,
        workflow_type="eval", run_id="evaluate", bundle_root=str(trained_bundle), datalist=str(tiny_glas),
        ood_datalist=str(ood), eval_dir=str(eval_dir), **TINY_BUNDLE,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    test = json.loads((eval_dir / "metrics.json").read_text())
    trained = json.loads((trained_bundle / "models" / "metrics.json").read_text())
    # the same checkpoints and data give the same figures as the training run's own evaluation
    assert test["pixelcam"]["bloc"]["pxap"] == pytest.approx(trained["pixelcam"]["bloc"]["pxap"], abs=1e-6)
    out = json.loads((eval_dir / "ood" / "metrics.json").read_text())
    assert out["classes"] == ["normal", "tumor"]
    assert "accuracy" not in out["pixelcam"]["bloc"], "labels of another dataset give no accuracy"
    # one class with a region of interest: the pooled PxAP is the only localization figure, no per-class one
    assert set(out["pixelcam"]["bloc"]) == {"pxap", "dice", "miou", "dice@0.5", "miou@0.5", "threshold", "valpx_pxap"}
    # thresholds come from the training valpx, not from the other dataset
    assert out["pixelcam"]["bloc"]["threshold"] == test["pixelcam"]["bloc"]["threshold"]
    assert (eval_dir / "ood" / "figures" / "maps.png").is_file()


def test_inference_workflow_on_a_folder_with_bad_files(trained_bundle, tiny_glas, tmp_path):
    from monai_pixelcam.data import load_datalist

    images = tmp_path / "in"
    images.mkdir()
    for item in load_datalist(tiny_glas)["test"][:2]:
        Image.open(item["image"]).save(images / Path(item["image"]).name)
    Image.fromarray(np.full((40, 70, 3), 200, np.uint8)).save(images / "wide.jpg")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (images / "notes.txt").write_text("a text file")
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING, workflow_type="infer",
        bundle_root=str(trained_bundle), input_dir=str(images), output_dir=str(out),
    )
    workflow.initialize()
    workflow.run()
    report = workflow.parser.get_parsed_content("evaluator").state.localization
    workflow.finalize()
    assert len(report["processed"]) == 3 and list(report["failed"]) == ["corrupt.png"]
    assert "corrupt.png" in report["failed"]["corrupt.png"], "the error names the file"
    mask = np.asarray(Image.open(out / "wide_mask.png"))
    assert mask.shape == (40, 70) and set(np.unique(mask)) <= {0, 255}
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("image,")
    assert "corrupt.png" in (out / "errors.csv").read_text() and "notes.txt" in (out / "errors.csv").read_text()


def test_verify_net_in_out_and_torchscript_export(trained_bundle, tmp_path):
    infer = str(CONFIGS / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=infer)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts), ckpt_file=str(trained_bundle / "models" / "model.pt"),
        meta_file=META, config_file=infer,
    )
    exported = torch.jit.load(str(ts))
    net = ConfigWorkflow(config_file=infer, workflow_type="infer").parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained_bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net.eval()(x))


def test_standard_ids_and_properties_of_train_and_infer_workflows(tiny_glas, trained_bundle, tmp_path):
    train = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", logging_file=False, bundle_root=str(tmp_path),
        datalist=str(tiny_glas), **TINY_BUNDLE,
    )
    train.initialize()
    assert train.check_properties() == []
    for item, kind in {
        "network_def": "PixelCAMNet", "train#preprocessing": "Compose", "train#dataset": "Dataset",
        "train#trainer": "SupervisedTrainer", "validate#evaluator": "SupervisedEvaluator",
        "validate#key_metric": "dict", "train#handlers": "list", "validate#handlers": "list",
        "source#train#trainer": "SupervisedTrainer", "source#validate#evaluator": "SupervisedEvaluator",
    }.items():
        assert type(train.parser.get_parsed_content(item)).__name__ == kind, item
    untrained = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), workflow_type="infer", logging_file=False,
        model_dir=str(tmp_path / "no_models"),
    )
    untrained.initialize()
    with pytest.raises(RuntimeError) as error:  # no trained model: the cause names the folder and the fix
        untrained.check_properties()
    assert isinstance(error.value.__cause__, FileNotFoundError) and "no_models" in str(error.value.__cause__)
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), workflow_type="infer", logging_file=False,
        model_dir=str(trained_bundle / "models"),
    )
    infer.initialize()
    assert infer.check_properties() == []
    assert type(infer.parser.get_parsed_content("evaluator")).__name__ == "SupervisedEvaluator"
    with pytest.raises(RuntimeError) as error:  # nothing to localize: the cause says what to pass
        infer.run()
    assert isinstance(error.value.__cause__, ValueError) and "--input_dir" in str(error.value.__cause__)


def test_parsing_the_config_writes_no_data(tmp_path):
    """Generating or converting data is the bundle's ``initialize`` step, not a side effect of parsing: a tool that
    only parses the config (a network check, an export) writes nothing, and reading the datalist before the step
    says what to run."""
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type=None, logging_file=False, bundle_root=str(tmp_path))
    assert type(workflow.parser.get_parsed_content("network_def")).__name__ == "PixelCAMNet"
    with pytest.raises(RuntimeError) as error:
        workflow.parser.get_parsed_content("data#datalist")
    assert "run the bundle's 'initialize' first" in str(error.value.__cause__)
    assert list(tmp_path.iterdir()) == []


def test_overrides_change_handlers_augmentation_and_evaluator(tiny_glas, tmp_path):
    """Handlers, transforms and evaluators are config items: ``--id value`` on the command line changes them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    overrides = {**TINY_BUNDLE, "source_epochs": 3, "bundle_root": str(tmp_path), "datalist": str(tiny_glas)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "train_source", "--config_file", TRAIN]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    # the source stage's valpx validation every 2 epochs instead of val_interval (1), and no colour jitter
    cmd += ["--valpx_interval", "2", "--color_augment", "False"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = _scalars(tmp_path / "models" / "tb" / "source")
    assert [s for s, _ in source["valpx_pxap"]] == [2, 3]  # every 2 epochs, plus the last one
    assert [s for s, _ in source["valcl_accuracy"]] == [1, 2, 3]  # the other validator kept val_interval

    def parsed(item, **kw):
        workflow = ConfigWorkflow(config_file=TRAIN, workflow_type=None, logging_file=False, **{**overrides, **kw})
        workflow.initialize()  # prepares the datalist the evaluators read (parsing alone writes nothing)
        return workflow.parser.get_parsed_content(item)

    names = lambda chain: [type(t).__name__ for t in chain.transforms]  # noqa: E731
    assert "RandColorJitterd" in names(parsed("train#preprocessing"))
    assert "RandColorJitterd" not in names(parsed("train#preprocessing", color_augment=False))
    # the model zoo overrides one transform of a chain by its list position: found by type, not hard-coded
    raw = json.loads(Path(TRAIN).read_text())["train"]["preprocessing"]["transforms"]
    at = next(i for i, t in enumerate(raw) if isinstance(t, dict) and t["_target_"] == "RandFlipd")
    flip = parsed(f"train#preprocessing#transforms#{at}", **{f"train#preprocessing#transforms#{at}#prob": 1.0})
    assert type(flip).__name__ == "RandFlipd" and flip.prob == 1.0
    inferer = parsed("source#validate#evaluator", **{"source#validate#inferer#method": "gradcampp"}).inferer
    assert inferer.method == "gradcampp"


@pytest.mark.parametrize("stage", ["", "source#"])
def test_handlers_are_referenced_by_id_so_inserting_one_changes_nothing(stage, tiny_glas, tmp_path):
    """Config items refer to handlers by id, never by list position: a handler inserted first in a stage's
    ``validate#handlers`` and ``validate#valcl#handlers`` (by override, as a user would) leaves the resume
    checkpoint saving the B-LOC selector and the BCL saver; the handlers that only rank 0 may run say so
    themselves, so ``multi_gpu_train.json`` names no list position."""
    raw = json.loads(Path(TRAIN).read_text())
    for name in ("train.json", "multi_gpu_train.json", "evaluate.json", "inference.json"):
        assert not re.search(r"handlers#\d", (CONFIGS / name).read_text()), name
    section = raw["source"] if stage else raw
    inserted = {"_target_": "StatsHandler", "iteration_log": False, "name": "inserted"}
    overrides = {
        f"{stage}validate#handlers": [inserted, *section["validate"]["handlers"]],
        f"{stage}validate#valcl#handlers": [inserted, *section["validate"]["valcl"]["handlers"]],
    }
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type=None, logging_file=False, bundle_root=str(tmp_path), datalist=str(tiny_glas),
        **TINY_BUNDLE, **overrides,
    )  # fmt: skip
    workflow.initialize()
    parser = workflow.parser
    handlers = parser.get_parsed_content(f"{stage}train#handlers")
    resume = next(h for h in handlers if type(h).__name__ == "ResumeCheckpoint")
    assert resume.save_dict["bloc_selector"] is parser.get_parsed_content(f"{stage}validate#bloc_selector")
    bcl_saver = parser.get_parsed_content(f"{stage}validate#valcl#bcl_saver")
    assert type(bcl_saver).__name__ == "AtomicCheckpointSaver" and resume.save_dict["bcl_saver"] is bcl_saver
    valcl = parser.get_parsed_content(f"{stage}validate#valcl#handlers")
    assert type(valcl[0]).__name__ == "StatsHandler" and valcl[0].name == "inserted" and bcl_saver in valcl
    # the handlers that write logs switch themselves off on ranks > 0: multi_gpu_train.json needs no position
    writers = ("TensorBoardStatsHandler", "monai_pixelcam.handlers.TensorBoardMapHandler",
               "monai_pixelcam.handlers.ProgressBarHandler")  # fmt: skip
    rank_zero = "$torch.distributed.is_initialized() and torch.distributed.get_rank() > 0"
    for engine in (f"{stage}train", f"{stage}validate", f"{stage}validate#valcl"):
        for handler in parser[f"{engine}#handlers"]:
            if isinstance(handler, dict) and handler["_target_"] in writers:
                assert handler["_disabled_"] == rank_zero, (engine, handler["_target_"])


def test_the_bundle_training_chain_moves_image_and_cam_with_one_draw():
    """The PixelCAM stage's own ``train#preprocessing`` (not a copy of it): every transform that moves pixels lists
    the image and the CAM together, so one random draw moves both, and the stored CAM, from which the pixel
    seeds are drawn, stays on the augmented image; colour and noise transforms touch the image only."""
    from monai.transforms import Compose, Randomizable
    from test_transforms import blocky_item

    from monai_pixelcam.transforms import NetworkInputd

    item = blocky_item()  # 32 x 32: mask = red > 0.5 and cam = green, exactly, under any shared draw
    overrides = {"image_size": 32, "crop_size": 24}
    parser = ConfigWorkflow(config_file=TRAIN, workflow_type=None, logging_file=False, **overrides).parser
    chain = parser.get_parsed_content("train#preprocessing").transforms
    moves = [t for t in chain if isinstance(t, NetworkInputd) or {"image", "cam"} <= set(getattr(t, "keys", ()))]
    assert {"NetworkInputd", "RandSpatialCropd", "RandFlipd", "RandRotate90d"} <= {type(t).__name__ for t in moves}
    for t in chain:
        if isinstance(t, Randomizable) and t not in moves:
            assert tuple(t.keys) == ("image",), type(t).__name__
    # the README's one positional override (a list item has no id) lands on the transform it names
    docs = (CONFIGS.parent / "docs" / "README.md").read_text()
    documented = re.findall(r"--train#preprocessing#transforms#(\d+)#(\w+) ", docs)
    assert documented
    for at, arg in documented:
        raw = parser[f"train#preprocessing#transforms#{at}"]
        assert raw["_target_"].endswith("RandColorJitterd") and arg in raw, (at, arg, raw)
    spatial = Compose(moves)
    seen = set()
    for seed in range(12):
        out = spatial.set_random_state(seed)(dict(item))
        img, cam = out["image"], out["cam"]
        assert img.shape == (3, 24, 24) and cam.shape == (1, 24, 24)
        assert torch.allclose(cam, img[1:2], atol=1e-6)
        seen.add(tuple(img[0, 0, :4].tolist()) + tuple(img[0, :4, 0].tolist()))
    assert len(seen) > 4  # the draws differ between seeds


def test_num_workers_do_not_change_the_results(trained_bundle, tiny_glas, tmp_path):
    """The same command and seed give the same metrics.json with 2 data-loading worker processes as the shared
    bundle's single-process run: every augmentation draw depends on (seed, epoch, item), not on the worker."""
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", logging_file=False, bundle_root=str(tmp_path),
        datalist=str(tiny_glas), **{**TINY_BUNDLE, "num_workers": 2},
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()

    def leaves(tree, path=""):
        if isinstance(tree, dict):
            return [leaf for k, v in tree.items() for leaf in leaves(v, f"{path}/{k}")]
        if isinstance(tree, list):
            return [leaf for i, v in enumerate(tree) for leaf in leaves(v, f"{path}/{i}")]
        return [(path, tree)]

    single = leaves(json.loads((trained_bundle / "models" / "metrics.json").read_text()))
    workers = leaves(json.loads((tmp_path / "models" / "metrics.json").read_text()))
    assert [k for k, _ in single] == [k for k, _ in workers]
    for (key, a), (_, b) in zip(single, workers):
        # float32 sums of the same values in the same order: equal, up to the last printed digit at most
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9) if isinstance(a, float) else a == b, (key, a, b)


def test_evaluate_a_labelled_set_with_test_only_or_its_own_valpx(trained_bundle, tiny_glas, tmp_path, caplog):
    """A user's own annotated tiles: a datalist with only ``test`` (thresholds from the bundle's valpx), or with
    ``test`` and a ``valpx`` of its own (used unless it shares images with test)."""
    from monai_pixelcam.data import load_datalist

    items = load_datalist(tiny_glas)
    head = {"classes": items["classes"], "negative_classes": items["negative_classes"]}
    sets = {
        "only_test": {**head, "test": items["test"]},
        "shared_valpx": {**head, "valpx": items["test"][:3], "test": items["test"]},
        "own_valpx": {**head, "valpx": [it for it in items["train"] if it["mask"]][:4], "test": items["test"]},
    }
    results = {}
    for name, content in sets.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        eval_dir = tmp_path / name
        workflow = ConfigWorkflow(
            config_file=[TRAIN, str(CONFIGS / "evaluate.json")], workflow_type=None, logging_file=False,
            bundle_root=str(trained_bundle), datalist=str(tiny_glas), ood_datalist=str(path),
            eval_dir=str(eval_dir), cam_methods=["cam"], **TINY_BUNDLE,
        )
        workflow.initialize()
        caplog.clear()
        with caplog.at_level("INFO"):
            workflow.parser.get_parsed_content("ood_evaluation")()
        results[name] = (json.loads((eval_dir / "ood" / "metrics.json").read_text()), caplog.text)
    trained = json.loads((trained_bundle / "models" / "metrics.json").read_text())
    bundle_threshold = trained["pixelcam"]["bloc"]["threshold"]
    only_test, _ = results["only_test"]
    assert only_test["pixelcam"]["bloc"]["threshold"] == bundle_threshold
    # the same classes: accuracy and per-class figures, equal to the bundle's own test evaluation
    assert only_test["pixelcam"]["bloc"]["pxap"] == pytest.approx(trained["pixelcam"]["bloc"]["pxap"], abs=1e-6)
    assert only_test["pixelcam"]["bloc"]["accuracy"] == trained["pixelcam"]["bloc"]["accuracy"]
    shared, log = results["shared_valpx"]
    assert "also test images" in log and shared["pixelcam"]["bloc"]["threshold"] == bundle_threshold
    _, log = results["own_valpx"]
    assert "thresholds chosen on its own valpx (4 images)" in log


def test_no_bundle_file_over_the_model_zoos_size_limit():
    """The model zoo's pre-commit hook refuses files over 1024 KB (weights travel as large files)."""
    tracked = subprocess.run(
        ["git", "ls-files", "bundles/pixelcam"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "the bundle's files are tracked by git"
    sizes = {name: (ROOT / name).stat().st_size // 1024 for name in tracked if (ROOT / name).is_file()}
    assert {name: kb for name, kb in sizes.items() if kb > 1024} == {}


def test_options_precise_bn_oracle_seed_maps_and_positive_evidence_head(tiny_glas, tmp_path):
    """The issue-10 switches are config items: BatchNorm statistics recomputed before the source validators,
    seeds drawn from the ground-truth masks (the ceiling), the positive-evidence head with its one-vs-rest loss."""
    from monai_pixelcam.cams import CAMStore

    overrides = {
        **TINY_BUNDLE, "source_epochs": 1, "pixelcam_epochs": 1, "precise_bn": True, "seed_maps": "oracle",
        "head": "positive_evidence", "classification_loss#_target_": "monai_pixelcam.losses.OneVsRestLoss",
    }
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type=None, logging_file=False, bundle_root=str(tmp_path),
        datalist=str(tiny_glas), **overrides,
    )
    workflow.initialize()
    for step in ("train_source", "store_cams", "train_pixelcam"):
        workflow.parser.get_parsed_content(step)
    network = workflow.parser.get_parsed_content("network_def")
    assert type(network.image_head).__name__ == "PositiveEvidenceHead"
    assert type(workflow.parser.get_parsed_content("loss").classification_loss).__name__ == "OneVsRestLoss"
    precise_bn = workflow.parser.get_parsed_content("source#precise_bn")
    for validator in ("source#validate#evaluator", "source#validate#valcl#evaluator"):
        assert workflow.parser.get_parsed_content(validator).has_event_handler(precise_bn)
    models = tmp_path / "models"
    store = CAMStore.open(models / "cams", checkpoint_path=models / "source_bloc.pt", method="oracle")
    assert len(store.ids) == len(json.loads(Path(tiny_glas).read_text())["train"])
    assert (models / "pixelcam_bloc.pt").is_file()


def test_a_failed_run_ends_with_its_reason(tmp_path):
    """``python -m monai.bundle run`` with a datalist that does not exist: the last line the user reads names
    the file (the bundle's initialize installs monai_pixelcam.errors.report_root_cause), not MONAI's
    ``RuntimeError: Failed to evaluate ConfigExpression`` around it."""
    missing = tmp_path / "no_such_datalist.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(tmp_path / "run"), "--datalist", str(missing)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parents[2])}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last == f"monai-pixelcam: the run failed: DatalistError: {missing}: datalist file not found", last
    assert "Failed to evaluate ConfigExpression" in proc.stderr  # the traceback itself is still there


@pytest.mark.parametrize("stain_normalize", [True, False])
def test_the_exported_model_sees_what_validation_saw(tiny_glas, tmp_path, stain_normalize):
    """One input definition from training to every consumer: the network input the bundle validates and
    evaluates on (``validate#preprocessing``) equals, within float noise, the input the exported model folder's
    predictor prepares (folder, slide and MONAI Label inference all go through it), for non-default
    ``crop_size`` and ``stain_normalize`` (read back from ``model_meta.json``, not passed along); both are the
    whole image at the training resize. ``test_round_trip.py`` follows one image to the maps."""
    from monai_pixelcam.data import load_datalist
    from monai_pixelcam.data.io import read_rgb
    from monai_pixelcam.inference import PixelCAMPredictor

    checkpoint = tmp_path / "pixelcam_bloc.pt"
    overrides = {**TINY_BUNDLE, "crop_size": 40, "stain_normalize": stain_normalize}
    overrides.update({"exporter#checkpoint": str(checkpoint), "exporter#threshold": 0.5})
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type=None, logging_file=False,
        bundle_root=str(tmp_path), datalist=str(tiny_glas), **overrides,
    )  # fmt: skip
    workflow.initialize()
    parser = workflow.parser
    torch.save(parser.get_parsed_content("network_def").state_dict(), checkpoint)
    parser.get_parsed_content("exporter")()
    predictor = PixelCAMPredictor.from_model_dir(tmp_path / "models", device="cpu")
    chain = parser.get_parsed_content("validate#preprocessing")
    for item in load_datalist(tiny_glas)["test"][:3]:
        seen_by_validation = chain(dict(item))["image"].float()
        rgb = torch.tensor(read_rgb(item["image"])).permute(2, 0, 1).float() / 255.0
        seen_by_inference = predictor.prepare(rgb)
        side = TINY_BUNDLE["image_size"]  # the whole image at the training resize, not the crop
        assert seen_by_inference.shape == seen_by_validation.shape == (3, side, side)
        torch.testing.assert_close(seen_by_inference, torch.as_tensor(seen_by_validation), atol=1e-5, rtol=0)
