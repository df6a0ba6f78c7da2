"""Localization metrics of the WSOL evaluation protocol (Choe et al., CVPR 2020) and their Ignite handlers.

- :class:`PxAPMetric` / :class:`PxAP`: pixel average precision, all included pixels pooled, threshold step 0.001.
- :class:`LocalizationDiceMetric` / :class:`LocalizationDice`: foreground Dice, mIoU (mean of foreground and
  background IoU), at 0.5 or at the threshold chosen on valpx.
- :class:`ThresholdSelector` / :class:`ThresholdSelection` / :func:`select_threshold`: the threshold that
  maximises mIoU on valpx, to be applied unchanged to test.
- :func:`from_engine_roi`: Ignite ``output_transform`` that leaves out images without a region of interest.

All share one score histogram, :class:`PixelHistogram`. Image classification accuracy (CL) needs no metric of
ours: use ``ignite.metrics.Accuracy`` with ``monai.handlers.from_engine`` (or MONAI's ``ConfusionMatrix``
handler with ``metric_name="accuracy"``).
"""

from .localization import (
    LocalizationDice,
    LocalizationDiceMetric,
    PixelHistogram,
    PxAP,
    PxAPMetric,
    ThresholdSelection,
    ThresholdSelector,
    from_engine_roi,
    select_included,
    select_threshold,
)

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
