"""Localization of every image and slide in a folder, as a MONAI evaluator (the bundle's ``inference.json``).

The pieces, each a config item of ``inference.json``:

- :func:`list_inputs`: the folder's files as items ``{"image", "name", "stem", "kind"}`` (the dataset's data);
- :class:`LoadLocalizationInputd`: reads a tile as ``H x W x 3`` uint8 (the preprocessing); a file that cannot be
  read gets an ``"error"`` instead of stopping the run;
- :class:`LocalizationInferer`: one item -> its class probabilities and foreground map (a tile at once, a slide
  by :func:`~monai_pixelcam.inference.slide.infer_slide`);
- :class:`SaveLocalizationd`: writes each item's heat map, mask, overlay and GeoJSON (the postprocessing);
- :class:`LocalizationReport`: ``predictions.csv`` and ``errors.csv`` when the run completes (a handler).

One bad file never stops a run: unreadable images are reported with their error, files that are not images
are listed as skipped, everything else is processed. Under ``torchrun`` the files are sharded across the ranks
(:func:`rank_sampler`), each rank writes its own files' outputs and rank 0 gathers every rank's rows into the
two CSVs. :func:`localize_folder` assembles the same pieces for Python callers.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, DistributedSampler
from monai.engines import SupervisedEvaluator
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.transforms import Compose, MapTransform

from ..atomic import remove_stale_temporaries, write_csv_atomic
from ..data.datalist import DatalistError
from ..data.io import read_rgb
from .outputs import write_localization
from .predictor import PixelCAMPredictor
from .slide import SlideSettings, infer_slide, write_slide
from .wsi import DEFAULT_MAX_TILE_PIXELS, SLIDE_SUFFIXES, is_whole_slide

__all__ = [
    "IMAGE_SUFFIXES",
    "list_inputs",
    "require_inputs",
    "one_item",
    "rank_sampler",
    "join_launched_group",
    "leave_launched_group",
    "LoadLocalizationInputd",
    "PrepareLocalizationInput",
    "LocalizationInferer",
    "SaveLocalizationd",
    "LocalizationReport",
    "folder_evaluator",
    "localize_folder",
    "localize_image",
]

logger = logging.getLogger(__name__)

#: Image files a folder run processes (compared case-insensitively); slide suffixes come from the WSI code.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# the errors a file can cause that need no traceback in the log: unreadable, corrupt or unsupported files
_FILE_ERRORS = (DatalistError, ValueError, OSError)


def localize_image(
    image: np.ndarray, predictor: PixelCAMPredictor, output_dir: str | os.PathLike, stem: str, save_nifti: bool = False
) -> dict:
    """Predict one ``H x W x 3`` uint8 image and write its outputs
    (:func:`~monai_pixelcam.inference.outputs.write_localization`): ``<stem>_heatmap.png`` (RGB colour map),
    ``<stem>_mask.png`` (0/255 at ``predictor.threshold``, same ``H x W``), ``<stem>_overlay.png``,
    ``<stem>_regions.geojson`` (polygons in the image's pixels) and, when asked, ``<stem>_map.nii.gz``.
    Returns the prediction (see :meth:`PixelCAMPredictor.predict`) plus ``"paths"``."""
    pred = predictor.predict(image)
    paths = write_localization(
        output_dir, stem, pred["map"], predictor.threshold, predictor.classes, pred["probs"], image,
        save_nifti=save_nifti,
    )
    return {**pred, "paths": paths}


def _list_files(input_dir: Path, output_dir: Path, recursive: bool) -> list[Path]:
    """Files under ``input_dir`` (sorted), leaving out ``output_dir`` when it lies inside."""
    candidates = input_dir.rglob("*") if recursive else input_dir.iterdir()
    out_resolved = output_dir.resolve()
    files = []
    for p in candidates:
        if not p.is_file():
            continue
        if recursive and out_resolved in p.resolve().parents:
            continue
        files.append(p)
    return sorted(files)


def _stem_forms(rel_path: str) -> tuple[str, str]:
    """The two output prefixes an input can get: its relative path without suffix, and with the suffix folded
    into the name (``a.png`` -> ``a``, ``a_png``)."""
    plain = str(Path(rel_path).with_suffix(""))
    return plain, f"{plain}_{Path(rel_path).suffix.lstrip('.').lower()}"


def _output_stems(rel_paths: Sequence[str]) -> dict[str, str]:
    """Output prefix of each input: the plain form of :func:`_stem_forms`, or the one with the suffix when two
    inputs would share a prefix (``a.png`` and ``a.jpg``)."""
    forms = {r: _stem_forms(r) for r in rel_paths}
    counts: dict[str, int] = {}
    for plain, _ in forms.values():
        counts[plain] = counts.get(plain, 0) + 1
    return {r: plain if counts[plain] == 1 else suffixed for r, (plain, suffixed) in forms.items()}


def list_inputs(
    input_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    recursive: bool = False,
    max_tile_pixels: int | None = None,
) -> list[dict]:
    """The files of ``input_dir`` (or the single file it names) as items, sorted by path.

    Each item is ``{"image": path, "name": path relative to input_dir, "stem": output prefix relative to
    output_dir, "kind": "image" | "slide" | "other"}``. Slides are
    :func:`~monai_pixelcam.inference.wsi.is_whole_slide` files (vendor suffixes, multi-level TIFFs, TIFFs over
    ``max_tile_pixels`` pixels, default 4096 x 4096); ``other`` files are reported as skipped. Inputs sharing a
    stem (``a.png``, ``a.jpg``) keep their suffix in the prefix; ``recursive`` includes sub-folders (but not
    ``output_dir`` when it lies inside). No ``input_dir`` (None) gives no items, so that a bundle can be built
    and checked before it is given one; :func:`require_inputs` refuses to run on nothing.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        ValueError: ``output_dir`` is ``input_dir``.
    """
    if input_dir is None:
        return []
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        raise FileNotFoundError(f"input not found: {input_dir}")
    if input_dir.is_dir() and input_dir.resolve() == output_dir.resolve():
        raise ValueError(f"output_dir must differ from input_dir ({input_dir}): outputs would be read as inputs")
    max_tile_pixels = DEFAULT_MAX_TILE_PIXELS if max_tile_pixels is None else int(max_tile_pixels)
    if input_dir.is_file():
        root, files = input_dir.parent, [input_dir]
    else:
        root, files = input_dir, _list_files(input_dir, output_dir, recursive)
    accepted = set(IMAGE_SUFFIXES) | set(SLIDE_SUFFIXES)
    names = {f: f.relative_to(root).as_posix() for f in files}
    stems = _output_stems([names[f] for f in files if f.suffix.lower() in accepted])
    items = []
    for f in files:
        name = names[f]
        if f.suffix.lower() not in accepted:
            kind = "other"
        else:
            kind = "slide" if is_whole_slide(f, max_tile_pixels) else "image"
        items.append({"image": str(f), "name": name, "stem": stems.get(name, ""), "kind": kind})
    return items


def require_inputs(items: Sequence[dict], input_dir: str | os.PathLike | None) -> None:
    """Raise a ``ValueError`` saying what to pass when there is nothing to localize."""
    if input_dir is None:
        raise ValueError("no input: run with --input_dir DIR (a folder of images and slides, or one file)")
    if not items:
        raise ValueError(f"{input_dir} holds no file to localize")


def one_item(batch: Sequence[dict]) -> dict:
    """``collate_fn`` of a data loader with ``batch_size`` 1 whose items are whole files of any size: the item
    itself, not a batch of tensors."""
    if len(batch) != 1:
        raise ValueError(f"localization loaders take one file per batch, got {len(batch)}")
    return batch[0]


def join_launched_group() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) with no process group yet, start a gloo one: the ranks only gather
    CSV rows, which gloo does on any device. Returns whether this call started it (and so must end it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        idist.sync()  # a group someone else started (or none): let Ignite see it
        return False
    idist.initialize("gloo")
    return True


def leave_launched_group(started: bool) -> None:
    """End the group :func:`join_launched_group` started (``started`` is what it returned)."""
    if started:
        idist.finalize()


def rank_sampler(dataset) -> DistributedSampler | None:
    """This rank's share of the files, ``rank, rank + n, ...`` of the sorted list (no padding: no file twice),
    under a process group of several ranks; None for a single process."""
    if idist.get_world_size() <= 1:
        return None
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)


def _describe(name: str, e: BaseException) -> str:
    msg = str(e).strip() or "no details"
    if isinstance(e, DatalistError) and (name in msg or Path(name).name in msg):
        return msg  # the image reader's message already names the file
    return f"{name}: {type(e).__name__}: {msg}"


def _fail(item: dict, e: BaseException, stage: str) -> None:
    item["error"] = _describe(item["name"], e)
    logger.warning("%s: %s", stage, item["error"], exc_info=not isinstance(e, _FILE_ERRORS))


class LoadLocalizationInputd(MapTransform):
    """Read a tile item's file as ``H x W x 3`` uint8 RGB (:func:`monai_pixelcam.data.io.read_rgb`); slides are read
    window by window later and pass unchanged, as do ``other`` files. A file that cannot be read gets
    ``"error"`` (the message names it) instead of stopping the run.

    Args:
        keys: the key of the file path (``"image"``).
    """

    def __init__(self, keys="image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if d.get("kind") != "image":
            return d
        for key in self.key_iterator(d):
            try:
                d[key] = read_rgb(d[key])
            except _FILE_ERRORS as e:
                _fail(d, e, "load")
        return d


class PrepareLocalizationInput(PrepareBatch):
    """``prepare_batch`` of the folder evaluator: the item itself is the inferer's input (a tile array or a
    slide path travel with their name and kind); there is no target."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs) -> tuple[dict, None]:
        return batchdata, None


class LocalizationInferer(Inferer):
    """One item -> its prediction, ``{"status", "name", "kind", "stem", ...}``:

    - a tile: ``PixelCAMPredictor.predict`` (``"map"`` at the image's size, ``"probs"``, ``"class_name"``,
      ``"foreground_fraction"``, ``"background"``: the image the overlay is drawn on);
    - a slide: :func:`~monai_pixelcam.inference.slide.infer_slide` with the ``slide`` settings (``"slide"``: the
      :class:`~monai_pixelcam.inference.slide.SlideResult`, whose ``probs``, ``class_name`` and
      ``foreground_fraction`` are also copied to the prediction);
    - ``status`` ``"processed"``, or ``"failed"`` with a ``"message"`` naming the file (reading failed earlier, or
      the slide's windows could not be read), or ``"skipped"`` for ``other`` files.

    Args:
        predictor: the model, classes, threshold and mpp (its network is the evaluator's).
        slide: how slides are read and predicted (:class:`~monai_pixelcam.inference.slide.SlideSettings`, or
            a mapping of its fields; None: the defaults).
        progress: show a progress bar over each slide's windows.
    """

    def __init__(
        self, predictor: PixelCAMPredictor, slide: SlideSettings | Mapping | None = None, progress: bool = True
    ) -> None:
        self.predictor = predictor
        self.slide = slide if isinstance(slide, SlideSettings) else SlideSettings(**(slide or {}))
        self.progress = bool(progress)

    def __call__(self, inputs: dict, network=None, *args, **kwargs) -> dict:
        item = {k: inputs[k] for k in ("name", "kind", "stem")}
        if inputs["kind"] == "other":
            return {**item, "status": "skipped", "message": "not an image file"}
        if "error" in inputs:
            return {**item, "status": "failed", "message": inputs["error"]}
        try:
            if inputs["kind"] == "slide":
                slide = infer_slide(inputs["image"], self.predictor, self.slide, self.progress)
                result = {
                    "slide": slide, "probs": slide.probs, "class_name": slide.class_name,
                    "foreground_fraction": slide.foreground_fraction,
                }
            else:
                result = self.predictor.predict(inputs["image"])
                result = {
                    **result,
                    "heatmap": result["map"],
                    "background": inputs["image"],
                    "foreground_fraction": float(result["mask"].mean()),
                }
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is reported
            failed = dict(item)
            _fail(failed, e, "inference")
            return {**item, "status": "failed", "message": failed["error"]}
        return {**item, **result, "status": "processed"}


class SaveLocalizationd(MapTransform):
    """Write the outputs of each processed prediction under ``output_dir/<stem>_*``: heat map, mask, overlay,
    GeoJSON regions (and NIfTI map) of a tile (:func:`~monai_pixelcam.inference.outputs.write_localization`), the
    same plus tissue mask and tiles CSV for a slide (:func:`~monai_pixelcam.inference.slide.write_slide`). A
    write that fails marks the prediction failed, with the reason.

    Args:
        keys: the prediction's key (``"pred"``).
        output_dir: the run's output folder.
        predictor: gives the threshold and class names.
        save_nifti: also write ``<stem>_map.nii.gz``.
    """

    def __init__(
        self, keys="pred", output_dir: str | os.PathLike = ".", predictor: PixelCAMPredictor | None = None,
        save_nifti: bool = False,
    ) -> None:
        super().__init__(keys)
        if predictor is None:
            raise TypeError("SaveLocalizationd needs the predictor (threshold and class names)")
        self.output_dir = Path(output_dir)
        self.predictor = predictor
        self.save_nifti = bool(save_nifti)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred["status"] != "processed":
                continue
            out, stem = self.output_dir / Path(pred["stem"]).parent, Path(pred["stem"]).name
            try:
                if pred["kind"] == "slide":
                    pred["paths"] = write_slide(
                        pred["slide"], out, stem, self.predictor.threshold, self.predictor.classes,
                        save_nifti=self.save_nifti,
                    )
                else:
                    pred["paths"] = write_localization(
                        out, stem, pred["heatmap"], self.predictor.threshold, self.predictor.classes, pred["probs"],
                        pred["background"], save_nifti=self.save_nifti,
                    )
            except OSError as e:  # a full disk or a read-only folder: reported with the file it concerns
                pred.update(status="failed", message=f"{pred['name']}: cannot write its outputs ({e})")
                logger.warning("write: %s", pred["message"])
        return d


class LocalizationReport:
    """Collects every prediction of a folder evaluator and, when it completes, writes (atomically, on
    rank 0, with every rank's rows gathered); when it starts, removes the temporary files a killed run left
    in the output folder (:func:`~monai_pixelcam.atomic.remove_stale_temporaries`):

    - ``predictions.csv``: one row per processed file: ``image`` (path relative to the input folder), ``kind``
      (``image`` or ``slide``), ``class`` (predicted), ``prob_<class>`` for each class (slides: mean over the
      predicted windows; empty when a slide shows no tissue), ``threshold``, ``foreground_fraction`` (share of
      the analysed pixels in the mask);
    - ``errors.csv``: ``image``, ``status`` (``failed``: unreadable, corrupt or unsupported file, with the error;
      ``skipped``: not an image file), ``message``; header only when there are none.

    ``predictions.csv`` describes the output folder, not only this run: rows an earlier run wrote for files this
    run did not see (another input folder, a file since removed) are kept while their ``<stem>_mask.png`` is
    still there. A single-process run rewrites it after every file, so a killed run leaves the rows of every
    file whose outputs it finished; a rerun replaces the rows of the files it processes again.

    The merged report is ``engine.state.localization`` on every rank: ``{"processed": [names], "failed": {name:
    message}, "skipped": [names], "predictions": Path, "errors": Path, "results": {name: row dict}}``
    (this run's files only).

    Args:
        output_dir: folder of the two CSVs.
        predictor: gives the class names and threshold.
    """

    def __init__(self, output_dir: str | os.PathLike, predictor: PixelCAMPredictor) -> None:
        self.output_dir = Path(output_dir)
        self.predictor = predictor
        self._rows: list[dict] = []
        self._earlier: dict[str, dict] = {}
        self.header = ["image", "kind", "class", *[f"prob_{c}" for c in predictor.classes], "threshold",
                       "foreground_fraction"]  # fmt: skip

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self._rows.clear()
        self._earlier = {}
        if idist.get_rank() == 0:
            stale = remove_stale_temporaries(self.output_dir)
            if stale:
                logger.info("removed %d temporary file(s) a killed run left in %s", len(stale), self.output_dir)
            self._earlier = self._earlier_rows()
        if idist.get_world_size() > 1:
            idist.barrier()  # no rank writes before the folder is swept
        logger.info(
            "rank %d/%d: %d of %d file(s)", idist.get_rank(), idist.get_world_size(), engine.state.epoch_length,
            len(engine.state.dataloader.dataset),
        )

    def _collect(self, engine: Engine) -> None:
        pred = engine.state.output["pred"]
        row = {k: pred.get(k) for k in ("name", "kind", "status", "message")}
        if pred["status"] == "processed":
            probs = pred["probs"]
            row.update(
                {
                    "class": pred["class_name"] or "",
                    **{
                        f"prob_{c}": "" if probs is None else f"{probs[k]:.6f}"
                        for k, c in enumerate(self.predictor.classes)
                    },
                    "foreground_fraction": f"{pred['foreground_fraction']:.6f}",
                }
            )
            logger.info("rank %d: %s: %s", idist.get_rank(), pred["name"], pred["class_name"])
        self._rows.append(row)
        if idist.get_world_size() == 1:  # other ranks' rows only arrive at the end
            self._write_predictions(self._rows)

    def _earlier_rows(self) -> dict[str, dict]:
        """Rows of the folder's ``predictions.csv`` whose file's mask is still in the folder (a rerun must not
        drop what an earlier run left there); an unreadable or foreign CSV is replaced, with a warning."""
        path = self.output_dir / "predictions.csv"
        if not path.is_file():
            return {}
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            logger.warning("%s cannot be read (%s); it is written anew", path, e)
            return {}
        if not rows or list(rows[0]) != self.header:
            if rows:
                logger.warning("%s has other columns (another model's classes?); it is written anew", path)
            return {}
        kept = {}
        for row in rows:
            if any((self.output_dir / f"{stem}_mask.png").is_file() for stem in _stem_forms(row["image"])):
                kept[row["image"]] = row
        return kept

    def _processed(self, rows: Sequence[dict]) -> list[dict]:
        """The ``predictions.csv`` rows of this run's processed files."""
        threshold = f"{self.predictor.threshold:.6g}"
        return [{**r, "image": r["name"], "threshold": threshold} for r in rows if r["status"] == "processed"]

    def _write_predictions(self, rows: Sequence[dict]) -> None:
        """Write ``predictions.csv``: the rows of this run's processed files and the earlier rows of files it did
        not see, sorted by file."""
        seen = {r["name"] for r in rows}
        merged = [r for n, r in self._earlier.items() if n not in seen] + self._processed(rows)
        merged.sort(key=lambda r: r["image"])
        rows_out = [[r[h] for h in self.header] for r in merged]
        write_csv_atomic(self.output_dir / "predictions.csv", self.header, rows_out)

    def _write(self, engine: Engine) -> None:
        rows = list(self._rows)
        if idist.get_world_size() > 1:
            rows = [row for part in idist.all_gather(rows) for row in part]
        rows.sort(key=lambda r: r["name"])
        failed = {r["name"]: r["message"] for r in rows if r["status"] == "failed"}
        skipped = [r["name"] for r in rows if r["status"] == "skipped"]
        predictions, errors = self.output_dir / "predictions.csv", self.output_dir / "errors.csv"
        processed = self._processed(rows)
        if idist.get_rank() == 0:
            self._write_predictions(rows)
            write_csv_atomic(
                errors,
                ["image", "status", "message"],
                [[k, "failed", v] for k, v in failed.items()] + [[s, "skipped", "not an image file"] for s in skipped],
            )
            logger.info(
                "%d processed, %d failed, %d skipped; %s", len(processed), len(failed), len(skipped), predictions
            )
        if idist.get_world_size() > 1:
            idist.barrier()  # rank 0 has written the CSVs when any rank goes on
        engine.state.localization = {
            "processed": [r["name"] for r in processed],
            "failed": failed,
            "skipped": skipped,
            "predictions": predictions,
            "errors": errors,
            "results": {r["name"]: {h: r[h] for h in self.header} for r in processed},
        }


def folder_evaluator(
    items: Sequence[dict],
    output_dir: str | os.PathLike,
    predictor: PixelCAMPredictor,
    save_nifti: bool = False,
    slide: SlideSettings | Mapping | None = None,
    progress: bool = True,
) -> SupervisedEvaluator:
    """The localization run over ``items`` (:func:`list_inputs`) as ``inference.json`` declares it: a MONAI
    ``SupervisedEvaluator`` with :class:`LoadLocalizationInputd`, :class:`LocalizationInferer`,
    :class:`SaveLocalizationd` and :class:`LocalizationReport`; sharded across ranks by :func:`rank_sampler`."""
    dataset = Dataset(list(items), transform=Compose([LoadLocalizationInputd("image")]))
    return SupervisedEvaluator(
        device=predictor.device,
        val_data_loader=DataLoader(dataset, batch_size=1, sampler=rank_sampler(dataset), collate_fn=one_item),
        network=predictor.network,
        inferer=LocalizationInferer(predictor, slide, progress),
        prepare_batch=PrepareLocalizationInput(),
        postprocessing=SaveLocalizationd("pred", output_dir, predictor, save_nifti=save_nifti),
        val_handlers=[LocalizationReport(output_dir, predictor)],
        decollate=False,
    )


def localize_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    predictor: PixelCAMPredictor | str | os.PathLike,
    save_nifti: bool = False,
    recursive: bool = False,
    max_tile_pixels: int | None = None,
    slide: SlideSettings | Mapping | None = None,
    progress: bool = True,
) -> dict:
    """Localization maps and class probabilities for every image and slide in ``input_dir``: the bundle's
    inference run from Python (:func:`folder_evaluator` over :func:`list_inputs`).

    Every tile gets ``<stem>_heatmap.png``, ``<stem>_mask.png`` (0/255, the image's ``H x W``, ``map >=
    predictor.threshold``), ``<stem>_overlay.png``, ``<stem>_regions.geojson`` and, with ``save_nifti``,
    ``<stem>_map.nii.gz``; a slide the same at the heat map's size plus ``<stem>_tissue.png`` and
    ``<stem>_tiles.csv`` (``slide``: :class:`~monai_pixelcam.inference.slide.SlideSettings`; ``progress``: a bar
    over each slide's windows). Outputs
    of ``sub/a.png`` (``recursive``) go to ``output_dir/sub/``. ``predictions.csv`` and ``errors.csv``: see
    :class:`LocalizationReport`.

    Under ``torchrun`` (a process group, or ``WORLD_SIZE`` > 1: a gloo group is started and ended here), rank
    ``r`` of ``n`` processes files ``r, r + n, ...``; on a GPU it moves the network to ``cuda:LOCAL_RANK``.

    Args:
        predictor: a :class:`PixelCAMPredictor`, or a trained model folder to load one from.

    Returns:
        the report (:class:`LocalizationReport`), the same on every rank.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        ValueError: ``output_dir`` is ``input_dir``.
    """
    items = list_inputs(input_dir, output_dir, recursive, max_tile_pixels)
    if not isinstance(predictor, PixelCAMPredictor):
        predictor = PixelCAMPredictor.from_model_dir(predictor)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    started = join_launched_group()
    try:
        if idist.get_world_size() > 1 and predictor.device.type == "cuda":
            predictor.to(f"cuda:{idist.get_local_rank()}")
        evaluator = folder_evaluator(items, output_dir, predictor, save_nifti, slide, progress)
        evaluator.run()
        return evaluator.state.localization
    finally:
        leave_launched_group(started)
