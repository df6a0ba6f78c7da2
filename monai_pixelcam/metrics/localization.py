"""Pixel-level localization metrics of the WSOL evaluation protocol (Choe et al., CVPR 2020).

All three metrics pool every pixel of every evaluated image and accumulate the same thing: a histogram of
the scores of ground-truth positive and negative pixels over a fixed threshold grid (:class:`PixelHistogram`).
From those counts alone follow

- PxAP, the area under the pixel precision-recall curve (:class:`PxAPMetric`);
- foreground Dice and mIoU at any grid threshold (:class:`LocalizationDiceMetric`);
- the threshold that maximises mIoU (:class:`ThresholdSelector`), chosen on valpx and then applied to test.

Because the histogram is additive, batches can be accumulated in any order and split across ranks, and
memory does not grow with the number of pixels.

Images without a region of interest (the negative classes, e.g. CAMELYON16 "normal") are excluded from
localization metrics: pass ``include=`` to the metrics, or use :func:`from_engine_roi` as the Ignite
``output_transform`` of the handlers :class:`PxAP`, :class:`LocalizationDice` and :class:`ThresholdSelection`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_tensor

__all__ = [
    "PixelHistogram",
    "PxAPMetric",
    "LocalizationDiceMetric",
    "ThresholdSelector",
    "select_threshold",
    "select_included",
    "from_engine_roi",
    "PxAP",
    "LocalizationDice",
    "ThresholdSelection",
]

KeyPath = str | Sequence[str]


class PixelHistogram:
    """Counts of ground-truth negative and positive pixels per score bin, and the statistics derived from them.

    Threshold grid and bins: thresholds ``t_k = k / num_bins`` for ``k = 0 .. num_bins`` (0, 0.001, ..., 1 with
    the default 1000). Bin ``k`` holds the scores ``t_k <= s < t_{k+1}``; the last bin (``k = num_bins``) holds
    the scores equal to 1. A pixel is predicted positive at threshold ``t_k`` when ``s >= t_k``, i.e. when its
    bin is ``>= k``: ties at a threshold count as positive (as ``AsDiscrete(threshold=...)`` and
    wsolevaluation's ``np.histogram`` bins do). This is Choe et al.'s wsolevaluation ``MaskEvaluator`` layout,
    whose extra ``[1, 2)`` bin is our last bin.

    Comparisons are exact in the scores' dtype: ``t_k`` is ``k / num_bins`` rounded to float32 (float64 for
    float64 maps), as in ``scores >= t`` on the tensor, so a map saved with 3 decimals falls exactly into its
    own bins and Dice at ``t`` equals Dice of ``AsDiscrete(threshold=t)``. (A plain ``floor(s * 1000)`` puts
    some float32 grid values one bin low.)

    Counts are a ``2 x (num_bins + 1)`` int64 array: row 0 ground-truth negatives, row 1 positives.

    Args:
        num_bins: number of steps of the threshold grid; 1000 gives the protocol's step of 0.001.
    """

    def __init__(self, num_bins: int = 1000) -> None:
        if int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.thresholds = np.arange(self.num_bins + 1, dtype=np.float64) / self.num_bins
        # bin = floor(s * scale), then one step down where s < t_bin. The scale is 1 ppm above num_bins so that
        # float rounding can only put a score one bin too high (near an edge), never too low.
        self._scale = self.num_bins * (1.0 + 2.0**-20)

    @property
    def shape(self) -> tuple[int, int]:
        return 2, self.num_bins + 1

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Histogram of one batch.

        Args:
            y_pred: ``B x 1 x H x W`` (or ``B x 1 x D x H x W``) float score maps in [0, 1]; values outside are
                clipped to [0, 1], NaN is an error. Bool maps count as 0/1.
            y: ground-truth masks of the same shape, values in {0, 1} (float, int or bool).

        Returns:
            ``2 x (num_bins + 1)`` int64 counts on ``y_pred``'s device (row 0 negatives, row 1 positives).
        """
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"y_pred and y must be tensors, got {type(y_pred).__name__} and {type(y).__name__}")
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred shape {tuple(y_pred.shape)} does not match y shape {tuple(y.shape)}")
        if y_pred.ndim < 3 or y_pred.shape[1] != 1:
            raise ValueError(f"expected B x 1 x H x W score maps and masks, got shape {tuple(y_pred.shape)}")
        if not (y_pred.is_floating_point() or y_pred.dtype == torch.bool):
            raise TypeError(f"y_pred must hold float scores in [0, 1], got dtype {y_pred.dtype}")
        # Counting runs in numpy on the CPU: on the 2-core dev machine, with other jobs running, it takes 76 ms
        # for 10M pixels against 217 ms for the same ops in torch on 1 thread and 660 ms on 2 (torch's
        # bincount is slow and its threaded kernels stall under load). Maps on a GPU cost one copy; the counts
        # go back to y_pred's device so that distributed gathering works with any backend.
        if y_pred.dtype not in (torch.float32, torch.float64):
            y_pred = y_pred.float()  # bool, half, bfloat16
        scores, mask = y_pred.detach().cpu().numpy(), y.detach().cpu().numpy()
        if mask.dtype != np.bool_ and ((mask != 0) & (mask != 1)).any():
            values = np.unique(mask)[:8].tolist()
            raise ValueError(
                f"masks must be binary with values in {{0, 1}}, got values such as {values}; "
                "resize masks with nearest-neighbour interpolation or threshold them first"
            )
        dtype = scores.dtype.type
        scores = np.clip(scores, 0.0, 1.0, dtype=dtype)  # a copy: the caller's map is untouched
        if np.isnan(scores.min(initial=0.0)):  # min propagates NaN; initial allows an empty batch
            raise ValueError("y_pred contains NaN; score maps must be finite values in [0, 1]")
        key = scores * dtype(self._scale)
        np.floor(key, out=key)
        # k / num_bins in the scores' dtype is the correctly rounded t_k, the value `scores >= t_k` compares with
        key -= scores < key / dtype(self.num_bins)
        # one key per pixel, bin + (num_bins + 1) * label, so that a single bincount gives both rows
        key += mask.astype(dtype, copy=False) * dtype(self.num_bins + 1)
        counts = np.bincount(key.ravel().astype(np.intp), minlength=2 * (self.num_bins + 1))
        return torch.from_numpy(counts.astype(np.int64, copy=False)).view(2, self.num_bins + 1).to(y_pred.device)

    def zeros(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Counts of an empty batch."""
        return torch.zeros(self.shape, dtype=torch.long, device=device)

    def threshold_index(self, threshold: float) -> int:
        """Grid index ``k`` of ``threshold = k / num_bins``; thresholds off the grid are an error."""
        k = round(float(threshold) * self.num_bins)
        if not 0 <= k <= self.num_bins or abs(k - float(threshold) * self.num_bins) > 1e-6:
            raise ValueError(
                f"threshold {threshold!r} is not on the grid 0, 1/{self.num_bins}, ..., 1 of the accumulated "
                f"histograms; round it to {1 / self.num_bins:g} or use a finer num_bins"
            )
        return k

    def confusion(self, counts: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """True/false positives/negatives at every grid threshold.

        Args:
            counts: ``2 x (num_bins + 1)`` accumulated counts.

        Returns:
            ``{"tp", "fp", "fn", "tn"}``, float64 arrays of length ``num_bins + 1``, index ``k`` for ``t_k``.

        Raises:
            ValueError: no pixel, or no positive pixel, was accumulated (the scores are then undefined).
        """
        counts = np.asarray(convert_to_tensor(counts, track_meta=False).cpu(), dtype=np.float64)
        if counts.shape != self.shape:
            raise ValueError(f"counts must have shape {self.shape}, got {counts.shape}")
        neg, pos = counts
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos + n_neg == 0:
            raise ValueError("no pixel was accumulated: call the metric on at least one included image first")
        if n_pos == 0:
            raise ValueError(
                f"no positive ground-truth pixel among the {int(n_neg)} pixels accumulated, so localization "
                "scores are undefined; exclude images without a region of interest (negative classes) and "
                "check that the masks were loaded"
            )
        # predicted positive at t_k <=> bin >= k: cumulative sums from the top of the grid
        tp = np.cumsum(pos[::-1])[::-1]
        fp = np.cumsum(neg[::-1])[::-1]
        return {"tp": tp, "fp": fp, "fn": n_pos - tp, "tn": n_neg - fp}

    def pr_curve(self, counts: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel precision and recall at the grid thresholds, for a PR-curve figure.

        One point per non-empty bin (a threshold between two occupied bins repeats the point above it).

        Returns:
            ``(precision, recall, thresholds)``, float64 arrays of equal length, thresholds increasing
            (recall decreasing); for scores on the grid these are sklearn's ``precision_recall_curve`` points
            without its final ``(precision 1, recall 0)`` sentinel.
        """
        c = self.confusion(counts)
        predicted = c["tp"] + c["fp"]
        keep = -np.diff(predicted, append=0.0) > 0  # pixels in bin k
        precision = c["tp"][keep] / predicted[keep]
        recall = c["tp"][keep] / (c["tp"][0] + c["fn"][0])
        return precision, recall, self.thresholds[keep]

    def average_precision(self, counts: np.ndarray | torch.Tensor) -> float:
        """PxAP in [0, 1]: ``sum_k (recall_k - recall_{k+1}) * precision_k`` over the grid (``recall_{K+1} = 0``).

        The recall increment at ``t_k`` is the share of positive pixels in bin ``k``, so this is sklearn's
        ``average_precision_score`` with the scores quantised to the grid, and equal to it when they already are.
        """
        c = self.confusion(counts)
        n_pos = c["tp"][0] + c["fn"][0]
        predicted = c["tp"] + c["fp"]
        # where nothing is predicted positive there is no positive pixel in the bin either: the term is 0
        precision = np.divide(c["tp"], predicted, out=np.zeros_like(predicted), where=predicted > 0)
        recall_step = -np.diff(c["tp"], append=0.0) / n_pos  # recall_k - recall_{k+1}
        return float(min(1.0, np.sum(recall_step * precision)))

    def overlap(self, counts: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Foreground Dice, foreground IoU, background IoU and their mean (mIoU) at every grid threshold.

        Returns:
            ``{"dice", "iou_fg", "iou_bg", "miou"}``, float64 arrays of length ``num_bins + 1`` in [0, 1].
            With no negative pixel at all and none missed, ``iou_bg`` is NaN and ``miou`` is ``iou_fg``.
        """
        c = self.confusion(counts)
        tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
        errors = fp + fn
        iou_fg = tp / (tp + errors)  # tp + fn > 0 as positives exist
        bg_den = tn + errors
        iou_bg = np.divide(tn, bg_den, out=np.full_like(tn, np.nan), where=bg_den > 0)
        return {
            "dice": 2 * tp / (2 * tp + errors),
            "iou_fg": iou_fg,
            "iou_bg": iou_bg,
            "miou": np.where(np.isnan(iou_bg), iou_fg, (iou_fg + iou_bg) / 2),
        }

    def best_threshold(self, counts: np.ndarray | torch.Tensor) -> dict[str, float]:
        """The grid threshold maximising mIoU; among equal maxima the lowest threshold (``np.argmax``).

        Returns:
            ``{"threshold", "miou", "dice"}`` floats, Dice taken at the selected threshold.
        """
        scores = self.overlap(counts)
        k = int(np.argmax(scores["miou"]))
        return {"threshold": k / self.num_bins, "miou": float(scores["miou"][k]), "dice": float(scores["dice"][k])}


def select_included(y_pred: Any, y: Any, include: Any = None) -> tuple[Any, Any]:
    """Keep the images flagged by ``include``.

    Args:
        y_pred: ``B x ...`` batch tensor or a list of ``B`` channel-first tensors.
        y: same layout as ``y_pred``.
        include: ``B`` flags (bool, 0/1; tensor, array or list); ``None`` keeps everything.

    Returns:
        ``(y_pred, y)`` restricted to the included images: batch tensors with ``B' <= B`` rows (possibly 0),
        or lists of the same length.
    """
    if include is None:
        return y_pred, y
    if isinstance(y_pred, torch.Tensor):
        keep = torch.as_tensor(include).reshape(-1).to(device=y_pred.device, dtype=torch.bool)
        if keep.numel() != y_pred.shape[0]:
            raise ValueError(f"include has {keep.numel()} flags for a batch of {y_pred.shape[0]} images")
        return y_pred[keep], y[keep]
    flags = [bool(f) for f in torch.as_tensor(include).reshape(-1)]
    if len(flags) != len(y_pred) or len(flags) != len(y):
        raise ValueError(f"include has {len(flags)} flags for {len(y_pred)} predictions and {len(y)} masks")
    return [p for p, f in zip(y_pred, flags) if f], [t for t, f in zip(y, flags) if f]


class _PixelHistogramMetric(CumulativeIterationMetric):
    """Accumulates :class:`PixelHistogram` counts of every call; subclasses only say what ``aggregate`` reads.

    The histogram is additive, so the buffer is one running sum per process instead of ``Cumulative``'s row per
    call (or per image when Ignite unrolls decollated outputs), which would grow with the evaluation set:
    ``extend``, ``append``, ``get_buffer`` and ``reset``, ``Cumulative``'s public buffer API, are overridden to
    keep it. ``get_buffer`` sums it over the processes of a distributed run (``ignite.distributed.all_reduce``),
    so every rank must call it, as every rank calls ``aggregate``.
    """

    def __init__(self, num_bins: int = 1000) -> None:
        super().__init__()
        self.histogram_fn = PixelHistogram(num_bins)
        self._counts: torch.Tensor | None = None  # ``2 x (num_bins + 1)`` int64, this process's running sum

    def reset(self) -> None:
        super().reset()
        self._counts = None

    def extend(self, *data: Any) -> None:
        """Add ``N x 2 x (num_bins + 1)`` counts (``_compute_tensor``'s rows) to the running sum."""
        rows = convert_to_tensor(data[0], track_meta=False).reshape(-1, *self.histogram_fn.shape)
        total = rows.sum(0)
        self._counts = total if self._counts is None else self._counts + total.to(self._counts.device)

    def append(self, *data: Any) -> None:
        """Add one ``2 x (num_bins + 1)`` count array."""
        self.extend(*(convert_to_tensor(d, track_meta=False)[None] for d in data))

    def get_buffer(self) -> torch.Tensor | None:  # type: ignore[override]
        """``1 x 2 x (num_bins + 1)`` counts summed over every process, or None when no process accumulated any."""
        local = self.histogram_fn.zeros() if self._counts is None else self._counts
        have = torch.tensor(0 if self._counts is None else 1, device=local.device)
        if idist.get_world_size() > 1:
            local, have = idist.all_reduce(local.clone()), idist.all_reduce(have)
        return None if int(have) == 0 else local[None]

    @property
    def num_bins(self) -> int:
        return self.histogram_fn.num_bins

    def __call__(self, y_pred: Any, y: Any = None, include: Any = None) -> torch.Tensor:  # type: ignore[override]
        """Accumulate one batch.

        Args:
            y_pred: ``B x 1 x H x W`` score maps in [0, 1] (clipped; NaN is an error), or a list of ``1 x H x W``.
            y: binary masks, same layout.
            include: optional ``B`` flags; images flagged False (e.g. of negative classes) are left out.

        Returns:
            the counts added by this call, ``N x 2 x (num_bins + 1)`` int64.
        """
        if y is None:
            raise ValueError(f"{self}: ground-truth masks y are required")
        y_pred = convert_to_tensor(y_pred, track_meta=False)
        y = convert_to_tensor(y, track_meta=False)
        y_pred, y = select_included(y_pred, y, include)
        if isinstance(y_pred, (list, tuple)) and len(y_pred) == 0:  # every image excluded
            ret = self.histogram_fn.zeros().unsqueeze(0)
            self.extend(ret)
            return ret
        return super().__call__(y_pred, y)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return self.histogram_fn(y_pred, y).unsqueeze(0)

    def histogram(self) -> np.ndarray:
        """Accumulated ``2 x (num_bins + 1)`` int64 counts (row 0 negatives, row 1 positives), all ranks."""
        buffer = self.get_buffer()
        if buffer is None:
            raise ValueError(f"{self}: nothing accumulated yet; call the metric on a batch before aggregate()")
        return buffer.sum(0).cpu().numpy()


class PxAPMetric(_PixelHistogramMetric):
    """Pixel average precision (PxAP) of localization maps, all pixels of all included images pooled.

    ``PxAP = sum_k (recall_k - recall_{k+1}) * precision_k`` over thresholds ``t_k = 0, 0.001, ..., 1``, where
    a pixel is predicted positive when its score is ``>= t_k`` (see :class:`PixelHistogram` for the bins and
    ties). It agrees with ``sklearn.metrics.average_precision_score`` on the pooled pixels up to the 0.001
    quantisation of the scores, exactly when the scores already sit on that grid.

    Example::

        metric = PxAPMetric()
        for batch in loader:
            metric(maps, batch["mask"], include=batch["label"] != 0)  # B x 1 x H x W each
        pxap = 100 * metric.aggregate()
        precision, recall, thresholds = metric.curve()

    Args:
        num_bins: steps of the threshold grid (1000: step 0.001, the protocol's).

    ``aggregate()`` raises ``ValueError`` when no positive pixel was accumulated: returning NaN would pass
    silently through model selection, while an empty evaluation set is a data or exclusion bug.
    """

    def aggregate(self) -> float:  # type: ignore[override]
        """PxAP in [0, 1] of everything accumulated since the last ``reset()``."""
        return self.histogram_fn.average_precision(self.histogram())

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(precision, recall, thresholds)`` float64 arrays for a PR-curve figure (thresholds increasing)."""
        return self.histogram_fn.pr_curve(self.histogram())


class LocalizationDiceMetric(_PixelHistogramMetric):
    """Foreground Dice, foreground/background IoU and mIoU at a threshold, all included pixels pooled.

    A pixel is foreground when its score is ``>= threshold``. Counts are accumulated for the whole threshold
    grid, so ``threshold`` may be set (or passed to ``aggregate``) after accumulation: one pass over test gives
    the scores at 0.5 and at the threshold selected on valpx by :class:`ThresholdSelector`.

    Args:
        threshold: in [0, 1] on the grid ``k / num_bins`` (0.5, 0.537, ...); off-grid values are an error.
        num_bins: steps of the threshold grid.
    """

    def __init__(self, threshold: float = 0.5, num_bins: int = 1000) -> None:
        super().__init__(num_bins=num_bins)
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.histogram_fn.threshold_index(value)  # validates
        self._threshold = float(value)

    def aggregate(self, threshold: float | None = None) -> dict[str, float]:  # type: ignore[override]
        """Scores at ``threshold`` (default ``self.threshold``).

        Returns:
            ``{"dice", "miou", "iou_fg", "iou_bg"}`` floats in [0, 1]; ``miou`` is the mean of the foreground
            and background IoU.
        """
        k = self.histogram_fn.threshold_index(self.threshold if threshold is None else threshold)
        scores = self.histogram_fn.overlap(self.histogram())
        return {name: float(scores[name][k]) for name in ("dice", "miou", "iou_fg", "iou_bg")}


class ThresholdSelector(_PixelHistogramMetric):
    """Accumulates valpx pixels and returns the grid threshold that maximises pooled mIoU.

    The protocol chooses the threshold on valpx and applies it unchanged to test
    (``LocalizationDiceMetric(threshold=selected)``); choosing it on test inflates test scores.
    Among equal maxima the lowest threshold wins.

    Args:
        num_bins: steps of the threshold grid.
    """

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """``{"threshold", "miou", "dice"}``: the selected threshold, its mIoU and Dice on the accumulated set."""
        return self.histogram_fn.best_threshold(self.histogram())


def select_threshold(y_pred: Any, y: Any, include: Any = None, num_bins: int = 1000) -> dict[str, float]:
    """One-shot :class:`ThresholdSelector` on maps already in memory: ``{"threshold", "miou", "dice"}``."""
    selector = ThresholdSelector(num_bins=num_bins)
    selector(y_pred, y, include=include)
    return selector.aggregate()


def _lookup(data: Mapping, key: KeyPath) -> Any:
    path = (key,) if isinstance(key, str) else tuple(key)
    value = data
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            keys = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise KeyError(f"from_engine_roi: no {part!r} (of key {key!r}) in the engine data; it holds {keys}")
        value = value[part]
    return value


def from_engine_roi(
    pred_key: KeyPath = "pred_map",
    mask_key: KeyPath = "mask",
    include_key: KeyPath | None = "roi",
    label_key: KeyPath | None = None,
    negative_labels: Sequence[int] = (),
) -> Callable[[Any], tuple[Any, Any]]:
    """An Ignite ``output_transform`` giving ``(y_pred, y)`` of the included images only.

    Like ``monai.handlers.from_engine``, it reads a batch dict (``engine.state.output`` before decollation,
    ``B``-first tensors) or a list of per-image dicts (after decollation). A key may be a path into nested
    dicts, e.g. ``("pred", "map")`` and ``("label", "mask")`` for a ``SupervisedEvaluator`` whose inferer
    returns a dict and whose targets are a dict.

    Args:
        pred_key: key of the ``B x 1 x H x W`` score maps.
        mask_key: key of the ``B x 1 x H x W`` binary masks.
        include_key: key of per-image flags, true for images to keep; ``None``: no flag.
        label_key: key of the image labels, used with ``negative_labels``.
        negative_labels: labels of classes without a region of interest; their images are left out.

    Returns:
        a callable ``data -> (y_pred, y)``: tensors with the kept rows (possibly none) for a batch dict, lists
        of the kept items for a list of dicts (Ignite then feeds them one by one; an empty list feeds nothing).
        The metric handlers accept both, so a batch where everything is excluded is no error.
    """
    negatives = torch.as_tensor(list(negative_labels), dtype=torch.long)
    if len(negatives) and label_key is None:
        raise ValueError("from_engine_roi: negative_labels needs label_key")

    def _include(data: Mapping) -> torch.Tensor | None:
        """Flags of the images in ``data`` (a batch dict or one image's dict), or None to keep all."""
        keep = None
        if include_key is not None:
            keep = torch.as_tensor(_lookup(data, include_key)).reshape(-1).cpu().bool()
        if len(negatives):
            labels = torch.as_tensor(_lookup(data, label_key)).reshape(-1).cpu().long()  # type: ignore[arg-type]
            positive_class = ~torch.isin(labels, negatives)
            keep = positive_class if keep is None else keep & positive_class
        return keep

    def _transform(data: Any) -> tuple[Any, Any]:
        if isinstance(data, Mapping):
            return select_included(_lookup(data, pred_key), _lookup(data, mask_key), _include(data))
        if isinstance(data, Sequence) and all(isinstance(item, Mapping) for item in data):
            kept = [item for item in data if (flag := _include(item)) is None or bool(flag.all())]
            return [_lookup(item, pred_key) for item in kept], [_lookup(item, mask_key) for item in kept]
        raise TypeError(f"from_engine_roi expects a dict or a list of dicts, got {type(data).__name__}")

    return _transform


class _ScoresHandler(IgniteMetricHandler):
    """An ``IgniteMetricHandler`` whose metric returns a dict of named scores.

    With ``output_key`` it reports that one score (a scalar, usable as a key metric); otherwise all of them,
    named ``<attach name>_<score>`` so that two handlers of one kind (e.g. Dice at 0.5 and at the valpx
    threshold) do not overwrite each other in ``engine.state.metrics``.
    """

    _score_names: tuple[str, ...] = ()

    def __init__(self, metric_fn, output_key: str | None, output_transform: Callable, save_details: bool) -> None:
        if output_key is not None and output_key not in self._score_names:
            raise ValueError(f"output_key must be one of {self._score_names} or None, got {output_key!r}")
        self.output_key = output_key
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    def attach(self, engine: Engine, name: str) -> None:  # type: ignore[override]
        self.attach_name = name  # the metric's name in engine.state.metrics, the prefix of its scores
        super().attach(engine, name)

    def compute(self) -> Any:
        scores = super().compute()
        if self.output_key is not None:
            return scores[self.output_key]
        name = getattr(self, "attach_name", "")
        prefix = f"{name}_" if name else ""
        return {f"{prefix}{name}": value for name, value in scores.items()}


class PxAP(IgniteMetricHandler):
    """Ignite handler of :class:`PxAPMetric`; reports PxAP in [0, 1].

    Args:
        num_bins: steps of the threshold grid.
        output_transform: ``engine.state.output -> (y_pred, y)``; use :func:`from_engine_roi` to leave out
            images without a region of interest.
        save_details: store the accumulated counts in ``engine.state.metric_details`` (partial sums, not
            per-image values).
    """

    def __init__(self, num_bins: int = 1000, output_transform: Callable = lambda x: x, save_details: bool = False):
        super().__init__(metric_fn=PxAPMetric(num_bins), output_transform=output_transform, save_details=save_details)


class LocalizationDice(_ScoresHandler):
    """Ignite handler of :class:`LocalizationDiceMetric`.

    Args:
        threshold: grid threshold; may be changed (``handler.threshold = t``) any time before the epoch
            completes, e.g. from the valpx :class:`ThresholdSelection` result.
        output_key: ``"dice"``, ``"miou"``, ``"iou_fg"`` or ``"iou_bg"`` to report that score alone;
            ``None`` reports all four as ``<name>_dice``, ``<name>_miou``, ...
        num_bins, output_transform, save_details: as for :class:`PxAP`.
    """

    _score_names = ("dice", "miou", "iou_fg", "iou_bg")

    def __init__(
        self,
        threshold: float = 0.5,
        output_key: str | None = None,
        num_bins: int = 1000,
        output_transform: Callable = lambda x: x,
        save_details: bool = False,
    ) -> None:
        super().__init__(LocalizationDiceMetric(threshold, num_bins), output_key, output_transform, save_details)

    @property
    def threshold(self) -> float:
        return self.metric_fn.threshold  # type: ignore[attr-defined]

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.metric_fn.threshold = value  # type: ignore[attr-defined]


class ThresholdSelection(_ScoresHandler):
    """Ignite handler of :class:`ThresholdSelector`, for the valpx evaluator.

    Args:
        output_key: ``"threshold"``, ``"miou"`` or ``"dice"`` to report that value alone; ``None`` reports all
            three as ``<name>_threshold``, ``<name>_miou``, ``<name>_dice``.
        num_bins, output_transform, save_details: as for :class:`PxAP`.
    """

    _score_names = ("threshold", "miou", "dice")

    def __init__(
        self,
        output_key: str | None = None,
        num_bins: int = 1000,
        output_transform: Callable = lambda x: x,
        save_details: bool = False,
    ) -> None:
        super().__init__(ThresholdSelector(num_bins), output_key, output_transform, save_details)
