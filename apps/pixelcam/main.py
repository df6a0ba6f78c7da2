"""MONAI Label app folder of monai-pixelcam (MONAI Label loads this file by path; the tasks live in the
installed package, :mod:`monai_pixelcam.label`, and the server writes its logs here, never into the package).

    monailabel start_server --app apps/pixelcam --studies DATASTORE --conf bundle_dir bundles/pixelcam \\
        --uvicorn_app monai_pixelcam.label.server:app

Settings (``--conf KEY VALUE``) and limits: see :class:`monai_pixelcam.label.app.PixelCAMApp` and the README
("MONAI Label", "Security").
"""

from monai_pixelcam.label.app import PixelCAMApp

__all__ = ["PixelCAMApp"]
