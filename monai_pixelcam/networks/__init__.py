"""Encoders, WSOL heads, the pixel head, PixelCAMNet and weight loading (torch + MONAI, no torchvision)."""

from .encoders import BasicBlock, Bottleneck, ResNetEncoder, VGG16Encoder, ViTTinyEncoder, resnet18, resnet18_slim, resnet50
from .factory import ENCODERS, HEADS, build_classifier, build_encoder, build_head, build_localizer, build_pixelcam
from .heads import CAMHead, DeepMILHead, PixelHead
from .pixelcam import PixelCAMLocalizer, PixelCAMNet, foreground_map
from .weights import WEIGHT_CONTAINER_KEYS, load_checkpoint, load_torchvision_weights, read_state_dict
from .wsol import WSOLClassifier, encoder_head_param_groups, unwrap_parallel

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNetEncoder",
    "VGG16Encoder",
    "ViTTinyEncoder",
    "resnet18",
    "resnet18_slim",
    "resnet50",
    "ENCODERS",
    "HEADS",
    "build_classifier",
    "build_encoder",
    "build_head",
    "build_localizer",
    "build_pixelcam",
    "CAMHead",
    "DeepMILHead",
    "PixelHead",
    "PixelCAMLocalizer",
    "PixelCAMNet",
    "foreground_map",
    "WEIGHT_CONTAINER_KEYS",
    "load_checkpoint",
    "load_torchvision_weights",
    "read_state_dict",
    "WSOLClassifier",
    "encoder_head_param_groups",
    "unwrap_parallel",
]
