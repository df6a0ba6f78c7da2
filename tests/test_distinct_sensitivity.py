"""``benchmarks/distinct_sensitivity.py`` computes the seed-map candidates of a finished run again, as the
bundle's CAM writer did: with the run's own settings it finds the valpx PxAP the run's CAM store recorded."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_BUNDLE, load_benchmark
from monai_pixelcam.cams import CAMStore


def test_the_runs_own_settings_give_the_scores_its_store_recorded(trained_bundle, tiny_glas, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "glas_seed0").symlink_to(trained_bundle)
    overrides = [f"{k}={v}" for k, v in TINY_BUNDLE.items()]
    runs = load_benchmark("distinct_sensitivity").main([
        "--out", str(tmp_path), "--datalist", str(tiny_glas), "--seeds", "0", "--layers", "encoder.layer1",
        "encoder.layer2", "--ks", "10", "--set", *overrides,
    ])
    recorded = CAMStore(trained_bundle / "models" / "cams").manifest["selection"]["valpx_pxap"]
    # the bundle's defaults (distinct_layer encoder.layer1, distinct_k 10) give what the run's store recorded
    assert runs[0]["encoder.layer1 k=10"] == {"benign": recorded["0"], "malignant": recorded["1"]}
    assert set(runs[0]) == {"encoder.layer1 k=10", "encoder.layer2 k=10"}
    assert (tmp_path / "distinct_sensitivity_glas.json").is_file()


def test_a_datalist_of_other_classes_is_refused(trained_bundle, tiny_glas, tmp_path):
    """The maps of a run scored against another data set's masks would be wrong figures, not an error."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "breast_seed0").symlink_to(trained_bundle)
    other = json.loads(tiny_glas.read_text()) | {"classes": ["benign", "carcinoma"]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"other.json: classes \['benign', 'carcinoma'\], but .*breast_seed0 was "
                                         r"trained on \['benign', 'malignant'\]"):
        load_benchmark("distinct_sensitivity").main(["--out", str(tmp_path), "--setting", "breast", "--datalist",
                                                     str(tmp_path / "other.json"), "--seeds", "0"])
    with pytest.raises(SystemExit, match="'mine' is not a quality.py setting: give its runs' --datalist"):
        load_benchmark("distinct_sensitivity").main(["--out", str(tmp_path), "--setting", "mine"])
