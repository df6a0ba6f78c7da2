"""Which file a request may read: image ids are looked up in the datastore, never taken as server paths.

MONAI Label 0.8.5's ``MONAILabelApp.infer`` and ``infer_wsi`` use an image id as a path whenever a file of
that name exists, before they ask the datastore. Any caller could then run the model on any file the server
can read (``image=/tmp/other.png``) and tell existing paths (422, "cannot identify image file") from missing
ones (404). A server that holds patient slides must not. Here a request's ``image`` is one of:

* a datastore image id, resolved with ``Datastore.get_image_uri``;
* a file this server wrote for the request itself: an upload (``file=``; MONAI Label's endpoints store it as
  ``tempfile.NamedTemporaryFile(suffix=...).name``, a ``tmp`` + 8 random characters name in the temporary
  folder, which a caller cannot name without guessing one of 37^8 names) or the image of a MONAI Label
  session (under the sessions folder). An upload counts only inside a request scope (:func:`request_scope`,
  entered by the server's guard, :mod:`monai_pixelcam.label.server`, which also makes the temporary folder
  one of the server's own): a file that was already in the folder when the request began is not this
  request's upload, whoever put it there;
* anything else, whether or not a file of that name exists, gets the same 404.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from monailabel.interfaces.datastore import Datastore

from .errors import RequestError

__all__ = ["resolve_image", "is_upload", "request_scope", "upload_files", "removed_on_failure"]

logger = logging.getLogger(__name__)

# tempfile's names: "tmp" + 8 characters of _RandomNameSequence + the suffix the endpoint passes (the
# uploaded file name's suffixes, e.g. ".png" or ".ome.tif")
_UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\.[^/\\]*)?")
# the upload-named files of the temporary folder when the current request began (None: outside a request)
_BEFORE_REQUEST: ContextVar[frozenset[str] | None] = ContextVar("pixelcam_files_before_request", default=None)


def upload_files() -> list[str]:
    """Names of the files in ``tempfile.gettempdir()`` that have an upload's name (MONAI Label's endpoints
    also write their DSA/ASAP answers under such names)."""
    try:
        return [n for n in os.listdir(tempfile.gettempdir()) if _UPLOAD_NAME.fullmatch(n)]
    except OSError:
        return []


@contextmanager
def request_scope() -> Iterator[None]:
    """The extent of one request: files with an upload's name that exist when it begins are not its uploads."""
    token = _BEFORE_REQUEST.set(frozenset(upload_files()))
    try:
        yield
    finally:
        _BEFORE_REQUEST.reset(token)


def is_upload(path: str) -> bool:
    """Whether ``path`` names a file MONAI Label's endpoints wrote for an image uploaded with the current
    request: a regular file (not a link) directly in ``tempfile.gettempdir()`` with a ``NamedTemporaryFile``
    name, written since the request began (:func:`request_scope`; outside one, no file is an upload)."""
    before = _BEFORE_REQUEST.get()
    name = os.path.basename(path)
    return (
        before is not None
        and name not in before
        and os.path.dirname(path) == tempfile.gettempdir()
        and _UPLOAD_NAME.fullmatch(name) is not None
        and os.path.isfile(path)
        and not os.path.islink(path)
    )


@contextmanager
def removed_on_failure(path: str) -> Iterator[None]:
    """Delete ``path`` when it is the current request's upload and the block raises: MONAI Label's endpoints
    delete an upload in a background task that runs only after a successful answer."""
    upload = is_upload(path)
    try:
        yield
    except BaseException:
        if upload:
            try:
                os.remove(path)
            except OSError:
                pass
        raise


def _in_folder(path: str, folder: str | None) -> bool:
    if not folder:
        return False
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root and real != root and os.path.isfile(real)


def _not_found(image: str) -> RequestError:
    # one message for every id that does not resolve, so the answer tells nothing about the server's files
    return RequestError(404, f"image {image!r} is not in the datastore (GET /datastore/?output=all lists the ids)")


def resolve_image(image: str, datastore: Datastore, sessions_dir: str | None = None) -> str:
    """The file an image id names: a datastore image, an upload of this request, or a session image.

    Args:
        image: the request's ``image``: a datastore id, or the path MONAI Label's endpoint gave an upload
            or a session.
        datastore: the app's datastore.
        sessions_dir: the folder of MONAI Label's sessions, or None when sessions are off.

    Raises:
        RequestError: 404, the same for every other string (paths outside these, ``..``, missing ids).
    """
    if not isinstance(image, str) or not image:
        raise RequestError(404, "no image: give the id of a datastore image or upload a file")
    if is_upload(image) or _in_folder(image, sessions_dir):
        return image
    try:
        uri = datastore.get_image_uri(image)
    except Exception as e:  # noqa: BLE001 - a remote datastore's failure on an unknown id is still "not found"
        logger.info(f"datastore lookup of {image!r} failed: {type(e).__name__}: {e}")
        uri = ""
    if not uri or not os.path.isfile(uri):
        raise _not_found(image)
    return uri
