"""Embedded synthetic H&E-like datasets, so the whole project runs with no download.

Two kinds mirror the datasets of the PixelCAM benchmark:

* ``glas``: colon tissue, classes ``benign`` / ``malignant``, mask = glands (epithelium + lumen) in both
  classes. Benign glands are round with an open lumen and one basal layer of small nuclei among pale
  goblet cells; malignant glands are irregular, fused or cribriform with small or no lumen and crowded,
  enlarged, pleomorphic, hyperchromatic nuclei. The stroma (collagen fibres, fibroblasts, inflammatory
  cells) is the same distribution in both classes.
* ``camelyon``: lymph-node patches (dense small lymphocytes, scattered pale histiocytes as distractors),
  classes ``normal`` / ``tumor``; tumour patches hold one or more irregular nests of large pale
  pleomorphic cells (mask = the nests), normal patches have an all-zero mask.

Every image is drawn as hematoxylin and eosin concentration maps and turned into RGB through the
Ruifrok-Johnston stain vectors and Beer-Lambert's law (``I = 255 * exp(-OD)``), with per-image stain,
blur, noise and illumination drawn independently of the label.

No shortcut by construction: three independent random streams per image (seeded from
``(seed, kind, index)``) keep what may differ between classes apart from what must not:

* *shared* stream: background tissue (stroma / lymph node), the target mask area fraction and the
  gland rim colour; never told the label, so everything outside the mask has one distribution;
* *tissue* stream: the class-bearing structures, drawn strictly inside the mask (nuclei centres deep
  enough that the whole nucleus plus a shared-colour rim lies inside it);
* *stain* stream: stain vectors and scales, blur, noise, illumination. The ``stain`` argument
  multiplies on top of these, so the same seed re-renders the same tissue (identical masks) with a
  shifted stain, e.g. for a stain-shift benchmark.

Lengths are given for a 256 px image and scaled with ``image_size`` (same field of view).

Scale. Each kind declares a nominal microns per pixel (``SyntheticKind.mpp``, for a 256 px tile; a tile
of ``image_size`` px shows the same field of view at ``mpp * 256 / image_size``), written as the datalist's
top-level ``"mpp"``. It was chosen by measuring the drawn structures against the tissue they imitate:

* ``glas``: 1.86 um/px, GlaS's 20x scan (0.62 um/px) downsampled 3x, so that a 775 px wide GlaS image spans
  one 256 px tile. Benign nuclei are drawn about 6 px long (11 um), stromal lymphocytes 4-5 px (7-10 um),
  benign glands 32-80 px across (60-150 um), as in colon mucosa.
* ``camelyon``: 0.972 um/px, CAMELYON16's 40x scan (0.243 um/px) at pyramid level 2 (4x downsampled).
  Lymphocyte nuclei are drawn 4.4-6 px across (4-6 um), tumour nuclei 8-14 px (8-14 um), tumour cells
  12-16 px apart (12-16 um).

Modules, one job each: :mod:`.draw` (drawing primitives), :mod:`.colon` and :mod:`.lymph_node` (the two
tissue models), :mod:`.optics` (stain space -> RGB), :mod:`.kinds` (the kinds and one tile),
:mod:`.dataset` (files, splits, datalist, preview), :mod:`.shortcut` (the scikit-learn shortcut check),
:mod:`.cli` (``python -m monai_pixelcam.data.synthetic --kind glas --out DIR``).
"""

from .dataset import save_preview, synthesize
from .kinds import KINDS, SyntheticKind, render_tile
from .shortcut import measure_shortcut, region_colour_features
from .cli import main

__all__ = [
    "KINDS",
    "SyntheticKind",
    "render_tile",
    "synthesize",
    "save_preview",
    "region_colour_features",
    "measure_shortcut",
    "main",
]
