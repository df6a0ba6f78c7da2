"""Command line: ``python -m monai_pixelcam.data.synthetic --kind glas --out DIR [--n N] [--size S] ...``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .dataset import synthesize
from .kinds import KINDS
from .optics import check_stain

__all__ = ["main"]


def _stain_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    try:
        return check_stain(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_pixelcam.data.synthetic",
        description="Write a synthetic H&E-like dataset (images, masks, datalist.json, preview.png).",
    )
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=None, help="number of images (default: 165 glas, 400 camelyon)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stain", type=_stain_arg, default=None,
        help='stain shift as JSON, e.g. \'{"h_scale": 1.3, "e_scale": 0.8, "hue_shift": 0.05}\'',
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        path = synthesize(args.kind, args.out, args.n, args.size, args.seed, not args.no_progress, args.stain)
    except ValueError as e:
        parser.error(str(e))
    print(path)
    return 0
