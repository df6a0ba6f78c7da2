"""``benchmarks/spread.py``: the valpx figures of each stage per seed, and their spread, from hand-written run
folders (no training)."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


def _run(root, setting, seed, source, pixelcam, benign_maps, tail=(0.80, 0.81)):
    models = root / "runs" / f"{setting}_seed{seed}" / "models"
    (models / "cams").mkdir(parents=True)
    validations = [{"epoch": 2 * (i + 1), "score": s, "accuracy": 1.0} for i, s in enumerate((0.5, *tail))]
    metrics = {
        "classes": ["benign", "malignant"],
        "source": {"cam": {"bloc": {"valpx_pxap": source}}},
        "pixelcam": {"bloc": {"valpx_pxap": pixelcam}},
        "bloc_selection": {
            "source": {"chosen": {"epoch": 6 + seed, "accuracy": 0.9}},
            "pixelcam": {"chosen": {"epoch": 4}, "validations": validations},
        },
    }
    (models / "metrics.json").write_text(json.dumps(metrics))
    chosen = max(benign_maps, key=benign_maps.get)
    selection = {"candidates": list(benign_maps), "choice": {"0": chosen}, "valpx_pxap": {"0": benign_maps}}
    manifest = {"ids": [], "checkpoint_sha256": "0" * 64, "method": "auto", "feature_size": [8, 8], "dtype": "float16",
                "maps_dir": "maps", "selection": selection}  # fmt: skip
    (models / "cams" / "manifest.json").write_text(json.dumps(manifest))


def test_stages_per_seed_and_their_spread(tmp_path):
    spread = load_benchmark("spread")
    _run(tmp_path, "glas", 0, 40.0, 80.0, {"cam": 30.0, "distinct": 60.0})
    _run(tmp_path, "glas", 1, 50.0, 84.0, {"cam": 45.0, "distinct": 50.0}, tail=(0.70, 0.84))
    _run(tmp_path, "glas", 2, 45.0, 82.0, {"cam": 55.0, "distinct": 52.0})
    for seed, pixelcam in enumerate((70.0, 60.0, 75.0)):
        _run(tmp_path, "glas_reference", seed, 40.0, pixelcam, {"cam": 30.0})
    result = spread.main(["--out", str(tmp_path), "--settings", "glas", "--last", "2"])["glas"]
    assert result["seeds"][1]["seed_maps"]["benign"] == {"candidates": {"cam": 45.0, "distinct": 50.0},
                                                         "chosen": "distinct"}  # fmt: skip
    assert result["seeds"][1]["pixelcam_last_validations_range"] == pytest.approx(14.0)
    rows = result["summary"]
    chosen = rows["seed map chosen (auto), benign"]
    assert chosen["mean"] == pytest.approx(55.0) and chosen["worst"] == 50.0  # 60, 50, 55: the chosen ones
    assert rows["source CAM valpx PxAP (B-LOC)"]["worst"] == 40.0
    assert rows["source CAM valpx PxAP (B-LOC)"]["corr_with_pixelcam_valpx"] == pytest.approx(1.0)  # collinear
    assert rows["PixelCAM valpx PxAP, reference seed maps (cam)"]["worst"] == 60.0
    assert (tmp_path / "spread.json").is_file()
    with pytest.raises(FileNotFoundError, match="no finished run of 'liver'"):
        spread.main(["--out", str(tmp_path), "--settings", "liver"])
