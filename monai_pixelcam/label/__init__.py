"""MONAI Label app: PixelCAM as an annotation assistant (infer task ``pixelcam``, train task ``pixelcam``,
active learning strategy ``pixelcam_uncertainty``).

This folder is the app directory: ``monailabel start_server --app monai_pixelcam/label --studies DIR
--conf bundle_dir bundles/pixelcam``. MONAI Label loads ``main.py`` from it by file path. The pieces (they
need the ``label`` extra, see the README): :mod:`~monai_pixelcam.label.infer` (label images),
:mod:`~monai_pixelcam.label.wsi_infer` and :mod:`~monai_pixelcam.label.annotation` (contours for QuPath and
DSA), :mod:`~monai_pixelcam.label.access` (image ids through the datastore only),
:mod:`~monai_pixelcam.label.activelearning`, :mod:`~monai_pixelcam.label.train`;
:mod:`~monai_pixelcam.label.import_labels` sends a datalist's image classes and masks to a running server.
Importing this package itself does not import ``monailabel``.
"""
