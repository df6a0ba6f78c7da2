"""The MONAI Label app of monai-pixelcam. MONAI Label loads it from the app folder ``apps/pixelcam``, whose
``main.py`` imports it; the server runs behind the app's guard (:mod:`monai_pixelcam.label.server`):

    monailabel start_server --app apps/pixelcam --studies DATASTORE --conf bundle_dir bundles/pixelcam \
        --uvicorn_app monai_pixelcam.label.server:app

Settings (``--conf KEY VALUE``):

* ``bundle_dir``: the PixelCAM bundle folder; the model is ``<bundle_dir>/models/model.pt`` with
  ``model_meta.json``, and train jobs write their runs under ``<bundle_dir>/models/label_runs``. Default:
  ``bundles/pixelcam`` beside the app folder's ``apps/`` (the repository layout).
* ``classes``: comma-separated class names in label order. Default: the trained model's classes, else the
  distinct names of the datastore's image labels (sorted).
* ``negative_classes``: comma-separated names or indices of classes whose images hold no region of interest
  (e.g. ``normal`` for CAMELYON16). Default: the trained model's.
* ``label_key``: the image-info field that holds an image's class (default ``label``).
* ``roi_labels``: comma-separated names of the region-of-interest polygons in slide annotations (e.g.
  ``gland`` or ``tumor``; default ``roi``, the label the infer task's contours carry). See
  :mod:`monai_pixelcam.data.slide_regions` for the annotation protocol.
* ``slide_tile_mpp``: microns per pixel of the training tiles cut from annotated slides. Default: the
  trained model's input scale (``model_meta.json`` ``mpp``), else the slide's level 0.
* ``amp``: ``bf16`` or ``fp16`` runs the model in mixed precision (default: float32).
* ``channels_last``: ``true`` runs the model in channels-last memory format (default ``false``; see
  :func:`monai_pixelcam.precision.with_channels_last`).
* ``wsi_backend``: ``openslide``, ``tifffile`` or ``cucim`` (installed separately). Default: OpenSlide, then
  tifffile for files OpenSlide does not open (:func:`monai_pixelcam.inference.wsi.open_slide`).
* the limits of :class:`~monai_pixelcam.label.limits.ServerLimits`: ``max_wsi_tiles``, ``max_image_pixels``,
  ``max_upload_mb``, ``max_pending_infers``, ``max_train_request_kb``.
* ``upload_dir``: the folder for uploads of requests in flight (:mod:`monai_pixelcam.label.server`); default:
  a new private folder in the system's temporary folder, removed when the server stops.

Tasks: infer ``pixelcam`` (:class:`monai_pixelcam.label.infer.PixelCAMInferTask`; ``/infer/pixelcam`` answers
a label image, ``/infer/wsi/pixelcam`` and ``/infer/wsi_v2/pixelcam`` contours as DSA JSON, ASAP XML or JSON,
:mod:`monai_pixelcam.label.wsi_infer`), train ``pixelcam`` (:class:`monai_pixelcam.label.train.PixelCAMTrainTask`)
and the active learning strategy ``pixelcam_uncertainty``
(:class:`monai_pixelcam.label.activelearning.PixelCAMUncertainty`). Image ids are resolved through the
datastore only (:mod:`monai_pixelcam.label.access`); the datastore keeps every file inside its folder and
takes only usable images and masks (:mod:`monai_pixelcam.label.datastore`); train requests are checked
against an allow-list (:mod:`monai_pixelcam.label.train_options`); error details name image ids, never
server paths.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

import monai_pixelcam

from ..precision import amp_dtype
from .access import is_upload, removed_on_failure, resolve_image
from .activelearning import STRATEGY_NAME, PixelCAMUncertainty
from .datastore import PixelCAMDatastore
from .errors import RequestError
from .infer import LABEL_NAME, PixelCAMInferTask
from .limits import ServerLimits
from .train import PixelCAMTrainTask
from .wsi_infer import infer_wsi

__all__ = ["IMAGE_PATTERNS", "default_bundle_dir", "PixelCAMApp"]

logger = logging.getLogger(__name__)

#: Image files of a local datastore: the 2D images and whole slides the app reads (listed, and accepted as
#: uploads).
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.bmp", "*.svs", "*.ndpi", "*.scn", "*.bif")
_GUARD_MODULE = "monai_pixelcam.label.server"


def default_bundle_dir(app_dir: str | os.PathLike) -> Path:
    """``bundles/pixelcam`` of the repository whose ``apps/<app>`` folder is ``app_dir``."""
    return Path(app_dir).resolve().parents[1] / "bundles" / "pixelcam"


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()] if value else []


def _positive(value: str | None, key: str) -> float | None:
    """A positive number setting, or None when unset; ValueError names the setting."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ValueError(f"--conf {key} must be a positive number, got {value!r}")
    return number


def _flag(value: str | None, key: str) -> bool:
    """A true/false setting (``true``/``false``, ``1``/``0``, ``yes``/``no``; unset: false); ValueError names it."""
    text = str(value or "false").strip().lower()
    if text not in ("true", "1", "yes", "false", "0", "no"):
        raise ValueError(f"--conf {key} must be true or false, got {value!r}")
    return text in ("true", "1", "yes")


class PixelCAMApp(MONAILabelApp):
    """PixelCAM annotation assistant: proposes the region of interest of a histology image (infer) and
    learns from image-level labels plus a few masks (train). See the module docstring for the settings."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        bundle = conf.get("bundle_dir")
        self.bundle_dir = Path(bundle).expanduser().resolve() if bundle else default_bundle_dir(app_dir)
        self.limits = ServerLimits.from_conf(conf)
        if not (self.bundle_dir / "configs").is_dir():
            raise ValueError(
                f"bundle_dir {self.bundle_dir} is not a PixelCAM bundle (it has no configs/ folder); "
                "start the server with --conf bundle_dir PATH/TO/bundles/pixelcam"
            )
        self.model_dir = self.bundle_dir / "models"
        self.classes = _split(conf.get("classes"))
        self.negative_classes = _split(conf.get("negative_classes"))
        self.label_key = conf.get("label_key", "label")
        self.roi_labels = _split(conf.get("roi_labels")) or [LABEL_NAME]
        self.slide_tile_mpp = _positive(conf.get("slide_tile_mpp"), "slide_tile_mpp")
        self.wsi_backend = conf.get("wsi_backend") or None
        self.amp = conf.get("amp") or None
        amp_dtype(self.amp)  # a bad value stops the server at start, named
        self.channels_last = _flag(conf.get("channels_last"), "channels_last")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="PixelCAM",
            description="Weakly supervised localization of regions of interest in histology (PixelCAM, MIDL 2025)",
            version=monai_pixelcam.__version__,
            labels={LABEL_NAME: 1},
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return PixelCAMDatastore(
            self.studies,
            extensions=IMAGE_PATTERNS,
            max_image_pixels=self.limits.max_image_pixels,
            classes=self._annotation_classes,
            roi_labels=self.roi_labels,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _annotation_classes(self) -> list[str] | None:
        """The class names slide annotations must use: the ``classes`` setting, else the trained model's;
        None while neither exists (the train job then takes the names the annotations use)."""
        if self.classes:
            return self.classes
        model = self.infer_task.info()
        return list(model["classes"]) if model["trained"] and model["classes"] else None

    def init_infers(self) -> dict[str, PixelCAMInferTask]:
        # kept here too: MONAI Label stores the tasks in a private attribute only
        self.infer_task = PixelCAMInferTask(
            self.model_dir,
            classes=self.classes,
            labels={LABEL_NAME: 1},
            wsi_backend=self.wsi_backend,
            max_image_pixels=self.limits.max_image_pixels,
            amp=self.amp,
            channels_last=self.channels_last,
        )
        return {"pixelcam": self.infer_task}

    def init_trainers(self) -> dict[str, PixelCAMTrainTask]:
        return {
            "pixelcam": PixelCAMTrainTask(
                self.bundle_dir, classes=self.classes, negative_classes=self.negative_classes, label_key=self.label_key,
                roi_labels=self.roi_labels, slide_tile_mpp=self.slide_tile_mpp, wsi_backend=self.wsi_backend,
            )
        }

    def init_strategies(self) -> dict[str, PixelCAMUncertainty]:
        return {STRATEGY_NAME: PixelCAMUncertainty(self.infer_task, label_key=self.label_key)}

    def info(self) -> dict[str, Any]:
        d = super().info()
        model = self.infer_task.info()
        d.update(
            {
                "classes": model["classes"],
                "negative_classes": model["negative_classes"],
                "trained": model["trained"],
                "threshold": model["threshold"],
                "bundle_dir": str(self.bundle_dir),
                "label_key": self.label_key,
                "limits": {**vars(self.limits)},
            }
        )
        return d

    def server_mode(self, mode: bool):
        """Entered by ``monailabel start_server``: refused unless the server serves through the guard
        (:mod:`monai_pixelcam.label.server`), which bounds uploads and checks train requests before MONAI
        Label's endpoints act on them."""
        # the guard module is imported by uvicorn (--uvicorn_app) and by nothing in the app itself
        guard = sys.modules.get(_GUARD_MODULE)
        if mode and not (guard is not None and guard.guard_active()):
            raise RuntimeError(
                "the PixelCAM app must be served through its guard: add "
                f"--uvicorn_app {_GUARD_MODULE}:app to `monailabel start_server` (README, Security)"
            )
        super().server_mode(mode)

    def image_path(self, image: str, datastore: Datastore | None = None) -> str:
        """The file of a request's image id: a datastore image, or this request's upload or session file
        (:func:`monai_pixelcam.label.access.resolve_image`); 404 for anything else."""
        sessions = self.sessions()
        return resolve_image(image, datastore or self.datastore(), sessions.store_path if sessions else None)

    @contextmanager
    def _serving(self, image: Any, datastore: Datastore | None) -> Iterator[str]:
        """The file of a request's image id for the duration of the request. A failure's detail names the
        id (or "the uploaded image") instead of any server path, and deletes the request's upload (on success
        MONAI Label's endpoint deletes it once the answer is sent)."""
        path = self.image_path(image, datastore)
        shown = "the uploaded image" if is_upload(path) else repr(image)
        folders = (os.path.dirname(path), str(self.bundle_dir), str(self.studies), str(self.app_dir))
        try:
            with removed_on_failure(path):
                yield path
        except HTTPException as e:
            detail = str(e.detail).replace(path, shown).replace(os.path.basename(path), shown)
            for folder in folders:
                detail = detail.replace(folder + os.sep, "").replace(folder, "")
            raise RequestError(e.status_code, detail) from None

    def infer(self, request, datastore=None):
        """MONAI Label's infer, on the file the image id resolves to (MONAI Label itself would take any
        existing server path as the image)."""
        request = dict(request)
        with self._serving(request.get("image"), datastore) as path:
            return super().infer({**request, "image": path}, datastore)

    def infer_wsi(self, request, datastore=None):
        """``/infer/wsi`` and ``/infer/wsi_v2``: contours of a region tile by tile, at most ``max_wsi_tiles``
        (:func:`monai_pixelcam.label.wsi_infer.infer_wsi`), answered as DSA JSON, ASAP XML or JSON."""
        model = request.get("model")
        task = self.infer_task if model == "pixelcam" else None
        if task is None:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"WSI/Inference Task is not Initialized. There is no model '{model}'"
            )
        request = {**task.config(), **request}
        with self._serving(request.get("image"), datastore) as path:
            return infer_wsi(task, path, request, max_tiles=self.limits.max_wsi_tiles)

