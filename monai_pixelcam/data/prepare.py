"""One entry point from "what the user has" to a validated datalist: the bundle's first step."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .datalist import SPLITS, DatalistError, load_datalist

__all__ = ["DATASETS", "prepare_datalist", "PreparedDatalist", "check_class_names"]

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
    folds: str | os.PathLike | None = None,
    fold: int = 0,
    out_dir: str | os.PathLike | None = None,
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
        folds, fold: the published WSOL folds (``glas`` and ``camelyon``; :mod:`monai_pixelcam.data.folds`):
            the splits are exactly those of fold ``fold``, with ``dataset_dir`` the dataset root their paths are
            relative to; the datalist is written to ``out_dir`` (the bundle root) as
            ``datalist_<dataset>_fold<fold>.json``.

    Raises:
        DatalistError: unknown dataset name, missing folder, or any invalid file (all listed at once).
    """
    from .validate import validate_datalist

    if datalist:
        path = Path(datalist)
    elif folds:
        from .folds import convert_folds

        path = Path(out_dir or dataset_dir) / f"datalist_{dataset}_fold{int(fold)}.json"
        convert_folds(dataset, dataset_dir, folds, int(fold), path, validate=False)  # validated below
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


class PreparedDatalist:
    """The bundle's data step as a config item: building it does nothing; :meth:`prepare`, which the bundle's
    ``initialize`` calls, runs :func:`prepare_datalist` (generating or converting data where needed) and keeps
    the path, which :attr:`path` then gives to the items that read the datalist. Parsing a config therefore
    never writes data.

    Under a process group of several ranks, rank 0 prepares and the others receive the path (so that no two
    processes generate or convert into one folder).

    Args: as :func:`prepare_datalist`.
    """

    def __init__(self, dataset: str = "synthetic_glas", dataset_dir: str | os.PathLike = "data",
                 datalist: str | os.PathLike | None = None, seed: int = 0, **kwargs) -> None:  # fmt: skip
        self.kwargs = dict(dataset=dataset, dataset_dir=dataset_dir, datalist=datalist, seed=seed, **kwargs)
        self._path: str | None = None

    def prepare(self) -> str:
        """Prepare the datalist (once per rank group) and return its path."""
        import ignite.distributed as idist

        if idist.get_world_size() > 1:
            self._path = idist.broadcast(prepare_datalist(**self.kwargs) if idist.get_rank() == 0 else "", src=0)
        else:
            self._path = prepare_datalist(**self.kwargs)
        return self._path

    @property
    def path(self) -> str:
        """The prepared datalist's path.

        Raises:
            RuntimeError: :meth:`prepare` has not run (the bundle's ``initialize`` runs it).
        """
        if self._path is None:
            raise RuntimeError(
                "the datalist is not prepared yet: run the bundle's 'initialize' first (ConfigWorkflow.initialize(), "
                "as 'python -m monai.bundle run' does), or call data#source.prepare()"
            )
        return self._path


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
