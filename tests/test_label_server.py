"""The MONAI Label app behind a real server: ``monailabel start_server`` on 127.0.0.1, driven over HTTP.

One server per module (a free port, a synthetic datastore, a bundle folder of its own). The flow: no model
yet (503), annotate image-level labels, train a localizing model through ``/train/pixelcam``, infer held-out
images and compare the masks with the true ones, retrain briefly (fine-tune) and see the new model used,
then bad inputs (corrupt upload, unknown image id) get 4xx answers while the server keeps answering. The
server's process group is killed in the fixture's finaliser, also when a test fails.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.server

if importlib.util.find_spec("monailabel") is None:
    pytest.skip(
        "monailabel is not installed: pip install -e .[label] && pip install --no-deps monailabel==0.8.5 "
        "pydicom-seg==0.4.1 (see README, MONAI Label)",
        allow_module_level=True,
    )

import requests  # noqa: E402
from PIL import Image  # noqa: E402
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

from monai_pixelcam.data import load_datalist  # noqa: E402
from monai_pixelcam.data.io import read_mask  # noqa: E402
from monai_pixelcam.data.synthetic import synthesize  # noqa: E402
from monai_pixelcam.label.import_labels import import_datalist  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monai_pixelcam" / "label"
SPLITS = ("train", "valcl", "valpx", "test")
IMAGE_SIZE = 64
MASK_EVERY = 4  # every 4th datastore image gets its full mask as a "final" label (valpx / test)
START_TIMEOUT_S = 180
TRAIN_TIMEOUT_S = 300
# small, single-threaded runs: on two shared cores, two torch threads per process mostly wait for each other
TRAIN_PARAMS = {
    "image_size": IMAGE_SIZE,
    "crop_size": IMAGE_SIZE - 8,
    "batch_size": 8,
    "num_workers": 0,
    "val_interval": 1,
    "valpx_per_class": 3,
    "bundle_overrides": {"cam_methods": ["cam"], "tensorboard_images": 0},
}


def _items(datalist_path: Path) -> list[dict]:
    data = load_datalist(datalist_path)
    return sorted(
        ({**it, "class_name": data["classes"][it["label"]]} for s in SPLITS for it in data[s]), key=lambda d: d["id"]
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Synthetic GlaS-like datastore (96 images of 64 x 64, no image labels yet, masks of every 4th image as
    final labels), a bundle folder with the repository's configs, and held-out images with their masks."""
    root = tmp_path_factory.mktemp("label_server")
    datalist = synthesize("glas", root / "data", n_images=96, image_size=IMAGE_SIZE, seed=0, progress=False)
    items = _items(datalist)
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for k, it in enumerate(items):
        shutil.copy(it["image"], studies / f"{it['id']}.png")
        if k % MASK_EVERY == 0:
            shutil.copy(it["mask"], studies / "labels" / "final" / f"{it['id']}.png")
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    held_out = [
        it
        for seed in (1, 2)
        for it in _items(
            synthesize("glas", root / f"held_out_{seed}", n_images=16, image_size=IMAGE_SIZE, seed=seed, progress=False)
        )
    ]
    masked = {it["id"] for k, it in enumerate(items) if k % MASK_EVERY == 0}
    return {
        "root": root,
        "studies": studies,
        "bundle": bundle,
        "datalist": datalist,
        "items": items,
        "masked": masked,
        "held_out": held_out,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_command() -> list[str]:
    """``monailabel start_server`` of this Python (the script runs ``$MONAILABEL_PYEXE -m monailabel.main``)."""
    script = Path(sys.executable).with_name("monailabel")
    if script.is_file():
        return [str(script), "start_server"]
    return [sys.executable, "-m", "monailabel.main", "start_server"]


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


class Server:
    def __init__(self, url: str, log: Path, bundle: Path):
        self.url, self.log, self.bundle = url, log, bundle

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=60, **kw)

    def info(self) -> dict:
        r = self.get("/info/")
        assert r.status_code == 200, r.text
        return r.json()

    def train(self, params: dict) -> dict:
        """Run ``/train/pixelcam`` and wait for it; the finished task (status DONE) or a failure with its log."""
        r = self.post("/train/pixelcam", json=params)
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        deadline = time.time() + TRAIN_TIMEOUT_S
        while time.time() < deadline:
            task = self.get("/train/").json()
            if task.get("id") == task_id and task.get("status") not in ("SUBMITTED", "RUNNING"):
                details = "\n".join(task.get("details", []))
                assert task["status"] == "DONE", (
                    f"train task {task['status']}:\n{details}\n--- server log:\n{_tail(self.log)}"
                )
                return task
            time.sleep(1.0)
        pytest.fail(f"train task not finished after {TRAIN_TIMEOUT_S} s\n{_tail(self.log)}")

    def infer(self, image_id: str = "", file: Path | None = None, params: dict | None = None) -> requests.Response:
        files = {"file": (file.name, file.read_bytes(), "application/octet-stream")} if file else None
        data = {"params": json.dumps(params or {})}
        return self.post("/infer/pixelcam", params={"image": image_id} if image_id else None, files=files, data=data)


def _multipart(response: requests.Response) -> tuple[dict, np.ndarray]:
    """MONAI Label's default infer answer: multipart with ``params`` (JSON) and ``image`` (the label PNG)."""
    assert response.status_code == 200, response.text
    parts = MultipartDecoder(response.content, response.headers["Content-Type"]).parts
    by_name = {}
    for part in parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        by_name[name] = part.content
    return json.loads(by_name["params"]), np.asarray(Image.open(io.BytesIO(by_name["image"])))


@pytest.fixture(scope="module")
def server(workspace) -> Server:
    port = _free_port()
    log = workspace["root"] / "server.log"
    cmd = [
        *_start_command(),
        "--app", str(APP_DIR),
        "--studies", str(workspace["studies"]),
        "--conf", "bundle_dir", str(workspace["bundle"]),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MONAILABEL_PYEXE": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workspace["root"], env=env, start_new_session=True
        )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if requests.get(url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                pytest.fail(f"no answer from {url}/info/ after {START_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield Server(url, log, workspace["bundle"])
    finally:
        # the server, its train processes and their workers share the process group started above
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


def test_untrained_server_answers_with_reasons(server, workspace):
    info = server.info()
    assert info["name"] == "PixelCAM" and info["labels"] == {"roi": 1} and not info["trained"]
    assert "pixelcam" in info["models"] and "pixelcam" in info["trainers"]
    assert info["datastore"]["total"] == 96 and info["datastore"]["completed"] == 96 // MASK_EVERY
    r = server.infer(workspace["items"][1]["id"])
    assert r.status_code == 503 and "POST /train/pixelcam" in r.json()["detail"], r.text
    assert server.get("/info/").status_code == 200


def test_train_infer_retrain_and_bad_inputs(server, workspace):
    # the annotator's image-level labels (the masks are already in the datastore's labels/final folder)
    counts = import_datalist(server.url, workspace["datalist"], mask_splits=())
    assert counts == {"labelled": 96, "masks": 0, "missing": []}
    image_id = workspace["items"][1]["id"]
    info = server.get("/datastore/image/info", params={"image": image_id}).json()
    assert info["label"] == workspace["items"][1]["class_name"]

    server.train({"mode": "full", "source_epochs": 20, "pixelcam_epochs": 10, **TRAIN_PARAMS})
    info = server.info()
    classes = info["classes"]
    assert info["trained"] and classes == ["benign", "malignant"] and 0.0 <= info["threshold"] <= 1.0
    stats = info["train_stats"]["pixelcam"]
    assert stats["mode"] == "full" and stats["images"]["valpx"] == 6 and stats["images"]["test"] == 18

    # held-out images (other seeds), uploaded: the mask has the image's size and overlaps the true mask
    # more than a mask of the same area placed independently of it would (expected overlap |P| |T| / N)
    observed = expected = 0.0
    for it in workspace["held_out"]:
        result, label = _multipart(server.infer(file=Path(it["image"])))
        truth = read_mask(it["mask"]).astype(bool)
        assert label.shape == truth.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(label)) <= {0, 1}
        assert result["class_name"] in classes and list(result["probabilities"]) == classes
        assert result["threshold"] == info["threshold"]
        predicted = label.astype(bool)
        observed += float((predicted & truth).sum())
        expected += float(predicted.sum()) * float(truth.sum()) / truth.size
    print(f"held-out overlap: {observed:.0f} px, chance {expected:.0f} px, ratio {observed / max(expected, 1e-9):.2f}")
    assert expected > 0, "the model predicts no foreground on any held-out image"
    assert observed / expected > 1.0, f"overlap {observed:.0f} px is not above chance ({expected:.0f} px)"

    # by datastore id, JSON only
    r = server.post("/infer/pixelcam", params={"image": image_id, "output": "json"})
    assert r.status_code == 200 and r.json()["shape"] == [IMAGE_SIZE, IMAGE_SIZE], r.text
    first_model = r.json()["model"]["modified"]

    server.train({"mode": "finetune", "source_epochs": 1, "pixelcam_epochs": 1, **TRAIN_PARAMS})
    assert server.info()["train_stats"]["pixelcam"]["mode"] == "finetune"
    r = server.post("/infer/pixelcam", params={"image": image_id, "output": "json"})
    assert r.status_code == 200 and r.json()["model"]["modified"] != first_model, r.text

    corrupt = workspace["root"] / "corrupt.png"
    corrupt.write_bytes(Path(workspace["held_out"][0]["image"]).read_bytes()[:300])
    r = server.infer(file=corrupt)
    assert r.status_code == 422 and "cannot read image" in r.json()["detail"], r.text
    r = server.infer("no_such_image")
    assert r.status_code == 404 and "no_such_image" in r.json()["detail"], r.text
    r = server.infer(image_id, params={"location": [0, 0], "size": [8, 8], "level": 2})
    assert r.status_code == 400 and "level" in r.json()["detail"], r.text
    assert server.info()["trained"]

    # masks through the API too: the valpx masks of the datalist become final labels
    counts = import_datalist(server.url, workspace["datalist"], mask_splits=("valpx",))
    valpx = {Path(it["image"]).stem for it in load_datalist(workspace["datalist"])["valpx"]}
    assert counts["masks"] == len(valpx) > 0
    assert server.info()["datastore"]["completed"] == len(workspace["masked"] | valpx)
