"""Vision-transformer tokens as the feature maps our heads and CAMs take.

A vision transformer gives tokens ``B x (prefix + h*w) x D``: a class token (and register or distillation
tokens) then one token per ``patch x patch`` patch in row-major order. :func:`tokens_to_grid` drops the prefix
and lays the patch tokens out as ``B x D x h x w``; :class:`TokenGridAdapter` makes any token model (e.g. a timm
ViT's ``forward_features``) an encoder with it, and :class:`~.snapshot.SnapshotEncoder` (Hugging Face snapshots)
uses it too. Inputs are RGB float in [0, 1], normalised inside with the model's own ``mean`` / ``std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Tuple

import torch
import torch.nn as nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "tokens_to_grid", "TokenGrid", "TokenGridAdapter"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _patch_side(patch_size: int | Sequence[int], what: str) -> int:
    """The side of a square patch given as an int or ``(p, p)``."""
    if isinstance(patch_size, Sequence):
        sides = {int(s) for s in patch_size}
        if len(sides) != 1:
            raise ValueError(f"{what}: only square patches are supported, got patch_size {tuple(patch_size)}")
        patch_size = sides.pop()
    if int(patch_size) < 1:
        raise ValueError(f"{what}: patch_size must be positive, got {patch_size}")
    return int(patch_size)


def _grid_size(x: torch.Tensor, patch_size: int, what: str) -> Tuple[int, int]:
    """``(H / p, W / p)`` for ``x`` ``B x 3 x H x W``; ValueError unless both sides are multiples of ``p``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{what} needs a B x 3 x H x W tensor, got {getattr(x, 'shape', type(x).__name__)}")
    h, w = x.shape[-2], x.shape[-1]
    if h % patch_size or w % patch_size or h == 0 or w == 0:
        raise ValueError(
            f"{what} needs input sides that are positive multiples of its patch size {patch_size}, got {h} x {w} "
            f"(resize or crop to e.g. {max(1, round(h / patch_size)) * patch_size} x "
            f"{max(1, round(w / patch_size)) * patch_size})"
        )
    # no int(): under torch.jit.trace the sizes stay symbolic, so a traced encoder takes other input sizes
    return h // patch_size, w // patch_size


def tokens_to_grid(tokens: torch.Tensor, num_prefix_tokens: int, grid_size: Tuple[int, int]) -> torch.Tensor:
    """Patch tokens laid out as a feature map.

    Args:
        tokens: ``B x (num_prefix_tokens + h*w) x D``: the prefix tokens (class, registers, distillation) first,
            then the patch tokens in row-major order, as ViT/DeiT/DINOv2 (``transformers`` and timm) emit them.
        num_prefix_tokens: tokens to drop from the front (>= 0).
        grid_size: ``(h, w)``, the patch grid of the input (``H / patch``, ``W / patch``).

    Returns:
        ``B x D x h x w``, a view of ``tokens`` (no copy; same values and dtype, any range).
    """
    h, w = grid_size[0], grid_size[1]
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be B x N x D, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(
            f"got {tokens.shape[1]} tokens, expected {num_prefix_tokens} prefix tokens + {h} x {w} patch tokens "
            f"= {num_prefix_tokens + h * w}"
        )
    # B x N x D -> drop prefix -> B x D x (h*w) -> B x D x h x w; splitting the last dim keeps it a view.
    # Sizes are read from the tensors (not int()-ed) so that a torch.jit.trace stays valid for other sizes.
    return tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class TokenGrid(nn.Module):
    """Parameter-free module ``tokens B x (prefix + h*w) x D -> B x D x h x w`` (:func:`tokens_to_grid`).

    :class:`SnapshotEncoder` calls one per transformer block (``blocks.<j>``) so that a forward hook on it sees
    that block's output as a feature map (what ``distinct_layer`` needs).
    """

    def __init__(self, num_prefix_tokens: int) -> None:
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)

    def forward(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        return tokens_to_grid(tokens, self.num_prefix_tokens, (grid_h, grid_w))

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"


class _Normalize(nn.Module):
    """``(x - mean) / std`` per RGB channel; the statistics are non-persistent buffers (they follow ``.to()`` but
    stay out of the state dict, which therefore holds exactly the transformer's weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"mean and std must be three values (std > 0), got {tuple(mean)} and {tuple(std)}")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _stats(values: Sequence[float] | None, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"expected three RGB values, got {values!r}")
    return out  # type: ignore[return-value]


class TokenGridAdapter(nn.Module):
    """Any token model as a feature-map encoder: ``B x 3 x H x W -> B x hidden_size x H/p x W/p``.

    Args:
        module: ``B x 3 x H x W -> B x (num_prefix_tokens + (H/p)(W/p)) x hidden_size`` tokens, prefix first,
            patch tokens row-major (e.g. a timm ViT's ``forward_features``, wrapped in a module). Registered as
            ``backbone``.
        num_prefix_tokens: class / register / distillation tokens before the patch tokens (timm:
            ``model.num_prefix_tokens``).
        patch_size: ``p``, pixels per token side (= ``stride``).
        hidden_size: ``D`` (= ``out_channels``).
        mean, std: RGB input statistics of the model (default ImageNet's).
        normalize: normalise ``[0, 1]`` input with ``mean`` / ``std`` before ``module`` (default True, see the
            module docstring); False passes the input through as is.
        image_size: the model's training size ``(H, W)``, informative only (None: unknown).

    Input: float ``B x 3 x H x W``, ``H`` and ``W`` multiples of ``p`` (ValueError otherwise), RGB in [0, 1] with
    ``normalize=True``. Output: ``B x hidden_size x H/p x W/p``, the patch tokens (unbounded floats).
    """

    def __init__(
        self,
        module: nn.Module,
        num_prefix_tokens: int,
        patch_size: int | Sequence[int],
        hidden_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: bool = True,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if int(num_prefix_tokens) < 0 or int(hidden_size) < 1:
            raise ValueError(
                f"num_prefix_tokens must be >= 0 and hidden_size >= 1, got {num_prefix_tokens}, {hidden_size}"
            )
        self.backbone = module
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_size = _patch_side(patch_size, type(self).__name__)
        self.stride = self.patch_size
        self.out_channels = int(hidden_size)
        self.mean, self.std = _stats(mean, IMAGENET_MEAN), _stats(std, IMAGENET_STD)
        self.image_size = None if image_size is None else _pair(image_size)
        self.normalize = _Normalize(self.mean, self.std) if normalize else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x out_channels x H/p x W/p``."""
        grid = _grid_size(x, self.patch_size, type(self).__name__)
        tokens = self.backbone(self.normalize(x))
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or int(tokens.shape[-1]) != self.out_channels:
            raise ValueError(
                f"{type(self).__name__}: the wrapped {type(self.backbone).__name__} must return B x N x "
                f"{self.out_channels} tokens, got {getattr(tokens, 'shape', type(tokens).__name__)}"
            )
        return tokens_to_grid(tokens, self.num_prefix_tokens, grid)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, Sequence):
        h, w = (int(s) for s in size)
        return h, w
    return int(size), int(size)
