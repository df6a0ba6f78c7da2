"""Transformer encoders from local Hugging Face snapshots (and any timm-style token model) as feature-map encoders.

Our heads, CAM extractors and the pixel head need an encoder that maps ``B x 3 x H x W`` to a feature map
``B x C x h x w`` and carries ``out_channels`` (``C``) and ``stride`` (input pixels per feature pixel); see
:mod:`monai_pixelcam.networks.encoders`. A vision transformer gives tokens ``B x (prefix + h*w) x D`` instead:
a class token (and, for DINOv2 with registers, register tokens; for distilled DeiT a distillation token) then
one token per ``patch x patch`` patch in row-major order. :func:`tokens_to_grid` drops the prefix and lays the
patch tokens out as ``B x D x h x w``; both adapters here use it:

- :class:`SnapshotEncoder` loads a local snapshot folder (``config.json`` + ``model.safetensors``, optionally
  ``preprocessor_config.json``) with ``transformers``' ``AutoConfig`` / ``AutoModel`` and
  ``local_files_only=True``; nothing is ever downloaded. Model types: ``vit`` (``ViTModel``: DeiT, Phikon),
  ``deit`` (``DeiTModel``, distilled DeiT), ``dinov2`` (``Dinov2Model``: Phikon-v2, DINOv2) and
  ``dinov2_with_registers`` (``Dinov2WithRegistersModel``).
- :class:`TokenGridAdapter` wraps any module that returns such tokens (e.g. a timm ViT's ``forward_features``).

Input range. Both take RGB float in [0, 1], what :class:`~monai_pixelcam.transforms.NetworkInput` gives every
network, and normalise with the model's own ``mean`` / ``std`` inside (``normalize=True``, the default): a
pretrained transformer is far more sensitive to the input statistics it was trained on than our CNNs are, and
the pipeline has no mean/std step. With ``normalize=False`` the caller must normalise.

Middle blocks as grids (``distinct_layer``). :class:`~monai_pixelcam.cams.CrossClassDistinctiveness` hooks a
module by dotted name and needs its output to be ``B x C x h' x w'``; a transformer block outputs tokens.
:class:`SnapshotEncoder` therefore has ``blocks``, a ``ModuleList`` of parameter-free :class:`TokenGrid` taps, one
per transformer block: in every forward pass ``blocks.<j>`` is called on block ``j``'s output tokens (0-based;
the hidden state after block ``j``, before the final norm, taken from the model's public
``output_hidden_states``) and returns them as a grid ``B x D x h x w``. In a :class:`WSOLClassifier` or
:class:`PixelCAMNet` the encoder is ``encoder``, so ``distinct_layer: "encoder.blocks.5"`` is the output of the
6th block, and the distinct code runs unchanged. The taps observe: their output feeds nothing downstream, so
they serve the forward-hook readers (distinctiveness features) but not gradient CAMs (a Grad-CAM hooked on a tap
finds that the logits do not depend on it and says so); the CAMs use the default target, ``encoder``, the final
normalised tokens. The HF model itself sits at ``encoder.backbone`` with its own module names (which differ
between ``transformers`` versions: ``ViTModel.layers.<j>`` in 5.x, ``Dinov2Model.encoder.layer.<j>``); the tap
names do not.

TorchScript. ``torch.jit.script`` fails on these encoders (``transformers`` models are not scriptable), so a
:class:`~monai_pixelcam.networks.PixelCAMLocalizer` around one must be traced: ``torch.jit.trace`` works (checked
with transformers 5.25), and the trace takes other batch and input sizes (the sizes stay symbolic and
``transformers`` always interpolates the position embeddings while tracing), but the patch-multiple check is
Python and not part of the trace.

Bundle config (MONAI ``ConfigParser``)::

    "encoder": {"_target_": "monai_pixelcam.networks.snapshot.build_snapshot_encoder",
                "snapshot": "/models/phikon-v2", "trainable_blocks": 4},
    "network_def": {"_target_": "monai_pixelcam.networks.WSOLClassifier", "encoder": "@encoder",
                    "image_head": {"_target_": "monai_pixelcam.networks.CAMHead",
                                   "in_channels": "$@encoder.out_channels", "num_classes": 2}}

Layer-wise learning-rate decay. :meth:`SnapshotEncoder.param_groups` gives ``(lr, layer_decay)`` groups; the
networks' own ``param_groups(lr, head_lr_mult)`` put the whole encoder in one ``"encoder"`` group.
:func:`layer_decay_param_groups` composes the two: it takes the network's groups, replaces its ``"encoder"`` group
by the encoder's decayed groups (checking that they hold the same parameters) and keeps the heads' group at
``lr * head_lr_mult``; pass its result to the optimiser where ``network.param_groups(lr, head_lr_mult)`` goes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

from . import tokens
from .blockwise import BlockwiseTraining
from .tokens import IMAGENET_MEAN, IMAGENET_STD, TokenGrid, _grid_size, _Normalize, _pair, _patch_side, _stats
from .wsol import unwrap_parallel

__all__ = [
    "SNAPSHOT_MODEL_TYPES",
    "SnapshotEncoder",
    "build_snapshot_encoder",
    "layer_decay_param_groups",
]



@dataclass(frozen=True)
class _Family:
    """What differs between the supported ``transformers`` model types."""

    #: class name in ``transformers`` (documentation and error messages; the class comes from ``AutoModel``)
    model_class: str
    #: class token, register tokens, distillation token: the tokens before the patch tokens
    num_prefix_tokens: Callable[[Any], int]
    #: extra keyword arguments of the model's ``__init__`` (through ``from_pretrained``)
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: extra keyword arguments of the model's ``forward``
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)


# ViT and DeiT only resize their position embeddings when asked (``interpolate_pos_encoding=True``; otherwise a
# size other than ``config.image_size`` raises); the DINOv2 embeddings always interpolate. The pooler of
# ViT/DeiT (a dense layer on the class token) is not used here: ``add_pooling_layer=False`` keeps it out of the
# parameters (its checkpoint weights, if any, are reported as unexpected by transformers and dropped).
_FAMILIES: dict[str, _Family] = {
    "vit": _Family(
        "ViTModel", lambda c: 1, {"add_pooling_layer": False}, {"interpolate_pos_encoding": True}
    ),
    "deit": _Family(
        "DeiTModel", lambda c: 2, {"add_pooling_layer": False}, {"interpolate_pos_encoding": True}
    ),
    "dinov2": _Family("Dinov2Model", lambda c: 1),
    "dinov2_with_registers": _Family("Dinov2WithRegistersModel", lambda c: 1 + int(c.num_register_tokens)),
}

#: the ``model_type`` values (``config.json``) that :class:`SnapshotEncoder` loads
SNAPSHOT_MODEL_TYPES: tuple[str, ...] = tuple(_FAMILIES)


# ------------------------------------------------------------------------------------------ snapshot loading


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # an optional dependency: only the snapshot encoders need it
        raise ImportError(
            "SnapshotEncoder loads Hugging Face snapshots with the 'transformers' package (5.x): "
            'pip install "transformers>=5,<6"'
        ) from e
    return transformers


def _read_json(path: Path, what: str) -> dict:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_folder(folder: Path) -> None:
    """FileNotFoundError unless ``folder`` is a folder with a ``config.json`` (any snapshot, before any library
    is asked to read it: a missing folder must never turn into a Hub lookup)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"snapshot folder {folder} does not exist (or is not a folder); give the local folder of a Hugging Face "
            "snapshot (config.json + model.safetensors). Nothing is downloaded."
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"snapshot folder {folder} has no config.json ({config_file})")


def _check_snapshot(folder: Path) -> dict:
    """The snapshot's ``config.json`` as a dict, after checking the folder holds a config and safetensors weights."""
    _check_folder(folder)
    weights = [folder / "model.safetensors", folder / "model.safetensors.index.json"]
    if not any(w.is_file() for w in weights):
        raise FileNotFoundError(
            f"snapshot folder {folder} has no safetensors weights ({weights[0]} or {weights[1].name}); "
            "pickle checkpoints (pytorch_model.bin) are not loaded"
        )
    return _read_json(folder / "config.json", "snapshot config")


def _preprocessing(folder: Path, config) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, int]]:
    """``(mean, std, image_size)`` from ``preprocessor_config.json`` when present, else ImageNet's statistics and
    ``config.image_size``. The size is the crop the processor feeds the model (``crop_size`` when it centre-crops,
    else an explicit ``size`` ``{height, width}``), falling back on the config's."""
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, None
    pre_file = folder / "preprocessor_config.json"
    if pre_file.is_file():
        pre = _read_json(pre_file, "preprocessor config")
        mean = _stats(pre.get("image_mean"), IMAGENET_MEAN)
        std = _stats(pre.get("image_std"), IMAGENET_STD)
        candidates = [pre.get("crop_size")] if pre.get("do_center_crop", "crop_size" in pre) else []
        candidates.append(pre.get("size"))
        for c in candidates:
            if isinstance(c, Mapping) and "height" in c and "width" in c:
                size = (int(c["height"]), int(c["width"]))
                break
            if isinstance(c, int) and not isinstance(c, bool):
                size = (c, c)
                break
    if size is None:
        size = _pair(config.image_size)
    return mean, std, size


def _find_layers(backbone: nn.Module, num_layers: int, folder: Path) -> str:
    """Dotted name of the ``ModuleList`` of transformer blocks in the HF model (``layers`` in transformers 5's ViT,
    ``encoder.layer`` in its DINOv2); looked up rather than hard-coded because the names change between releases."""
    for name in ("layers", "encoder.layer", "encoder.layers", "blocks"):
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name
    found = [n for n, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if len(found) != 1:
        raise ValueError(
            f"snapshot {folder}: cannot find the {num_layers} transformer blocks in {type(backbone).__name__} "
            f"(ModuleLists of that length: {found})"
        )
    return found[0]


class SnapshotEncoder(BlockwiseTraining, nn.Module):
    """A local Hugging Face ViT / DeiT / DINOv2 snapshot as a feature-map encoder (see the module docstring).

    ``forward(x: B x 3 x H x W) -> B x hidden_size x H/p x W/p``: the final (layer-normed) patch tokens of the
    model, class/register/distillation tokens dropped. ``H`` and ``W`` must be multiples of the patch size ``p``
    (ValueError otherwise); any such size works, the position embeddings are interpolated from the pretraining
    grid (bicubic, by ``transformers``). Input RGB float in [0, 1] with ``normalize=True`` (default), else already
    normalised with ``mean`` / ``std``. Output: unbounded floats.

    Args:
        snapshot: local folder with ``config.json`` and ``model.safetensors`` (or a safetensors index), optionally
            ``preprocessor_config.json``. Never downloaded: a missing folder or file raises FileNotFoundError.
        trainable_blocks: None: everything trains (full fine-tuning); 0: the whole transformer is frozen;
            ``N``: the last ``N`` blocks and what follows them (final norm) train, the embeddings and the first
            ``L - N`` blocks are frozen. Frozen parameters have ``requires_grad=False`` and their modules stay in
            eval mode (no dropout / drop-path) under ``train()``. A mask token (DINOv2's, for masked-image
            pretraining) is never used by this forward pass and is always frozen, so that DDP finds no unused
            trainable parameter.
        normalize: normalise [0, 1] RGB input with ``mean`` / ``std`` first (default True).
        block_grids: call the ``blocks.<j>`` taps in every forward pass (default True). It asks the model for its
            hidden states (one extra reference per block, kept only during the call); False saves that memory at
            inference when no hook reads the blocks.
        attn_implementation: ``transformers`` attention backend (``"sdpa"``, ``"eager"``; None: its default).

    Attributes:
        out_channels, stride: ``hidden_size`` and ``patch_size`` (the encoder contract).
        patch_size, num_prefix_tokens, num_blocks, model_type, snapshot (the folder, a str).
        mean, std: the model's RGB input statistics (``image_mean`` / ``image_std`` of the preprocessor config,
            else ImageNet's), tuples of 3 floats.
        image_size: ``(H, W)`` the model was trained on (preprocessor crop size, else ``config.image_size``).
        backbone: the ``transformers`` model; blocks: one :class:`TokenGrid` tap per transformer block.

    Raises:
        FileNotFoundError: no folder, no ``config.json`` or no safetensors weights.
        ValueError: an unsupported ``model_type`` (the message lists the supported ones), weights that leave
            model parameters missing, a bad ``trainable_blocks``.
    """

    def __init__(
        self,
        snapshot: str | os.PathLike,
        trainable_blocks: int | None = None,
        normalize: bool = True,
        block_grids: bool = True,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        folder = Path(os.fspath(snapshot)).expanduser()
        raw = _check_snapshot(folder)
        model_type = raw.get("model_type")
        if model_type not in _FAMILIES:
            raise ValueError(
                f"snapshot {folder}: model_type {model_type!r} is not supported; SnapshotEncoder loads "
                f"{', '.join(SNAPSHOT_MODEL_TYPES)}"
            )
        family = _FAMILIES[model_type]
        transformers = _require_transformers()
        # local_files_only + a folder checked above: transformers reads the files and never asks the Hub;
        # trust_remote_code=False: no code from the snapshot runs.
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        load_kwargs: Dict[str, Any] = dict(family.init_kwargs)
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        backbone, info = transformers.AutoModel.from_pretrained(
            folder,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            # transformers 5 loads in the checkpoint's dtype by default ("auto"); the pipeline runs float32 and
            # leaves mixed precision to autocast
            dtype=torch.float32,
            output_loading_info=True,
            **load_kwargs,
        )
        # A parameter the file lacks would be left at its random initialisation: refuse rather than fine-tune it.
        missing = sorted(str(k) for k in info.get("missing_keys", ()))
        if missing:
            raise ValueError(
                f"snapshot {folder}: the weights leave {len(missing)} parameter(s) of {type(backbone).__name__} "
                f"uninitialised: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )

        self.backbone = backbone
        self.snapshot = str(folder)
        self.model_type = str(model_type)
        self.num_prefix_tokens = int(family.num_prefix_tokens(config))
        self.patch_size = _patch_side(config.patch_size, f"snapshot {folder}")
        self.stride = self.patch_size
        self.out_channels = int(config.hidden_size)
        self.num_blocks = int(config.num_hidden_layers)
        self.mean, self.std, self.image_size = _preprocessing(folder, config)
        self.normalize = _Normalize(self.mean, self.std) if normalize else nn.Identity()
        self.block_grids = bool(block_grids)
        self._forward_kwargs: Dict[str, Any] = dict(family.forward_kwargs)
        self._layers_name = _find_layers(backbone, self.num_blocks, folder)
        self._embedding_names = ("embeddings",)
        self.blocks = nn.ModuleList(TokenGrid(self.num_prefix_tokens) for _ in range(self.num_blocks))
        self.trainable_blocks = self._freeze(trainable_blocks)

    # ---------------------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x out_channels x H/p x W/p`` (see the class docstring)."""
        grid = _grid_size(x, self.patch_size, f"SnapshotEncoder({self.model_type})")
        out = self.backbone(
            pixel_values=self.normalize(x),
            output_hidden_states=self.block_grids,
            return_dict=True,
            **self._forward_kwargs,
        )
        if self.block_grids:
            hidden = out.hidden_states
            # hidden_states: the embeddings, then the output of each block (before the final norm)
            if hidden is None or len(hidden) != self.num_blocks + 1:
                raise RuntimeError(
                    f"{type(self.backbone).__name__} returned {0 if hidden is None else len(hidden)} hidden states, "
                    f"expected {self.num_blocks + 1} (embeddings + one per block)"
                )
            for j, tap in enumerate(self.blocks):
                tap(hidden[j + 1], grid[0], grid[1])
        return tokens.tokens_to_grid(out.last_hidden_state, self.num_prefix_tokens, grid)

    def extra_repr(self) -> str:
        return (
            f"snapshot={self.snapshot!r}, model_type={self.model_type!r}, out_channels={self.out_channels}, "
            f"stride={self.stride}, num_blocks={self.num_blocks}, trainable_blocks={self.trainable_blocks}"
        )


def build_snapshot_encoder(
    snapshot: str | os.PathLike, trainable_blocks: int | None = None, **kwargs
) -> SnapshotEncoder:
    """:class:`SnapshotEncoder` for the local snapshot folder ``snapshot`` (a bundle ``_target_``).

    ``trainable_blocks``: None full fine-tuning, 0 frozen, ``N`` the last ``N`` blocks + final norm; ``kwargs``
    (``normalize``, ``block_grids``, ``attn_implementation``) go to :class:`SnapshotEncoder`.
    """
    return SnapshotEncoder(snapshot, trainable_blocks=trainable_blocks, **kwargs)


def layer_decay_param_groups(
    network: nn.Module, lr: float, head_lr_mult: float = 10.0, layer_decay: float = 0.75
) -> list[dict]:
    """``network.param_groups(lr, head_lr_mult)`` with its ``"encoder"`` group split by layer-wise decay.

    For a :class:`~monai_pixelcam.networks.WSOLClassifier` or :class:`~monai_pixelcam.networks.PixelCAMNet`
    (or a parallel wrapper around one) whose ``encoder`` has ``param_groups(lr, layer_decay)`` (a
    :class:`SnapshotEncoder`): the encoder's groups (:meth:`SnapshotEncoder.param_groups`) then the network's
    other groups as it builds them (the heads at ``lr * head_lr_mult``). Frozen parameters stay out.

    Raises:
        TypeError: the encoder has no ``param_groups``.
        ValueError: the encoder's groups and the network's ``"encoder"`` group hold different parameters.
    """
    net = unwrap_parallel(network)
    encoder = getattr(net, "encoder", None)
    if not callable(getattr(encoder, "param_groups", None)):
        raise TypeError(
            f"layer_decay_param_groups needs network.encoder.param_groups(lr, layer_decay); "
            f"{type(encoder).__name__} has none"
        )
    groups = net.param_groups(lr, head_lr_mult)
    encoder_groups = encoder.param_groups(lr, layer_decay)
    replaced = {id(p) for g in groups if g.get("name") == "encoder" for p in g["params"]}
    split = {id(p) for g in encoder_groups for p in g["params"]}
    if replaced != split:
        raise ValueError(
            f"the encoder's layer-decay groups hold {len(split)} parameters but the network's 'encoder' group "
            f"{len(replaced)}; they must be the same"
        )
    return encoder_groups + [g for g in groups if g.get("name") != "encoder"]
