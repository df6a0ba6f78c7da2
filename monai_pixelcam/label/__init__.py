"""MONAI Label tasks of PixelCAM: infer ``pixelcam``, train ``pixelcam``, active learning strategy
``pixelcam_uncertainty``, and the pieces that make the server safe on a shared network.

The app folder is ``apps/pixelcam`` (its ``main.py`` imports :class:`~monai_pixelcam.label.app.PixelCAMApp`):
``monailabel start_server --app apps/pixelcam --studies DIR --conf bundle_dir bundles/pixelcam --uvicorn_app
monai_pixelcam.label.server:app``. The pieces (they need the ``label`` extra, see the README):
:mod:`~monai_pixelcam.label.infer` (label images), :mod:`~monai_pixelcam.label.wsi_infer` and
:mod:`~monai_pixelcam.label.annotation` (contours for QuPath and DSA), :mod:`~monai_pixelcam.label.access`
(image ids through the datastore only, uploads of the request only), :mod:`~monai_pixelcam.label.datastore`
(ids, tags, images and labels checked), :mod:`~monai_pixelcam.label.activelearning`,
:mod:`~monai_pixelcam.label.train` and :mod:`~monai_pixelcam.label.train_options` (what a client may ask),
:mod:`~monai_pixelcam.label.limits` and :mod:`~monai_pixelcam.label.server` (the guard in front of MONAI
Label's server), :mod:`~monai_pixelcam.label.local_server` (a server on this machine, for scripts and tests);
:mod:`~monai_pixelcam.label.import_labels` sends a datalist's image classes and masks to a running server.
Importing this package itself does not import ``monailabel``.
"""
