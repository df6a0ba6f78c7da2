"""The stored-CAM cache: true-class low-resolution CAMs of the training images, computed once per source model.

Layout of a store ``root``::

    root/manifest.json          written last, atomically; the store is what this file says
    root/maps-<token>/<id>.npy  one map per image id, 1 x h x w, dtype from the manifest (float16 default)

``manifest.json``::

    {"format_version": 1, "checkpoint_sha256": str, "checkpoint": absolute path, "method": "gradcam",
     "target_layer": "encoder", "feature_size": [h, w], "image_size": [H, W], "dtype": "float16",
     "maps_dir": "maps-<token>", "ids": [...], "class_idx": [...], "created": ISO-8601 UTC}

Maps are min-max normalised to [0, 1], so float16 (absolute error <= 2.5e-4) halves the disk use at no cost
to seeding. A rebuild writes into a new ``maps-<token>`` folder and only then replaces the manifest
(``os.replace``), so a failure at any point leaves the previous store valid; unreferenced map folders are
deleted after the commit. One builder per root at a time.

A store remembers the checkpoint hash and method it is expected to match; every (re)read of the manifest,
including in DataLoader workers, checks them, so stale maps are an error rather than silent.

Besides the CAM methods of :mod:`.extractors`, a store can hold the maps of :mod:`.distinct` (``"distinct"``,
``"<cam method>+distinct"``: computed after one pass over the same data to sample the feature banks), those
chosen per class on valpx among several methods (``"auto"``, :mod:`.auto`), and the ``"oracle"`` maps of
:class:`MaskOracle`: each item's ground-truth mask at the model's feature resolution. PixelCAM trained from
them, through the same store, seeder and schedule, is the ceiling that perfect pseudo-labels reach, so a
quality table can state how much of the gap a CAM source leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import DataLoader, MetaTensor
from monai.transforms import MapTransform

from monai_pixelcam.cams.auto import AUTO, DEFAULT_CANDIDATES, ValpxSelectedMaps, selection_batches
from monai_pixelcam.cams.distinct import build_distinct, distinct_method_name
from monai_pixelcam.cams.extractors import CAM, build_cam, canonical_method_name
from monai_pixelcam.atomic import write_json_atomic

__all__ = [
    "CAMStore",
    "StaleCAMStoreError",
    "LoadStoredCAMd",
    "LoadStoredCAMD",
    "LoadStoredCAMDict",
    "MaskOracle",
    "ORACLE",
    "sha256_file",
    "store_method_name",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_MAPS_PREFIX = "maps-"
_REQUIRED = ("checkpoint_sha256", "method", "feature_size", "dtype", "maps_dir", "ids")
#: method name of the ground-truth maps (:class:`MaskOracle`)
ORACLE = "oracle"


class StaleCAMStoreError(ValueError):
    """A CAM store was made by another checkpoint or CAM method than the one the caller expects."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; FileNotFoundError naming the path when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _map_filename(image_id: str) -> str:
    # Percent-encoding keeps any id (slashes, spaces) a single, distinct file name.
    return quote(image_id, safe="") + ".npy"


def store_method_name(name: str) -> str:
    """Canonical name of what a store holds (any case): ``"oracle"``, a CAM method of :mod:`.extractors`,
    ``"distinct"`` or ``"<cam method>+distinct"`` (:mod:`.distinct`), ``"auto"`` (:mod:`.auto`); ValueError
    listing the CAM methods otherwise."""
    if str(name).lower() in (ORACLE, AUTO):
        return str(name).lower()
    return distinct_method_name(name) or canonical_method_name(name)


class MaskOracle:
    """Ground-truth masks at the feature resolution of a model: the maps perfect pseudo-labels would be.

    Each feature cell gets the fraction of its footprint that the mask covers (area average, so values stay
    in [0, 1] and a cell half on a gland edge is 0.5, like a CAM there). The feature size, and the target
    layer recorded in a store's manifest, come from the model's own forward pass (a :class:`~.extractors.CAM`
    extraction), so oracle maps have exactly the shape of the CAMs they stand in for.

    Args:
        model, target_layer: as for a CAM extractor (default target ``model.encoder``).

    Call: ``oracle(x, masks, class_idx=None)`` with ``x`` ``B x 3 x H x W`` and ``masks`` ``B x 1 x H x W``
    (or ``B x H x W``) in {0, 1}; returns ``B x 1 x h x w`` float32 in [0, 1].
    """

    name = ORACLE

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        self._cam = CAM(model, target_layer)
        self.target_layer = self._cam.target_layer

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, class_idx=None) -> torch.Tensor:
        masks = torch.as_tensor(masks).to(device=x.device, dtype=torch.float32)
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != x.shape[0] or masks.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"MaskOracle: masks must be B x 1 x H x W matching the images {tuple(x.shape)}, "
                f"got {tuple(masks.shape)}."
            )
        size = self._cam(x, class_idx=class_idx).shape[-2:]
        return F.adaptive_avg_pool2d(masks.clamp(0.0, 1.0), size)


def _ids_of(batch_ids) -> list[str]:
    if isinstance(batch_ids, torch.Tensor):
        batch_ids = batch_ids.tolist()
    if isinstance(batch_ids, (str, bytes)):
        batch_ids = [batch_ids]
    return [str(i) for i in batch_ids]


class CAMStore:
    """Per-image CAMs of one source model on disk (see the module docstring for the layout).

    Args:
        root: the store folder.
        checkpoint_sha256: when given, the manifest must record this checkpoint hash.
        method: when given, the manifest must record this CAM method.

    Holds only the path and the expectations (the manifest is read lazily), so it pickles to DataLoader
    workers cheaply. Use :meth:`open` to bind a store to a checkpoint file, :meth:`build` to fill it.
    """

    def __init__(
        self, root: str | os.PathLike, checkpoint_sha256: str | None = None, method: str | None = None
    ) -> None:
        self.root = Path(root)
        self.expected_sha256 = checkpoint_sha256
        self.expected_method = store_method_name(method) if method is not None else None
        self._manifest: dict | None = None
        self._index: dict[str, int] = {}

    @classmethod
    def open(
        cls, root: str | os.PathLike, checkpoint_path: str | os.PathLike | None = None, method: str | None = None
    ) -> CAMStore:
        """Open an existing store, checking now that it was made from ``checkpoint_path`` with ``method``.

        Raises:
            FileNotFoundError: no manifest under ``root``.
            StaleCAMStoreError: the checkpoint's sha256 or the method differ from the manifest's.
        """
        sha = sha256_file(checkpoint_path) if checkpoint_path is not None else None
        store = cls(root, checkpoint_sha256=sha, method=method)
        store.manifest  # noqa: B018 - reads and checks now, not at the first load
        return store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_manifest"], state["_index"] = None, {}  # re-read (and re-checked) in the worker
        return state

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def manifest(self) -> dict:
        """The manifest dict, read once and checked against the expected checkpoint hash and method."""
        if self._manifest is None:
            manifest = self._read_manifest()
            self._check(manifest, self.expected_sha256, self.expected_method)
            self._index = {image_id: i for i, image_id in enumerate(manifest["ids"])}
            self._manifest = manifest
        return self._manifest

    def _read_manifest(self) -> dict:
        path = self.manifest_path
        if not path.is_file():
            raise FileNotFoundError(f"no CAM store at {self.root} ({MANIFEST} missing); build it with CAMStore.build.")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable CAM store manifest {path}: {e}") from e
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise ValueError(f"CAM store manifest {path} lacks {', '.join(missing)}.")
        return manifest

    def _check(self, manifest: dict, sha256: str | None, method: str | None) -> None:
        problems = []
        if sha256 is not None and manifest["checkpoint_sha256"] != sha256:
            problems.append(
                f"it was built from checkpoint sha256 {manifest['checkpoint_sha256']} "
                f"({manifest.get('checkpoint')}), not the expected sha256 {sha256}"
            )
        if method is not None and manifest["method"] != method:
            problems.append(f"it holds {manifest['method']!r} maps, not the expected {method!r}")
        if problems:
            raise StaleCAMStoreError(
                f"CAM store {self.root} is stale: " + "; ".join(problems) + ". Rebuild it with CAMStore.build."
            )

    def check(
        self,
        checkpoint_path: str | os.PathLike | None = None,
        method: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        """Raise :class:`StaleCAMStoreError` unless the store matches the checkpoint (file or hash) and method."""
        sha = sha256_file(checkpoint_path) if checkpoint_path is not None else checkpoint_sha256
        self._check(self.manifest, sha, store_method_name(method) if method is not None else None)

    @property
    def ids(self) -> list[str]:
        return list(self.manifest["ids"])

    def __len__(self) -> int:
        return len(self.manifest["ids"])

    def __contains__(self, image_id: object) -> bool:
        self.manifest  # noqa: B018 - fills the index
        return str(image_id) in self._index

    def load(self, image_id: str) -> torch.Tensor:
        """The stored map of ``image_id``: float32 ``1 x h x w`` in [0, 1] (h x w = the manifest's feature_size).

        Raises:
            KeyError: the store holds no map for ``image_id`` (the message names the id and the store).
        """
        manifest = self.manifest
        image_id = str(image_id)
        if image_id not in self._index:
            raise KeyError(
                f"no stored CAM for id {image_id!r} in CAM store {self.root} ({len(self._index)} ids, "
                f"built from {manifest.get('checkpoint')})."
            )
        path = self.root / manifest["maps_dir"] / _map_filename(image_id)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"CAM store {self.root}: map file of id {image_id!r} unreadable: {path} ({e})"
            ) from e
        h, w = manifest["feature_size"]
        if array.shape != (1, h, w):
            raise ValueError(f"CAM store {self.root}: {path} has shape {array.shape}, manifest says (1, {h}, {w}).")
        return torch.from_numpy(array.astype(np.float32))

    def build(
        self,
        model: nn.Module,
        data: DataLoader | Iterable[Mapping],
        method: str,
        checkpoint_path: str | os.PathLike,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        target_layer: nn.Module | str | None = None,
        dtype: str = "float16",
        image_key: str = "image",
        label_key: str = "label",
        id_key: str = "id",
        num_workers: int = 0,
        mask_key: str = "mask",
        distinct_kwargs: Mapping | None = None,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        selection_data: Iterable[Mapping] | None = None,
    ) -> CAMStore:
        """Compute the true-class CAM (``class_idx = label``) of every item at feature resolution and store it.

        Args:
            model: the source classifier loaded from ``checkpoint_path`` (e.g. ``WSOLClassifier``).
            data: a DataLoader yielding dicts ``{image: B x 3 x H x W, label: B, id: B str}``, or a dataset of
                such items (wrapped in a ``monai.data.DataLoader`` without shuffling). Use deterministic eval
                transforms: the maps are stored for the image as the loader gives it.
            method: "cam", "gradcam", "gradcampp" or "layercam"; "distinct" or "<cam method>+distinct" (the
                maps of :mod:`.distinct`, whose feature banks come from a first pass over ``data``); "auto"
                (per class, the best of ``candidates`` on ``selection_data``); or "oracle" to store the items'
                ground-truth masks (under ``mask_key``) at feature resolution instead (:class:`MaskOracle`).
            checkpoint_path: the file the model weights came from; its sha256 goes into the manifest.
            batch_size, num_workers: used only when ``data`` is not a DataLoader.
            device: where to compute; the model is moved there. Default: the model's device.
            target_layer: passed to the extractor (default ``model.encoder``).
            dtype: "float16" or "float32" on disk; :meth:`load` always returns float32.
            distinct_kwargs: for a distinctiveness method (or "auto"), arguments of
                :func:`~monai_pixelcam.cams.distinct.build_distinct` (``distinct_layer``, ``k``, ``bank_size``).
            candidates, selection_data: for "auto" (:class:`~.auto.ValpxSelectedMaps`), the methods to choose
                from and a loader of valpx batches ``{image, mask, label}`` (deterministic eval transforms) that
                chooses one per class; the choice and every candidate's valpx PxAP go into the manifest
                (``selection``).

        Returns:
            ``self``, now expecting this checkpoint and method.

        Raises:
            ValueError: duplicate ids, empty data, or images giving different feature sizes (resize them in
                the eval transforms).
        """
        method = store_method_name(method)
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}.")
        sha = sha256_file(checkpoint_path)
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.to(device)
        loader = data if isinstance(data, DataLoader) else DataLoader(
            data, batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
        if method == ORACLE:
            extractor = MaskOracle(model, target_layer)
        elif method == AUTO:
            if selection_data is None:
                raise ValueError("CAMStore.build: method 'auto' chooses the maps on valpx; pass selection_data.")
            extractor = ValpxSelectedMaps(model, candidates, target_layer, **(distinct_kwargs or {}))
        elif distinct_method_name(method):
            extractor = build_distinct(method, model, target_layer, **(distinct_kwargs or {}))
        else:
            extractor = build_cam(method, model, target_layer)
        if hasattr(extractor, "fit"):  # maps that need the training set first (feature banks)
            extractor.fit(
                (torch.as_tensor(b[image_key]).to(device=device, dtype=torch.float32), torch.as_tensor(b[label_key]))
                for b in loader
            )
        if method == AUTO:
            extractor.select(selection_batches(selection_data, device, image_key, mask_key, label_key))
        needed = (image_key, label_key, id_key) + ((mask_key,) if method == ORACLE else ())
        layer_name = next(n for n, m in model.named_modules() if m is extractor.target_layer)

        self.root.mkdir(parents=True, exist_ok=True)
        maps_dir = f"{_MAPS_PREFIX}{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        staging = self.root / maps_dir
        staging.mkdir()
        ids: list[str] = []
        class_idx: list[int] = []
        seen: set[str] = set()
        feature_size = image_size = None
        try:
            for batch in loader:
                for key in needed:
                    if key not in batch:
                        raise KeyError(f"CAMStore.build: batch has no {key!r} key (keys: {sorted(batch)}).")
                images = torch.as_tensor(batch[image_key]).to(device=device, dtype=torch.float32)
                labels = torch.as_tensor(batch[label_key]).reshape(-1).to(device)
                batch_ids = _ids_of(batch[id_key])
                if method == ORACLE:
                    maps = extractor(images, batch[mask_key], class_idx=labels)
                else:
                    maps = extractor(images, class_idx=labels)
                if feature_size is None:
                    feature_size, image_size = list(maps.shape[-2:]), list(images.shape[-2:])
                elif list(maps.shape[-2:]) != feature_size:
                    raise ValueError(
                        f"CAMStore.build: feature size {list(maps.shape[-2:])} of ids {batch_ids} differs from "
                        f"{feature_size}; give all images one size in the eval transforms."
                    )
                maps_np = maps.cpu().numpy().astype(dtype)
                for image_id, cam, label in zip(batch_ids, maps_np, labels.tolist(), strict=True):
                    if image_id in seen:
                        raise ValueError(f"CAMStore.build: duplicate id {image_id!r}.")
                    seen.add(image_id)
                    np.save(staging / _map_filename(image_id), cam, allow_pickle=False)
                    ids.append(image_id)
                    class_idx.append(int(label))
            if not ids:
                raise ValueError("CAMStore.build: the data yielded no items.")
            manifest = {
                "format_version": FORMAT_VERSION,
                "checkpoint_sha256": sha,
                "checkpoint": str(Path(checkpoint_path).resolve()),
                "method": method,
                "target_layer": layer_name,
                "feature_size": feature_size,
                "image_size": image_size,
                "dtype": np.dtype(dtype).name,
                "maps_dir": maps_dir,
                "ids": ids,
                "class_idx": class_idx,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            if method == AUTO:
                manifest["selection"] = extractor.report
            write_json_atomic(manifest, self.manifest_path, indent=1)  # the commit point
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for old in self.root.glob(f"{_MAPS_PREFIX}*"):
            if old.name != maps_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        self.expected_sha256, self.expected_method = sha, method
        self._manifest, self._index = manifest, {image_id: i for i, image_id in enumerate(ids)}
        return self


class LoadStoredCAMd(MapTransform):
    """Put an item's stored CAM under ``keys``, resized to the item's image size.

    The map is bilinearly resized to the ``H x W`` of ``data[image_key]`` so that the later spatial transforms
    apply one draw to image, mask and cam. Output: float32 ``1 x H x W`` in [0, 1] (a MetaTensor carrying the
    image's affine when the image is a MetaTensor).

    Args:
        keys: where to put the map (normally "cam").
        store: a :class:`CAMStore` (ideally opened with the checkpoint and method it must match) or its root.
        id_key: the item key holding the image id.
        image_key: the item key of the ``C x H x W`` image whose size the map takes.
        checkpoint_path, method: with a root path, the store is opened with
            :meth:`CAMStore.open` (checked against this checkpoint's sha256 and this method) at the first
            call rather than at construction, so that a pipeline can be built before the store exists
            (MONAI bundles instantiate every component up front).
    """

    def __init__(
        self,
        keys: KeysCollection = "cam",
        store: CAMStore | str | os.PathLike | None = None,
        id_key: str = "id",
        image_key: str = "image",
        allow_missing_keys: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if store is None:
            raise TypeError("LoadStoredCAMd needs a CAMStore or a store root path.")
        if isinstance(store, CAMStore) and (checkpoint_path is not None or method is not None):
            raise ValueError("LoadStoredCAMd: give checkpoint_path/method with a store root path, not a CAMStore.")
        self._store = store if isinstance(store, CAMStore) else None
        self._open_args = (store, checkpoint_path, method)
        self.id_key = id_key
        self.image_key = image_key

    @property
    def store(self) -> CAMStore:
        if self._store is None:
            root, checkpoint_path, method = self._open_args
            self._store = (
                CAMStore.open(root, checkpoint_path, method)
                if checkpoint_path is not None or method is not None
                else CAMStore(root)
            )
        return self._store

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in (self.id_key, self.image_key):
            if key not in d:
                raise KeyError(f"LoadStoredCAMd: item has no {key!r} key (keys: {sorted(map(str, d))}).")
        image = d[self.image_key]
        if len(image.shape) != 3:
            raise ValueError(f"LoadStoredCAMd: {self.image_key!r} must be C x H x W, got shape {tuple(image.shape)}.")
        size = tuple(int(s) for s in image.shape[-2:])
        cam = self.store.load(d[self.id_key])
        if tuple(cam.shape[-2:]) != size:
            cam = F.interpolate(cam[None], size=size, mode="bilinear", align_corners=False)[0].clamp_(0.0, 1.0)
        for key in self.keys:
            out = cam.clone()
            d[key] = MetaTensor(out, affine=image.affine.clone()) if isinstance(image, MetaTensor) else out
        return d


LoadStoredCAMD = LoadStoredCAMDict = LoadStoredCAMd
