"""Which file a request may read: image ids are looked up in the datastore, never taken as server paths.

MONAI Label 0.8.5's ``MONAILabelApp.infer`` and ``infer_wsi`` use an image id as a path whenever a file of
that name exists, before they ask the datastore. Any caller could then run the model on any file the server
can read (``image=/tmp/other.png``) and tell existing paths (422, "cannot identify image file") from missing
ones (404). A server that holds patient slides must not. Here a request's ``image`` is one of:

* a datastore image id, resolved with ``Datastore.get_image_uri``;
* a file this server wrote for the request itself: an upload (``file=``; MONAI Label's endpoints store it as
  ``tempfile.NamedTemporaryFile(suffix=...).name``, a ``tmp`` + 8 random characters name in the temporary
  folder, which a caller cannot name without guessing one of 37^8 names) or the image of a MONAI Label
  session (under the sessions folder);
* anything else, whether or not a file of that name exists, gets the same 404.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

from monailabel.interfaces.datastore import Datastore

from .errors import RequestError

__all__ = ["resolve_image", "is_upload"]

logger = logging.getLogger(__name__)

# tempfile's names: "tmp" + 8 characters of _RandomNameSequence + the suffix the endpoint passes (the
# uploaded file name's suffixes, e.g. ".png" or ".ome.tif")
_UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\.[^/\\]*)?")


def is_upload(path: str) -> bool:
    """Whether ``path`` names a file MONAI Label's endpoints wrote for an uploaded image: a regular file (not
    a link) directly in ``tempfile.gettempdir()`` with a ``NamedTemporaryFile`` name."""
    return (
        os.path.dirname(path) == tempfile.gettempdir()
        and _UPLOAD_NAME.fullmatch(os.path.basename(path)) is not None
        and os.path.isfile(path)
        and not os.path.islink(path)
    )


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
