"""monai-pixelcam: PixelCAM weakly supervised localization of regions of interest in histology images.

Stage map: every stage reads one datalist (:mod:`monai_pixelcam.data`: the datalist convention, readers,
converters, synthetic data; :mod:`monai_pixelcam.transforms`: loading, stain and colour chains)::

    source model      WSOLClassifier (encoder + image head), cross-entropy on image labels
         |            monai_pixelcam.networks (build_classifier), monai_pixelcam.engines (trainers, evaluators)
         v
    CAM store         each training image's true-class CAM, stored once with the checkpoint that made it
         |            monai_pixelcam.cams (CAM, GradCAM, GradCAM++, LayerCAM; CAMStore, LoadStoredCAMd)
         v
    PixelCAM          PixelCAMNet: encoder and image head from the source (PixelCAMNet.load_source) + a
         |            pixel head; pixel seeds drawn from the stored CAMs at every iteration, CE + partial CE
         |            monai_pixelcam.networks (build_pixelcam), monai_pixelcam.seeding, monai_pixelcam.losses,
         |            monai_pixelcam.engines, monai_pixelcam.handlers (what observes training)
         v
    evaluation        PxAP, Dice / mIoU at the valpx threshold, accuracy, figures
    / export          monai_pixelcam.metrics, monai_pixelcam.engines, monai_pixelcam.visualize;
                      the model folder (model.pt + model_meta.json): monai_pixelcam.export

The exported model then serves one-pass inference on images and slides (:mod:`monai_pixelcam.inference`) and
the MONAI Label app (:mod:`monai_pixelcam.label`). The MONAI bundle ``bundles/pixelcam`` wires the stages with
declarative configs.
"""

__version__ = "0.1.0"
