"""Slide annotations as the viewers submit them (ASAP XML, DSA JSON, GeoJSON) read by one parser, checked
against the slide, and cut into training tiles by the weakly supervised protocol (README, "Annotating
slides"), on a synthetic pyramidal slide whose ground truth is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_pixelcam.data.annotations import Polygon, rasterize, read_annotations
from monai_pixelcam.data.datalist import DatalistError
from monai_pixelcam.data.slide_regions import annotation_problems, classify_annotations, cut_region_tiles
from monai_pixelcam.data.synthetic.slides import synthetic_slide

CLASSES = ["benign", "malignant"]
BLOCK = 64  # block side of the synthetic slide, level-0 px


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """2 x 4 blocks of synthetic GlaS: benign in columns 0-1, malignant in columns 2-3."""
    return synthetic_slide(tmp_path_factory.mktemp("slide") / "slide.svs", [[0, 0, 1, 1], [0, 0, 1, 1]], block=BLOCK)


def _asap(path: Path, polygons: list[tuple[str, np.ndarray]]) -> Path:
    body = "".join(
        f'<Annotation Name="{group} {k}" Type="Polygon" PartOfGroup="{group}"><Coordinates>'
        + "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(ring))
        + "</Coordinates></Annotation>"
        for k, (group, ring) in enumerate(polygons)
    )
    path.write_text(f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>')
    return path


def _regions(slide, with_rois: bool = True) -> list[tuple[str, np.ndarray]]:
    out = [("benign", slide.rectangle((0, 2), (0, 2))), ("malignant", slide.rectangle((0, 2), (2, 4)))]
    return out + ([("gland", ring) for ring in slide.roi_rings((0, 2), (0, 2))] if with_rois else [])


def test_asap_dsa_and_geojson_give_the_same_polygons(tmp_path):
    square = np.array([[10, 10], [90, 10], [90, 90], [10, 90]], float)
    hole = np.array([[40, 40], [60, 40], [60, 60], [40, 60]], float)
    asap = _asap(tmp_path / "a.xml", [("benign", square)])
    dsa = tmp_path / "a.json"
    dsa.write_text(json.dumps({"name": "x", "elements": [
        {"type": "polyline", "closed": True, "group": "benign", "points": [[x, y, 0] for x, y in square]},
        {"type": "rectangle", "center": [50, 50, 0], "width": 80, "height": 80, "rotation": 0,
         "label": {"value": "benign"}},
        {"type": "point", "center": [5, 5, 0]},  # bounds no region: left out
    ]}))
    geojson = tmp_path / "a.geojson"
    closed = lambda ring: [*ring.tolist(), ring[0].tolist()]  # noqa: E731 - GeoJSON repeats the first point
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [closed(square), closed(hole)]},
        "properties": {"objectType": "annotation", "classification": {"name": "benign", "color": [0, 255, 0]}},
    }]}))
    read = {f.suffix: read_annotations(f) for f in (asap, dsa, geojson)}
    assert [p.group for p in read[".json"]] == ["benign", "benign"] and len(read[".xml"]) == len(read[".geojson"]) == 1
    for polygons in read.values():
        np.testing.assert_array_equal(np.sort(polygons[0].points, axis=0), np.sort(square, axis=0))
    np.testing.assert_array_equal(np.sort(read[".json"][1].points, axis=0), np.sort(square, axis=0))
    assert read[".geojson"][0].area == 80 * 80 - 20 * 20 and read[".xml"][0].area == 80 * 80
    holed = rasterize(read[".geojson"], (0, 0), (100, 100), ["benign"])
    assert holed.sum() == 80 * 80 - 20 * 20 and not holed[40:60, 40:60].any() and holed[10:40, 10:90].all()
    (tmp_path / "bad.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(DatalistError, match="label X: not ASAP XML, DSA JSON"):
        read_annotations(tmp_path / "bad.json", name="label X")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DatalistError, match="deep.json: not ASAP XML"):
        read_annotations(tmp_path / "deep.json")


def test_monai_labels_own_writers_are_read(tmp_path):
    pathology = pytest.importorskip("monailabel.utils.others.pathology")
    ring = [[10.0, 10.0], [90.0, 12.0], [80.0, 70.0]]
    result = {"annotation": {"labels": {"malignant": [255, 0, 0]}, "elements": [{"label": "malignant", "contours": [ring]}]}}
    doc = {"name": "n", "description": "d", "model": "m", "annotations": [result]}
    for write in (pathology.create_asap_annotations_xml, pathology.create_dsa_annotations_json):
        path, _ = write(doc)
        polygons = read_annotations(path)
        assert [p.group for p in polygons] == ["malignant"], write
        np.testing.assert_allclose(polygons[0].points, ring)


def test_bad_annotations_are_named(slide):
    extent = (4 * BLOCK, 2 * BLOCK)
    rect = slide.rectangle((0, 1), (0, 1))
    bowtie = np.array([[0, 0], [50, 50], [50, 0], [0, 50]], float)
    polygons = [
        Polygon("tumour", "unknown class", rect),
        Polygon("benign", "off the slide", rect + [4 * BLOCK - 10, 0]),
        Polygon("benign", "bow tie", bowtie),
        Polygon("benign", "flat", np.array([[0, 0], [10, 10], [20, 20]], float)),
    ]
    problems = annotation_problems(polygons, extent, CLASSES, ["gland"], "label of slide")
    text = "\n".join(problems)
    assert "off the slide: reaches outside the slide (256 x 128 px)" in text
    assert "bow tie: the polygon is self-intersecting" in text and "flat: the region is empty" in text
    # the class check comes once the polygons are usable; with the classes unknown it waits for the job
    problems = annotation_problems(polygons[:1], extent, CLASSES, ["gland"], "label of slide")
    assert problems == [
        "label of slide: unknown class: unknown class 'tumour'; a region is one of the classes ['benign', "
        "'malignant'], a region of interest one of ['gland']"
    ]
    assert annotation_problems(polygons[:1], extent, None, ["gland"]) == []
    stray = [Polygon("benign", "b", rect), Polygon("gland", "stray gland", slide.rectangle((1, 2), (3, 4)) - [1, 1])]
    with pytest.raises(DatalistError, match="stray gland: a region of interest must lie inside a class region"):
        classify_annotations(stray, CLASSES, ["GLAND"])
    assert annotation_problems([], extent, CLASSES, ["gland"], "label")[0].startswith("label: no polygon")


@pytest.mark.parametrize("factor", [1, 2])
def test_region_tiles_follow_the_protocol(slide, tmp_path, factor):
    """Tiles of ``BLOCK // factor`` px at ``factor`` x the slide's mpp (level 1 of the pyramid when 2): four per
    region; the benign region's tiles carry its gland polygons as masks, which match the slide's true mask."""
    polygons = [Polygon(group, f"{group} {k}", ring) for k, (group, ring) in enumerate(_regions(slide))]
    annotations = classify_annotations(polygons, CLASSES, ["Gland"])
    assert [c for c, _ in annotations.regions] == [0, 1] and set(annotations.roi_region) == {0}
    size = BLOCK // factor
    items = cut_region_tiles(slide.path, annotations, tmp_path, "s", size, tile_mpp=slide.mpp * factor)
    assert [it["label"] for it in items] == [0] * 4 + [1] * 4
    assert [it["mask"] is not None for it in items] == [True] * 4 + [False] * 4
    assert all(it["mpp"] == pytest.approx(slide.mpp * factor) for it in items)
    footprint = size * factor  # level-0 px per tile (a block)
    agreement = []
    for it in items[:4]:
        image, mask = np.asarray(Image.open(it["image"])), np.asarray(Image.open(it["mask"])) > 0
        assert image.shape == (size, size, 3) and mask.shape == (size, size)
        row, col = (int(v) for v in it["id"].split("-")[-2:])
        truth = slide.mask[row : row + footprint, col : col + footprint]
        truth = truth.reshape(size, footprint // size, size, footprint // size).mean(axis=(1, 3)) >= 0.5
        agreement.append((mask == truth).mean())
    # polygons traced on the level-0 mask and simplified (0.5 px), then rasterized at the tile's scale
    assert min(agreement) > 0.93, agreement
    # a region too small for one tile is named
    small = classify_annotations([Polygon("benign", "sliver", slide.rectangle((0, 1), (0, 1)) * [1, 0.1])], CLASSES, [])
    with pytest.raises(DatalistError, match="s: sliver: the region holds no tile"):
        cut_region_tiles(slide.path, small, tmp_path, "s", BLOCK)


def test_asap_labels_at_the_datastore_door(slide, tmp_path):
    pytest.importorskip("monailabel")
    from monai_pixelcam.label.datastore import PixelCAMDatastore
    from monai_pixelcam.label.errors import RequestError
    from monai_pixelcam.label.train import build_datalist

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "slide.svs").write_bytes(slide.path.read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(studies / "tile.png")
    store = PixelCAMDatastore(str(studies), extensions=("*.svs", "*.png"), classes=lambda: CLASSES, roi_labels=["gland"])

    def submit(name: str, polygons, image="slide") -> str:
        return store.save_label(image, str(_asap(tmp_path / name, polygons)), "final", {})

    rect = slide.rectangle((0, 2), (0, 2))
    with pytest.raises(RequestError) as err:
        submit("unknown.xml", [("tumour", rect)])
    assert err.value.status_code == 422 and "label 'final' of image 'slide': tumour 0: unknown class 'tumour'" in err.value.detail
    with pytest.raises(RequestError) as err:
        submit("tile.xml", [("benign", rect)], image="tile")
    assert err.value.status_code == 422 and "annotations are taken for whole slides" in err.value.detail
    assert store.get_label_by_image_id("slide", "final") in ("", None)  # a refused label is not stored
    regions = [("benign", slide.rectangle((0, 1), (0, 2))), ("benign", slide.rectangle((1, 2), (0, 2))),
               ("malignant", slide.rectangle((0, 2), (2, 4)))]
    # QuPath's GeoJSON export of the same regions is taken too, and replaces the label
    features = [{"type": "Feature", "properties": {"classification": {"name": group}},
                 "geometry": {"type": "Polygon", "coordinates": [[*ring.tolist(), ring[0].tolist()]]}}
                for group, ring in regions]
    (tmp_path / "qupath.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    store.save_label("slide", str(tmp_path / "qupath.geojson"), "final", {})
    assert store.get_label_uri(store.get_label_by_image_id("slide", "final"), "final").endswith(".geojson")
    submit("good.xml", regions + [("gland", ring) for ring in slide.roi_rings((1, 2), (0, 2))])
    assert store.get_label_uri(store.get_label_by_image_id("slide", "final"), "final").endswith(".xml")

    def tiles(image_id, path, annotations):
        regions = classify_annotations(read_annotations(annotations), CLASSES, ["gland"])
        return cut_region_tiles(path, regions, tmp_path / "tiles", image_id, BLOCK)

    datalist = build_datalist(store, CLASSES, valpx_per_class=1, slide_tiles=tiles)
    masked = [it for s in ("valpx", "test") for it in datalist[s]]
    weak = [it for s in ("train", "valcl") for it in datalist[s]]
    assert len(masked) == 2 and all(it["mask"] and it["label"] == 0 for it in masked)
    assert sorted(it["label"] for it in weak) == [0, 0, 1, 1, 1, 1] and not any(it["mask"] for it in weak)


def test_an_annotation_the_door_could_not_judge_fails_the_job_naming_it(slide, tmp_path):
    """Submitted while no class was known (no setting, no trained model: the door checks the polygons only),
    then trained with classes that do not include one of its groups: the job stops with the annotation named
    and leaves no run folder behind."""
    pytest.importorskip("monailabel")
    import shutil

    from conftest import CONFIGS
    from monai_pixelcam.label.datastore import PixelCAMDatastore
    from monai_pixelcam.label.train import RUNS_DIR, PixelCAMTrainTask, TrainError

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "slide.svs").write_bytes(slide.path.read_bytes())
    store = PixelCAMDatastore(str(studies), extensions=("*.svs",), classes=lambda: None, roi_labels=["gland"])
    label = _asap(tmp_path / "qupath.xml", [("benign", slide.rectangle((0, 2), (0, 2))),
                                            ("tumour", slide.rectangle((0, 2), (2, 4)))])
    store.save_label("slide", str(label), "final", {})
    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    task = PixelCAMTrainTask(bundle, classes=CLASSES, roi_labels=["gland"])
    with pytest.raises(TrainError, match="label of image 'slide': tumour 1: unknown class 'tumour'"):
        task({"image_size": BLOCK, "crop_size": BLOCK, "num_workers": 0, "device": "cpu"}, store)
    assert not (bundle / "models" / RUNS_DIR).exists() or not list((bundle / "models" / RUNS_DIR).iterdir())
