"""The MONAI Label app of monai-pixelcam (MONAI Label loads this file by path from the app directory).

    monailabel start_server --app monai_pixelcam/label --studies DATASTORE --conf bundle_dir bundles/pixelcam

Settings (``--conf KEY VALUE``):

* ``bundle_dir``: the PixelCAM bundle folder; the model is ``<bundle_dir>/models/model.pt`` with
  ``model_meta.json``. Default: ``bundles/pixelcam`` of the source checkout that holds this package.
* ``classes``: comma-separated class names in label order. Default: the trained model's classes, else the
  distinct names of the datastore's image labels (sorted).
* ``negative_classes``: comma-separated names or indices of classes whose images hold no region of interest
  (e.g. ``normal`` for CAMELYON16). Default: the trained model's.
* ``label_key``: the image-info field that holds an image's class (default ``label``).
* ``wsi_backend``: ``openslide``, ``tifffile`` or ``cucim`` (installed separately). Default: that of
  :func:`monai_pixelcam.inference.wsi_reader`.

Tasks: infer ``pixelcam`` (:class:`monai_pixelcam.label.infer.PixelCAMInferTask`; ``/infer/pixelcam`` answers
a label image, ``/infer/wsi/pixelcam`` and ``/infer/wsi_v2/pixelcam`` contours as DSA JSON, ASAP XML or JSON,
:mod:`monai_pixelcam.label.wsi_infer`), train ``pixelcam`` (:class:`monai_pixelcam.label.train.PixelCAMTrainTask`)
and the active learning strategy ``pixelcam_uncertainty``
(:class:`monai_pixelcam.label.activelearning.PixelCAMUncertainty`). Image ids are resolved through the
datastore only (:mod:`monai_pixelcam.label.access`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

import monai_pixelcam
from monai_pixelcam.label.access import resolve_image
from monai_pixelcam.label.activelearning import STRATEGY_NAME, PixelCAMUncertainty
from monai_pixelcam.label.infer import LABEL_NAME, PixelCAMInferTask
from monai_pixelcam.label.train import PixelCAMTrainTask
from monai_pixelcam.label.wsi_infer import infer_wsi

logger = logging.getLogger(__name__)

#: Image files a local datastore lists besides MONAI Label's defaults (which have .png, .jpg, .tif, .svs).
EXTRA_IMAGE_PATTERNS = ("*.jpeg", "*.tiff")


def default_bundle_dir() -> Path:
    """``bundles/pixelcam`` next to the ``monai_pixelcam`` package (a source checkout)."""
    return Path(monai_pixelcam.__file__).resolve().parents[1] / "bundles" / "pixelcam"


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()] if value else []


class PixelCAMApp(MONAILabelApp):
    """PixelCAM annotation assistant: proposes the region of interest of a histology image (infer) and
    learns from image-level labels plus a few masks (train). See the module docstring for the settings."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        bundle = conf.get("bundle_dir")
        self.bundle_dir = Path(bundle).expanduser().resolve() if bundle else default_bundle_dir()
        if not (self.bundle_dir / "configs").is_dir():
            raise ValueError(
                f"bundle_dir {self.bundle_dir} is not a PixelCAM bundle (it has no configs/ folder); "
                "start the server with --conf bundle_dir PATH/TO/bundles/pixelcam"
            )
        self.model_dir = self.bundle_dir / "models"
        self.classes = _split(conf.get("classes"))
        self.negative_classes = _split(conf.get("negative_classes"))
        self.label_key = conf.get("label_key", "label")
        self.wsi_backend = conf.get("wsi_backend") or None
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
        patterns = list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *EXTRA_IMAGE_PATTERNS]))
        return LocalDatastore(
            self.studies,
            extensions=patterns,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, PixelCAMInferTask]:
        return {
            "pixelcam": PixelCAMInferTask(
                self.model_dir, classes=self.classes, labels={LABEL_NAME: 1}, wsi_backend=self.wsi_backend
            )
        }

    def init_trainers(self) -> dict[str, PixelCAMTrainTask]:
        return {
            "pixelcam": PixelCAMTrainTask(
                self.bundle_dir, classes=self.classes, negative_classes=self.negative_classes, label_key=self.label_key
            )
        }

    def init_strategies(self) -> dict[str, PixelCAMUncertainty]:
        return {STRATEGY_NAME: PixelCAMUncertainty(self._infers["pixelcam"], label_key=self.label_key)}

    def info(self) -> dict[str, Any]:
        d = super().info()
        model = self._infers["pixelcam"].info()
        d.update(
            {
                "classes": model["classes"],
                "negative_classes": model["negative_classes"],
                "trained": model["trained"],
                "threshold": model["threshold"],
                "bundle_dir": str(self.bundle_dir),
                "label_key": self.label_key,
            }
        )
        return d

    def image_path(self, image: str, datastore: Datastore | None = None) -> str:
        """The file of a request's image id: a datastore image, or this request's upload or session file
        (:func:`monai_pixelcam.label.access.resolve_image`); 404 for anything else."""
        sessions = self.sessions()
        return resolve_image(image, datastore or self.datastore(), sessions.store_path if sessions else None)

    def infer(self, request, datastore=None):
        """MONAI Label's infer, on the file the image id resolves to (MONAI Label itself would take any
        existing server path as the image)."""
        request = dict(request)
        if isinstance(request.get("image"), str):
            request["image"] = self.image_path(request["image"], datastore)
        return super().infer(request, datastore)

    def infer_wsi(self, request, datastore=None):
        """``/infer/wsi`` and ``/infer/wsi_v2``: contours of a region tile by tile
        (:func:`monai_pixelcam.label.wsi_infer.infer_wsi`), answered as DSA JSON, ASAP XML or JSON."""
        model = request.get("model")
        task = self._infers.get(model)
        if task is None:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"WSI/Inference Task is not Initialized. There is no model '{model}'"
            )
        request = {**task.config(), **request}
        return infer_wsi(task, self.image_path(request.get("image"), datastore), request)
