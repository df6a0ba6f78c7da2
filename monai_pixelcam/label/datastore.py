"""The app's local datastore: MONAI Label's ``LocalDatastore`` that keeps every file inside its folder and
takes only images and labels it can use.

MONAI Label 0.8.5's ``LocalDatastore`` joins a client's image id and label tag into file paths as they come:
``PUT /datastore/?image=../x`` writes ``x.png`` one folder above the datastore and ``PUT /datastore/label?tag=
../../t`` a folder two levels up; ``/infer`` and ``GET /datastore/image`` then serve them. It also stores
any file as a label, so a label of the wrong size or a text file fails the next train job, out of the
annotator's sight. :class:`PixelCAMDatastore` checks at the door, before anything is written:

* image ids are one plain file-name stem (no path separator, no leading ``.``, no control character, at most
  200 characters); label tags are short words (``[A-Za-z0-9_-]``, at most 64); the stored file's extension
  is one of the image extensions the app lists; every path it writes or returns resolves inside the folder
  (400 otherwise);
* an added image must be an image the app reads (422), of at most ``max_image_pixels`` pixels unless it is
  a whole slide (413);
* a label must be a raster mask of its image's size that the datalist check would take
  (:func:`monai_pixelcam.data.validate.mask_problem`: binary, or a label map of ids, or a soft map in
  [0, 1]), or, for a whole slide, polygon annotations (ASAP XML as QuPath's *Submit Label* sends them, DSA
  JSON, GeoJSON; :func:`monai_pixelcam.data.annotations.read_annotations`) whose polygons lie on the slide,
  do not cross themselves, enclose an area, and are named after a class or a region-of-interest label
  (:func:`monai_pixelcam.data.slide_regions.annotation_problems`); anything else is refused (415 format,
  422 content, naming the annotation) and not stored.

Errors are :class:`~monai_pixelcam.label.errors.RequestError` (an ``HTTPException`` MONAI Label's endpoints
pass to the client) whose message names the id or tag, never a server path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore

from ..data.annotations import ANNOTATION_SUFFIXES, read_annotations
from ..data.datalist import DatalistError
from ..data.slide_regions import annotation_problems
from ..data.io import MAX_IMAGE_PIXELS, ImageTooLargeError, checked_image_size, read_pixels
from ..data.validate import mask_problem
from ..inference.wsi import is_whole_slide
from .access import removed_on_failure
from .errors import RequestError
from .infer import image_geometry, too_large

__all__ = ["RASTER_LABEL_SUFFIXES", "check_image_id", "check_tag", "PixelCAMDatastore"]

#: At most this many problems of one annotation file are sent back (the rest are counted).
_MAX_PROBLEMS = 20

#: Extensions of the label files the app stores (raster masks).
RASTER_LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_TAG = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9_\-]{1,10}){1,3}")
_MAX_ID = 200


def check_image_id(image_id: Any) -> str:
    """An image id that names one file stem inside the datastore.

    Raises:
        RequestError: 400 naming the id.
    """
    ok = (
        isinstance(image_id, str)
        and 0 < len(image_id) <= _MAX_ID
        and not image_id.startswith(".")
        and not any(c in image_id for c in "/\\")
        and all(c.isprintable() for c in image_id)
    )
    if not ok:
        shown = image_id[:80] if isinstance(image_id, str) else image_id
        raise RequestError(
            400,
            f"image id {shown!r} is not a plain file name: ids are at most {_MAX_ID} printable characters, "
            "without '/', '\\' or a leading '.'",
        )
    return image_id


def check_tag(tag: Any) -> str:
    """A label tag that is one short word (``final``, ``original``, ...).

    Raises:
        RequestError: 400 naming the tag.
    """
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        shown = tag[:80] if isinstance(tag, str) else tag
        raise RequestError(400, f"label tag {shown!r} must be 1 to 64 letters, digits, '_' or '-'")
    return tag


def _suffix(file_name: str, allowed: Sequence[str], what: str) -> str:
    suffix = "".join(Path(file_name).suffixes).lower()
    if not _SUFFIX.fullmatch(suffix) or not suffix.endswith(tuple(allowed)):
        raise RequestError(415, f"{what} of type {suffix or '(none)'!r} is not accepted; accepted: {sorted(allowed)}")
    return suffix


def _plain_info(info: Any) -> dict[str, Any]:
    """Image or label info a client sends: a JSON object without NaN or Infinity (stored, it would make every
    later listing of the datastore fail), at most 64 KB."""
    try:
        text = json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RequestError(400, f"info must be a JSON object of plain values ({e})") from None
    if not isinstance(info, dict) or len(text) > 65536:
        raise RequestError(400, "info must be a JSON object of at most 64 KB")
    return info


class PixelCAMDatastore(LocalDatastore):
    """``LocalDatastore`` whose ids, tags, images and labels are checked (module docstring).

    Args:
        datastore_path: the datastore folder (``--studies``).
        extensions: file patterns of images (``*.png``, ...); their suffixes are the accepted image types.
        max_image_pixels: largest image (pixels) accepted, whole slides excepted.
        classes: returns the class names annotations must use, or None while they are unknown (no setting
            and no trained model: the train job checks them then).
        roi_labels: the region-of-interest labels of slide annotations.
        kwargs: passed to ``LocalDatastore`` (``auto_reload``, ``read_only``, ...).
    """

    def __init__(
        self,
        datastore_path: str,
        extensions: Sequence[str] = ("*.png",),
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        classes: Callable[[], Sequence[str] | None] = lambda: None,
        roi_labels: Sequence[str] = ("roi",),
        **kwargs,
    ):
        self.image_suffixes = tuple(sorted({p.lstrip("*").lower() for p in extensions if p.startswith("*.")}))
        self.max_image_pixels = int(max_image_pixels)
        self.classes = classes
        self.roi_labels = tuple(roi_labels)
        super().__init__(datastore_path, extensions=list(extensions), **kwargs)
        self._root = os.path.realpath(datastore_path)

    def _inside(self, path: str, what: str) -> str:
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._root]) != self._root or real == self._root:
            raise RequestError(400, f"{what} does not resolve inside the datastore")
        return path

    def _size(self, path: str, what: str) -> tuple[int, int]:
        """``(height, width)`` of an image or slide at level 0 (422 when it is not one the app reads, 413 for an
        image over ``max_image_pixels`` that is not a whole slide)."""
        if is_whole_slide(path):
            width, height, _ = image_geometry(path, 0)
            return height, width
        try:
            size = checked_image_size(path, self.max_image_pixels)
        except ImageTooLargeError as e:
            raise too_large(what, e) from None
        if size is None:
            raise RequestError(422, f"{what} is not an image the app can read")
        return size

    # --- images ----------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded image (see the class docstring for the checks; nothing is written when one fails).
        The id is checked before ``LocalDatastore`` joins it into ``<id><suffix>`` in its folder."""
        with removed_on_failure(image_filename):
            name = os.path.basename(image_filename)
            image_id = check_image_id(image_id or name[: len(name) - len("".join(Path(name).suffixes))])
            _suffix(image_filename, self.image_suffixes, f"image {image_id!r}")
            self._size(image_filename, f"image {image_id!r}")
            return super().add_image(image_id, image_filename, image_info)

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        return self._inside(uri, f"image {str(image_id)[:80]!r}") if uri else uri

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        super().update_image_info(image_id, _plain_info(info))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        super().update_label_info(label_id, label_tag, _plain_info(info))

    # --- labels ----------------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label after checking it against its image (class docstring); a bad label is not stored."""
        with removed_on_failure(label_filename):
            return self._save_label(image_id, label_filename, label_tag, label_info)

    def _save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_image_id(image_id)
        check_tag(label_tag)
        image = self.get_image_uri(image_id)
        if not image or not os.path.isfile(image):
            raise RequestError(404, f"image {image_id!r} is not in the datastore")
        what = f"label {label_tag!r} of image {image_id!r}"
        suffix = _suffix(label_filename, RASTER_LABEL_SUFFIXES + ANNOTATION_SUFFIXES, what)
        expected = self._size(image, f"image {image_id!r}")
        if suffix.endswith(ANNOTATION_SUFFIXES):
            self._check_annotations(image, label_filename, expected, what)
            return super().save_label(image_id, label_filename, label_tag, label_info)
        try:
            pixels, has_alpha = read_pixels(label_filename, palette_as_index=True, max_pixels=self.max_image_pixels)
        except ImageTooLargeError as e:
            raise too_large(what, e) from None
        except DatalistError:
            raise RequestError(422, f"{what} is not an image the app can read") from None
        if tuple(pixels.shape[:2]) != tuple(expected):
            raise RequestError(
                422,
                f"{what} is {pixels.shape[1]} x {pixels.shape[0]} pixels; its image is {expected[1]} x {expected[0]}",
            )
        problem = mask_problem(pixels, has_alpha)
        if problem:
            raise RequestError(422, f"{what} is not a mask: {problem}")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def _check_annotations(self, image: str, label_filename: str, size: tuple[int, int], what: str) -> None:
        """Polygon annotations of a whole slide (class docstring): 422 with every problem, naming the
        annotation."""
        if not is_whole_slide(image):
            raise RequestError(422, f"{what}: polygon annotations are taken for whole slides; for an image, "
                                    "submit a mask image")
        try:
            polygons = read_annotations(label_filename, name=what)
        except DatalistError as e:
            problems = e.problems
        else:
            problems = annotation_problems(polygons, (size[1], size[0]), self.classes(), self.roi_labels, what)
        if problems:
            more = len(problems) - _MAX_PROBLEMS
            raise RequestError(422, "; ".join(problems[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else ""))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        uri = super().get_label_uri(label_id, label_tag)
        return self._inside(uri, f"label {str(label_tag)[:80]!r} of {str(label_id)[:80]!r}") if uri else uri
