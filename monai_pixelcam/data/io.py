"""Reading histology images and masks, and the MONAI loading transforms built on them.

Every reader here is the boundary between files and the rest of the package: a missing, unreadable,
corrupt or truncated file raises :class:`~monai_pixelcam.data.datalist.DatalistError` whose message
names the file, never a bare PIL, tifffile or numpy traceback.

Conversion rules (one place, used by the transforms, the validator and the converters):

* images (:func:`read_rgb`) become ``uint8 H x W x 3`` RGB:
  grayscale and 1-bit images are replicated to three channels; palette images go through their
  palette; CMYK, YCbCr, LAB and HSV are converted by PIL; 16-bit data are scaled by 255 / (2^b - 1) for
  the fewest bits b in (10, 12, 14, 16) that hold the image's largest value (10-, 12- and 14-bit samples
  stored in 16-bit files keep their brightness; an image that uses the 16-bit range is scaled by 255 / 65535),
  float data in [0, 1] by 255 (other floats are clipped to [0, 255]); an alpha channel is
  **composited on white** (transparent pixels of a slide crop are glass, i.e. white background; an
  opaque image is unchanged, exactly as if alpha were dropped).
* masks (:func:`read_mask`) become ``uint8 H x W`` in {0, 1}: for integer data, foreground is
  value > 0, which serves 0/1 and 0/255 binary masks and instance-id label maps alike (GlaS
  annotations: gland id > 0); RGB masks are foreground where any colour channel > 0; an alpha
  channel, when present, additionally marks transparent pixels as background; palette masks are read
  by palette **index** (the label-map convention of instance-id and PASCAL VOC annotations), not
  colour; float masks are foreground where value > ``threshold``.

Files are opened by MONAI's :class:`~monai.data.PILReader` with ``reverse_indexing=False`` (rows stay rows),
extended by :class:`HistologyReader` with the rules above, and the transforms are MONAI's ``LoadImage`` /
``LoadImaged`` with that reader. A TIFF that PIL cannot decode (tiled, planar, multi-sample 16-bit, ...) is read
by our own fallback with tifffile (first page): MONAI has no plain-TIFF reader (its ``WSIReader`` reads pyramids).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImage, LoadImaged, MapTransform, Transform
from monai.utils import ensure_tuple
from PIL import Image

from .datalist import DatalistError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "image_size",
    "checked_image_size",
    "read_rgb",
    "read_mask",
    "read_pixels",
    "image_to_rgb",
    "mask_to_binary",
    "read_csv_table",
    "HistologyReader",
    "LoadHistologyImage",
    "LoadHistologyMask",
    "LoadHistologyd",
    "LoadHistologyD",
    "LoadHistologyDict",
]

_TIFF_SUFFIXES = {".tif", ".tiff"}
#: Largest image, in pixels, that is decoded whole (default of every reader here). Decoding and converting
#: one costs tens of bytes per pixel (a 12000 x 12000 PNG of 2.5 MB took 12.6 GB in folder inference), so a
#: larger image is a whole slide: TIFFs above it are read region by region
#: (:func:`monai_pixelcam.inference.is_whole_slide`), other files are refused with :class:`ImageTooLargeError`.
MAX_IMAGE_PIXELS = 4096 * 4096
_PIL_CONVERT_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"}


def _describe(e: BaseException) -> str:
    msg = str(e).strip() or "no details"
    return f"{type(e).__name__}: {msg}"


def _pil_pixels(img: Image.Image, palette_as_index: bool) -> tuple[np.ndarray, bool]:
    """Decoded PIL image -> (array H x W or H x W x C, last channel is alpha)."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        if palette_as_index:
            arr = np.asarray(img)
            if mode == "PA":  # PIL keeps the index in channel 0 and alpha in channel 1
                return arr, True
            return arr, False
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    elif mode in _PIL_CONVERT_TO_RGB:
        img = img.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
        mode = img.mode
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
        mode = "LA"
    arr = np.asarray(img)
    if arr.dtype.byteorder == ">":  # I;16B
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, mode in ("RGBA", "LA")


def _tiff_pixels(path: Path) -> tuple[np.ndarray, bool]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        photometric = int(getattr(page, "photometric", 0) or 0)
        extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C x H x W) storage
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if photometric == 5 and arr.ndim == 3 and arr.shape[-1] >= 4:  # SEPARATED: CMYK
        c, m, y, k = (arr[..., i].astype(np.float64) / _full_scale(arr) for i in range(4))
        arr = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=-1)
        return np.round(arr * 255).astype(np.uint8), False
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"unsupported TIFF pixel layout {arr.shape}")
    has_alpha = arr.ndim == 3 and arr.shape[-1] in (2, 4) and (bool(extrasamples) or arr.shape[-1] == 4)
    return arr, has_alpha


def _full_scale(arr: np.ndarray) -> float:
    if np.issubdtype(arr.dtype, np.integer):
        return float(np.iinfo(arr.dtype).max)
    return 1.0


class ImageTooLargeError(DatalistError):
    """An image with more pixels than a reader's ``max_pixels``; the message names the file, its size and the
    limit, also kept as ``size`` (``(height, width)``) and ``max_pixels``."""

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], max_pixels: int):
        super().__init__(
            f"{path}: {size[1]} x {size[0]} pixels is more than the {max_pixels} pixels an image may have to be "
            "decoded whole; cut it into tiles, or save it as a pyramidal TIFF and run it as a whole slide"
        )
        self.size, self.max_pixels = size, max_pixels


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DatalistError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DatalistError(f"{path}: empty file (0 bytes)")


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header, without decoding the pixels (PIL opens lazily;
    tifffile for TIFFs PIL cannot open); None when neither can tell. An image over PIL's decompression-bomb
    limit is sized by its header all the same."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return int(img.height), int(img.width)
    except Image.DecompressionBombError as e:
        # PIL refuses to open it but has read the size: "Image size (W x H pixels) exceeds limit ..."
        numbers = [int(n) for n in str(e).split("(", 1)[-1].split(" pixels")[0].split(" x ") if n.strip().isdigit()]
        if len(numbers) == 1:
            return numbers[0], 1  # only the pixel count is stated: as an H x 1 image it is sized right
    except Exception:  # noqa: BLE001 - not PIL's: try tifffile below
        pass
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        except Exception:  # noqa: BLE001 - not a TIFF either: the decoder reports it
            return None
    return None


def checked_image_size(path: str | os.PathLike, max_pixels: int | None) -> tuple[int, int] | None:
    """:func:`image_size`, refused when it has more than ``max_pixels`` pixels (None: no limit).

    Raises:
        ImageTooLargeError: naming the file, its size and the limit.
    """
    size = image_size(path)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(path, size, max_pixels)
    return size


def _fallback_pixels(path: Path, pil_error: BaseException) -> tuple[np.ndarray, bool]:
    """Pixels of a file PIL failed on: tifffile for a TIFF, else the error naming the file."""
    if path.suffix.lower() in _TIFF_SUFFIXES:
        try:
            return _tiff_pixels(path)
        except Exception as e:  # noqa: BLE001
            raise DatalistError(
                f"{path}: cannot read image (PIL: {_describe(pil_error)}; tifffile: {_describe(e)})"
            ) from None
    raise DatalistError(f"{path}: cannot read image ({_describe(pil_error)})") from None


def _decoded_pil_pixels(img: Image.Image, palette_as_index: bool) -> tuple[np.ndarray, bool]:
    if img.format == "TIFF" and img.mode in ("RGB", "RGBA", "CMYK"):
        bits = img.tag_v2.get(258, 8)  # BitsPerSample
        if max(bits if isinstance(bits, tuple) else (bits,)) > 8:
            # PIL keeps only the high byte of 16-bit colour samples (12-bit data then peaks at 15 of 255):
            # the caller's tifffile fallback reads them whole
            raise ValueError("colour TIFF with more than 8 bits per sample")
    img.load()  # decode everything now: truncated or corrupt data fails here, not later
    arr, has_alpha = _pil_pixels(img, palette_as_index)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"unsupported image layout {arr.shape}")
    return arr, has_alpha


def read_pixels(
    path: str | os.PathLike, *, palette_as_index: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, bool]:
    """Decode a 2D image file completely, without any value conversion.

    Args:
        path: image file (PNG, BMP, JPEG, TIFF, ... anything PIL reads; TIFF also via tifffile).
        palette_as_index: return palette images as their index map (masks) instead of colours (images).
        max_pixels: refuse (before decoding) an image with more pixels than this; None: no limit.

    Returns:
        ``(pixels, has_alpha)``: ``pixels`` is ``H x W`` or ``H x W x C`` (C in 2..4) of the file's dtype
        (bool, uint8, uint16, int32 or float32); ``has_alpha`` tells whether the last channel is alpha.

    Raises:
        DatalistError: the file is missing, is not an image, or is corrupt or truncated; names the file.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    path = Path(path)
    _check_file(path)
    checked_image_size(path, max_pixels)
    try:
        with Image.open(path) as img:
            return _decoded_pil_pixels(img, palette_as_index)
    except Exception as e:  # noqa: BLE001 - the boundary: any decoder failure becomes a named-file error
        return _fallback_pixels(path, e)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any pixel dtype to uint8 (see the module docstring for the rule)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)
    # 16-bit data: PIL gives I;16 (uint16) or, for some files, I (int32); int32 holding only 0..255 is
    # taken as 8-bit values, anything wider as the range of the fewest bits (10, 12, 14 or 16) that hold its
    # largest value: cameras and scanners store 10-, 12- and 14-bit samples in 16-bit files, which scaled by
    # 65535 would read as near-black (a 12-bit image peaks at 15 of 255)
    if arr.dtype.itemsize == 2 or arr.max(initial=0) > 255:
        peak = int(np.clip(arr.max(initial=0), 0, 65535))
        full = next(2**bits - 1 for bits in (10, 12, 14, 16) if peak <= 2**bits - 1)
        arr = np.clip(arr, 0, full).astype(np.float64) * (255.0 / full)
        return np.round(arr).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def image_to_rgb(pixels: np.ndarray, has_alpha: bool) -> np.ndarray:
    """Pixels from :func:`read_pixels` -> ``uint8 H x W x 3`` RGB (alpha composited on white)."""
    arr = _to_uint8(pixels)
    if arr.ndim == 2:
        arr = arr[..., None]
    alpha = None
    if has_alpha:
        arr, alpha = arr[..., :-1], arr[..., -1:].astype(np.float32) / 255.0
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] != 3:
        raise ValueError(f"cannot convert {arr.shape[-1]} colour channels to RGB")
    if alpha is not None and alpha.min() < 1.0:
        arr = np.round(arr.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(arr)


def mask_to_binary(pixels: np.ndarray, has_alpha: bool, threshold: float = 0.5) -> np.ndarray:
    """Pixels from :func:`read_pixels` (palette as index) -> ``uint8 H x W`` in {0, 1}.

    Integer data: foreground = value > 0 in any colour channel; float data: value > ``threshold``;
    an alpha channel marks transparent pixels as background.
    """
    arr = pixels
    alpha = None
    if has_alpha and arr.ndim == 3:
        arr, alpha = arr[..., :-1], arr[..., -1]
    if np.issubdtype(arr.dtype, np.floating):
        fg = np.nan_to_num(arr, nan=0.0) > threshold
    else:
        fg = arr > 0
    if fg.ndim == 3:
        fg = fg.any(axis=-1)
    if alpha is not None:
        fg &= alpha > 0
    return fg.astype(np.uint8)


def _image_rules(pixels: np.ndarray, has_alpha: bool, path) -> np.ndarray:
    try:
        return image_to_rgb(pixels, has_alpha)
    except ValueError as e:
        raise DatalistError(f"{path}: cannot convert image of shape {pixels.shape} to RGB ({e})") from None


class HistologyReader(PILReader):
    """MONAI's ``PILReader(reverse_indexing=False)`` with the package's conversion rules (module docstring).

    ``read(path)`` returns the decoded image, converted: ``uint8 H x W x 3`` RGB, or with ``mask=True`` the
    ``uint8 H x W`` {0, 1} mask of :func:`mask_to_binary` (palette masks by index, value > ``threshold`` for
    float masks); ``get_data`` is PILReader's. One file per call. A TIFF PIL cannot decode goes through
    tifffile. Every failure raises :class:`~monai_pixelcam.data.datalist.DatalistError` naming the file; an
    image of more than ``max_pixels`` pixels (None: no limit) is refused before it is decoded
    (:class:`ImageTooLargeError`).
    """

    def __init__(self, mask: bool = False, threshold: float = 0.5, max_pixels: int | None = MAX_IMAGE_PIXELS):
        super().__init__(converter=self._convert, reverse_indexing=False)
        self.mask = bool(mask)
        self.threshold = threshold
        self.max_pixels = max_pixels

    def verify_suffix(self, filename) -> bool:
        return True  # whatever PIL (or the TIFF fallback) decodes; a file it cannot read is named in the error

    def _rules(self, pixels: np.ndarray, has_alpha: bool, path) -> Image.Image:
        if self.mask:
            return Image.fromarray(mask_to_binary(pixels, has_alpha, self.threshold))
        return Image.fromarray(_image_rules(pixels, has_alpha, path))

    def _convert(self, img: Image.Image) -> Image.Image:
        try:
            return self._rules(*_decoded_pil_pixels(img, palette_as_index=self.mask), img.filename)
        finally:
            img.close()  # the pixels are copied out; PILReader leaves multi-frame files open

    def read(self, data, **kwargs) -> Image.Image:
        (path,) = (Path(p) for p in ensure_tuple(data))
        _check_file(path)
        checked_image_size(path, self.max_pixels)
        try:
            return super().read(path, **kwargs)
        except DatalistError:
            raise
        except Exception as e:  # noqa: BLE001 - the boundary: any decoder failure becomes a named-file error
            return self._rules(*_fallback_pixels(path, e), path)

    def _get_meta_dict(self, img) -> dict:
        return {}  # PIL's mode and size would describe our converted image, not the file

    def _get_spatial_shape(self, img) -> np.ndarray:
        # PILReader gives (width, height) whatever ``reverse_indexing``; the data here are H x W
        return np.asarray((img.height, img.width))


_RGB_READER = HistologyReader()


def read_rgb(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as ``uint8 H x W x 3`` RGB (conversion rules in the module docstring).

    Raises:
        DatalistError: missing, unreadable, corrupt or truncated file, or an unsupported pixel layout;
            the message names the file.
        ImageTooLargeError: more than ``max_pixels`` pixels (None: no limit).
    """
    reader = _RGB_READER if max_pixels == MAX_IMAGE_PIXELS else HistologyReader(max_pixels=max_pixels)
    return reader.get_data(reader.read(path))[0]


def read_mask(path: str | os.PathLike, threshold: float = 0.5) -> np.ndarray:
    """Read a mask file as ``uint8 H x W`` in {0, 1}.

    Foreground is value > 0 for integer masks (0/1, 0/255, instance-id label maps), any channel > 0 for
    RGB masks, palette index > 0 for palette masks, and value > ``threshold`` for float masks (e.g. a
    float TIFF in [0, 1]). This does not judge whether the file is a plausible mask; the validator does
    (:func:`monai_pixelcam.data.validate.mask_problem`).

    Raises:
        DatalistError: missing, unreadable, corrupt or truncated file; the message names the file.
    """
    reader = HistologyReader(mask=True, threshold=threshold)
    return reader.get_data(reader.read(path))[0]


def read_csv_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file with a header row as a list of row dicts, tolerant of hand-made files.

    Column names are stripped, lower-cased and have inner runs of spaces collapsed (``" Patient  ID"``
    -> ``"patient id"``); values are stripped; missing trailing cells are ""; blank lines are skipped; a
    UTF-8 byte-order mark is ignored. Each row dict also holds ``"_line"``, its line number, for messages.

    Raises:
        DatalistError: the file is missing, not text, has no header, or a row has more cells than the
            header; names the file (and line).
    """
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DatalistError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatalistError(f"{path}: cannot read CSV ({_describe(e)})") from None
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
    if not numbered:
        raise DatalistError(f"{path}: empty CSV (expected a header row)")
    header = [" ".join(c.split()).lower() for c in numbered[0][1]]
    table, problems = [], []
    for n, row in numbered[1:]:
        if len(row) > len(header):
            problems.append(f"{path}, line {n}: {len(row)} cells but the header has {len(header)}")
            continue
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        table.append({**dict(zip(header, cells)), "_line": str(n)})
    if problems:
        raise DatalistError(problems)
    return table


def _monai_loader(loader_class, **kwargs):
    """MONAI's ``LoadImage`` / ``LoadImaged``, built without the warning of its DICOM reader: it instantiates every
    reader it knows, and that one says an optional GPU decoder (nvImageCodec) is missing, which histology tiles
    never need."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return loader_class(**kwargs)


class LoadHistologyImage(Transform):
    """Load an image file as ``float32 3 x H x W`` in [0, 1] (a MetaTensor with ``filename_or_obj``).

    MONAI's ``LoadImage`` with :class:`HistologyReader`: rows stay rows (no transpose, unlike MONAI's default
    PILReader), conversion to RGB as :func:`read_rgb`; bad files raise :class:`DatalistError` naming the file.
    """

    def __init__(self) -> None:
        self.reader = HistologyReader()
        self.load = _monai_loader(LoadImage, image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        return self.load(path, reader=self.reader) / 255.0


class LoadHistologyMask(Transform):
    """Load a mask file as ``float32 1 x H x W`` in {0, 1} (foreground rule of :func:`read_mask`), with
    MONAI's ``LoadImage`` and :class:`HistologyReader` (``mask=True``).

    Args:
        threshold: foreground threshold for float-valued mask files only.
    """

    def __init__(self, threshold: float = 0.5):
        self.reader = HistologyReader(mask=True, threshold=threshold)
        self.load = _monai_loader(LoadImage, image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        return self.load(path, reader=self.reader)


def _empty_mask(size: tuple[int, int]) -> MetaTensor:
    """All-zero ``1 x H x W`` mask with the meta keys of a loaded one, so that batches mixing both collate."""
    meta = {"filename_or_obj": "", "spatial_shape": np.asarray(size), "original_channel_dim": float("nan")}
    return MetaTensor(np.zeros((1, *size), dtype=np.float32), meta=meta)


class LoadHistologyd(MapTransform):
    """Dictionary version: load ``image`` keys as ``3 x H x W`` float [0, 1] and ``mask`` keys as ``1 x H x W``
    float {0, 1}, with MONAI's ``LoadImaged`` and a :class:`HistologyReader` for each (the conversion rules of
    :func:`read_rgb` and :func:`read_mask`).

    A mask key whose value is None, or that is absent, becomes an all-zero ``1 x H x W`` mask of the
    size of the first image loaded from the same dict (images without a region of interest, e.g.
    CAMELYON16 normal patches, have no mask file). Values that are already tensors or arrays are left
    as they are, so the transform is idempotent.

    Args:
        keys: keys to load; those in ``mask_keys`` load as masks, the others as images.
        mask_keys: which of ``keys`` are masks.
        threshold: foreground threshold for float-valued mask files only.
        allow_missing_keys: skip absent image keys instead of raising KeyError (absent mask keys always
            become empty masks).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "mask"),
        mask_keys: KeysCollection = ("mask",),
        threshold: float = 0.5,
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = set(ensure_tuple(mask_keys))
        self.image_reader = HistologyReader()
        self.mask_reader = HistologyReader(mask=True, threshold=threshold)
        # each call names its reader: one given at construction would be one of several that LoadImage tries
        # in turn, hiding our named-file error behind its own
        self.load = _monai_loader(
            LoadImaged, keys=self.keys, image_only=True, ensure_channel_first=True, dtype=np.float32,
            allow_missing_keys=True,
        )

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image_keys = [k for k in self.keys if k not in self.mask_keys]
        mask_keys = [k for k in self.keys if k in self.mask_keys]
        size = None
        for key in self.key_iterator(d):
            if key in self.mask_keys:
                continue
            if isinstance(d[key], (str, os.PathLike)):
                d[key] = self.load({key: d[key]}, reader=self.image_reader)[key] / 255.0
            elif not hasattr(d[key], "shape"):
                raise DatalistError(f"{d.get('id', key)}: '{key}' must be an image path or array, got {d[key]!r}")
            if size is None:
                size = tuple(d[key].shape[-2:])
        for key in mask_keys:
            value = d.get(key)
            if isinstance(value, (str, os.PathLike)) and str(value):
                d[key] = self.load({key: value}, reader=self.mask_reader)[key]
            elif value is None or (isinstance(value, str) and not value):
                if size is None:
                    raise KeyError(f"cannot make an empty '{key}' mask: no image key among {image_keys} was loaded")
                d[key] = _empty_mask(size)
            if size is not None and tuple(d[key].shape[-2:]) != size:
                where = d.get("id", getattr(d[key], "meta", {}).get("filename_or_obj", key))
                raise DatalistError(f"{where}: mask '{key}' is {tuple(d[key].shape[-2:])} but image is {size} (H, W)")
        return d


LoadHistologyD = LoadHistologyDict = LoadHistologyd
