"""timm-format local snapshots (UNI/UNI2, Virchow2, H-optimus, Prov-GigaPath) as feature-map encoders.

Such a folder is what the Hugging Face Hub keeps for a timm model, and what these gated models are downloaded
as once: ``config.json`` with ``architecture`` (a timm model name, e.g. ``vit_large_patch16_224``),
``model_args`` (its ``timm.create_model`` keyword arguments) and ``pretrained_cfg`` (``mean``, ``std``,
``input_size``), and the weights ``model.safetensors`` or ``pytorch_model.bin`` (read weights-only: no pickled
code runs). :func:`~.factory.build_encoder` (the bundle's ``--encoder_snapshot``) routes a folder with such a
config here and a Hugging Face ``transformers`` folder (``model_type``) to :class:`~.snapshot.SnapshotEncoder`.

:class:`TimmSnapshotEncoder` builds the model with ``timm.create_model(architecture, pretrained=False,
num_classes=0, global_pool="", dynamic_img_size=True, **model_args)`` (no head, no pooling: its forward returns
the final normed tokens, prefix first; ``dynamic_img_size`` interpolates the position embeddings for inputs of
another size, which the scale-matched input of ``configs/foundation.json`` needs), loads the local weights
strictly (a classifier ``head.*`` in the file is dropped) and is a :class:`~.tokens.TokenGridAdapter` on it, with
the same ``trainable_blocks``, layer-decay groups and ``blocks.<j>`` grid taps as the Hugging Face encoder. timm
is an optional dependency that these machines cannot import (its torchvision needs CUDA libraries), so the tests
run this module with a stand-in ``timm`` whose model returns timm-shaped tokens.

``model_args`` values that name Python objects (Virchow2's ``mlp_layer: "timm.layers.SwiGLUPacked"``,
``act_layer: "torch.nn.SiLU"``) are strings in the JSON, which ``timm.create_model`` does not resolve: a string
that is the dotted name of an object in ``timm.layers`` or ``torch.nn`` becomes that object (nothing else is
imported: the config is data). Other objects go through ``model_args`` (in Python, or a ``_target_`` of this
class in a config).
"""

from __future__ import annotations

import os
import pydoc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .blockwise import BlockwiseTraining
from .snapshot import _check_folder, _read_json
from .tokens import TokenGrid, TokenGridAdapter, _pair, _patch_side
from .weights import read_state_dict

__all__ = ["TimmSnapshotEncoder", "is_timm_config"]

#: parameters and modules of a timm ViT before its first block
_TIMM_EMBEDDINGS = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed", "pos_drop", "patch_drop",
                    "norm_pre")  # fmt: skip
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: the modules whose objects a ``model_args`` string may name
_RESOLVABLE = ("timm.layers.", "torch.nn.")


def is_timm_config(config: Mapping) -> bool:
    """Whether a snapshot's ``config.json`` describes a timm model (``architecture``) rather than a
    ``transformers`` one (``model_type``)."""
    return "architecture" in config and "model_type" not in config


def _resolve(model_args: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``model_args`` with each string that names a layer of ``timm.layers`` or ``torch.nn`` replaced by it."""
    out = {}
    for key, value in model_args.items():
        if isinstance(value, str) and value.startswith(_RESOLVABLE):
            found = pydoc.locate(value)
            if found is None:
                raise ValueError(f"timm snapshot {folder}: model_args {key!r} names {value!r}, which does not exist")
            value = found
        out[key] = value
    return out


def _require_timm():
    try:
        import timm
    except ImportError as e:  # optional, and it imports torchvision
        raise ImportError(
            "this snapshot is in timm format (config.json names an 'architecture'); loading it needs the 'timm' "
            "package: pip install timm"
        ) from e
    return timm


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file  # installed with transformers (the foundation extra)

            try:
                return load_file(str(path))
            except Exception as e:  # a truncated or foreign file
                raise ValueError(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})") from e
        return read_state_dict(path)
    raise FileNotFoundError(f"timm snapshot {folder} has no weights ({' or '.join(_WEIGHT_FILES)})")


class TimmSnapshotEncoder(BlockwiseTraining, TokenGridAdapter):
    """A local timm ViT snapshot as a feature-map encoder (see the module docstring).

    ``forward(x: B x 3 x H x W) -> B x D x H/p x W/p``, the final normed patch tokens; ``H``, ``W`` multiples of
    the patch size ``p``; input RGB in [0, 1], normalised inside with the snapshot's ``pretrained_cfg`` mean and
    std (ImageNet's when absent) unless ``normalize=False``.

    Args:
        snapshot: the folder (``config.json`` with ``architecture``; ``model.safetensors`` or ``pytorch_model.bin``).
        trainable_blocks: None all train, 0 frozen, ``N`` the last ``N`` blocks and the final norm
            (:class:`~.blockwise.BlockwiseTraining`).
        normalize: normalise the [0, 1] input first (default True).
        model_args: ``timm.create_model`` keyword arguments over the config's ``model_args``.

    Attributes: as :class:`~.snapshot.SnapshotEncoder` (``snapshot``, ``architecture`` in place of
    ``model_type``, ``num_blocks``, ``blocks`` taps, ``mean``, ``std``, ``image_size``, ``trainable_blocks``).

    Raises:
        ImportError: timm is not installed.
        FileNotFoundError: no weights file.
        ValueError: a config timm cannot build, weights that do not fit it (names the file), a model without the
            ViT layout (``patch_embed``, ``blocks``, ``num_prefix_tokens``), a bad ``trainable_blocks``.
    """

    def __init__(
        self,
        snapshot: str | os.PathLike,
        trainable_blocks: int | None = None,
        normalize: bool = True,
        model_args: Mapping[str, Any] | None = None,
    ) -> None:
        folder = Path(os.fspath(snapshot)).expanduser()
        _check_folder(folder)
        config = _read_json(folder / "config.json", "snapshot config")
        architecture = str(config.get("architecture"))
        timm = _require_timm()
        kwargs = {"dynamic_img_size": True, **_resolve(config.get("model_args") or {}, folder), **dict(model_args or {})}
        kwargs.update(num_classes=0, global_pool="")  # tokens out: no head, no pooling
        try:
            model = timm.create_model(architecture, pretrained=False, **kwargs)
        except Exception as e:  # unknown architecture, arguments it does not take
            raise ValueError(f"timm snapshot {folder}: timm cannot build {architecture!r} with {kwargs}: {e}") from e
        state = {k: v for k, v in _weights(folder).items() if not k.startswith("head.")}  # no classifier head here
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"timm snapshot {folder}: the weights do not fit {architecture}: {e}") from e
        layout = [n for n in ("patch_embed", "blocks", "num_prefix_tokens", "num_features") if not hasattr(model, n)]
        if layout:
            raise ValueError(f"timm snapshot {folder}: {architecture} is not a ViT-style token model (no {layout})")
        pretrained = config.get("pretrained_cfg") or {}
        input_size = pretrained.get("input_size")
        super().__init__(
            model, model.num_prefix_tokens, _patch_side(model.patch_embed.patch_size, f"timm snapshot {folder}"),
            model.num_features, mean=pretrained.get("mean"), std=pretrained.get("std"), normalize=normalize,
            image_size=_pair(input_size[-2:]) if input_size else None,
        )  # fmt: skip
        self.snapshot, self.architecture = str(folder), architecture
        self.num_blocks = len(model.blocks)
        self._layers_name, self._embedding_names = "blocks", _TIMM_EMBEDDINGS
        self.blocks = nn.ModuleList(TokenGrid(self.num_prefix_tokens) for _ in range(self.num_blocks))
        for block, tap in zip(model.blocks, self.blocks):
            block.register_forward_hook(self._tap(tap))
        self._grid: tuple[int, int] | None = None
        self.trainable_blocks = self._freeze(trainable_blocks)

    def _tap(self, tap: TokenGrid):
        def hook(module, args, output):
            if self._grid is not None:
                tap(output, *self._grid)

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x out_channels x H/p x W/p``; each block's tokens pass through its tap."""
        self._grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        try:
            return super().forward(x)
        finally:
            self._grid = None

    def extra_repr(self) -> str:
        return (
            f"snapshot={self.snapshot!r}, architecture={self.architecture!r}, out_channels={self.out_channels}, "
            f"stride={self.stride}, num_blocks={self.num_blocks}, trainable_blocks={self.trainable_blocks}"
        )
