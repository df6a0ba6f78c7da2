"""A trained model as a folder: export after training, reading at inference, publishing by MONAI Label.

A model folder holds ``model.pt`` (the :class:`~monai_pixelcam.networks.PixelCAMNet` state dict, plain) and
``model_meta.json``:

- ``network``: keyword arguments of :func:`~monai_pixelcam.networks.build_pixelcam`;
- ``classes`` (label order) and ``negative_classes`` (indices of classes without a region of interest);
- ``threshold``: the foreground threshold in [0, 1] chosen on valpx;
- ``image_size`` and ``stain_normalize``: the network's input definition
  (:meth:`monai_pixelcam.transforms.NetworkInput.settings`), which every consumer rebuilds;
- ``mpp``: microns per pixel of the training images at that size (None when the data did not say); slide
  inference reads slides at this scale;
- ``source_checkpoint``: the checkpoint it was exported from.

Every file is written atomically, the weights before the metadata, so the metadata never names a model that
is not there; readers retry a load that meets a mismatched pair.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from monai_pixelcam.atomic import atomic_path, write_json_atomic
from monai_pixelcam.networks.weights import read_state_dict
from monai_pixelcam.transforms import NetworkInput, NetworkInputd

__all__ = [
    "MODEL_FILE",
    "META_FILE",
    "export_model",
    "read_threshold",
    "read_model_meta",
    "publish_model",
    "network_mpp",
    "image_size_at_mpp",
    "network_kwargs",
    "inference_network",
    "source_checkpoint_from_model",
    "TRAIN_HINT",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
META_FILE = "model_meta.json"

# build_pixelcam arguments that only *start* training: weight files (model.pt holds every weight, so rebuilding
# the network for inference drops them rather than requiring those files on this machine) and what trains
TRAINING_ONLY_KWARGS = ("pretrained", "trainable_blocks")

TRAIN_HINT = (
    "train the bundle first (python -m monai.bundle run training --config_file "
    "bundles/pixelcam/configs/train.json) or point model_dir at a trained model folder"
)


def read_threshold(metrics_file: str | os.PathLike, selection: str = "bloc") -> float:
    """The valpx threshold of PixelCAM ``selection`` recorded in a ``metrics.json``."""
    try:
        return float(json.loads(Path(metrics_file).read_text(encoding="utf-8"))["pixelcam"][selection]["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{metrics_file}: no PixelCAM {selection} threshold ({type(e).__name__}: {e}); run the evaluation first"
        ) from None


def export_model(
    checkpoint: str | os.PathLike,
    model_dir: str | os.PathLike,
    network: Mapping,
    classes: Sequence[str],
    network_input: NetworkInput | NetworkInputd,
    negative_classes: Sequence[int] = (),
    threshold: float | None = None,
    metrics_file: str | os.PathLike | None = None,
    selection: str = "bloc",
    mpp: float | None = None,
) -> Path:
    """Publish a PixelCAM checkpoint for inference as ``model_dir/model.pt`` + ``model_meta.json``.

    Args:
        checkpoint: the PixelCAMNet checkpoint (e.g. ``pixelcam_bloc.pt``; its state dict, raw or under a
            container key such as ``network``).
        network: ``build_pixelcam`` keyword arguments.
        classes, negative_classes: class names in label order; indices without a region of interest.
        network_input: the input definition the model was trained and evaluated with (the bundle's
            ``network_input``); its :meth:`~monai_pixelcam.transforms.NetworkInput.settings` are written, and
            every consumer of the folder rebuilds it from them.
        threshold: foreground threshold in [0, 1]; None reads PixelCAM ``selection``'s valpx threshold from
            ``metrics_file``.
        mpp: microns per pixel of the network input (a whole training image at ``image_size``), or None when
            unknown.

    Returns:
        the path of ``model.pt``.
    """
    if threshold is None:
        if metrics_file is None:
            raise ValueError("export_model needs a threshold or the metrics_file that records the valpx one")
        threshold = read_threshold(metrics_file, selection)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"export_model: threshold must lie in [0, 1], got {threshold}")
    if mpp is not None and not float(mpp) > 0:
        raise ValueError(f"export_model: mpp must be positive microns per pixel, got {mpp}")
    model_dir = Path(model_dir)
    # the weights alone: a B-LOC checkpoint also carries its saver's tracking state
    state = read_state_dict(checkpoint)
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        torch.save(state, tmp)
    meta = {
        "network": dict(network),
        "classes": list(classes),
        "negative_classes": [int(c) for c in negative_classes],
        "threshold": float(threshold),
        **network_input.settings(),
        "mpp": None if mpp is None else float(mpp),
        "source_checkpoint": str(checkpoint),
    }
    write_json_atomic(meta, model_dir / META_FILE)
    logger.info(f"exported {checkpoint} to {model_dir / MODEL_FILE} (threshold {float(threshold):.3f})")
    return model_dir / MODEL_FILE


def _scale_and_side(datalist: Mapping, split: str, max_images: int) -> tuple[float | None, float]:
    """``(the images' mpp, their median side in pixels)``: the side of a non-square image is ``sqrt(H W)``, over up
    to ``max_images`` images of ``split`` (read from the file headers); the mpp is None when the datalist gives
    none (and the side is then not read)."""
    from PIL import Image

    from monai_pixelcam.data.datalist import DatalistError, datalist_mpp

    mpp = datalist_mpp(dict(datalist), split)
    if mpp is None:
        return None, 0.0
    sides = []
    for item in list(datalist[split])[:max_images]:
        try:
            with Image.open(item["image"]) as img:
                width, height = img.size
        except OSError as e:
            raise DatalistError(f"{item['image']}: cannot read the image size ({e})") from None
        sides.append(math.sqrt(width * height))
    return mpp, float(np.median(sides))


def network_mpp(datalist: Mapping, image_size: int, split: str = "train", max_images: int = 32) -> float | None:
    """Microns per pixel of the network's input when a model trained on ``datalist`` sees a whole image
    resized to ``image_size`` x ``image_size`` (as evaluation and inference do): the images' own scale
    (:func:`~monai_pixelcam.data.datalist.datalist_mpp`) times their side over ``image_size``. The side of a
    non-square image is ``sqrt(H W)``, the median over up to ``max_images`` images of ``split`` (read from the
    file headers). None when the datalist gives no scale.

    Raises:
        DatalistError: the split's scales are invalid or disagree (see ``datalist_mpp``), or an image cannot
            be opened (names the file).
    """
    mpp, side = _scale_and_side(datalist, split, max_images)
    return None if mpp is None else float(mpp * side / int(image_size))


def image_size_at_mpp(
    datalist: Mapping, mpp: float, multiple: int = 1, default: int = 224, split: str = "train", max_images: int = 32
) -> int:
    """The input side ``S`` that puts the network at ``mpp`` microns per pixel (e.g. a foundation model's
    pretraining scale, 0.5) for the whole images of ``datalist``: their scale times their side over ``mpp``
    (the inverse of :func:`network_mpp`), rounded to the nearest multiple of ``multiple`` (a patch size, or a
    common multiple of several), at least ``multiple``; ``default`` when the datalist gives no scale.

    Raises:
        ValueError: ``mpp`` or ``multiple`` not positive.
        DatalistError: as :func:`network_mpp`.
    """
    if not float(mpp) > 0 or int(multiple) < 1:
        raise ValueError(f"image_size_at_mpp needs mpp > 0 and multiple >= 1, got {mpp} and {multiple}")
    scale, side = _scale_and_side(datalist, split, max_images)
    if scale is None:
        return int(default)
    return max(int(multiple), int(multiple) * round(scale * side / float(mpp) / int(multiple)))


def network_kwargs(model_dir: str | os.PathLike, defaults: Mapping) -> dict:
    """The ``build_pixelcam`` keyword arguments of the model in ``model_dir`` (its ``model_meta.json``'s
    ``network``, without the arguments that only start training), or ``defaults`` while the folder holds no
    trained model, so that a bundle's ``network_def`` can be built, checked and exported before training."""
    try:
        meta = read_model_meta(model_dir)
    except FileNotFoundError:
        return dict(defaults)
    return inference_network(meta)


def inference_network(meta: Mapping) -> dict:
    """A model description's ``build_pixelcam`` arguments for inference: its ``network`` without the arguments
    that only start training, with ``num_classes`` the number of its classes when not given."""
    kwargs = {k: v for k, v in meta["network"].items() if k not in TRAINING_ONLY_KWARGS}
    kwargs.setdefault("num_classes", len(meta["classes"]))
    return kwargs


def read_model_meta(model_dir: str | os.PathLike) -> dict:
    """The checked ``model_meta.json`` of a model folder that also holds ``model.pt``.

    Raises:
        FileNotFoundError: the folder, ``model.pt`` or ``model_meta.json`` is missing (names the file).
        ValueError: the meta file is not valid JSON, lacks ``network`` / ``classes``, its ``num_classes``
            disagrees with its classes, or ``threshold``, ``image_size``, ``stain_normalize``,
            ``negative_classes`` or ``mpp`` has the wrong type or range (names the file and the key).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}; {TRAIN_HINT}")
    meta_path = model_dir / META_FILE
    for f in (model_dir / MODEL_FILE, meta_path):
        if not f.is_file():
            raise FileNotFoundError(f"no trained model: {f} is missing; {TRAIN_HINT}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: cannot read the model description ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("network"), dict) or not meta.get("classes"):
        raise ValueError(f"{meta_path}: expected an object with 'network' (build_pixelcam arguments) and 'classes'")
    classes = list(meta["classes"])
    k = meta["network"].get("num_classes", len(classes))
    if int(k) != len(classes):
        raise ValueError(f"{meta_path}: network.num_classes is {k} but {len(classes)} classes are named")
    mpp = meta.get("mpp")
    if mpp is not None and not (_is_number(mpp) and mpp > 0):
        raise ValueError(f"{meta_path}: 'mpp' must be a positive number of microns per pixel or null, got {mpp!r}")
    # JSON has no types beyond these: a boolean or a string here would be taken as a number downstream
    # ("threshold": true runs as 1.0, an empty mask everywhere)
    checks = {
        "threshold": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
        "image_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
        "stain_normalize": (lambda v: isinstance(v, bool), "true or false"),
        "negative_classes": (
            lambda v: isinstance(v, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in v),
            "a list of class indices",
        ),
    }
    for key, (ok, what) in checks.items():
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{meta_path}: '{key}' must be {what}, got {meta[key]!r}")
    return meta


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def publish_model(run_dir: str | os.PathLike, model_dir: str | os.PathLike) -> list[Path]:
    """Copy a run's ``model.pt`` and ``model_meta.json`` into ``model_dir``, each through a temporary file and
    ``os.replace``, weights first (readers retry a load that meets a mismatched pair)."""
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    published = []
    for name in (MODEL_FILE, META_FILE):
        src = run_dir / name
        if not src.is_file():
            raise FileNotFoundError(f"the training run did not write {src}")
        with atomic_path(model_dir / name) as tmp:
            shutil.copyfile(src, tmp)
        published.append(model_dir / name)
    return published


def source_checkpoint_from_model(model_pt: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """The source classifier inside a model folder's ``model.pt``: its ``encoder.*`` and ``image_head.*`` entries.

    :class:`~monai_pixelcam.networks.PixelCAMNet` and :class:`~monai_pixelcam.networks.WSOLClassifier` share
    those names, so this is a filter (``pixel_head.*`` is dropped) whose result loads into a ``WSOLClassifier``
    or starts a new PixelCAM (:meth:`~monai_pixelcam.networks.PixelCAMNet.load_source`); written atomically.

    Raises:
        ValueError: the file is not a PixelCAMNet state dict (names the file and the unexpected keys).
    """
    state = read_state_dict(model_pt)
    source = {k: v for k, v in state.items() if k.startswith(("encoder.", "image_head."))}
    unexpected = [k for k in state if k not in source and not k.startswith("pixel_head.")]
    if unexpected or not all(any(k.startswith(p) for k in state) for p in ("image_head.", "pixel_head.")):
        raise ValueError(
            f"{model_pt}: not a PixelCAMNet state dict (encoder.*, image_head.*, pixel_head.*); "
            f"unexpected keys {unexpected[:5]}"
        )
    with atomic_path(out_path) as tmp:
        torch.save(source, tmp)
    return Path(out_path)
