"""benchmarks/seed_precision.py: the expected precision of a seeder's seeds against masks, exactly, and a run of
the script on the shared trained bundle."""

from __future__ import annotations

import json

import pytest
import torch

from monai_pixelcam.seeding import ThresholdSeeder

from conftest import TINY_BUNDLE, load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("seed_precision")


def test_seed_precision_of_a_halo_map(script):
    """A 3 x 3 region of interest at 1 under a ring of 0.6 on a 10 x 10 map: the Otsu region is the 5 x 5
    block (9 of 25 cells in the mask); eroded by one cell it is the region itself."""
    cam = torch.zeros(1, 1, 10, 10)
    cam[..., 2:7, 2:7] = 0.6
    cam[..., 3:6, 3:6] = 1.0
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 12:24, 12:24] = 1.0  # the same 3 x 3 cells at 4 pixels per cell
    g = torch.Generator().manual_seed(0)
    whole = script.seed_precision(ThresholdSeeder(4, 4, bg_fraction=0.4), cam, mask, g)
    assert whole["foreground"] == pytest.approx([9 / 25])
    assert whole["foreground_pool"] == pytest.approx([0.25]) and whole["mask"] == pytest.approx([0.09])
    assert whole["background"] == pytest.approx([1.0])  # the 40 lowest cells are all outside
    eroded = script.seed_precision(ThresholdSeeder(4, 4, bg_fraction=0.4, erosion=1), cam, mask, g)
    assert eroded["foreground"] == pytest.approx([1.0]) and eroded["foreground_pool"] == pytest.approx([0.09])
    # a cell half inside the mask counts half
    mask[..., 12:24, 22:24] = 0.0  # the region's right column is now half outside
    assert script.seed_precision(ThresholdSeeder(4, 4, erosion=1), cam, mask, g)["foreground"] == pytest.approx(
        [(6 + 3 * 0.5) / 9])


def test_script_on_the_trained_bundle(script, trained_bundle, tiny_glas, tmp_path):
    overrides = [f"{k}={v}" for k, v in TINY_BUNDLE.items()]
    assert script.main(["--bundle_root", str(trained_bundle), "--datalist", str(tiny_glas), "--erosion", "0", "1",
                        "--out", str(tmp_path), "--set", *overrides]) == 0
    result = json.loads((tmp_path / "seed_precision.json").read_text())
    valpx = json.loads(tiny_glas.read_text())["valpx"]
    manifest = json.loads((trained_bundle / "models" / "cams" / "manifest.json").read_text())
    rows = result["rows"]
    assert result["method"] == manifest["method"] == "auto"
    assert {(r["class"], r["erosion"]) for r in rows} == {
        (c, e) for c in {["benign", "malignant"][it["label"]] for it in valpx} for e in (0, 1)}
    for row in rows:
        assert row["seed_map"] == manifest["selection"]["choice"][str(["benign", "malignant"].index(row["class"]))]
        assert all(0.0 <= row[k] <= 100.0 for k in ("foreground", "background", "foreground_pool", "mask"))
    by_key = {(r["class"], r["erosion"]): r for r in rows}
    # erosion only shrinks an image's foreground pool, except that a pool it empties becomes the seeder's
    # fallback (its n_fg = 16 top cells, of the 7 x 7 map of a 56 px input); the masks stay the same
    cells = (TINY_BUNDLE["image_size"] // 8) ** 2
    fallback = 100.0 * min(16, cells) / cells
    for c in {r["class"] for r in rows}:
        assert by_key[(c, 1)]["foreground_pool"] <= by_key[(c, 0)]["foreground_pool"] + fallback
        assert by_key[(c, 1)]["mask"] == by_key[(c, 0)]["mask"]
    with pytest.raises(ValueError, match="erosions of a ThresholdSeeder"):
        script.main(["--bundle_root", str(trained_bundle), "--datalist", str(tiny_glas), "--out", str(tmp_path),
                     "--set", *overrides, 'seeder={"_target_": "monai_pixelcam.seeding.ProbabilitySeeder"}'])
    with pytest.raises(KeyError, match="no id"):  # a misspelt override would otherwise change nothing
        script.main(["--bundle_root", str(trained_bundle), "--datalist", str(tiny_glas), "--out", str(tmp_path),
                     "--set", *overrides, "seeder#erosoin=1"])
