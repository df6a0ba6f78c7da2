"""Block-wise training of a transformer backbone: which blocks train (``trainable_blocks``), the frozen part kept
in eval mode, and layer-wise learning-rate decay groups.

Shared by the encoders of local snapshots, :class:`~.snapshot.SnapshotEncoder` (Hugging Face) and
:class:`~.timm_snapshot.TimmSnapshotEncoder` (timm), which differ only in their parameter names: the mixin
:class:`BlockwiseTraining` reads them from ``self.backbone``, ``self.num_blocks``, ``self._layers_name`` (the dotted
name of the ``ModuleList`` of blocks) and ``self._embedding_names`` (the names, parameters or modules, that come
before the first block).
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["BlockwiseTraining"]


class BlockwiseTraining:
    """Mixin for an ``nn.Module`` encoder whose ``backbone`` is a transformer (see the module docstring).

    Depths: 0 the embeddings (``_embedding_names``), ``j + 1`` block ``j``, ``L + 1`` anything after the blocks
    (final norm).
    """

    backbone: nn.Module
    num_blocks: int
    _layers_name: str
    _embedding_names: tuple[str, ...]

    def _group_of(self, name: str) -> int:
        """Depth of backbone parameter ``name``."""
        if any(name == e or name.startswith(e + ".") for e in self._embedding_names):
            return 0
        prefix = self._layers_name + "."
        if name.startswith(prefix):
            return int(name[len(prefix):].split(".", 1)[0]) + 1
        return self.num_blocks + 1

    def _freeze(self, trainable_blocks: int | None) -> int | None:
        """Set ``requires_grad`` for ``trainable_blocks`` (None: all train; 0: all frozen; ``N``: the last ``N``
        blocks and what follows them) and return it checked.

        Raises:
            ValueError: not None nor an int in ``0..L``.
        """
        n_layers = self.num_blocks
        if trainable_blocks is not None:
            if isinstance(trainable_blocks, bool) or int(trainable_blocks) != trainable_blocks:
                raise ValueError(f"trainable_blocks must be None or an int, got {trainable_blocks!r}")
            trainable_blocks = int(trainable_blocks)
            if not 0 <= trainable_blocks <= n_layers:
                raise ValueError(
                    f"trainable_blocks must be None or in 0..{n_layers} (the model has {n_layers} blocks), "
                    f"got {trainable_blocks}"
                )
        # depths below `first` are frozen: 0 = nothing frozen; L + 2 = everything
        if trainable_blocks is None:
            first = 0
        elif trainable_blocks == 0:
            first = n_layers + 2
        else:
            first = n_layers - trainable_blocks + 1
        self._first_trainable_depth = first
        for name, p in self.backbone.named_parameters():
            unused = name.split(".")[-1] == "mask_token"  # masked-image pretraining only, never in our forward
            p.requires_grad_(not unused and self._group_of(name) >= first)
        self.train(self.training)
        return trainable_blocks

    def _frozen_modules(self) -> list[nn.Module]:
        first = self._first_trainable_depth
        if first == 0:
            return []
        if first > self.num_blocks + 1:
            return [self.backbone]
        layers = self.backbone.get_submodule(self._layers_name)
        embeddings = []
        for name in self._embedding_names:
            try:
                embeddings.append(self.backbone.get_submodule(name))
            except AttributeError:  # a parameter (class token, position embedding), or absent in this model
                continue
        return [*embeddings, *(layers[j] for j in range(first - 1))]

    def train(self, mode: bool = True):
        """Train/eval as usual, except that the frozen part (``trainable_blocks``) stays in eval mode: a frozen
        block with dropout or drop-path active would feed noise to the blocks that do learn."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def param_groups(self, lr: float, layer_decay: float = 1.0) -> list[dict]:
        """Optimiser groups with layer-wise learning-rate decay (BEiT / MAE style), trainable parameters only.

        With ``L`` blocks, numbered ``i = 1..L`` from the input (``blocks.<i-1>``): the embeddings (patch
        projection, class/register tokens, position embeddings) get ``lr * layer_decay ** L``, block ``i`` gets
        ``lr * layer_decay ** (L - i)`` and the final norm ``lr``. (MAE puts the embeddings one step further, at
        ``layer_decay ** (L + 1)``, and the last block at ``lr * layer_decay``.) Empty groups (frozen parts) are
        left out.

        Each group has ``"name"`` (``"encoder.embeddings"``, ``"encoder.blocks.<j>"``, ``"encoder.norm"``),
        ``"params"`` and ``"lr"``; :func:`~.snapshot.layer_decay_param_groups` splices them into a network's groups.

        Args:
            lr: the learning rate of the top of the encoder (> 0).
            layer_decay: in (0, 1]; 1 gives every group ``lr``.
        """
        if not lr > 0 or not 0 < layer_decay <= 1:
            raise ValueError(f"lr must be > 0 and layer_decay in (0, 1], got {lr}, {layer_decay}")
        n_layers = self.num_blocks
        by_depth: dict[int, list[nn.Parameter]] = {}
        for name, p in self.backbone.named_parameters():
            if p.requires_grad:
                by_depth.setdefault(self._group_of(name), []).append(p)
        groups = []
        for depth in sorted(by_depth):
            if depth == 0:
                label, exponent = "encoder.embeddings", n_layers
            elif depth <= n_layers:
                label, exponent = f"encoder.blocks.{depth - 1}", n_layers - depth
            else:
                label, exponent = "encoder.norm", 0
            groups.append({"name": label, "params": by_depth[depth], "lr": float(lr) * float(layer_decay) ** exponent})
        return groups
