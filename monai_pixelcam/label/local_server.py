"""A MONAI Label server of the app on this machine, for scripts and tests: ``monailabel start_server`` with
the app folder ``apps/pixelcam`` behind the guard, on 127.0.0.1 and a port the system picks (``--port 0``,
read back from uvicorn's start line, so that two servers never race for one port).

The server runs in a process group of its own, ended (TERM, then KILL) when the context ends, whatever
happened inside it; its train jobs and their workers are in the same group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

__all__ = ["APP_DIR", "GUARD", "ServerExited", "running_server"]

#: The app folder of this repository.
APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "pixelcam"
#: The ``--uvicorn_app`` of the guard (:mod:`monai_pixelcam.label.server`).
GUARD = "monai_pixelcam.label.server:app"
_STARTED = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class ServerExited(RuntimeError):
    """The server process ended before it answered; ``log`` is the tail of its output."""

    def __init__(self, returncode: int, log: str):
        super().__init__(f"the server exited with {returncode}:\n{log}")
        self.returncode, self.log = returncode, log


def tail(path: Path, n: int = 60) -> str:
    """The last ``n`` lines of a log file (a note when it cannot be read)."""
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


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=10)


@contextmanager
def running_server(
    workdir: Path,
    studies: Path,
    bundle: Path,
    conf: Mapping[str, object] = (),
    guard: bool = True,
    start_timeout_s: float = 180.0,
    env: Mapping[str, str] = (),
) -> Iterator[tuple[str, Path]]:
    """Run a server of the app on ``studies`` with ``bundle`` for the duration of the context.

    Args:
        workdir: the server's working folder; its output goes to ``workdir/server.log``.
        studies, bundle: ``--studies`` and ``--conf bundle_dir``.
        conf: further ``--conf`` settings.
        guard: False starts it without ``--uvicorn_app`` (the app then refuses to serve).
        start_timeout_s: how long to wait for its first answer.
        env: extra environment variables (e.g. ``OMP_NUM_THREADS``).

    Yields:
        ``(url, log_path)``.

    Raises:
        ServerExited: the server ended before it answered.
        TimeoutError: no answer after ``start_timeout_s``.
    """
    log = Path(workdir) / "server.log"
    cmd = [*_start_command(), "--app", str(APP_DIR), "--studies", str(studies), "--conf", "bundle_dir", str(bundle)]
    for key, value in dict(conf).items():
        cmd += ["--conf", key, str(value)]
    cmd += ["--host", "127.0.0.1", "--port", "0"] + (["--uvicorn_app", GUARD] if guard else [])
    # this checkout's package, whatever is installed: MONAI Label loads main.py by path, main.py imports it
    pythonpath = os.pathsep.join(p for p in (str(APP_DIR.parents[1]), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {**os.environ, "PYTHONPATH": pythonpath, "MONAILABEL_PYEXE": sys.executable, **dict(env)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=full_env, start_new_session=True
        )
    try:
        deadline = time.time() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerExited(proc.returncode, tail(log))
            found = _STARTED.search(log.read_bytes())
            if found:
                url = f"http://127.0.0.1:{int(found.group(1))}"
                if requests.get(url + "/info/", timeout=30).status_code == 200:
                    break
            if time.time() > deadline:
                raise TimeoutError(f"the server did not answer after {start_timeout_s} s:\n{tail(log)}")
            time.sleep(0.5)
        yield url, log
    finally:
        _stop(proc)
