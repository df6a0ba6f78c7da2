"""Active learning strategy ``pixelcam_uncertainty`` (``POST /activelearning/pixelcam_uncertainty``): the
not-yet-labelled image whose PixelCAM prediction is least certain.

Score of an image with class probabilities ``p`` (``K`` classes) and foreground map ``m`` (``H x W``)::

    U = H(p) / log K  +  mean_ij h(m_ij) / log 2,    H(p) = -sum_k p_k log p_k,
                                                    h(m) = -m log m - (1 - m) log(1 - m)

Both terms are normalised entropies in [0, 1], so ``U`` lies in [0, 2]: 0 for a confident class and a map
of only 0s and 1s, 2 for uniform class probabilities and a map at 0.5 everywhere (``H(p) / log K`` is 0
when ``K == 1``). A whole-slide image is scored on up to ``max_slide_tiles`` tiles of the model's input size
at level 0, centred on a regular grid over the slide, and gets the mean of their scores.

An image counts as labelled when it has a ``final`` label (a mask) or an image-level class (image info
``label_key``); the strategy looks only at the others. Scores are kept in memory per image file and model, so
a repeated request costs a forward pass only for new images or after a new model is published.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import name_to_device

from ..inference.predictor import PixelCAMPredictor
from ..inference.wsi import is_whole_slide
from .errors import RequestError
from .infer import ImageRegion, PixelCAMInferTask, image_geometry, load_image

__all__ = ["STRATEGY_NAME", "prediction_uncertainty", "PixelCAMUncertainty"]

logger = logging.getLogger(__name__)

STRATEGY_NAME = "pixelcam_uncertainty"
#: Probabilities are clipped to [EPS, 1 - EPS] before the logarithms (0 log 0 = 0 up to ~1e-6).
EPS = 1e-7


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0)
    return -np.sum(p * np.log(p), axis=axis)


def prediction_uncertainty(probs: Sequence[float], score_map: np.ndarray) -> dict[str, float]:
    """The strategy's score of one prediction (formula in the module docstring).

    Args:
        probs: ``K`` class probabilities (softmax, sum 1).
        score_map: ``H x W`` foreground probabilities in [0, 1].

    Returns:
        ``{"score": U in [0, 2], "class_entropy": H(p) / log K in [0, 1], "foreground_entropy": mean
        binary entropy / log 2 in [0, 1]}``.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[-1]
    class_term = float(_entropy(p) / math.log(k)) if k > 1 else 0.0
    m = np.clip(np.asarray(score_map, dtype=np.float64), 0.0, 1.0)
    binary = np.stack([m, 1.0 - m], axis=-1)
    map_term = float(np.mean(_entropy(binary)) / math.log(2.0))
    class_term, map_term = min(max(class_term, 0.0), 1.0), min(max(map_term, 0.0), 1.0)
    return {"score": class_term + map_term, "class_entropy": class_term, "foreground_entropy": map_term}


def _slide_regions(width0: int, height0: int, tile: int, max_tiles: int) -> list[ImageRegion]:
    """Up to ``max_tiles`` tiles of side ``tile`` (level 0) centred on an ``n x n`` grid over the slide."""
    n = max(1, math.isqrt(max_tiles))
    regions = []
    for r in range(n):
        for c in range(n):
            cx, cy = (c + 0.5) * width0 / n, (r + 0.5) * height0 / n
            x = int(min(max(cx - tile / 2, 0), max(width0 - tile, 0)))
            y = int(min(max(cy - tile / 2, 0), max(height0 - tile, 0)))
            regions.append(ImageRegion(x, y, tile, tile, 0))
    return list(dict.fromkeys(regions))  # a slide smaller than the grid repeats tiles


class PixelCAMUncertainty(Strategy):
    """MONAI Label strategy: the unlabelled image with the largest :func:`prediction_uncertainty` score.

    Args:
        task: the app's infer task; its published model makes the predictions.
        label_key: image-info field that holds an image's class (the app's ``label_key``).
        max_slide_tiles: tiles scored per whole-slide image (a square number is used: its integer root
            squared).

    A request may give ``device``. It must not name an ``image``: QuPath's "Next Sample/Patch..." sends the
    open image when its "Next Patch (from current Image)" box is ticked, asking for a patch; this strategy
    chooses whole images (400 with that explanation).
    """

    def __init__(self, task: PixelCAMInferTask, label_key: str = "label", max_slide_tiles: int = 16):
        super().__init__(
            "PixelCAM uncertainty: the unlabelled image with the largest class entropy + mean foreground entropy"
        )
        if int(max_slide_tiles) < 1:
            raise ValueError(f"max_slide_tiles must be >= 1, got {max_slide_tiles}")
        self.task = task
        self.label_key = label_key
        self.max_slide_tiles = int(max_slide_tiles)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, PixelCAMPredictor, dict]] = {}

    def unlabelled(self, datastore: Datastore) -> list[str]:
        """Ids of the images with neither a ``final`` label nor an image-level class, sorted."""
        out = []
        for image_id in datastore.get_unlabeled_images(DefaultLabelTag.FINAL):
            value = (datastore.get_image_info(image_id) or {}).get(self.label_key)
            if value is None or (isinstance(value, str) and not value.strip()):
                out.append(image_id)
        return sorted(out)

    def score(self, path: str, predictor: PixelCAMPredictor) -> dict[str, float]:
        """:func:`prediction_uncertainty` of one image file (mean over tiles for a whole slide)."""
        if is_whole_slide(path):
            width0, height0, _ = image_geometry(path, 0, self.task.wsi_backend)
            regions = _slide_regions(width0, height0, predictor.image_size, self.max_slide_tiles)
            images = [load_image(path, region, self.task.wsi_backend) for region in regions]
        else:
            images = [load_image(path)]
        scores = [prediction_uncertainty(out["probs"], out["map"]) for out in predictor.predict(images)]
        return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}

    def _cached_score(self, image_id: str, path: str, predictor: PixelCAMPredictor) -> dict[str, float]:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(image_id)
        # the cache holds the predictor itself, so an identical object means the same model
        if hit is not None and hit[0] == key and hit[1] is predictor:
            return hit[2]
        value = self.score(path, predictor)
        with self._lock:
            self._cache[image_id] = (key, predictor, value)
        return value

    def __call__(self, request, datastore: Datastore):
        if request.get("image"):
            raise RequestError(
                400,
                f"{STRATEGY_NAME} picks whole images, not patches of image {request['image']!r}: untick "
                "'Next Patch (from current Image)' in QuPath's MONAI Label > Next Sample/Patch... dialog",
            )
        candidates = self.unlabelled(datastore)
        if not candidates:
            return None
        predictor = self.task.predictor(name_to_device(request.get("device")))
        scores = {i: self._cached_score(i, datastore.get_image_uri(i), predictor) for i in candidates}
        # highest score first; ties go to the smallest id, so the answer does not depend on dict order
        best = min(candidates, key=lambda i: (-scores[i]["score"], i))
        logger.info(f"{STRATEGY_NAME}: {best} of {len(candidates)} unlabelled images, {scores[best]}")
        return {"id": best, STRATEGY_NAME: scores[best], "candidates": len(candidates)}
