"""Give a running MONAI Label server the labels of a datalist: image-level classes and, optionally, masks.

A datalist (the ``monai_pixelcam.data`` convention, e.g. the synthetic data of the Quick start or a converted
GlaS / CAMELYON16 folder) already holds what an annotator would enter: each image's class and, for some
images, a full mask. This sends them to the server of the app, for the datastore images of the same name
(file name without extension)::

    python -m monai_pixelcam.label.import_labels --server http://127.0.0.1:8000 \\
        --datalist bundles/pixelcam/data/synthetic_glas/datalist.json --masks valpx

Image classes go to ``PUT /datastore/image/info`` (field ``label``, the class name); the masks of the items of
the ``--masks`` splits go to ``PUT /datastore/label`` with tag ``final``. Images the datastore does not hold
are counted and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import requests

from ..data.datalist import SPLITS, DatalistError, load_datalist

__all__ = ["import_datalist", "main"]


def import_datalist(
    server: str,
    datalist: str | os.PathLike,
    mask_splits: Sequence[str] = ("valpx",),
    label_key: str = "label",
    timeout: float = 60.0,
) -> dict:
    """Send a datalist's image classes (and the masks of ``mask_splits``) to a MONAI Label server.

    Returns:
        ``{"labelled": int, "masks": int, "missing": [ids not in the datastore]}``.

    Raises:
        DatalistError: unreadable datalist or unknown split name.
        requests.HTTPError: the server refused a request (the message holds its answer).
    """
    bad = [s for s in mask_splits if s not in SPLITS]
    if bad:
        raise DatalistError(f"unknown split(s) {bad}; choose among {SPLITS}")
    data = load_datalist(datalist)
    server = server.rstrip("/")
    known = set(_datastore_objects(server, timeout))  # image ids
    counts: dict = {"labelled": 0, "masks": 0, "missing": []}
    with requests.Session() as session:
        for split in SPLITS:
            for item in data[split]:
                image_id = Path(item["image"]).stem
                if image_id not in known:
                    counts["missing"].append(image_id)
                    continue
                info = {label_key: data["classes"][int(item["label"])]}
                _check(session.put(f"{server}/datastore/image/info", params={"image": image_id},
                                   data={"info": json.dumps(info)}, timeout=timeout))  # fmt: skip
                counts["labelled"] += 1
                if split in mask_splits and item.get("mask"):
                    with open(item["mask"], "rb") as f:
                        files = {"label": (Path(item["mask"]).name, f, "application/octet-stream")}
                        _check(session.put(f"{server}/datastore/label", params={"image": image_id, "tag": "final"},
                                           files=files, timeout=timeout))  # fmt: skip
                    counts["masks"] += 1
    return counts


def _datastore_objects(server: str, timeout: float) -> dict:
    """Image id -> entry of the server's datastore (``GET /datastore/?output=all``)."""
    response = requests.get(f"{server}/datastore/", params={"output": "all"}, timeout=timeout)
    _check(response)
    return response.json().get("objects", {})


def _check(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise requests.HTTPError(f"{response.request.method} {response.url}: {response.status_code} {response.text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="MONAI Label server URL")
    parser.add_argument("--datalist", required=True, help="datalist JSON (monai_pixelcam.data convention)")
    parser.add_argument("--masks", default="valpx", help="comma-separated splits whose masks are sent ('' for none)")
    parser.add_argument("--label_key", default="label", help="image-info field of the class (the app's label_key)")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.masks.split(",") if s.strip()]
    try:
        counts = import_datalist(args.server, args.datalist, splits, args.label_key)
    except (DatalistError, requests.RequestException, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    missing = counts["missing"]
    print(
        f"{counts['labelled']} image labels and {counts['masks']} masks sent to {args.server}; "
        f"{len(missing)} datalist images are not in the datastore" + (f" (e.g. {missing[:3]})" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
