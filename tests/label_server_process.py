"""A real MONAI Label server for the ``server``-marked tests (:func:`monai_pixelcam.label.local_server.running_server`:
the app folder behind its guard, a port the system picks, the process group ended after the test), with HTTP
helpers and MONAI Label's own client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from monailabel.client import MONAILabelClient

from monai_pixelcam.label.local_server import APP_DIR, ServerExited, running_server as _running, tail

__all__ = ["REPO", "Server", "ServerExited", "running_server"]

REPO = APP_DIR.parents[1]
TRAIN_TIMEOUT_S = 300
# small, single-threaded runs: on two shared cores, two torch threads per process mostly wait for each other
_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Server:
    """HTTP helpers over a running server (``requests`` with timeouts, and MONAI Label's own client)."""

    def __init__(self, url: str, log: Path, bundle: Path):
        self.url, self.log, self.bundle = url, log, bundle
        self.client = MONAILabelClient(url)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return requests.delete(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def infer(self, image_id: str = "", file: Path | None = None, params: dict | None = None) -> requests.Response:
        """``POST /infer/pixelcam`` on a datastore id or an uploaded file."""
        files = {"file": (file.name, file.read_bytes(), "application/octet-stream")} if file else None
        data = {"params": json.dumps(params or {})}
        return self.post("/infer/pixelcam", params={"image": image_id} if image_id else None, files=files, data=data)

    def wait_for_train(self, task_id: str) -> dict:
        """The train task ``task_id`` once it has ended (any status), or a test failure after the timeout."""
        deadline = time.time() + TRAIN_TIMEOUT_S
        while time.time() < deadline:
            task = self.get("/train/").json()
            if task.get("id") == task_id and task.get("status") not in ("SUBMITTED", "RUNNING"):
                return task
            time.sleep(1.0)
        pytest.fail(f"train task not finished after {TRAIN_TIMEOUT_S} s\n{tail(self.log)}")

    def train(self, params: dict) -> dict:
        """Run ``/train/pixelcam`` and wait for it; the finished task (status DONE) or a failure with its log."""
        r = self.post("/train/pixelcam", json=params)
        assert r.status_code == 200, r.text
        task = self.wait_for_train(r.json()["id"])
        details = "\n".join(task.get("details", []))
        assert task["status"] == "DONE", f"train task {task['status']}:\n{details}\n--- server log:\n{tail(self.log)}"
        return task


@contextmanager
def running_server(
    root: Path, studies: Path, bundle: Path, conf: Mapping[str, object] = (), guard: bool = True
) -> Iterator[Server]:
    """A :class:`Server` of the app on ``studies`` with ``bundle``, working in ``root``."""
    with _running(root, studies, bundle, conf, guard=guard, env=_ENV) as (url, log):
        yield Server(url, log, bundle)
