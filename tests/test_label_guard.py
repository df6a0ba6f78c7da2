"""The server's guard (:class:`monai_pixelcam.label.server.RequestGuard`) and the train-option allow-list,
without a server: an ASGI app of our own stands in for MONAI Label's, so every bound is exercised exactly
(how many requests wait, where a body stops)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("monailabel") is None:
    pytest.skip("monailabel is not installed (see README, MONAI Label)", allow_module_level=True)

from monai_pixelcam.label.limits import ServerLimits  # noqa: E402
from monai_pixelcam.label.server import RequestGuard  # noqa: E402
from monai_pixelcam.label.train_options import TrainOptionError, check_train_request  # noqa: E402


class Inner:
    """An ASGI app that reads the whole body, waits for ``release`` (when given) on inference paths, and
    answers 200 with the number of bytes it read."""

    def __init__(self, release: asyncio.Event | None = None):
        self.release = release
        self.entered = 0

    async def __call__(self, scope, receive, send):
        self.entered += 1
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if self.release is not None and scope["path"].startswith("/infer/"):
            await self.release.wait()
        body = json.dumps({"read": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def _call(guard, method: str, path: str, chunks: list[bytes], length: int | None = None) -> tuple[int, dict]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    queue = [{"type": "http.request", "body": c, "more_body": k + 1 < len(chunks)} for k, c in enumerate(chunks)]
    sent = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await guard(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


@pytest.fixture()
def guard_factory(tmp_path, monkeypatch):
    # the guard makes its upload folder the process's temporary folder: give that back after the test
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)

    def make(inner, **limits):
        return RequestGuard(inner, ServerLimits(**limits), upload_dir=str(tmp_path / "uploads"))

    return make


def test_request_bodies_are_bounded_declared_or_streamed(guard_factory):
    guard = guard_factory(Inner(), max_upload_mb=1)
    mib = 2**20
    status, body = asyncio.run(_call(guard, "PUT", "/datastore/image", [b"x" * mib], length=mib))
    assert status == 200 and body == {"read": mib}
    status, body = asyncio.run(_call(guard, "PUT", "/datastore/image", [b"x"], length=mib + 1))
    assert status == 413 and "max_upload_mb (1 MiB)" in body["detail"]
    # streamed without a length: the body ends at the bound, the answer is 413, the rest is never read
    chunks = [b"x" * (mib // 4)] * 8
    status, body = asyncio.run(_call(guard, "PUT", "/datastore/image", chunks))
    assert status == 413 and "max_upload_mb" in body["detail"]


def test_pending_inferences_are_bounded(guard_factory):
    async def scenario():
        release = asyncio.Event()
        inner = Inner(release)
        guard = guard_factory(inner, max_pending_infers=3)
        calls = [asyncio.create_task(_call(guard, "POST", "/infer/pixelcam", [b""])) for _ in range(10)]
        await asyncio.sleep(0.05)  # every call has entered the guard: 3 wait inside, 7 were answered
        other = await _call(guard, "GET", "/info/", [b""])  # other endpoints are not counted
        release.set()
        results = await asyncio.gather(*calls)
        return inner.entered, [s for s, _ in results], other[0], guard.pending_infers

    entered, statuses, info_status, pending = asyncio.run(scenario())
    assert entered == 3 + 1 and sorted(statuses) == [200] * 3 + [429] * 7 and info_status == 200 and pending == 0


def test_train_requests_are_checked_before_they_reach_monai_label(guard_factory):
    inner = Inner()
    guard = guard_factory(inner)
    bad = json.dumps({"bundle_overrides": {"initialize": ["$print('pwned')"]}}).encode()
    status, body = asyncio.run(_call(guard, "POST", "/train/pixelcam", [bad]))
    assert status == 400 and "'initialize'" in body["detail"] and inner.entered == 0
    status, body = asyncio.run(_call(guard, "POST", "/train/pixelcam", [json.dumps({"output_dir": "/"}).encode()]))
    assert status == 400 and "'output_dir'" in body["detail"] and inner.entered == 0
    status, body = asyncio.run(_call(guard, "POST", "/train/pixelcam", [b'{"seed": NaN}']))
    assert status == 400 and "NaN" in body["detail"] and inner.entered == 0
    good = json.dumps({"mode": "full", "source_epochs": 2, "bundle_overrides": {"cam_methods": ["cam"]}}).encode()
    status, body = asyncio.run(_call(guard, "POST", "/train/pixelcam", [good[:10], good[10:]]))
    assert status == 200 and body == {"read": len(good)} and inner.entered == 1  # replayed whole
    status, body = asyncio.run(_call(guard, "POST", "/train/pixelcam", [b"{" * 70000]))
    assert status == 413 and "max_train_request_kb" in body["detail"]


def test_old_leftovers_are_swept_under_constant_load(guard_factory):
    """While a request is in flight, an upload older than max_upload_age_min goes, a recent one stays."""

    async def scenario():
        release = asyncio.Event()
        guard = guard_factory(Inner(release), max_upload_age_min=1)
        folder = Path(guard.upload_dir)
        old, recent = folder / "tmpoldoldol.png", folder / "tmprecentxx.png"
        for f in (old, recent):
            f.write_bytes(b"left by a failed request")
        os.utime(old, (time.time() - 120, time.time() - 120))
        busy = asyncio.create_task(_call(guard, "POST", "/infer/pixelcam", [b""]))  # stays in flight
        await asyncio.sleep(0.05)
        await _call(guard, "GET", "/info/", [b""])
        kept = sorted(p.name for p in folder.iterdir())
        release.set()
        await busy
        return kept, sorted(p.name for p in folder.iterdir())

    under_load, idle = asyncio.run(scenario())
    assert under_load == ["tmprecentxx.png"] and idle == []


def test_the_upload_folder_is_swept_when_no_request_is_in_flight(guard_factory, tmp_path):
    guard = guard_factory(Inner())
    uploads = Path(guard.upload_dir)  # a new private folder inside the one given
    assert tempfile.gettempdir() == str(uploads) and uploads.parent == tmp_path / "uploads"
    (uploads / "tmpabcdefgh.png").write_bytes(b"left by a failed request")
    (uploads / "pixelcam_result_x.png").write_bytes(b"an answer whose client left before it was deleted")
    (uploads / "other.png").write_bytes(b"neither")
    assert asyncio.run(_call(guard, "GET", "/info/", [b""]))[0] == 200
    assert sorted(p.name for p in uploads.iterdir()) == ["other.png"]


def test_the_upload_folder_goes_when_the_app_shuts_down(guard_factory):
    """uvicorn ends the process with the SIGTERM it stopped on, so ``atexit`` never runs: the folder goes with
    the ASGI lifespan's shutdown, after the app's own."""

    async def lifespan_app(scope, receive, send):
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return

    guard = guard_factory(lifespan_app)
    uploads = Path(guard.upload_dir)
    (uploads / "tmpabcdefgh.png").write_bytes(b"an upload")
    seen = []

    async def scenario():
        queue = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive():
            return queue.pop(0)

        async def send(message):
            seen.append((message["type"], uploads.exists()))

        await guard({"type": "lifespan"}, receive, send)

    asyncio.run(scenario())
    assert seen == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", False)]


@pytest.mark.parametrize(
    "request_, key",
    [
        ({"bundle_overrides": {"initialize": ["$open('x','w')"]}}, "initialize"),
        ({"bundle_overrides": {"encoder": "$__import__('os')"}}, "encoder"),
        ({"bundle_overrides": {"encoder": "../../etc/passwd"}}, "encoder"),
        ({"bundle_overrides": {"cam_methods": ["cam", "@network"]}}, "cam_methods[1]"),
        ({"bundle_overrides": {"cam_methods": ["cam"] * 17}}, "cam_methods"),
        ({"bundle_overrides": {"_target_": "os.system"}}, "_target_"),
        ({"bundle_overrides": {"_requires_": "x"}}, "_requires_"),
        ({"bundle_overrides": {"stain_normalize": "true"}}, "stain_normalize"),
        ({"bundle_overrides": {"lambda_pix": float("nan")}}, "lambda_pix"),
        ({"bundle_overrides": "[1, 2]"}, "bundle_overrides"),
        ({"pretrained": "/weights.pt"}, "pretrained"),
        ({"datalist": "/etc/passwd"}, "datalist"),
        ({"source_epochs": 1001}, "source_epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"device": "cuda; rm -rf /"}, "device"),
        ({"gpus": "0,1;x"}, "gpus"),
        ({"mode": "sometimes"}, "mode"),
    ],
)
def test_train_options_outside_the_allow_list_are_refused(request_, key):
    with pytest.raises(TrainOptionError) as e:
        check_train_request({"model": "pixelcam", **request_})
    assert key in str(e.value)


def test_train_options_inside_the_allow_list_pass_checked():
    request = {
        "model": "pixelcam",
        "mode": ["finetune", "full"],  # a client echoing the config's choices: the first is meant
        "source_epochs": "3",
        "pixelcam_epochs": 2.0,
        "seed": None,
        "device": "cuda:1",
        "valcl_fraction": 0.25,
        "bundle_overrides": json.dumps({"encoder": "resnet50", "cam_methods": ["cam", "gradcampp"], "lambda_pix": 2}),
    }
    assert check_train_request(request) == {
        "model": "pixelcam",
        "mode": "finetune",
        "source_epochs": 3,
        "pixelcam_epochs": 2,
        "device": "cuda:1",
        "valcl_fraction": 0.25,
        "bundle_overrides": {"encoder": "resnet50", "cam_methods": ["cam", "gradcampp"], "lambda_pix": 2.0},
    }


@pytest.mark.parametrize(
    "method, path, query, status",
    [
        ("PUT", "/model/pixelcam", b"", 403),
        ("DELETE", "/model/pixelcam", b"", 403),
        ("GET", "/model/pixelcam", b"", 200),
        ("PUT", "/session/", b"uncompress=true", 400),
        ("PUT", "/session/", b"uncompress=false", 200),
        ("POST", "/train/pixelcam", b"run_sync=True", 400),
        ("POST", "/batch/infer/pixelcam", b"run_sync=1", 400),
        ("POST", "/train/pixelcam", b"enqueue=true", 400),
        ("POST", "/train/", b"", 400),
        ("POST", "/ml/train/", b"", 400),  # behind --root_path /ml
        ("PUT", "/ml/model/pixelcam", b"", 403),
    ],
)
def test_requests_no_client_may_make(guard_factory, method, path, query, status):
    guard = guard_factory(Inner())
    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": query}
    if path.startswith("/ml/"):
        scope["root_path"] = "/ml"
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    assert next(m["status"] for m in sent if m["type"] == "http.response.start") == status
