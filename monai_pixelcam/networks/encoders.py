"""Encoders that return the last feature map of an image, ``B x C x h x w``.

Every encoder has two attributes that the heads, the CAM extractors and the
pixel head rely on:

- ``out_channels``: ``C``, the channel count of the returned map;
- ``stride``: input pixels per feature pixel (``H / h`` for an input size that
  the encoder divides exactly).

The CNNs keep torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``features.N``) so that torchvision checkpoints load by name (see
:mod:`monai_pixelcam.networks.weights`); torchvision itself cannot be imported
here, so the architectures are written out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import look_up_option

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNetEncoder",
    "resnet18",
    "resnet50",
    "VGG16Encoder",
    "ViTTinyEncoder",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), torchvision layout."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1), torchvision layout: the stride sits on the 3x3 conv (v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetEncoder(nn.Module):
    """ResNet feature extractor (stem + ``layer1..layer4``, no pooling, no ``fc``).

    Args:
        block: ``"basic"`` (ResNet18/34) or ``"bottleneck"`` (ResNet50/101).
        layers: number of blocks in each of the four stages.
        base_width: channels of the stem and of ``layer1`` (64 in the standard
            ResNet); every stage scales with it, so ``base_width=16`` gives a
            compact CPU variant (ResNet18: about 0.7M parameters instead of 11.2M).
            Only ``base_width=64`` matches torchvision checkpoints.
        wsol_strides: if True (WSOL benchmark, Choe et al. 2020), ``layer3`` and
            ``layer4`` use stride 1 so the map has stride 8 (224 -> 28 x 28);
            if False, the standard strides give stride 32 (224 -> 7 x 7).
        in_channels: input channels.

    Input ``B x in_channels x H x W``; output ``B x out_channels x ceil(H/stride) x ceil(W/stride)``
    (exactly ``H/stride`` when ``stride`` divides ``H``), ``out_channels = 8 * base_width * expansion``.
    """

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        base_width: int = 64,
        wsol_strides: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        try:
            block_cls = look_up_option(block, _BLOCKS)
        except ValueError as e:
            raise ValueError(f"unknown ResNet block {block!r}: {e}") from None
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if base_width < 1:
            raise ValueError(f"base_width must be positive, got {base_width}")
        self.block = block
        self.base_width = int(base_width)
        self.wsol_strides = bool(wsol_strides)

        self.inplanes = self.base_width
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Stride 1 in layer3/layer4 keeps the map at 1/8 of the input: CAMs and pixel seeds at 28 x 28
        # instead of 7 x 7 for a 224 input, as in the WSOL benchmark and the PixelCAM reference.
        strides = (1, 2, 1, 1) if self.wsol_strides else (1, 2, 2, 2)
        widths = [self.base_width * m for m in (1, 2, 4, 8)]
        self.layer1 = self._make_layer(block_cls, widths[0], int(layers[0]), strides[0])
        self.layer2 = self._make_layer(block_cls, widths[1], int(layers[1]), strides[1])
        self.layer3 = self._make_layer(block_cls, widths[2], int(layers[2]), strides[2])
        self.layer4 = self._make_layer(block_cls, widths[3], int(layers[3]), strides[3])
        del self.inplanes
        self.out_channels = widths[3] * block_cls.expansion
        self.stride = 4 * strides[1] * strides[2] * strides[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block_cls.expansion, stride),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        layers = [block_cls(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block_cls.expansion
        layers += [block_cls(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_channels x H x W`` -> ``B x out_channels x h x w`` (after ReLU, so >= 0)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18(**kwargs) -> ResNetEncoder:
    """ResNet18 encoder (basic blocks 2-2-2-2); keyword arguments go to :class:`ResNetEncoder`."""
    return ResNetEncoder(block="basic", layers=(2, 2, 2, 2), **kwargs)


def resnet18_slim(**kwargs) -> ResNetEncoder:
    """ResNet18 at a quarter of the width (``base_width=16``, 0.7M parameters, 128 output channels): the
    bundle's default, trainable from scratch on a 2-core CPU in minutes. No torchvision weights fit it."""
    return ResNetEncoder(block="basic", layers=(2, 2, 2, 2), **{"base_width": 16, **kwargs})


def resnet50(**kwargs) -> ResNetEncoder:
    """ResNet50 encoder (bottleneck blocks 3-4-6-3); keyword arguments go to :class:`ResNetEncoder`."""
    return ResNetEncoder(block="bottleneck", layers=(3, 4, 6, 3), **kwargs)


# torchvision's VGG16 configuration "D": channel counts, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip


class VGG16Encoder(nn.Module):
    """Convolutional part of VGG16, WSOL variant, plus the extra ``conv6`` of the WSOL references.

    The WSOL benchmark (Choe et al. 2020, ``wsolevaluation``) and the reference
    code PixelCAM builds on (Belharbi et al., ``dlib/encoders/vgg.py``, config
    ``WSOL16``) drop the last *two* max-pools and add ``conv6`` (3x3, 512 -> 1024,
    ReLU): 224 -> 28 x 28 x 1024, stride 8. ``large_feature_map=False`` drops
    only the last max-pool (the benchmark's 14 x 14 option, stride 16).

    Dropped pools are replaced by ``nn.Identity`` (the final one is removed), so
    ``features.N`` keeps torchvision's index ``N`` and ``vgg16`` / ``vgg16_bn``
    checkpoints load by name; ``conv6`` has no torchvision counterpart and keeps
    its initialisation, as in the references.

    Args:
        batch_norm: BatchNorm after every conv (torchvision ``vgg16_bn`` layout).
        large_feature_map: stride 8 (True, default) or 16 (False).
        conv6: add the 512 -> 1024 conv6 + ReLU (default True); without it ``out_channels`` is 512.
        in_channels: input channels.

    Input ``B x in_channels x H x W``; output ``B x out_channels x H/stride x W/stride`` (floor), >= 0.
    """

    def __init__(
        self, batch_norm: bool = False, large_feature_map: bool = True, conv6: bool = True, in_channels: int = 3
    ) -> None:
        super().__init__()
        pool_positions = [i for i, v in enumerate(_VGG16_CFG) if v == "M"]
        dropped = set(pool_positions[-2:] if large_feature_map else pool_positions[-1:])
        layers: list[nn.Module] = []
        channels = in_channels
        for i, v in enumerate(_VGG16_CFG):
            if v == "M":
                layers.append(nn.Identity() if i in dropped else nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(v)
        self.features = nn.Sequential(*layers[:-1])  # the final pool is always dropped
        self.batch_norm = bool(batch_norm)
        self.large_feature_map = bool(large_feature_map)
        if conv6:
            self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
            self.relu6 = nn.ReLU(inplace=True)
        else:
            self.conv6 = None
            self.relu6 = None
        self.out_channels = 1024 if conv6 else 512
        self.stride = 8 if large_feature_map else 16

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_channels x H x W`` -> ``B x out_channels x h x w``."""
        x = self.features(x)
        if self.conv6 is not None and self.relu6 is not None:
            x = self.relu6(self.conv6(x))
        return x


def _require_einops() -> None:
    try:
        import einops  # noqa: F401
    except ImportError as e:  # MONAI's SABlock needs it and only says so on first use
        raise ImportError(
            "ViTTinyEncoder is built on monai.networks.blocks.TransformerBlock, which needs the 'einops' "
            "package: pip install einops"
        ) from e


class ViTTinyEncoder(nn.Module):
    """DeiT/ViT-tiny style transformer whose patch tokens form a feature map ``B x hidden_size x H/16 x W/16``.

    Built on MONAI's ``PatchEmbeddingBlock`` (conv patch projection + learnable
    position embeddings) and ``TransformerBlock`` (pre-norm attention + MLP),
    with a class token that takes part in attention but is not part of the
    returned map; a final LayerNorm is applied to all tokens. At 224 the map is
    ``B x 192 x 14 x 14``, so the CAM and pixel heads work on it unchanged.

    Inputs of another size are accepted when both sides are multiples of
    ``patch_size``: the position embeddings (learned on the ``img_size`` grid)
    are resized bicubically to the new grid.

    Args:
        img_size: training input size (square), a multiple of ``patch_size``.
        patch_size: patch side in pixels (= ``stride``).
        hidden_size: token dimension (= ``out_channels``).
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_dim: MLP hidden size (default ``4 * hidden_size``).
        dropout_rate: dropout in embeddings and blocks.
        in_channels: input channels.

    torchvision/timm weights are not mapped onto this encoder (see ``weights.py``).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 192,
        num_layers: int = 12,
        num_heads: int = 3,
        mlp_dim: int | None = None,
        dropout_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        _require_einops()
        from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock

        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size = int(img_size)
        self.patch_size = int(patch_size)
        self.grid_size = self.img_size // self.patch_size
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=(img_size, img_size),
            patch_size=(patch_size, patch_size),
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.cls_pos_embedding = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos_embedding, std=0.02)
        mlp_dim = 4 * hidden_size if mlp_dim is None else mlp_dim
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=True) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.out_channels = int(hidden_size)
        self.stride = self.patch_size

    def _position_embeddings(self, gh: int, gw: int) -> torch.Tensor:
        """Patch position embeddings ``1 x (gh*gw) x D``, resized from the training grid when it differs."""
        pos = self.patch_embedding.position_embeddings
        if gh == self.grid_size and gw == self.grid_size:
            return pos
        d = pos.shape[-1]
        grid = pos.reshape(1, self.grid_size, self.grid_size, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_channels x H x W`` (H, W multiples of ``patch_size``) -> ``B x hidden_size x H/p x W/p``."""
        h, w = x.shape[-2], x.shape[-1]
        if h % self.patch_size != 0 or w % self.patch_size != 0:
            raise ValueError(
                f"ViTTinyEncoder needs input sides that are multiples of patch_size={self.patch_size}, got {h} x {w}"
            )
        tokens = self.patch_embedding.patch_embeddings(x)  # B x D x gh x gw
        b, d, gh, gw = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2) + self._position_embeddings(gh, gw)
        cls = (self.cls_token + self.cls_pos_embedding).expand(b, -1, -1)
        z = self.patch_embedding.dropout(torch.cat([cls, tokens], dim=1))
        for blk in self.blocks:
            z = blk(z)
        z = self.norm(z)
        return z[:, 1:].transpose(1, 2).reshape(b, d, gh, gw)
