"""monai-pixelcam: PixelCAM weakly supervised localization of regions of interest in histology images."""

__version__ = "0.1.0"
