"""The tables ``benchmarks/quality.py`` writes into the bundle README and ``benchmarks/results/quality.md``,
from a hand-written ``quality.json`` (no training)."""

from __future__ import annotations

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def quality():
    return load_benchmark("quality")


def _figs(pxap: float, benign: float, accuracy: float = 100.0) -> dict:
    return {"pxap": pxap, "pxap_benign": benign, "pxap_malignant": pxap, "dice": 50.0, "accuracy": accuracy,
            "valpx_pxap": pxap}


def _run(source: float, pixelcam: float, benign: float) -> dict:
    test = {"source cam": _figs(source, source - 5), "source gradcam": _figs(source, source - 5),
            "source layercam": _figs(source + 1, source - 4), "PixelCAM": _figs(pixelcam, benign)}
    return {"seconds": 60.0, "test": test, "glas_stain_shifted": test,
            "camelyon_ood": {k: {"pxap": v["pxap"] - 20, "dice": 1.0} for k, v in test.items()}}


@pytest.fixture()
def results():
    runs = {}
    for seed, (source, defaults, reference, benign) in enumerate([(40, 80, 60, 70), (44, 84, 64, 76)]):
        runs[f"glas/seed{seed}"] = _run(source, defaults, benign)
        runs[f"glas_reference/seed{seed}"] = _run(source, reference, benign - 20)
    return {"seeds": [0, 1], "overrides": {}, "stain_shift": {}, "runs": runs,
            "settings": {"glas": {}, "glas_reference": {"seed_maps": "cam"}},
            "constant_map": {"glas": {"pooled": 32.5, "benign": 30.6}, "camelyon_ood": {"pooled": 41.0}}}


def test_headline_gives_floor_models_and_worst_seed(quality, results):
    lines = quality.render_headline(results).splitlines()
    rows = {line.split(" | ")[0].strip("| *"): line.split(" | ")[1:] for line in lines[2:]}
    assert list(rows) == ["constant map (floor)", "source CAM", "PixelCAM, the reference's seeds (source CAM)",
                          "PixelCAM, defaults"]  # no ceiling run: no ceiling row
    assert rows["constant map (floor)"][:5] == ["32.5", "-", "30.6", "-", "32.5"]
    assert rows["constant map (floor)"][5] == "41.0"
    # mean ± std, then the worst seed, for pooled and benign PxAP
    assert rows["PixelCAM, defaults"][:4] == ["82.0 ± 2.8", "80.0", "73.0 ± 4.2", "70.0"]
    assert rows["PixelCAM, the reference's seeds (source CAM)"][:2] == ["62.0 ± 2.8", "60.0"]
    assert rows["PixelCAM, defaults"][5] == "62.0 ± 2.8"  # OOD


def test_full_tables_list_identical_methods_once(quality, results):
    text = quality.render(results)
    assert "| glas | test | source cam = gradcam | 42.0 ± 2.8 |" in text
    assert "| source gradcam |" not in text and "| glas | test | source layercam | 43.0 ± 2.8 |" in text


def test_per_seed_table_gives_the_margins_of_every_seed(quality, results):
    results["runs"]["glas_oracle/seed1"] = _run(44, 90, 88)  # a ceiling for seed 1 only
    lines = [line for line in quality.render(results).splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    # seed 1: source 44, reference 64, defaults 84 (benign 76, malignant 84), ceiling 90, accuracy 100
    assert lines == ["| 0 | 40.0 (100.0) | 60.0 | 80.0 | - | +20.0 | +40.0 | benign 70.0, malignant 80.0 | 100.0 |",
                     "| 1 | 44.0 (100.0) | 64.0 | 84.0 | 90.0 | +20.0 | +40.0 | benign 76.0, malignant 84.0 | 100.0 |"]


def test_update_docs_writes_headline_and_full_tables(quality, results, tmp_path):
    docs, full = tmp_path / "README.md", tmp_path / "quality.md"
    docs.write_text("intro\n<!-- quality:begin -->\nold\n<!-- quality:end -->\nafter\n")
    quality.update_docs([results], docs=docs, full=full)
    text = docs.read_text()
    assert text.startswith("intro\n<!-- quality:begin -->\nSeeds [0, 1]") and text.endswith("<!-- quality:end -->\nafter\n")
    assert "old" not in text and "| **PixelCAM, defaults** | 82.0 ± 2.8 |" in text
    assert "| glas_reference | test | PixelCAM | 62.0 ± 2.8 |" in full.read_text()
    docs.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- quality:begin -->"):
        quality.update_docs([results], docs=docs, full=full)
