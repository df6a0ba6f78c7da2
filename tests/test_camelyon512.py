"""CAMELYON512 rebuilt from raw slides and lesion XML: names parsed, patches cut, masks rasterized (tumour minus
exclusion), fractions checked against the names (a planted disagreement is flagged), the fold's datalist built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_pixelcam.data import DatalistError
from monai_pixelcam.data.annotations import rasterize, read_asap_xml
from monai_pixelcam.data.camelyon512 import parse_patch_name, rebuild_camelyon512, sample_camelyon512
from monai_pixelcam.data.datalist import SPLITS
from monai_pixelcam.data.folds import fold_datalist
from monai_pixelcam.inference import write_pyramid_tiff

SIDE = 512  # level-0 side of the fake slides
TUMOUR = (100, 100, 300, 300)  # x0, y0, x1, y1 of the lesion polygon (group _0)
HOLE = (150, 150, 200, 200)  # a non-tumour island inside it (group _2)


def _xml(path: Path, boxes: dict[str, tuple[int, int, int, int]]) -> None:
    annotations = []
    for k, (group, (x0, y0, x1, y1)) in enumerate(boxes.items()):
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(corners))
        annotations.append(f'<Annotation Name="Annotation {k}" Type="Polygon" PartOfGroup="{group}">'
                           f"<Coordinates>{coords}</Coordinates></Annotation>")  # fmt: skip
    path.write_text(f"<ASAP_Annotations><Annotations>{''.join(annotations)}</Annotations></ASAP_Annotations>")


def _name(slide: str, x: int, y: int, metastatic: float, w: int = 64) -> str:
    kind = "tumor" if slide.startswith("tumor") else "normal"
    folder = "metastatic-patches" if metastatic > 0 or kind == "tumor" else "normal-patches"
    return (f"{folder}/training/{kind}/{slide}/Patch_file_training-{kind}-{slide}.tif_reg_0_row_0_patch_0_x_{x}_y_{y}"
            f"_tissue_0.9000_metastatic_{metastatic:.4f}_w_{w}_h_{w}.png")  # fmt: skip


@pytest.fixture()
def raw(tmp_path):
    slides, xmls, folds = tmp_path / "slides", tmp_path / "lesions", tmp_path / "folds" / "CAMELYON512"
    for slide, seed in (("tumor_057", 0), ("normal_001", 1)):
        rgb = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        write_pyramid_tiff((slides / ("tumor" if "tumor" in slide else "normal") / f"{slide}.tif"), rgb, mpp=0.243,
                           downsamples=(4,))  # fmt: skip
    xmls.mkdir()
    _xml(xmls / "tumor_057.xml", {"_0": TUMOUR, "_2": HOLE})
    inside = 1.0 - 14 * 14 / 64**2  # the hole's 14 x 14 corner inside the patch at (100, 100)
    patches = {
        "train": [("tumor_057", 100, 100, inside), ("normal_001", 0, 0, 0.0), ("tumor_057", 400, 400, 0.0),
                  ("normal_001", 64, 64, 0.0)],
        "valcl": [("tumor_057", 200, 200, 1.0), ("normal_001", 128, 0, 0.0)],
        "valpx": [("tumor_057", 120, 220, 1.0), ("normal_001", 0, 128, 0.0)],
        # planted: the name says 0.5000 where the annotations give 0
        "test": [("tumor_057", 300, 0, 0.5), ("normal_001", 256, 256, 0.0)],
    }  # fmt: skip
    (folds / "encoding.yaml").parent.mkdir(parents=True)
    (folds / "encoding.yaml").write_text("{normal: 0, metastatic: 1}")
    for split, rows in patches.items():
        d = folds / "fold-0" / split
        d.mkdir(parents=True)
        lines = [(_name(s, x, y, m), int(s.startswith("tumor")), s) for s, x, y, m in rows]
        masks = [n.replace("Patch_file", "mask_file") if label else "" for n, label, _ in lines]
        (d / "image_ids.txt").write_text("".join(f"{n}\n" for n, _, _ in lines))
        (d / "class_labels.txt").write_text("".join(f"{n},{label}\n" for n, label, _ in lines))
        (d / "localization.txt").write_text("".join(f"{n},{m},\n" for (n, _, _), m in zip(lines, masks)))
        (d / "image_sizes.txt").write_text("".join(f"{n},64,64\n" for n, _, _ in lines))
    return slides, xmls, folds


def test_patch_names_and_the_rasterized_lesion():
    name = parse_patch_name(
        "metastatic-patches/training/tumor/tumor_057/Patch_file_training-tumor-tumor_057.tif_reg_0_row_0_patch_0"
        "_x_13692_y_156099_tissue_0.3262_metastatic_0.2003_w_512_h_512.png"
    )
    assert (name.slide, name.x, name.y, name.w, name.h) == ("tumor_057", 13692, 156099, 512, 512)
    assert (name.tissue, name.metastatic) == (0.3262, 0.2003)
    with pytest.raises(DatalistError, match="not a CAMELYON512 patch name"):
        parse_patch_name("train_1.bmp")


def test_rebuild_cuts_patches_rasterizes_masks_and_flags_the_planted_disagreement(raw, tmp_path):
    slides, xmls, folds = raw
    polygons = read_asap_xml(xmls / "tumor_057.xml")
    assert [p.group for p in polygons] == ["_0", "_2"]
    mask = rasterize(polygons, (100, 100), (64, 64), ("_0", "_1"), ("_2",))
    assert mask[:50, :].all() and not mask[50:, 50:].any()  # level-0 150..163 is the hole
    out = tmp_path / "rebuilt"
    disagreements = rebuild_camelyon512(slides, xmls, folds, 0, out)
    assert len(disagreements) == 1 and "x_300_y_0" in disagreements[0] and "the name says 0.5000" in disagreements[0]
    data = fold_datalist("camelyon", out, folds, 0)  # the rebuilt root is the fold's dataset root
    assert [len(data[s]) for s in ("train", "valcl", "valpx", "test")] == [4, 2, 2, 2]
    first = data["train"][0]
    patch = np.asarray(Image.open(first["image"]))
    assert patch.shape == (64, 64, 3)
    assert np.asarray(Image.open(first["mask"])).mean() / 255 == pytest.approx(1 - 14 * 14 / 64**2)
    assert all(it["mask"] is None for it in data["train"] if it["label"] == 0)


def test_bad_inputs_name_their_patch(raw, tmp_path):
    slides, xmls, folds = raw
    (slides / "normal" / "normal_001.tif").unlink()
    (xmls / "tumor_057.xml").write_text("<ASAP_Annotations><Annotations><Annotation Name='bad' PartOfGroup='_0'>"
                                        "<Coordinates><Coordinate Order='0' X='1' Y='2'/></Coordinates>"
                                        "</Annotation></Annotations></ASAP_Annotations>")  # fmt: skip
    with pytest.raises(DatalistError) as error:
        rebuild_camelyon512(slides, xmls, folds, 0, tmp_path / "out")
    problems = error.value.problems
    assert sum("slide normal_001.tif not found" in p for p in problems) == 5
    assert any("tumor_057.xml: bad: a polygon needs 3 or more finite points" in p for p in problems)
    assert not (tmp_path / "out").exists()


def test_rebuild_resumes_and_runs_in_workers(raw, tmp_path):
    slides, xmls, folds = raw
    out = tmp_path / "rebuilt"
    first = rebuild_camelyon512(slides, xmls, folds, 0, out, workers=2, progress=False)
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert len(written) == 10 + 5  # 10 patches, 5 of them with a mask (the tumour slide's)
    removed = next(p for p in sorted(written) if "normal_001" in p.name)  # a patch without a mask
    kept = next(p for p in sorted(written) if p != removed)
    removed.unlink()
    # a rerun (as after a kill) cuts only what is missing, and reports the same disagreements
    assert rebuild_camelyon512(slides, xmls, folds, 0, out, progress=False) == first
    assert removed.is_file() and kept.stat().st_mtime_ns == written[kept]
    assert sum(p.stat().st_mtime_ns != written[p] for p in written) == 1


def _tissue_slide(path: Path, seed: int) -> None:
    """White glass with a pink tissue block over its top half (rows 0-255)."""
    rng = np.random.default_rng(seed)
    rgb = np.full((SIDE, SIDE, 3), 245, np.uint8)
    tissue = np.array([205, 120, 175]) + rng.normal(0, 8, (SIDE // 2, SIDE, 3))
    rgb[: SIDE // 2] = np.clip(tissue, 0, 255).astype(np.uint8)
    write_pyramid_tiff(path, rgb, mpp=0.243, downsamples=(4,))


def test_sampling_new_slides_by_the_rule_and_by_slide(tmp_path):
    slides, xmls, out = tmp_path / "slides", tmp_path / "lesions", tmp_path / "sampled"
    xmls.mkdir()
    for k in range(3):
        _tissue_slide(slides / f"tumor_{k:03d}.tif", k)
        _xml(xmls / f"tumor_{k:03d}.xml", {"_0": (0, 0, 256, 128)})  # in the tissue, rows 0-127, columns 0-255
        _tissue_slide(slides / f"normal_{k:03d}.tif", 10 + k)
    _tissue_slide(slides / "tumor_999.tif", 99)  # covered by a fold: excluded
    data = sample_camelyon512(
        slides, xmls, out, exclude=["tumor_999"], patch_size=64, min_tissue=0.5, min_metastatic=0.5, per_slide=3,
        fractions={"valcl": 1 / 3, "valpx": 1 / 3, "test": 0.0}, workers=2, progress=False,
    )
    items = [it for s in SPLITS for it in data[s]]
    assert data["classes"] == ["normal", "metastatic"] and data["negative_classes"] == [0]
    assert len(items) == 18 and not data["test"]
    splits_of = {}
    for split in SPLITS:
        for it in data[split]:
            splits_of.setdefault(it["slide"], set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values()) and "tumor_999" not in splits_of  # split by slide
    assert {next(iter(splits_of[f"tumor_{k:03d}"])) for k in range(3)} == {"train", "valcl", "valpx"}
    for it in items:
        name = parse_patch_name(Path(it["image"]).name)
        assert name.tissue >= 0.5 and name.y < SIDE // 2  # in the tissue half
        if it["slide"].startswith("tumor"):
            mask = np.asarray(Image.open(it["mask"])) > 0
            assert it["label"] == 1 and mask.mean() >= 0.5 and mask.mean() == pytest.approx(name.metastatic, abs=1e-4)
        else:
            assert it["label"] == 0 and it["mask"] is None and name.metastatic == 0
    # a rerun keeps the patches and gives the same datalist
    again = sample_camelyon512(
        slides, xmls, out, exclude=["tumor_999"], patch_size=64, min_tissue=0.5, min_metastatic=0.5, per_slide=3,
        fractions={"valcl": 1 / 3, "valpx": 1 / 3, "test": 0.0}, progress=False,
    )
    assert again == data
