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
:class:`~.seed_maps.MaskOracle`: each item's ground-truth mask at the model's feature resolution. PixelCAM trained from
them, through the same store, seeder and schedule, is the ceiling that perfect pseudo-labels reach, so a
quality table can state how much of the gap a CAM source leaves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Hashable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_pixelcam.cams.seed_maps import SeedMaps, store_method_name
from monai_pixelcam.atomic import write_json_atomic

__all__ = [
    "CAMStore",
    "StaleCAMStoreError",
    "LoadStoredCAMd",
    "LoadStoredCAMD",
    "LoadStoredCAMDict",
    "sha256_file",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_MAPS_PREFIX = "maps-"
_REQUIRED = ("checkpoint_sha256", "method", "feature_size", "dtype", "maps_dir", "ids")
#: key of an item's id in the batch dicts a store is built from
_ID = "id"


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

    def build(self, maps: SeedMaps, loader: Iterable[Mapping], checkpoint_path: str | os.PathLike,
              dtype: str = "float16") -> CAMStore:
        """Store the true-class map (``class_idx = label``) of every item of ``loader`` at feature resolution.

        Args:
            maps: what to compute (:func:`~.seed_maps.prepare_seed_maps`, from the model loaded from
                ``checkpoint_path``).
            loader: batch dicts ``{image: B x 3 x H x W, label: B, id: B str}`` (and ``mask`` for the oracle),
                from deterministic eval transforms: the maps are stored for the image as the loader gives it.
            checkpoint_path: the file the model weights came from; its sha256 goes into the manifest.
            dtype: "float16" or "float32" on disk; :meth:`load` always returns float32.

        Returns:
            ``self``, now expecting this checkpoint and method.

        Raises:
            ValueError: duplicate ids, empty data, or images giving different feature sizes (resize them in
                the eval transforms).
        """
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}.")
        sha = sha256_file(checkpoint_path)
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
                if _ID not in batch:
                    raise KeyError(f"CAMStore.build: batch has no {_ID!r} key (keys: {sorted(batch)}).")
                batch_ids = _ids_of(batch[_ID])
                batch_maps, labels = maps(batch)
                if feature_size is None:
                    feature_size, image_size = list(batch_maps.shape[-2:]), list(batch["image"].shape[-2:])
                elif list(batch_maps.shape[-2:]) != feature_size:
                    raise ValueError(
                        f"CAMStore.build: feature size {list(batch_maps.shape[-2:])} of ids {batch_ids} differs "
                        f"from {feature_size}; give all images one size in the eval transforms."
                    )
                maps_np = batch_maps.cpu().numpy().astype(dtype)
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
                "method": maps.method,
                "target_layer": maps.target_layer,
                "feature_size": feature_size,
                "image_size": image_size,
                "dtype": np.dtype(dtype).name,
                "maps_dir": maps_dir,
                "ids": ids,
                "class_idx": class_idx,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            if maps.report is not None:
                manifest["selection"] = maps.report
            write_json_atomic(manifest, self.manifest_path, indent=1)  # the commit point
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for old in self.root.glob(f"{_MAPS_PREFIX}*"):
            if old.name != maps_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        self.expected_sha256, self.expected_method = sha, maps.method
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
