"""MONAI Label app: PixelCAM as an annotation assistant (infer task ``pixelcam``, train task ``pixelcam``).

This folder is the app directory: ``monailabel start_server --app monai_pixelcam/label --studies DIR
--conf bundle_dir bundles/pixelcam``. MONAI Label loads ``main.py`` from it by file path; the tasks live in
:mod:`monai_pixelcam.label.infer` and :mod:`monai_pixelcam.label.train` (they need the ``label`` extra,
see the README); :mod:`monai_pixelcam.label.import_labels` sends a datalist's image classes and masks to a
running server. Importing this package itself does not import ``monailabel``.
"""
