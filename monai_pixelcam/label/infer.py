"""Infer task ``pixelcam``: the localization mask of a trained PixelCAM bundle as a MONAI Label label image.

One request is one image: a 2D image of the datastore (PNG, JPEG, TIFF) or an uploaded file, or a region of
a whole-slide image given as the pathology sample app gives it (``location`` ``[x, y]`` in level-0 pixels,
``size`` ``[width, height]`` in pixels of ``level``). The answer is a PNG label image of the input's (or the
region's) height and width, foreground = 1 where the PixelCAM map reaches the bundle's threshold (chosen on
valpx at training time), and a result JSON with the class probabilities, the predicted class and the
threshold. A request that gives ``min_poly_area`` (the WSI endpoints always do) also gets the contours of
the foreground in level-0 pixels as MONAI Label's ``annotation`` entry (:mod:`monai_pixelcam.label.annotation`).
The model is read from ``<bundle_dir>/models`` (``model.pt`` + ``model_meta.json``) and read again whenever
either file changes, so a model published by the train task is used by the next request.

Bad requests raise :class:`~monai_pixelcam.label.errors.RequestError`, an ``HTTPException`` that MONAI
Label's endpoints let through to FastAPI, so the client gets a 4xx status with ``{"detail": message}``
instead of a bare 500. Image ids are resolved to files by the app (:mod:`monai_pixelcam.label.access`);
this task reads the path it is given.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..data.datalist import DatalistError
from ..atomic import write_png_atomic
from ..data.io import MAX_IMAGE_PIXELS, ImageTooLargeError, image_size, image_to_rgb, read_rgb
from ..export import META_FILE, MODEL_FILE
from ..inference.predictor import PixelCAMPredictor
from ..inference.wsi import close_slide, is_whole_slide, open_slide, read_rgb_region
from .annotation import LABEL_NAME, region_annotation
from .errors import RequestError

__all__ = [
    "LABEL_NAME",
    "RequestError",
    "ImageRegion",
    "int_pair",
    "parse_region",
    "load_image",
    "read_image_region",
    "image_geometry",
    "too_large",
    "LoadImageRegiond",
    "PixelCAMInferTask",
]

logger = logging.getLogger(__name__)

#: Prefix of the temporary files of label images an answer sends (MONAI Label deletes them once sent).
RESULT_PREFIX = "pixelcam_result_"
# A model published by the train task replaces model.pt and then model_meta.json; a request that loads in
# between can see a mismatched pair, so a failed load is retried for a short while before it is reported.
_LOAD_ATTEMPTS = 3
_LOAD_RETRY_S = 0.5


class ImageRegion(NamedTuple):
    """A region in MONAI Label's convention: top-left corner ``(x, y)`` in level-0 pixels, ``width`` x
    ``height`` in pixels of ``level``."""

    x: int
    y: int
    width: int
    height: int
    level: int = 0


def int_pair(value: Any, name: str, minimum: int | None) -> tuple[int, int]:
    """Two integers from ``[a, b]``, ``(a, b)`` or ``"a,b"``, each ``>= minimum`` (None: any).

    Raises:
        RequestError: 400 naming ``name`` and the value.
    """
    if isinstance(value, str):
        value = value.strip("[]() ").split(",")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 2 or not all(n.is_integer() for n in numbers):
        raise RequestError(400, f"'{name}' must be two integers, got {value!r}")
    pair = int(numbers[0]), int(numbers[1])
    if minimum is not None and min(pair) < minimum:
        raise RequestError(400, f"'{name}' values must be >= {minimum}, got {list(pair)}")
    return pair


def parse_region(request: Mapping, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageRegion | None:
    """The region a request asks for, or None for the whole image.

    Args:
        request: may hold ``location`` ``[x, y]`` (level-0 pixels), ``size`` ``[width, height]`` (pixels at
            ``level``) and ``level`` (int, default 0); ``location`` without ``size`` is an error, ``size``
            alone means ``location`` ``[0, 0]``.
        max_pixels: largest ``width * height`` accepted (the server's ``max_image_pixels``).

    Raises:
        RequestError: 400 naming the bad value.
    """
    location, size = request.get("location"), request.get("size")
    if size is None or (isinstance(size, (list, tuple)) and not any(size)):
        if location is not None and any(int_pair(location, "location", 0)):
            raise RequestError(400, "a 'location' needs a 'size' [width, height] of the region")
        return None
    x, y = int_pair(location if location is not None else (0, 0), "location", 0)
    width, height = int_pair(size, "size", 1)
    try:
        level = int(request.get("level") or 0)
    except (TypeError, ValueError):
        raise RequestError(400, f"'level' must be an integer, got {request.get('level')!r}") from None
    if level < 0:
        raise RequestError(400, f"'level' must be >= 0, got {level}")
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"region {width} x {height} is larger than the server's max_image_pixels ({max_pixels}); ask for "
            "tiles of a whole slide (/infer/wsi)",
        )
    return ImageRegion(x, y, width, height, level)


@contextmanager
def _open_slide(path: Path, backend: str | None) -> Iterator[tuple[Any, Any]]:
    """``(reader, wsi)`` of a whole-slide image (:func:`~monai_pixelcam.inference.wsi.open_slide`, the package's
    one slide opener), closed on exit; a file no backend opens is a 422 naming the file, not its server path."""
    try:
        reader, wsi = open_slide(path, backend or "auto")
    except ValueError as e:
        raise RequestError(422, str(e).replace(str(path), path.name)) from None  # the file's name, not its path
    try:
        yield reader, wsi
    finally:
        close_slide(wsi)


def _check_level(reader, wsi, level: int, name: str) -> None:
    levels = reader.get_level_count(wsi)
    if level >= levels:
        raise RequestError(400, f"level {level} requested but {name} has {levels} levels")


def _read_slide_region(path: Path, region: ImageRegion, backend: str | None) -> tuple[np.ndarray, float]:
    """``region`` of a whole-slide image -> (``h x w x 3`` uint8 cut at the slide's border, the level's
    downsample relative to level 0)."""
    with _open_slide(path, backend) as (reader, wsi):
        _check_level(reader, wsi, region.level, path.name)
        height0, width0 = reader.get_size(wsi, 0)
        if region.x >= width0 or region.y >= height0:
            raise RequestError(
                400, f"location [{region.x}, {region.y}] lies outside {path.name} ({width0} x {height0} at level 0)"
            )
        downsample = float(reader.get_downsample_ratio(wsi, region.level))
        level_h, level_w = reader.get_size(wsi, region.level)
        # cut at the border for every backend (OpenSlide pads a region past it with transparent pixels)
        height = min(region.height, level_h - int(region.y / downsample))
        width = min(region.width, level_w - int(region.x / downsample))
        try:
            # the slide layer's reader, on the part inside the slide: nothing is padded
            rgb = read_rgb_region(reader, wsi, (region.y, region.x), (height, width), region.level)
        except ValueError as e:
            raise RequestError(400, f"cannot read region {tuple(region)} of {path.name}: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise RequestError(422, f"cannot decode region of {path.name}: {type(e).__name__}: {e}") from None
    return rgb, downsample


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise RequestError(404, f"image file not found: {path}")
    return path


def too_large(what: str, error: ImageTooLargeError) -> RequestError:
    """413 for an image over the server's ``max_image_pixels``, naming it as ``what`` (no server path)."""
    (height, width), limit = error.size, error.max_pixels
    return RequestError(
        413,
        f"{what} has {width} x {height} pixels, more than the server's max_image_pixels ({limit}); cut it into "
        "tiles, or save it as a pyramidal TIFF to read it as a whole slide",
    )


def _read_plain(path: Path, max_pixels: int) -> np.ndarray:
    try:
        return read_rgb(path, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise too_large(path.name, e) from None
    except DatalistError as e:
        raise RequestError(422, f"cannot read image: {e}") from None


def read_image_region(
    path: str | os.PathLike,
    region: ImageRegion | None = None,
    wsi_backend: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, float]:
    """:func:`load_image`, plus the downsample of the region's level relative to level 0 (1.0 for images
    with one resolution), so that pixel ``(r, c)`` of the result lies at level-0 ``(x + c * d, y + r * d)``."""
    path = _existing(path)
    if is_whole_slide(path):
        if region is None:
            raise RequestError(
                400,
                f"{path.name} is a whole-slide image: give 'location' [x, y] (level-0 pixels) and 'size' "
                "[width, height] of the region to infer",
            )
        return _read_slide_region(path, region, wsi_backend)
    rgb = _read_plain(path, max_pixels)
    if region is None:
        return rgb, 1.0
    if region.level != 0:
        raise RequestError(400, f"{path.name} has one resolution level; 'level' must be 0, got {region.level}")
    height, width = rgb.shape[:2]
    if region.x >= width or region.y >= height:
        raise RequestError(400, f"location [{region.x}, {region.y}] lies outside {path.name} ({width} x {height})")
    return np.ascontiguousarray(rgb[region.y : region.y + region.height, region.x : region.x + region.width]), 1.0


def load_image(
    path: str | os.PathLike,
    region: ImageRegion | None = None,
    wsi_backend: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Read an image, or a region of it, as ``H x W x 3`` uint8 RGB.

    Whole-slide images (see :func:`monai_pixelcam.inference.is_whole_slide`) are read region by region by the
    package's slide layer (:func:`~monai_pixelcam.inference.wsi.open_slide` with ``wsi_backend``, None:
    ``"auto"``; :func:`~monai_pixelcam.inference.wsi.read_rgb_region`) and need ``region``; other images are
    decoded whole (:func:`monai_pixelcam.data.io.read_rgb`) and cropped to ``region`` (level 0 only). A region
    running past the border is cut there.

    Raises:
        RequestError: 404 file not found; 422 not a decodable image; 413 an image of more than ``max_pixels``
            pixels; 400 region missing (whole slide) or outside the image.
    """
    return read_image_region(path, region, wsi_backend, max_pixels)[0]


def image_geometry(path: str | os.PathLike, level: int = 0, wsi_backend: str | None = None) -> tuple[int, int, float]:
    """``(width, height)`` of an image at level 0 and the downsample of ``level`` (1.0 for level 0).

    Both are sized from their headers, without decoding the pixels.

    Raises:
        RequestError: 404 file not found; 422 not a decodable image; 400 no such level.
    """
    path = _existing(path)
    if is_whole_slide(path):
        with _open_slide(path, wsi_backend) as (reader, wsi):
            _check_level(reader, wsi, level, path.name)
            height0, width0 = reader.get_size(wsi, 0)
            return int(width0), int(height0), float(reader.get_downsample_ratio(wsi, level))
    if level != 0:
        raise RequestError(400, f"{path.name} has one resolution level; 'level' must be 0, got {level}")
    size = image_size(path)
    if size is None:
        _read_plain(path, MAX_IMAGE_PIXELS)  # raises the decoder's error naming the file
        raise RequestError(422, f"cannot read image: {path.name}")
    return int(size[1]), int(size[0]), 1.0


class LoadImageRegiond:
    """Pre-transform of the infer task: ``d["image"]`` (a path, or an ``H x W x C`` array a datastore already
    read) -> ``H x W x 3`` uint8; ``d["region"]`` records the region read (``None`` for the whole image):
    ``location`` (level 0), ``size`` (``[w, h]`` read, at ``level``), ``level`` and ``downsample`` (level-0
    pixels per pixel read)."""

    def __init__(self, wsi_backend: str | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.wsi_backend = wsi_backend
        self.max_image_pixels = int(max_image_pixels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d.get("image")
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
                raise RequestError(400, f"expected an H x W (x C) image array, got shape {image.shape}")
            d["image"] = image_to_rgb(image, has_alpha=image.ndim == 3 and image.shape[-1] in (2, 4))
            d["region"] = None
            return d
        if not image:
            raise RequestError(404, "no image: the image id is not in the datastore and no file was uploaded")
        region = parse_region(d, self.max_image_pixels)
        rgb, downsample = read_image_region(image, region, self.wsi_backend, self.max_image_pixels)
        d["image"] = rgb
        d["region"] = None if region is None else {
            "location": [region.x, region.y],
            "size": [int(rgb.shape[1]), int(rgb.shape[0])],
            "level": region.level,
            "downsample": downsample,
        }
        return d


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class PixelCAMInferTask(BasicInferTask):
    """MONAI Label infer task around :class:`~monai_pixelcam.inference.PixelCAMPredictor`.

    Request keys (besides MONAI Label's ``image``, ``device``): ``location``/``size``/``level`` for a
    region (see :func:`parse_region`), ``threshold`` (float in [0, 1]) to override the bundle's threshold,
    ``min_poly_area`` (level-0 pixels squared) to add contours, ``result_write_to_file`` (MONAI Label's key:
    False answers the result JSON without a label file, as for the tiles of a WSI request).

    Output: label image ``uint8 H x W`` (1 = region of interest), and the result JSON ``class_name``,
    ``label``, ``probabilities`` (class name -> softmax probability), ``threshold`` (used),
    ``bundle_threshold``, ``negative`` (predicted class is a negative class), ``foreground_fraction``,
    ``shape`` ``[H, W]``, ``region`` (or None), ``model`` (folder and modification time) and, with
    ``min_poly_area``, ``annotation`` (:func:`~monai_pixelcam.label.annotation.region_annotation`: contours
    of the map at the threshold, in level-0 pixels).

    Args:
        model_dir: the bundle's ``models`` folder.
        classes: class names shown by :meth:`info` while no model is trained (a trained model's own
            ``model_meta.json`` classes take precedence).
        wsi_backend: ``"openslide"``, ``"tifffile"`` or ``"cucim"`` (installed separately); None: ``"auto"``
            (:func:`~monai_pixelcam.inference.wsi.open_slide`: OpenSlide, then tifffile).
        max_image_pixels: largest image or region decoded for one request (413 beyond; the server's
            ``max_image_pixels``).
        amp: None (float32), ``"bf16"`` or ``"fp16"``: the model's autocast dtype (the server's ``amp``).
        channels_last: run the model in channels-last memory format (the server's ``channels_last``).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        classes: Sequence[str] = (),
        labels: Mapping[str, int] | None = None,
        description: str = "PixelCAM: region of interest of a histology image from image-level supervision",
        wsi_backend: str | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        amp: str | None = None,
        channels_last: bool = False,
    ):
        self.model_dir = Path(model_dir)
        self.amp = amp
        self.channels_last = channels_last
        super().__init__(
            path=str(self.model_dir / MODEL_FILE),
            network=None,
            type=InferType.SEGMENTATION,
            labels=dict(labels) if labels else {LABEL_NAME: 1},
            dimension=2,
            description=description,
        )
        self.classes = [str(c) for c in classes]
        self.wsi_backend = wsi_backend
        self.max_image_pixels = int(max_image_pixels)
        self._lock = threading.Lock()
        self._loaded: tuple[Any, PixelCAMPredictor] | None = None

    # --- model -----------------------------------------------------------------------------------------
    def is_valid(self) -> bool:
        # listed even before training, so that a client sees the task and gets the "train first" answer
        return True

    def model_meta(self) -> dict | None:
        """The published ``model_meta.json``, or None when there is none (or it is unreadable)."""
        try:
            meta = json.loads((self.model_dir / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def predictor(self, device: str = "cpu") -> PixelCAMPredictor:
        """The predictor of the published model, loaded again when ``model.pt`` or ``model_meta.json`` changed.

        Raises:
            RequestError: 503 when no trained model is there; 500 when it cannot be loaded.
        """
        files = (self.model_dir / MODEL_FILE, self.model_dir / META_FILE)
        with self._lock:
            for attempt in range(_LOAD_ATTEMPTS):
                key = (tuple(_stamp(f) for f in files), str(device))
                if self._loaded is not None and self._loaded[0] == key:
                    return self._loaded[1]
                try:
                    predictor = PixelCAMPredictor.from_model_dir(
                        self.model_dir, device=device, amp=self.amp, channels_last=self.channels_last
                    )
                except FileNotFoundError as e:
                    raise RequestError(503, f"{e}, or with this server: POST /train/pixelcam") from None
                except ValueError as e:
                    if attempt + 1 < _LOAD_ATTEMPTS:
                        logger.warning(f"loading the model failed ({e}); trying again (it may be being published)")
                        time.sleep(_LOAD_RETRY_S)
                        continue
                    raise HTTPException(500, f"the model in {self.model_dir} cannot be loaded: {e}") from None
                # keyed by the stamps seen *before* loading: a file replaced during the load is loaded again
                self._loaded = (key, predictor)
                logger.info(f"loaded {predictor} from {self.model_dir}")
                return predictor
        raise AssertionError("unreachable")

    def clear(self):
        with self._lock:
            self._loaded = None
        super().clear()

    clear_cache = clear

    def info(self) -> dict[str, Any]:
        d = super().info()
        meta = self.model_meta()
        trained = meta is not None and (self.model_dir / MODEL_FILE).is_file()
        d.update(
            {
                "pathology": True,
                "trained": trained,
                "model_dir": str(self.model_dir),
                "classes": list(meta.get("classes", [])) if trained else self.classes,
                "negative_classes": list(meta.get("negative_classes", [])) if trained else [],
                "threshold": meta.get("threshold") if trained else None,
            }
        )
        return d

    # --- BasicInferTask stages -------------------------------------------------------------------------
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [LoadImageRegiond(self.wsi_backend, self.max_image_pixels)]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    @staticmethod
    def _threshold(data: Mapping, default: float) -> float:
        value = data.get("threshold")
        if value is None or value == "":
            return float(default)
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise RequestError(400, f"'threshold' must be a number in [0, 1], got {value!r}") from None
        if not 0.0 <= t <= 1.0:
            raise RequestError(400, f"'threshold' must lie in [0, 1], got {t}")
        return t

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cpu"):
        predictor = self.predictor(device)
        threshold = self._threshold(data, predictor.threshold)
        out = predictor.predict(data["image"])
        mask = (out["map"] >= threshold).astype(np.uint8)
        weights = self.model_dir / MODEL_FILE
        modified = datetime.fromtimestamp(weights.stat().st_mtime, tz=timezone.utc) if weights.exists() else None
        data[self.output_label_key] = mask
        data[self.output_json_key] = {
            "class_name": out["class_name"],
            "label": int(out["label"]),
            "probabilities": {c: float(p) for c, p in zip(predictor.classes, out["probs"])},
            "threshold": threshold,
            "bundle_threshold": float(predictor.threshold),
            "negative": bool(out["negative"]),
            "foreground_fraction": float(mask.mean()),
            "shape": [int(mask.shape[0]), int(mask.shape[1])],
            "region": data.get("region"),
            "model": {"dir": str(self.model_dir), "modified": modified.isoformat() if modified else None},
        }
        if data.get("min_poly_area") is not None:
            data[self.output_json_key]["annotation"] = self._annotation(out["map"], threshold, data)
        return data

    @staticmethod
    def _annotation(score: np.ndarray, threshold: float, data: Mapping) -> dict:
        region = data.get("region") or {"location": [0, 0], "downsample": 1.0}
        try:
            area = float(data["min_poly_area"])
            return region_annotation(score, threshold, region["location"], region["downsample"], area)
        except (TypeError, ValueError) as e:
            raise RequestError(400, f"cannot trace contours: {e}") from None

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str | None, dict]:
        """The label as a PNG in a temporary file (MONAI Label's endpoint deletes it after sending); no file
        when the request says ``result_write_to_file`` False."""
        if data.get("result_write_to_file", True) is False:
            return None, data[self.output_json_key]
        fd, name = tempfile.mkstemp(prefix=RESULT_PREFIX, suffix=".png")
        os.close(fd)
        write_png_atomic(name, data[self.output_label_key])
        return name, data[self.output_json_key]
