"""A real MONAI Label server for the ``server``-marked tests: ``monailabel start_server`` with the app folder
``apps/pixelcam`` behind the app's guard, on 127.0.0.1 and a port the system picks (``--port 0``; the port
is read back from uvicorn's start line, so two servers never race for one port).

The server runs in a process group of its own, killed (TERM, then KILL) when the context ends, also when a
test fails; its train jobs and their workers are in the same group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from monailabel.client import MONAILabelClient

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "pixelcam"
GUARD = "monai_pixelcam.label.server:app"
START_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 300
_STARTED = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


def _start_command() -> list[str]:
    """``monailabel start_server`` of this Python (the script runs ``$MONAILABEL_PYEXE -m monailabel.main``)."""
    script = Path(sys.executable).with_name("monailabel")
    if script.is_file():
        return [str(script), "start_server"]
    return [sys.executable, "-m", "monailabel.main", "start_server"]


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
    root: Path, studies: Path, bundle: Path, conf: Mapping[str, str] = (), guard: bool = True
) -> Iterator[Server]:
    """A server of the app folder on ``studies`` with ``bundle`` (``--conf`` ``conf``), logging to
    ``root/server.log``; ``guard=False`` starts it without ``--uvicorn_app`` (the app must refuse)."""
    log = root / "server.log"
    cmd = [*_start_command(), "--app", str(APP_DIR), "--studies", str(studies), "--conf", "bundle_dir", str(bundle)]
    for key, value in dict(conf).items():
        cmd += ["--conf", key, str(value)]
    cmd += ["--host", "127.0.0.1", "--port", "0"] + (["--uvicorn_app", GUARD] if guard else [])
    # this checkout's package, whatever is installed: MONAI Label loads main.py by path, main.py imports it
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "MONAILABEL_PYEXE": sys.executable,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise ServerExited(proc.returncode, tail(log))
            found = _STARTED.search(log.read_bytes())
            if found:
                url = f"http://127.0.0.1:{int(found.group(1))}"
                if requests.get(url + "/info/", timeout=30).status_code == 200:
                    break
            if time.time() > deadline:
                pytest.fail(f"the server did not answer after {START_TIMEOUT_S} s:\n{tail(log)}")
            time.sleep(0.5)
        yield Server(url, log, bundle)
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


class ServerExited(RuntimeError):
    """The server process ended before it answered; ``log`` is the tail of its output."""

    def __init__(self, returncode: int, log: str):
        super().__init__(f"the server exited with {returncode}:\n{log}")
        self.returncode, self.log = returncode, log
