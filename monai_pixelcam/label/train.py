"""Train task ``pixelcam``: retrain PixelCAM from the datastore's image-level labels with the bundle's engine.

The annotator gives each image a class (image info ``label``: a class name or index, e.g. ``PUT
/datastore/image/info?image=ID`` with ``info={"label": "malignant"}``) and draws a full mask (label tag
``final``) for a few images. One train job then:

1. builds a datalist (the ``monai_pixelcam.data`` convention) from the datastore: images with a final mask
   become ``valpx`` (threshold and B-LOC selection) and ``test``; the other labelled images become
   ``train`` and ``valcl`` (:func:`build_datalist`);
2. runs the stages of the bundle's ``configs/train.json`` with ``monai.bundle.ConfigWorkflow`` into a new
   run folder ``<bundle_dir>/models/label_runs/<time>-<mode>/`` (checkpoints, stored CAMs, TensorBoard logs
   under ``tb/``, ``metrics.json``, figures). Mode ``full`` runs every stage (``train_source``,
   ``store_cams``, ``train_pixelcam``, ``evaluate``, ``export``); mode ``finetune`` starts from the
   published model instead of training a new source classifier: its encoder and image head are the source
   model whose CAMs seed a new PixelCAM training (:func:`source_checkpoint_from_model`);
3. publishes the run's ``model.pt`` and ``model_meta.json`` into ``<bundle_dir>/models`` with ``os.replace``
   (:func:`publish_model`); the infer task loads them on its next request.

Why not ``BasicTrainTask`` or ``BundleTrainTask``: both drive one Ignite trainer on (image, label mask)
pairs (``datastore.datalist()``, ``train#trainer``/``train#dataset#data``). PixelCAM learns from image-level
labels through a multi-stage pipeline that the bundle already wires; re-wiring it in Python would be a second
copy of the engine. This task therefore implements MONAI Label's ``TrainTask`` and runs the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import name_to_device

from ..atomic import write_json_atomic
from ..data.annotations import ANNOTATION_SUFFIXES, Polygon, read_annotations
from ..data.datalist import DatalistError, make_splits, save_datalist
from ..data.slide_regions import classify_annotations, cut_region_tiles
from ..export import META_FILE, MODEL_FILE, publish_model, source_checkpoint_from_model
from ..errors import root_cause
from ..transforms.array import NetworkInput
from .train_options import check_train_request

__all__ = [
    "STAGES",
    "TRAIN_CONFIG",
    "RUNS_DIR",
    "STATS_FILE",
    "parse_label",
    "resolve_classes",
    "datastore_items",
    "slide_annotations",
    "annotation_classes",
    "is_annotation",
    "split_items",
    "build_datalist",
    "TrainError",
    "PixelCAMTrainTask",
]

logger = logging.getLogger(__name__)

#: Bundle stages (config ids of ``configs/train.json``) run by each mode, in order.
STAGES = {
    "full": ("train_source", "store_cams", "train_pixelcam", "evaluate", "export"),
    "finetune": ("store_cams", "train_pixelcam", "evaluate", "export"),
}
TRAIN_CONFIG = Path("configs") / "train.json"
#: Run folders live under ``<bundle_dir>/models/<RUNS_DIR>``; the last finished run is summarised in STATS_FILE.
RUNS_DIR = "label_runs"
STATS_FILE = "label_train_stats.json"
# options of a train request that map to bundle config ids of the same name (int, >= 1 unless noted)
_BUNDLE_INT_OPTIONS = ("source_epochs", "pixelcam_epochs", "image_size", "crop_size", "batch_size", "val_interval")
_SOURCE_SELECTIONS = ("bloc", "bcl")


# --- datastore -> datalist -----------------------------------------------------------------------------
def parse_label(value: Any, classes: Sequence[str]) -> int:
    """An image-level label as given by an annotator -> class index.

    Args:
        value: a class name (matched after stripping, case-insensitively) or an index (int or digit string).
        classes: the class names, in label order.

    Raises:
        ValueError: unknown name or index out of range (the message lists the classes).
    """
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is neither a class name nor an index of {list(classes)}")
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(classes):
            return index
        raise ValueError(f"label index {index} is outside 0..{len(classes) - 1} ({list(classes)})")
    if isinstance(value, str):
        lowered = [c.lower() for c in classes]
        if value.strip().lower() in lowered:
            return lowered.index(value.strip().lower())
    raise ValueError(f"label {value!r} is neither a class name nor an index of {list(classes)}")


def resolve_classes(configured: Sequence[str], published: Sequence[str], raw_labels: Sequence[Any]) -> list[str]:
    """Class names for training: the app's ``classes`` setting, else the published model's, else the distinct
    label names found in the datastore (sorted, so the order does not depend on the datastore's order).

    Raises:
        DatalistError: none configured or published and the datastore's labels are indices (no names).
    """
    if configured:
        return [str(c) for c in configured]
    if published:
        return [str(c) for c in published]
    names = {str(v).strip() for v in raw_labels}
    if not names or any(isinstance(v, (int, np.integer)) or str(v).strip().isdigit() for v in raw_labels):
        raise DatalistError(
            "the class names are unknown: start the server with --conf classes 'name0,name1,...' "
            "(no trained model is published, and the datastore's labels are indices, not names)"
        )
    return sorted(names)


def _final_label(datastore: Datastore, image_id: str, mask_tag: str) -> str | None:
    label_id = datastore.get_label_by_image_id(image_id, mask_tag)
    return (datastore.get_label_uri(label_id, mask_tag) or None) if label_id else None


def is_annotation(label: str | None) -> bool:
    """Whether a label file is polygon annotations (ASAP XML, DSA JSON, GeoJSON) rather than a mask image."""
    return bool(label) and "".join(Path(label).suffixes).lower().endswith(ANNOTATION_SUFFIXES)


def datastore_items(
    datastore: Datastore,
    classes: Sequence[str],
    label_key: str = "label",
    mask_tag: str = DefaultLabelTag.FINAL,
    slide_tiles: Callable[[str, str, str], list[dict]] | None = None,
) -> tuple[list[dict], list[str]]:
    """Datalist items ``{"image", "mask", "label", "id"}`` of every datastore image with an image-level label,
    and the tiles of every slide whose label of tag ``mask_tag`` is polygon annotations.

    ``mask`` is the path of the image's label of tag ``mask_tag`` (None when it has none). A slide annotated
    with polygons gives ``slide_tiles(image_id, slide_path, annotation_path)`` (its class regions' tiles; see
    :mod:`monai_pixelcam.data.slide_regions`) instead of one item.

    Returns:
        ``(items, unlabelled_ids)``.

    Raises:
        DatalistError: one line per image whose label cannot be read, or per bad annotation.
    """
    items, unlabelled, problems = [], [], []
    for image_id in sorted(datastore.list_images()):
        mask = _final_label(datastore, image_id, mask_tag)
        if is_annotation(mask):
            if slide_tiles is None:
                problems.append(f"image {image_id!r}: its label is polygon annotations, which this job cannot read")
                continue
            try:
                items.extend(slide_tiles(image_id, datastore.get_image_uri(image_id), mask))
            except DatalistError as e:
                problems.extend(f"image {image_id!r}: {p}" for p in e.problems)
            continue
        info = datastore.get_image_info(image_id) or {}
        raw = info.get(label_key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            unlabelled.append(image_id)
            continue
        try:
            label = parse_label(raw, classes)
        except ValueError as e:
            problems.append(f"image {image_id!r}: {e}")
            continue
        items.append({"image": datastore.get_image_uri(image_id), "mask": mask, "label": label, "id": image_id})
    if problems:
        raise DatalistError(problems)
    return items, unlabelled


def slide_annotations(
    datastore: Datastore, mask_tag: str = DefaultLabelTag.FINAL
) -> dict[str, list[Polygon]]:
    """``{image_id: polygons}`` of every datastore image whose label of tag ``mask_tag`` is polygon annotations,
    each file read once (a job needs them twice: their class names, then their tiles).

    Raises:
        DatalistError: an annotation file that cannot be read (named by its image).
    """
    return {
        image_id: read_annotations(label, name=f"label of image {image_id!r}")
        for image_id in sorted(datastore.list_images())
        if is_annotation(label := _final_label(datastore, image_id, mask_tag))
    }


def annotation_classes(annotations: Mapping[str, Sequence[Polygon]], roi_labels: Sequence[str]) -> list[str]:
    """The group names of slide ``annotations`` (:func:`slide_annotations`) that are not region-of-interest
    labels: the class names the annotators used (for :func:`resolve_classes` when no class is configured or
    published)."""
    roi = {r.lower() for r in roi_labels}
    return sorted({p.group.strip() for polygons in annotations.values() for p in polygons
                   if p.group.strip().lower() not in roi})


def split_items(
    items: Sequence[dict],
    classes: Sequence[str],
    valcl_fraction: float = 0.2,
    valpx_per_class: int = 2,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Split datastore items: those with a mask -> ``valpx`` (up to ``valpx_per_class`` per class, at most
    half of the class's masked images) and ``test``; the others -> ``train`` and ``valcl`` (stratified,
    :func:`monai_pixelcam.data.make_splits`). Masked images are kept out of training so that the threshold
    and the reported localization figures are measured on images the model did not learn from.

    Raises:
        DatalistError: fewer than 2 masked images, an empty ``train`` or ``valcl``, or ``train`` with fewer
            than two classes (every problem listed).
    """
    rng = np.random.default_rng(seed)
    masked = defaultdict(list)
    for it in sorted((it for it in items if it.get("mask")), key=lambda d: d["id"]):
        masked[int(it["label"])].append(it)
    out: dict[str, list[dict]] = {"valpx": [], "test": []}
    for label in sorted(masked):
        group = [masked[label][i] for i in rng.permutation(len(masked[label]))]
        n_px = min(int(valpx_per_class), (len(group) + 1) // 2)
        out["valpx"].extend(group[:n_px])
        out["test"].extend(group[n_px:])
    if not out["test"] and len(out["valpx"]) > 1:
        out["test"].append(out["valpx"].pop())
    weak = make_splits(
        [it for it in items if not it.get("mask")], [], valcl_fraction=valcl_fraction, valpx_per_class=0, seed=seed
    )
    out["train"], out["valcl"] = weak["train"], weak["valcl"]
    problems = []
    n_masked = sum(len(v) for v in masked.values())
    if n_masked < 2:
        problems.append(
            f"{n_masked} image(s) have a final label mask; at least 2 are needed (one to choose the threshold "
            "on, one to test): submit the masks of a few labelled images"
        )
    if not out["train"]:
        problems.append("no labelled image without a mask is left to train on")
    elif len({it["label"] for it in out["train"]}) < 2:
        problems.append(
            "the training images hold only the class "
            f"{classes[out['train'][0]['label']]!r}; label images of at least two classes"
        )
    if not out["valcl"]:
        problems.append("no image is left for valcl (classification validation): label at least 2 images of a class")
    if problems:
        raise DatalistError(problems)
    missing = [c for i, c in enumerate(classes) if not any(it["label"] == i for it in out["train"])]
    if missing:
        logger.warning(f"no training image of class(es) {missing}")
    return out


def build_datalist(
    datastore: Datastore,
    classes: Sequence[str],
    negative_classes: Sequence[int] = (),
    *,
    label_key: str = "label",
    valcl_fraction: float = 0.2,
    valpx_per_class: int = 2,
    seed: int = 0,
    slide_tiles: Callable[[str, str, str], list[dict]] | None = None,
) -> dict:
    """The datastore as a datalist dict (``classes``, ``negative_classes``, ``train``/``valcl``/``valpx``/
    ``test``), ready for :func:`monai_pixelcam.data.save_datalist` (see :func:`datastore_items` and
    :func:`split_items`)."""
    items, unlabelled = datastore_items(datastore, classes, label_key=label_key, slide_tiles=slide_tiles)
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else "")
        logger.info(f"{len(unlabelled)} image(s) without an image-level '{label_key}' are left out: {shown}")
    splits = split_items(items, classes, valcl_fraction=valcl_fraction, valpx_per_class=valpx_per_class, seed=seed)
    return {"classes": list(classes), "negative_classes": [int(c) for c in negative_classes], **splits}


class TrainError(RuntimeError):
    """A train job that failed; the message is the root cause's (:func:`monai_pixelcam.errors.root_cause`)."""


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class PixelCAMTrainTask(TrainTask):
    """MONAI Label train task running the PixelCAM bundle on the datastore (see the module docstring).

    Request options (all optional): ``mode`` (``"auto"``: ``finetune`` when a published model has the
    same classes and a network the bundle config can rebuild, else ``full``), ``source_epochs``,
    ``pixelcam_epochs``, ``image_size``, ``crop_size``, ``batch_size``, ``val_interval`` (bundle values by
    default), ``num_workers``, ``seed``, ``valcl_fraction`` (0.2), ``valpx_per_class`` (2), ``device``,
    and ``bundle_overrides`` (a dict of further bundle config overrides, e.g. ``{"encoder": "resnet50"}``).

    Args:
        bundle_dir: the bundle folder (``configs/train.json``; models in ``models/``).
        classes: class names in label order; empty: the published model's, else the datastore's names.
        negative_classes: names or indices of classes whose images have no region of interest.
        label_key: image-info field holding an image's class.
        roi_labels: region-of-interest labels of slide annotations (:mod:`monai_pixelcam.data.slide_regions`).
        slide_tile_mpp: microns per pixel of the tiles cut from annotated slides; None: the published model's
            input scale, else the slide's level 0. Tiles are ``image_size`` pixels.
        wsi_backend: the slide reader (None: OpenSlide, then tifffile).
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        classes: Sequence[str] = (),
        negative_classes: Sequence[str | int] = (),
        label_key: str = "label",
        roi_labels: Sequence[str] = ("roi",),
        slide_tile_mpp: float | None = None,
        wsi_backend: str | None = None,
        description: str = "Train PixelCAM from image-level labels (image info 'label') with the bundle's pipeline",
    ):
        super().__init__(description)
        self.bundle_dir = Path(bundle_dir).resolve()
        self.model_dir = self.bundle_dir / "models"
        self.config_file = self.bundle_dir / TRAIN_CONFIG
        self.classes = [str(c) for c in classes]
        self.negative_classes = list(negative_classes)
        self.label_key = label_key
        self.roi_labels = [str(r) for r in roi_labels]
        self.slide_tile_mpp = slide_tile_mpp
        self.wsi_backend = wsi_backend or "auto"

    # --- MONAI Label interface -------------------------------------------------------------------------
    def bundle_defaults(self) -> dict[str, Any]:
        """Literal values of the bundle config for the options a request may set (missing config: {})."""
        config = _read_json(self.config_file) or {}
        keys = (*_BUNDLE_INT_OPTIONS, "num_workers", "seed")
        return {k: config[k] for k in keys if isinstance(config.get(k), int) and not isinstance(config.get(k), bool)}

    def config(self) -> dict[str, Any]:
        return {
            "mode": ["auto", "finetune", "full"],
            **self.bundle_defaults(),
            "valcl_fraction": 0.2,
            "valpx_per_class": 2,
            "device": ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"],
        }

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"bundle_dir": str(self.bundle_dir), "label_key": self.label_key, "classes": self.classes})
        return d

    def stats(self) -> dict[str, Any]:
        return _read_json(self.model_dir / STATS_FILE) or {}

    # --- helpers ---------------------------------------------------------------------------------------
    def _negative_indices(self, classes: Sequence[str], published: Mapping | None) -> list[int]:
        if not self.negative_classes:
            if published and list(published.get("classes", [])) == list(classes):
                return [int(c) for c in published.get("negative_classes", [])]
            return []
        return sorted({parse_label(c, classes) for c in self.negative_classes})

    def _finetune_overrides(self, published: Mapping | None, classes: Sequence[str]) -> tuple[dict | None, str]:
        """Bundle overrides that rebuild the published network, or (None, why not)."""
        if published is None or not (self.model_dir / MODEL_FILE).is_file():
            return None, "no published model"
        if list(published.get("classes", [])) != list(classes):
            return None, f"the published model's classes {published.get('classes')} differ from {list(classes)}"
        config = _read_json(self.config_file) or {}
        network = published.get("network") or {}
        foreign = sorted(k for k in network if k not in config)
        if foreign:
            return None, f"the published network has settings the bundle config cannot set: {foreign}"
        # the input definition the published model was trained on (scale and stain): a fine-tune sees the same
        return {**network, **NetworkInput.from_settings(published).settings()}, ""

    def _slide_tiles(
        self, annotations: Mapping[str, Sequence[Polygon]], classes: Sequence[str], tiles_dir: Path, tile_size: int,
        published: Mapping | None,
    ) -> Callable[[str, str, str], list[dict]]:
        """What :func:`datastore_items` calls for an annotated slide: the tiles of its class regions (its polygons
        from ``annotations``, read once per job) of ``tile_size`` pixels at ``slide_tile_mpp`` (else the published
        model's input scale, else level 0), in ``tiles_dir``."""
        tile_mpp = self.slide_tile_mpp or (published or {}).get("mpp")

        def tiles(image_id: str, slide: str, annotation_file: str) -> list[dict]:
            name = f"label of image {image_id!r}"
            regions = classify_annotations(annotations[image_id], classes, self.roi_labels, name)
            return cut_region_tiles(slide, regions, tiles_dir, image_id, tile_size, tile_mpp, backend=self.wsi_backend)

        return tiles

    def _options(self, request: Mapping) -> dict[str, Any]:
        """The request's options over the bundle's defaults, checked against the allow-list
        (:func:`~monai_pixelcam.label.train_options.check_train_request`; raises its TrainOptionError)."""
        checked = check_train_request(request)
        opts: dict[str, Any] = dict(self.bundle_defaults())
        opts.update({k: checked[k] for k in (*_BUNDLE_INT_OPTIONS, "num_workers", "seed") if k in checked})
        opts["mode"] = checked.get("mode", "auto")
        opts["valcl_fraction"] = float(checked.get("valcl_fraction", 0.2))
        opts["valpx_per_class"] = int(checked.get("valpx_per_class", 2))
        opts["bundle_overrides"] = checked["bundle_overrides"]
        opts["device"] = name_to_device(checked.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        return opts

    @staticmethod
    def _run_stages(config_file: Path, stages: Sequence[str], overrides: Mapping[str, Any]) -> None:
        from monai.bundle import ConfigWorkflow

        # logging_file=False: the bundle's logging.conf would replace the server's (or the caller's) logging
        # setup; the MONAI Label train process already logs INFO to its train log.
        workflow = ConfigWorkflow(
            config_file=str(config_file), logging_file=False, workflow_type=None, run_id="training", **overrides
        )
        workflow.initialize()
        for stage in stages:
            if stage not in workflow.parser:
                raise KeyError(f"{config_file} has no stage {stage!r}")
            start = time.time()
            logger.info(f"PixelCAM train: stage {stage} ...")
            items = workflow.parser[stage]
            ids = [f"{stage}#{i}" for i in range(len(items))] if isinstance(items, list) else [stage]
            for item in ids:
                workflow.parser.get_parsed_content(item)
            logger.info(f"PixelCAM train: stage {stage} done in {time.time() - start:.1f} s")
        workflow.finalize()

    # --- the job ---------------------------------------------------------------------------------------
    def __call__(self, request: Mapping, datastore: Datastore) -> dict[str, Any]:
        """Run one train job (module docstring). Any failure is raised as a :class:`TrainError` carrying the
        root cause's message, so that the job's last output line (what ``GET /train/`` shows of it) is the
        real reason, not a config parser's ``Failed to evaluate ConfigExpression``."""
        try:
            return self._train(request, datastore)
        except Exception as e:  # noqa: BLE001 - re-raised with the reason the annotator needs
            reason = root_cause(e)
            logger.error(f"PixelCAM train failed: {reason}")
            raise TrainError(reason) from e

    def _train(self, request: Mapping, datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        if not self.config_file.is_file():
            raise FileNotFoundError(f"bundle train config not found: {self.config_file} (check --conf bundle_dir)")
        opts = self._options(request)
        published = _read_json(self.model_dir / META_FILE)
        raw_labels = [
            (datastore.get_image_info(i) or {}).get(self.label_key) for i in datastore.list_images()
        ]
        annotations = slide_annotations(datastore)
        classes = resolve_classes(
            self.classes,
            (published or {}).get("classes", []),
            [v for v in raw_labels if v not in (None, "")] + annotation_classes(annotations, self.roi_labels),
        )
        negative = self._negative_indices(classes, published)
        network, why_not = self._finetune_overrides(published, classes)
        mode = opts["mode"]
        if mode == "auto":
            mode = "finetune" if network is not None else "full"
            if why_not:
                logger.info(f"PixelCAM train: full training ({why_not})")
        elif mode == "finetune" and network is None:
            raise ValueError(f"cannot fine-tune: {why_not}; use mode 'full'")

        run_dir = self.model_dir / RUNS_DIR / f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-{mode}"
        run_dir.mkdir(parents=True)
        # a fine-tune keeps the published input size; tiles are cut at the size the network takes
        tile_size = (network or {}).get("image_size") or opts.get("image_size")
        try:
            if not tile_size:
                raise ValueError(f"{self.config_file} gives no literal image_size to cut slide tiles at")
            datalist = build_datalist(
                datastore,
                classes,
                negative,
                label_key=self.label_key,
                valcl_fraction=opts["valcl_fraction"],
                valpx_per_class=opts["valpx_per_class"],
                seed=opts.get("seed", 0),
                slide_tiles=self._slide_tiles(annotations, classes, run_dir / "tiles", int(tile_size), published),
            )
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # a job refused for its data leaves no run behind
            raise
        counts = {k: len(datalist[k]) for k in ("train", "valcl", "valpx", "test")}
        tiles = {k: sum(1 for it in datalist[k] if str(it["image"]).startswith(str(run_dir))) for k in counts}
        logger.info(
            f"PixelCAM train: classes {classes}, negative {negative}, images per split {counts}, of which tiles "
            f"of annotated slides {tiles}"
        )
        datalist_path = save_datalist(datalist, run_dir / "datalist.json")
        overrides: dict[str, Any] = {
            "bundle_root": str(self.bundle_dir),
            "datalist": str(datalist_path),
            "output_dir": str(run_dir),
            "device": opts["device"],
            "num_classes": len(classes),
        }
        overrides.update({k: opts[k] for k in (*_BUNDLE_INT_OPTIONS, "num_workers", "seed") if k in opts})
        # the train loaders drop the last incomplete batch: never ask for more than there are images
        overrides["batch_size"] = min(int(opts.get("batch_size", counts["train"])), counts["train"])
        epochs = [opts[k] for k in ("source_epochs", "pixelcam_epochs") if k in opts]
        if "val_interval" in opts and epochs:
            # B-LOC / B-CL checkpoints exist only after a validation: validate at least once per stage
            overrides["val_interval"] = min(opts["val_interval"], *epochs)
        if mode == "finetune":
            overrides.update(network)
            for selection in _SOURCE_SELECTIONS:
                source_checkpoint_from_model(self.model_dir / MODEL_FILE, run_dir / f"source_{selection}.pt")
        overrides.update(opts["bundle_overrides"])
        logger.info(f"PixelCAM train: mode {mode}, run folder {run_dir}, bundle overrides {overrides}")

        self._run_stages(self.config_file, STAGES[mode], overrides)
        published_files = publish_model(run_dir, self.model_dir)
        metrics = _read_json(run_dir / "metrics.json") or {}
        figures = (metrics.get("pixelcam") or {}).get("bloc", {})
        stats = {
            "run": run_dir.name,
            "mode": mode,
            "finished": datetime.now().isoformat(timespec="seconds"),
            "time_s": round(time.time() - start, 1),
            "classes": classes,
            "images": counts,
            "slide_tiles": tiles,
            "threshold": (_read_json(self.model_dir / META_FILE) or {}).get("threshold"),
            "test_metrics": figures,
            "run_dir": str(run_dir),
            "tensorboard": str(run_dir / "tb"),
            "published": [str(p) for p in published_files],
        }
        write_json_atomic(stats, self.model_dir / STATS_FILE)
        summary = ", ".join(f"{k}={v:.2f}" for k, v in figures.items() if isinstance(v, (int, float)))
        logger.info(f"PixelCAM train: published {self.model_dir / MODEL_FILE} in {stats['time_s']} s; test {summary}")
        return stats
