"""One entry point from "what the user has" to a validated datalist: the bundle's first step."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .datalist import SPLITS, DatalistError, load_datalist

__all__ = ["DATASETS", "prepare_datalist", "check_class_names"]

DATASETS = ("synthetic_glas", "synthetic_camelyon", "glas", "camelyon")
logger = logging.getLogger(__name__)


def prepare_datalist(
    dataset: str = "synthetic_glas",
    dataset_dir: str | os.PathLike = "data",
    datalist: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_images: int | None = None,
    validate: bool = True,
    splits: Sequence[str] = SPLITS,
) -> str:
    """Return the path of a validated datalist JSON, creating it when needed.

    Args:
        dataset: ``synthetic_glas`` / ``synthetic_camelyon`` generate the embedded synthetic data into
            ``dataset_dir`` when it holds no ``datalist.json`` yet; ``glas`` converts a Warwick QU folder
            (``train_N.bmp``, ``Grade.csv``, ...) found in ``dataset_dir``; ``camelyon`` converts a folder
            with a CSV of ``image, mask, label`` rows. The converted datalist is written to
            ``dataset_dir/datalist.json`` unless that folder is read-only, then next to the bundle run in
            ``./datalist_<dataset>.json``.
        dataset_dir: the data folder.
        datalist: an existing datalist JSON; when given, ``dataset`` and ``dataset_dir`` are ignored.
        seed: split seed (and generator seed for synthetic data).
        image_size, n_images: synthetic data only.
        validate: check every file before training (fails fast, naming each bad file).
        splits: the splits the datalist must hold and that are checked (all four to train; ``("test",)`` to
            evaluate a trained model on a labelled set of one's own).

    Raises:
        DatalistError: unknown dataset name, missing folder, or any invalid file (all listed at once).
    """
    from .validate import validate_datalist

    if datalist:
        path = Path(datalist)
    else:
        if dataset not in DATASETS:
            raise DatalistError(f"unknown dataset {dataset!r}; choose one of {DATASETS} or pass a datalist JSON")
        root = Path(dataset_dir)
        path = root / "datalist.json"
        if dataset.startswith("synthetic_"):
            if not path.exists():
                from .synthetic import synthesize

                logger.info(f"generating synthetic {dataset[10:]} data into {root}")
                path = Path(synthesize(dataset[10:], root, n_images=n_images, image_size=image_size, seed=seed))
        else:
            if not root.is_dir():
                raise DatalistError(f"dataset_dir {root} is not a folder (dataset={dataset!r})")
            if not os.access(root, os.W_OK):
                path = Path(f"datalist_{dataset}.json").resolve()
            if dataset == "glas":
                from .glas import convert_glas

                convert_glas(root, path, seed=seed)
            else:
                from .camelyon import convert_camelyon

                convert_camelyon(root, path, seed=seed)
    data = load_datalist(path, splits)
    if validate:
        validate_datalist(data, splits)
        if "valpx" not in splits and data["valpx"]:
            # an evaluation set's optional valpx (thresholds) is checked on its own: its ids may repeat in test
            validate_datalist(data, ("valpx",))
    return str(path)


def check_class_names(datalist: dict, num_classes: int) -> list[str]:
    """The datalist's class names, checked against the ``num_classes`` the networks are built with.

    Raises:
        DatalistError: the datalist names a different number of classes.
    """
    names = list(datalist["classes"])
    if len(names) != int(num_classes):
        raise DatalistError(
            f"the datalist has {len(names)} classes {names} but the network is configured for num_classes="
            f"{num_classes}; pass --num_classes {len(names)}"
        )
    return names
