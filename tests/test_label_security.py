"""A hostile client against a real MONAI Label server of the app (behind its guard, on 127.0.0.1): no code
execution through train requests, no file outside the datastore, bounded work per request, uploads removed
when their request ends, bad labels refused at submission, a failed train job's real reason.

One server per module on a small datastore (tiny synthetic GlaS tiles, a 4096 x 4096 JPEG pyramidal TIFF)
with the session's trained bundle as its model; ``max_upload_mb`` 8 so that the size bound is reached with
small bodies, every other limit at its default. Each probe was first run against the code before the guard
and failed there (see the note of issue 17).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MONAILABEL_MISSING

pytestmark = pytest.mark.server

pytest.importorskip("monailabel", reason=MONAILABEL_MISSING)

from PIL import Image  # noqa: E402
from requests_toolbelt import MultipartEncoder  # noqa: E402

from label_server_process import REPO, ServerExited, running_server  # noqa: E402
from monai_pixelcam.data import load_datalist  # noqa: E402
from test_label_wsi import write_aperio_tiff  # noqa: E402

SLIDE_ID = "big_slide"
N_IMAGES = 6
UPLOAD_MB = 8
CONCURRENT = 32


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_empty(folder: Path, timeout_s: float = 30.0) -> None:
    """Wait until ``folder`` is empty: MONAI Label deletes a served upload after the answer is sent."""
    deadline = time.time() + timeout_s
    while list(folder.iterdir()) and time.time() < deadline:
        time.sleep(0.2)
    assert [p.name for p in folder.iterdir()] == []


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_glas, trained_bundle) -> dict:
    """``root/`` holds ``studies/`` (6 tiles of 64 x 64 and a 4096 x 4096 slide), ``bundle/`` (configs and the
    session's trained model), ``uploads/`` (where the server makes its private upload folder) and the server's
    working folder."""
    root = tmp_path_factory.mktemp("label_security")
    studies = root / "work" / "studies"  # two levels below root: a "../../x" tag would land in root
    studies.mkdir(parents=True)
    data = load_datalist(tiny_glas)
    items = [it for split in ("train", "valcl", "valpx", "test") for it in data[split]][:N_IMAGES]
    for it in items:
        shutil.copy(it["image"], studies / f"{it['id']}.png")
    write_aperio_tiff(studies / f"{SLIDE_ID}.tif", np.full((4096, 4096, 3), 230, np.uint8), tile=256, levels=2)
    (studies / "big_png.png").write_bytes(_png_bytes(np.zeros((12000, 12000), np.uint8)))  # put there by hand
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    for name in ("model.pt", "model_meta.json"):
        shutil.copy(trained_bundle / "models" / name, bundle / "models" / name)
    return {"root": root, "studies": studies, "bundle": bundle, "uploads": root / "uploads", "items": items}


@pytest.fixture(scope="module")
def server(workspace):
    conf = {"max_upload_mb": UPLOAD_MB, "upload_dir": workspace["uploads"]}
    with running_server(workspace["root"] / "work", workspace["studies"], workspace["bundle"], conf) as running:
        yield running


def test_the_app_refuses_to_serve_without_its_guard(workspace, tmp_path):
    with pytest.raises(ServerExited) as e:
        with running_server(tmp_path, workspace["studies"], workspace["bundle"], guard=False):
            pass
    assert "--uvicorn_app monai_pixelcam.label.server:app" in e.value.log


def test_train_requests_cannot_run_code_or_choose_paths(server, workspace):
    root = workspace["root"]
    before = _files_under(root)
    marker = f"open('{root / 'marker.txt'}', 'w').write('x')"
    refused = {
        "initialize": {"bundle_overrides": {"initialize": [f"${marker}"]}},
        "encoder": {"bundle_overrides": {"encoder": f"${marker}"}},
        "cam_methods[0]": {"bundle_overrides": {"cam_methods": [f"${marker}"]}},
        "_target_": {"bundle_overrides": {"_target_": "builtins.exec"}},
        "network_def#_target_": {"bundle_overrides": {"network_def#_target_": "os.system"}},
        "pretrained": {"bundle_overrides": {"pretrained": "/etc/passwd"}},
        "distinct_layer": {"bundle_overrides": {"distinct_layer": "@network_def"}},
        "output_dir": {"output_dir": str(root)},
        "bundle_root": {"bundle_root": "/"},
        "source_epochs": {"source_epochs": 10**9},
        "seed": {"seed": "%imports"},
        "surprise": {"surprise": 1},
    }
    for key, body in refused.items():
        r = server.post("/train/pixelcam", json=body)
        assert r.status_code == 400 and key in r.json()["detail"], (key, r.text)
    json_body = {"headers": {"Content-Type": "application/json"}}
    for raw in (b"{not json", b'{"mode": ["auto", NaN]}', b'{"seed": Infinity}', b'{"seed": 1' + b"0" * 400 + b"}"):
        r = server.post("/train/pixelcam", data=raw, **json_body)
        assert r.status_code == 400, (raw[:40], r.text)
    # jobs inside the server process or queued without bound, and the deprecated endpoint that always queues
    for path, query in (("/train/pixelcam", {"run_sync": "true"}), ("/train/pixelcam", {"enqueue": "1"}),
                        ("/train/", {}), ("/batch/infer/pixelcam", {"run_sync": "true"})):  # fmt: skip
        r = server.post(path, params=query, json={})
        assert r.status_code == 400, (path, query, r.text)
    time.sleep(1.0)
    assert _files_under(root) == before, "a refused train request wrote a file"
    assert server.get("/train/").status_code == 404  # no job was ever started


def test_a_failed_train_job_shows_its_real_reason(server):
    """No image has an image-level label: the job fails in its datalist check, and GET /train/ shows why."""
    r = server.post("/train/pixelcam", json={"mode": "full", "source_epochs": 1, "pixelcam_epochs": 1})
    assert r.status_code == 200, r.text
    task = server.wait_for_train(r.json()["id"])
    assert task["status"] == "ERROR", task
    last = task["details"][-1]
    assert "TrainError" in last and "DatalistError" in last and "ConfigExpression" not in last, task["details"]


def test_the_model_and_archives_cannot_be_uploaded(server, workspace):
    """The published model is the train jobs' (no upload, no delete); an uploaded archive is not unpacked (a
    tar member "../x" would be written outside the sessions folder)."""
    models = workspace["bundle"] / "models"
    before = (models / "model.pt").read_bytes()
    r = server.put("/model/pixelcam", files={"file": ("model.pt", b"not weights")})
    assert r.status_code == 403, r.text
    assert server.delete("/model/pixelcam").status_code == 403
    assert (models / "model.pt").read_bytes() == before
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        member = tarfile.TarInfo("../../escape_session.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    r = server.put("/session/", params={"uncompress": "true"}, files={"files": ("s.tar", archive.getvalue())})
    assert r.status_code == 400, r.text
    assert not list(workspace["root"].rglob("escape_session.txt"))


def test_datastore_endpoints_stay_inside_the_datastore(server, workspace):
    root, studies = workspace["root"], workspace["studies"]
    image_id = workspace["items"][0]["id"]
    png = (studies / f"{image_id}.png").read_bytes()
    mask = _png_bytes(np.zeros((64, 64), np.uint8))
    before = _files_under(root)
    for image in ("../escape_img", "../../escape_img", "/tmp/escape_img", "a/../../escape_img", ".hidden", "x\x00y"):
        for path in ("/datastore/", "/datastore/image"):
            r = server.put(path, params={"image": image}, files={"file": ("escape_img.png", png)})
            assert r.status_code == 400 and "plain file name" in r.json()["detail"], (image, r.text)
    for tag in ("../../escape_tag", "../escape_tag", "a/b", "..", "x" * 65):
        r = server.put("/datastore/label", params={"image": image_id, "tag": tag}, files={"label": ("m.png", mask)})
        assert r.status_code == 400 and "label tag" in r.json()["detail"], (tag, r.text)
    for image in ("../escape_img", "../../work/studies/" + image_id):
        assert server.get("/datastore/image", params={"image": image}).status_code == 404
    assert server.get("/datastore/label", params={"label": image_id, "tag": "../../escape_tag"}).status_code == 404
    time.sleep(1.0)
    assert _files_under(root) - before <= {"work/studies/.lock"}, _files_under(root) - before
    # a good image and label still go in
    r = server.put("/datastore/image", params={"image": "new_tile"}, files={"file": ("new_tile.png", png)})
    assert r.status_code == 200 and (studies / "new_tile.png").is_file(), r.text
    r = server.put("/datastore/label", params={"image": "new_tile", "tag": "final"}, files={"label": ("m.png", mask)})
    assert r.status_code == 200 and (studies / "labels" / "final" / "new_tile.png").is_file(), r.text
    # info that would break every later listing of the datastore (NaN is not JSON)
    r = server.put("/datastore/image/info", params={"image": "new_tile"}, data={"info": '{"x": NaN}'})
    assert r.status_code == 400 and server.get("/datastore/", params={"output": "all"}).status_code == 200


def test_bad_labels_are_refused_at_submission(server, workspace):
    image_id = workspace["items"][1]["id"]
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    bad = {
        "m.png": (_png_bytes(np.zeros((32, 48), np.uint8)), 422, "48 x 32 pixels; its image is 64 x 64"),
        "text.png": (b"this is not an image\n" * 10, 422, "not an image the app can read"),
        "soft.png": (_png_bytes((ramp // 16) * 17), 422, "must be thresholded"),  # 16 levels of a soft map
        "photo.png": (_png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), 422, "image"),
        "label.xml": (b"<ASAP_Annotations/>", 422, "polygon annotations are taken for whole slides"),
        "label.txt": (b"text", 415, "accepted"),
    }
    for name, (payload, status, words) in bad.items():
        r = server.put("/datastore/label", params={"image": image_id, "tag": "final"}, files={"label": (name, payload)})
        assert r.status_code == status and words in r.json()["detail"], (name, r.text)
        assert "/" not in r.json()["detail"].replace("0/1", ""), r.text  # no server path
    assert server.get("/datastore/label", params={"label": image_id, "tag": "final"}).status_code == 404
    # hostile annotations for a slide: entity expansion (a billion laughs), JSON nested past the parser's depth
    entities = "".join(f'<!ENTITY e{k} "{f"&e{k - 1};" * 10 if k else "lol" * 10}">' for k in range(9))
    hostile = {
        "laughs.xml": f'<?xml version="1.0"?><!DOCTYPE l [{entities}]><ASAP_Annotations>&e8;</ASAP_Annotations>',
        "deep.json": "[" * 100000 + "]" * 100000,
    }
    for name, payload in hostile.items():
        r = server.put("/datastore/label", params={"image": SLIDE_ID, "tag": "final"}, files={"label": (name, payload)})
        detail = r.json()["detail"]
        assert r.status_code == 422 and ("not ASAP XML" in detail or "cannot read" in detail), r.text
    assert server.get("/datastore/label", params={"label": SLIDE_ID, "tag": "final"}).status_code == 404
    binary = _png_bytes((ramp > 128).astype(np.uint8) * 255)
    r = server.put("/datastore/label", params={"image": image_id, "tag": "final"}, files={"label": ("m.png", binary)})
    assert r.status_code == 200, r.text


def test_work_per_request_is_bounded(server, workspace):
    # 4-pixel tiles over a 4096 x 4096 slide: about 1M tiles are refused before any is planned
    body = {"location": [0, 0], "size": [4096, 4096], "tile_size": [4, 4], "level": 0}
    r = server.post("/infer/wsi/pixelcam", params={"image": SLIDE_ID, "output": "json"}, json=body)
    assert r.status_code == 413 and "1048576 tiles" in r.json()["detail"] and "max_wsi_tiles" in r.json()["detail"]
    tiles = [{"location": [0, 0], "size": [4, 4]}] * 5000
    r = server.post(
        "/infer/wsi/pixelcam", params={"image": SLIDE_ID, "output": "json"}, json={"params": {"wsi_tiles": tiles}}
    )
    assert r.status_code == 413 and "max_wsi_tiles" in r.json()["detail"], r.text

    # a 12000 x 12000 PNG (a few hundred KB) is refused before it is decoded: upload, datastore, /infer
    big = _png_bytes(np.zeros((12000, 12000), np.uint8))
    assert len(big) < UPLOAD_MB * 2**20
    r = server.post("/infer/pixelcam", files={"file": ("big.png", big)}, params={"output": "json"})
    assert r.status_code == 413 and "max_image_pixels" in r.json()["detail"], r.text
    r = server.put("/datastore/image", params={"image": "big"}, files={"file": ("big.png", big)})
    assert r.status_code == 413 and "max_image_pixels" in r.json()["detail"], r.text
    r = server.post("/infer/pixelcam", params={"image": "big_png", "output": "json"})
    assert r.status_code == 413 and "max_image_pixels" in r.json()["detail"], r.text
    r = server.post("/infer/pixelcam", params={"image": SLIDE_ID, "output": "json"}, data={"params": json.dumps(
        {"location": [0, 0], "size": [4100, 4100]})})  # fmt: skip
    assert r.status_code == 413 and "max_image_pixels" in r.json()["detail"], r.text

    # bodies over max_upload_mb: declared (Content-Length) or streamed (chunked, no length)
    blob = os.urandom(UPLOAD_MB * 2**20 + 1)
    r = server.post("/infer/pixelcam", files={"file": ("huge.png", blob)})
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"], r.text
    body = MultipartEncoder(fields={"file": ("huge.png", blob, "image/png")})
    chunks = iter(lambda: body.read(2**20), b"")  # a generator: requests sends it chunked, with no length
    r = server.put(
        "/datastore/image", params={"image": "huge"}, data=chunks, headers={"Content-Type": body.content_type}
    )
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"], r.text
    assert server.get("/info/").status_code == 200


def test_uploads_are_removed_and_errors_show_no_server_paths(server, workspace):
    (uploads,) = workspace["uploads"].iterdir()  # the server's private folder inside the one it was given
    junk = {"text.png": b"hello\n" * 1000, "noise.png": os.urandom(5 * 2**20)}
    for name, payload in junk.items():
        r = server.post("/infer/pixelcam", files={"file": (name, payload)}, params={"output": "json"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "uploaded image" in detail and str(uploads) not in detail and "/tmp" not in detail, detail
        r = server.put("/datastore/image", params={"image": "junk"}, files={"file": (name, payload)})
        assert r.status_code == 422 and "/" not in r.json()["detail"], r.text
    assert [p.name for p in uploads.iterdir()] == []  # removed before the failed request was answered

    # a file placed in the upload folder under an upload's name is not an upload of any later request
    image_id = workspace["items"][0]["id"]
    png = (workspace["studies"] / f"{image_id}.png").read_bytes()
    placed = uploads / "tmpabcdefgh.png"
    probes = [
        ("/infer/pixelcam", {"params": {"image": str(placed), "output": "json"}}),
        (
            "/infer/pixelcam",
            {"params": {"image": image_id, "output": "json"}, "data": {"params": json.dumps({"image": str(placed)})}},
        ),
        ("/infer/wsi/pixelcam", {"params": {"image": str(placed), "output": "json"}, "json": {}}),
    ]
    for path, kw in probes:
        placed.write_bytes(png)  # again each time: the server deletes leftovers whenever it is idle
        r = server.post(path, **kw)
        assert r.status_code == 404, r.text

    # a good upload is answered, and removed once the answer is sent
    r = server.post("/infer/pixelcam", files={"file": ("tile.png", png)}, params={"output": "json"})
    assert r.status_code == 200, r.text
    _wait_empty(uploads)


def test_concurrent_inference_load(server, workspace):
    """32 overlapping /infer requests on distinct images: every one answered (200, or 429 past
    max_pending_infers), none fails, /info answers after, nothing is left in the upload folder."""
    rng = np.random.default_rng(1)
    images = [
        _png_bytes(np.clip(rng.normal(180, 40, (256, 256, 3)), 0, 255).astype(np.uint8)) for _ in range(CONCURRENT)
    ]

    def one(k: int) -> tuple[int, float]:
        start = time.perf_counter()
        r = server.post(
            "/infer/pixelcam", files={"file": (f"t{k}.png", images[k])}, params={"output": "json"}, timeout=300
        )
        return r.status_code, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(one, range(CONCURRENT)))
    statuses = [s for s, _ in results]
    latencies = sorted(t for s, t in results if s == 200)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(
        f"{CONCURRENT} concurrent: {statuses.count(200)} answered, {statuses.count(429)} refused (429), p95 {p95:.2f} s"
    )
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8, statuses
    assert server.get("/info/").status_code == 200
    _wait_empty(next(workspace["uploads"].iterdir()))


def test_the_server_writes_nothing_into_the_package(server):
    package = REPO / "monai_pixelcam"
    assert not [p for p in package.rglob("*") if p.name in ("logs", "bin", "model") and p.is_dir()]
    assert not list(package.rglob("*.log"))
