"""The MONAI Label server with the app's guard in front: ``--uvicorn_app monai_pixelcam.label.server:app``.

    monailabel start_server --app apps/pixelcam --studies DATASTORE --conf bundle_dir bundles/pixelcam \\
        --uvicorn_app monai_pixelcam.label.server:app

``app`` is MONAI Label's own FastAPI application (``monailabel.app:app``, every endpoint unchanged) behind
:class:`RequestGuard`, an ASGI middleware. The guard does what the app cannot do from inside MONAI Label's
endpoints, which read a whole upload to disk and start train jobs before the app sees them:

* **request size**: a body over ``max_upload_mb`` is refused with 413, from its ``Content-Length`` before
  it is read, or as soon as a streamed body passes the bound (:class:`~monai_pixelcam.label.limits.ServerLimits`);
* **train requests** (``POST /train/{model}``) are checked against the allow-list of
  :mod:`monai_pixelcam.label.train_options` before a job starts: 400 naming the key (NaN and Infinity are
  not numbers);
* **requests no client may make** are refused: uploading or deleting the model (403; train jobs publish
  it), unpacking an uploaded archive (``PUT /session/?uncompress=true``; and every tar MONAI Label unpacks is
  held inside its folder by ``tarfile``'s ``data`` filter), jobs inside the server process or queued without
  bound (``run_sync``, ``enqueue``, the deprecated ``POST /train/``) (400). Paths are matched as MONAI Label's
  routes see them (without ``--root_path`` and the API prefix);
* **inference load**: at most ``max_pending_infers`` inference requests in the server at once (429
  beyond); MONAI Label runs them one after another on its event loop;
* **uploads**: the process's temporary folder becomes a private folder of this server (``tempfile.tempdir``,
  the standard library's setting for it), so that no other user's file sits among the uploads; every request
  runs in :func:`~monai_pixelcam.label.access.request_scope`, so only files written during it count as its
  uploads; and whenever no request is in flight, every upload left in the folder (a failed request's) is
  deleted (under constant load, those older than ``max_upload_age_min``). The folder, a new private
  ``pixelcam-server-*`` folder in the system's temporary folder (or inside ``--conf upload_dir PATH``), is
  removed when the server stops.

The app refuses to serve in server mode without this guard (:meth:`PixelCAMApp.server_mode`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from monailabel.config import settings

from .access import request_scope, upload_files
from .infer import RESULT_PREFIX
from .limits import ServerLimits
from .train_options import TrainOptionError, check_train_request

__all__ = ["RequestGuard", "app", "guard_active"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_INFER_PREFIXES = ("/infer/", "/batch/infer/", "/activelearning/", "/scoring/")
# query flags that make MONAI Label run a job inside the server process (blocking every client) or queue jobs
# without bound
_JOB_FLAGS = ("run_sync", "enqueue")
_TRUE = ("1", "true", "yes", "on")
_GUARDS: list[RequestGuard] = []


def guard_active() -> bool:
    """Whether a :class:`RequestGuard` was built in this process (the server serves through it)."""
    return bool(_GUARDS)


class _TooLarge(Exception):
    pass


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware enforcing the bounds and checks of the module docstring in front of ``inner``.

    Args:
        inner: the ASGI application (MONAI Label's FastAPI app).
        limits: the bounds.
        upload_dir: where the private upload folder is made (a new ``pixelcam-server-*`` folder, made the
            process's ``tempfile.tempdir`` and removed when the app shuts down, or at exit); None: the system's
            temporary folder.
    """

    def __init__(self, inner: ASGIApp, limits: ServerLimits, upload_dir: str | None = None):
        self.inner = inner
        self.limits = limits
        # always a new private folder (inside upload_dir when given): it is swept and removed at exit, so it must
        # hold nothing but this server's uploads
        if upload_dir:
            os.makedirs(upload_dir, exist_ok=True)
        self.upload_dir = tempfile.mkdtemp(prefix="pixelcam-server-", dir=upload_dir or None)
        tempfile.tempdir = self.upload_dir
        # archives MONAI Label unpacks (sessions) may not write outside their folder (links, "../" members)
        tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
        atexit.register(shutil.rmtree, self.upload_dir, True)
        self.in_flight = 0
        self.pending_infers = 0
        _GUARDS.append(self)

    def _removing_uploads_at_shutdown(self, send):
        """``send`` of the ASGI lifespan that removes the upload folder once the app has shut down: uvicorn
        re-raises the SIGTERM it stopped on after the shutdown, so the process ends without running ``atexit``."""

        async def sending(message: dict) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                shutil.rmtree(self.upload_dir, ignore_errors=True)
            await send(message)

        return sending

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.inner(scope, receive, self._removing_uploads_at_shutdown(send))
            return
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path, method = _route_path(scope), scope.get("method", "")
        refused = _refused(path, method, scope)
        if refused:
            await _answer(send, *refused)
            return
        limit = self.limits.max_upload_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _answer(send, 413, self._body_too_large)
            return
        is_infer = method == "POST" and path.startswith(_INFER_PREFIXES)
        if is_infer and self.pending_infers >= self.limits.max_pending_infers:
            await _answer(
                send, 429, f"the server is busy: max_pending_infers ({self.limits.max_pending_infers}) inference "
                "requests are already waiting or running; try again shortly",
            )  # fmt: skip
            return
        self.in_flight += 1
        self.pending_infers += is_infer
        try:
            if method == "POST" and path.startswith("/train/"):  # POST /train/ itself is refused above
                await self._train(path, scope, receive, send)
            else:
                await self._forward(scope, receive, send, limit)
        finally:
            self.in_flight -= 1
            self.pending_infers -= is_infer
            # everything when idle; under load, what is older than any request may need
            self._sweep(None if self.in_flight == 0 else 60.0 * self.limits.max_upload_age_min)

    async def _forward(self, scope: Scope, receive, send, limit: int) -> None:
        """Pass the request on, counting its body: past ``limit`` bytes the body ends, and the answer is 413."""
        received, state = 0, {"too_large": False, "started": False}

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    state["too_large"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"]:
                return  # the 413 below answers instead
            state["started"] = True
            await send(message)

        try:
            with request_scope():
                await self.inner(scope, counted_receive, guarded_send)
        except Exception:
            if not state["too_large"]:  # else _TooLarge, or what the app made of it: answered below
                raise
        if state["too_large"] and not state["started"]:
            await _answer(send, 413, self._body_too_large)

    @property
    def _body_too_large(self) -> str:
        return f"the request body is larger than the server's max_upload_mb ({self.limits.max_upload_mb} MiB)"

    async def _train(self, path: str, scope: Scope, receive, send) -> None:
        """Read the (small) JSON body of a train request, check it, then replay it to MONAI Label."""
        limit = self.limits.max_train_request_kb * 1024
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await _answer(
                    send,
                    413,
                    f"a train request is at most max_train_request_kb ({self.limits.max_train_request_kb} KiB)",
                )
                return
        body = b"".join(chunks)
        try:
            params = json.loads(body, parse_constant=_no_constant) if body.strip() else None
            self._check_train(path.rstrip("/"), params)
        except (ValueError, TrainOptionError) as e:
            await _answer(
                send, 400, str(e) if isinstance(e, TrainOptionError) else f"the train request is not JSON: {e}"
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        with request_scope():
            await self.inner(scope, replay, send)

    @staticmethod
    def _check_train(path: str, params: Any) -> None:
        """``POST /train/{model}`` takes the options themselves (``POST /train/`` is refused before)."""
        if params is not None:
            check_train_request({"model": path.split("/")[-1], **params} if isinstance(params, dict) else params)

    def _sweep(self, min_age_s: float | None = None) -> None:
        """Delete what failed or abandoned requests left in the upload folder: uploads, and answers whose client
        left before MONAI Label deleted them; only those older than ``min_age_s`` seconds when given (requests
        are in flight)."""
        results = [n for n in os.listdir(self.upload_dir) if n.startswith(RESULT_PREFIX)]
        now = time.time()
        for name in [*upload_files(), *results]:
            path = os.path.join(self.upload_dir, name)
            try:
                if min_age_s is not None and now - os.lstat(path).st_mtime < min_age_s:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                logger.info(f"removed a request's leftover upload {name}")
            except OSError:
                pass


def _route_path(scope: Scope) -> str:
    """The path MONAI Label's routes see: without uvicorn's ``--root_path`` and MONAI Label's API prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.removeprefix(settings.MONAI_LABEL_API_STR) or "/"


def _refused(path: str, method: str, scope: Scope) -> tuple[int, str] | None:
    """``(status, detail)`` for the requests no client may make, else None: replacing or deleting the model
    (train jobs publish it), unpacking an uploaded archive (a session's ``uncompress``), and jobs run inside
    the server process or queued (``run_sync``, ``enqueue``; the deprecated ``POST /train/`` always queues)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    flag = lambda name: any(v.strip().lower() in _TRUE for v in query.get(name, []))  # noqa: E731
    if path.startswith("/model/") and method in ("PUT", "POST", "DELETE"):
        return 403, "the model is published by this server's train jobs; it cannot be uploaded or deleted"
    if path.startswith("/session") and method == "PUT" and flag("uncompress"):
        return 400, "uncompressed sessions only: archives are not unpacked on this server"
    if method == "POST" and any(flag(f) for f in _JOB_FLAGS):
        return 400, f"{'/'.join(_JOB_FLAGS)} are not accepted: jobs run one at a time, outside the server process"
    if method == "POST" and path.rstrip("/") == "/train":
        return 400, "POST /train/{model} (e.g. /train/pixelcam) with the options as the body"
    return None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def __getattr__(name: str) -> Any:
    """``app``, built on first access (uvicorn's ``--uvicorn_app ...:app``), so that importing this module for
    :class:`RequestGuard` alone changes nothing in the process."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global app
    from monailabel.app import app as monailabel_app

    conf = settings.MONAI_LABEL_APP_CONF or {}
    app = RequestGuard(monailabel_app, ServerLimits.from_conf(conf), upload_dir=conf.get("upload_dir") or None)
    return app
