"""Bounds on the work one client can ask of the MONAI Label server, set with ``--conf KEY VALUE``.

Every bound has a default that serves a pathology lab's ordinary requests; a request past one is refused
with a 4xx answer that names the setting. The app (:class:`~monai_pixelcam.label.app.PixelCAMApp`) and the
server's guard (:mod:`monai_pixelcam.label.server`) read the same settings from the same ``--conf`` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from ..data.io import MAX_IMAGE_PIXELS

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """The server's bounds (each a ``--conf`` key of the same name).

    Args:
        max_wsi_tiles: tiles one ``/infer/wsi`` or ``/infer/wsi_v2`` request may plan (413 beyond); 4096 tiles
            of 1024 px cover a 65k x 65k region at level 0, and a whole slide at a coarser level.
        max_image_pixels: pixels of an image decoded whole: uploads, datastore images and labels (413
            beyond); whole slides are read region by region and are not bound by it.
        max_upload_mb: size of one request body in MiB (413 beyond): uploads of images, slides and labels.
        max_pending_infers: inference requests in the server at once, the running one included (429 beyond).
            Inference runs one request at a time, so a request past the bound would only wait.
        max_train_request_kb: size of a train request's JSON body in KiB (413 beyond).
        max_upload_age_min: an upload older than this is deleted even while other requests are in flight (the
            server sweeps every leftover whenever it is idle; under constant load, this bounds how long a
            failed request's upload stays). A request must not need its upload for longer.
    """

    max_wsi_tiles: int = 4096
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_upload_mb: int = 2048
    max_pending_infers: int = 8
    max_train_request_kb: int = 64
    max_upload_age_min: int = 60

    @classmethod
    def from_conf(cls, conf: Mapping[str, str] | None) -> ServerLimits:
        """The limits of an app ``conf`` (``--conf`` values are strings); missing keys keep their default.

        Raises:
            ValueError: a value that is not a positive integer, naming the key.
        """
        conf = conf or {}
        values = {}
        for f in fields(cls):
            raw = conf.get(f.name)
            if raw is None or raw == "":
                continue
            try:
                value = int(str(raw).strip())
            except ValueError:
                value = 0
            if value < 1:
                raise ValueError(f"--conf {f.name} must be a positive integer, got {raw!r}")
            values[f.name] = value
        return cls(**values)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20
