"""Quality of the source CAM methods and of PixelCAM on the default synthetic data, in and out of distribution.

For each seed, through the bundle (the same pipeline users run):

- ``glas``: train on synthetic GlaS with the bundle's defaults (stain + colour augmentation); test PxAP pooled
  and per class, Dice at the valpx threshold, accuracy, for every source CAM method and PixelCAM (B-LOC);
  then, without adaptation, on synthetic CAMELYON16 tumour patches (OOD) and on the GlaS test set re-rendered
  with shifted stain (same tissue, haematoxylin x1.3, eosin x0.7, hue +0.04 turn);
- ``glas_reference``: the same with the reference's seeding, PixelCAM learning from the source's CAM
  (``seed_maps: cam``) instead of the maps chosen per class on valpx;
- ``glas_noaug``: the same without stain and colour augmentation, tested on the stain-shifted set (the
  ablation that shows what the augmentation is worth);
- ``camelyon``: train on synthetic CAMELYON16, test on it and on synthetic GlaS (the reverse OOD direction);
- ``liver`` / ``liver_reference``: the defaults and the reference's seeding on the liver-like tissue of
  ``benchmarks/unseen_tissue.py``, a tissue model no default was chosen on (reported, never used to choose);
  ``liver_oracle``, PixelCAM from ground-truth seeds there (as ``glas_oracle`` below), bounds what any
  seeding can reach on it;
- ``breast`` / ``breast_reference`` / ``breast_oracle``: the same three on the breast-like tissue of the same
  script (two classes, each with its own region of interest, as GlaS);
- ``glas_distinct_layer1`` / ``liver_distinct_layer1``: the distinctiveness maps from ``encoder.layer1`` with
  k 10, the candidate that became bundle 0.4.0's default (the same runs as ``glas`` / ``liver`` since then);
  ``glas_distinct_layers12`` / ``breast_distinct_layers12`` / ``liver_distinct_layers12``: ``auto`` tries every
  distinct candidate from ``encoder.layer1`` and ``encoder.layer2`` and chooses the layer on valpx too.

The seed maps PixelCAM learns from (the default ``seed_maps: auto`` chooses them per class on valpx among the
source's CAM, cross-class distinctiveness and their geometric mean): ``glas_cam`` / ``camelyon_cam`` (the
source's CAM, as the reference), ``glas_distinct`` / ``camelyon_distinct`` and ``glas_cam_distinct`` /
``camelyon_cam_distinct`` (each candidate imposed). They were measured with the seeder's foreground pool the
whole Otsu region (``NO_EROSION``), as the ablations and the source-method table below; ``glas_erosion0`` /
``camelyon_erosion0`` are the defaults with that pool, ``glas_erosion2`` with the region eroded by 2 cells
instead of the default 1.

Further settings, all on synthetic GlaS, tested on its test split only:

- the source-method table (PixelCAM on top of each WSOL source, seeded from that source's own maps):
  ``glas_cam`` (the CAM head's CAM), ``glas_gradcampp``, ``glas_layercam``, ``glas_deepmil`` (DeepMIL head)
  and ``glas_positive_evidence`` (:class:`~monai_pixelcam.networks.evidence.PositiveEvidenceHead` trained
  one-vs-rest);
- ``glas_oracle``: PixelCAM seeded from the ground-truth masks at feature resolution (the ``oracle`` maps of
  the CAM store) with the same seeder and schedule: the ceiling that perfect pseudo-labels reach; with perfect
  maps the erosion only removes foreground, so ``glas_oracle_erosion0`` (the whole Otsu region) is the higher
  ceiling;
- the ablations on the CAM-seeded pipeline (``glas_cam``), each switch changed on its own:
  ``glas_precise_bn`` (BatchNorm statistics of the source recomputed before each validation: the source then
  classifies on every seed) and ``glas_otsu5`` (the reference's seeding, Otsu 5 + 5, instead of the default
  16 + 16); both are options, not defaults, because PixelCAM's valpx PxAP did not rise with them (see the
  bundle README); ``glas_bloc_ungated`` (the reference's B-LOC, on valpx PxAP alone, instead of the default
  B-LOC among the checkpoints whose valcl accuracy is within ``bloc_accuracy_margin`` of the best so far), and
  the same for the DeepMIL source (``glas_deepmil_bloc_ungated``), whose classifier is the less stable one.

The tables give, next to the models, the constant-map baseline (a map equal everywhere scores the mask
fraction: the PxAP floor) per class of the test split.

Writes ``benchmarks/results/quality/quality.json``, ``quality.md`` (mean and std over seeds) and
``maps_<setting>.png`` (image | mask | source CAMs | PixelCAM on the same test images).

Usage::

    python benchmarks/quality.py                       # 3 seeds, bundle defaults
    python benchmarks/quality.py --seeds 0 --set source_epochs=20 pixelcam_epochs=15   # a shorter run
    python benchmarks/quality.py --settings glas glas_cam glas_gradcampp glas_layercam glas_deepmil glas_oracle
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from monai_pixelcam.cams import CAMStore
from monai_pixelcam.atomic import atomic_path, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "pixelcam" / "configs"
#: the bundle's default seed maps, named in the comparison table for the settings that keep them
DEFAULT_SEED_MAPS = json.loads((CONFIGS / "train.json").read_text())["seed_maps"]
STAIN_SHIFT = {"h_scale": 1.3, "e_scale": 0.7, "hue_shift": 0.04}

#: the seeder's un-eroded Otsu region, the default before erosion 1 was chosen on valpx; the settings measured with
#: it keep it, so that their runs stay valid
NO_EROSION = {"seeder#erosion": 0}
#: ``auto`` choosing the distinctiveness layer on valpx too, among the ResNets' first two stages
LAYERS12 = ["encoder.layer1", "encoder.layer2"]
#: setting -> (training data, bundle overrides, external test sets); data names are those of ``_datasets``
SETTINGS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "glas": ("glas", {}, ("camelyon", "glas_stain")),
    "glas_reference": ("glas", {"seed_maps": "cam"}, ("camelyon", "glas_stain")),
    "glas_noaug": ("glas", {"stain_augment": False, "color_augment": False}, ("glas_stain",)),
    "camelyon": ("camelyon", {}, ("glas",)),
    "liver": ("liver", {}, ()),
    "liver_reference": ("liver", {"seed_maps": "cam"}, ()),
    "liver_oracle": ("liver", {"seed_maps": "oracle"}, ()),
    "breast": ("breast", {}, ()),
    "breast_reference": ("breast", {"seed_maps": "cam"}, ()),
    "breast_oracle": ("breast", {"seed_maps": "oracle"}, ()),
    # the distinctiveness maps from the first residual stage, k 10 (benchmarks/distinct_sensitivity.py)
    "glas_distinct_layer1": ("glas", {"distinct_layer": "encoder.layer1", "distinct_k": 10}, ("camelyon", "glas_stain")),
    "liver_distinct_layer1": ("liver", {"distinct_layer": "encoder.layer1", "distinct_k": 10}, ()),
    "glas_distinct_layers12": ("glas", {"distinct_layer": LAYERS12}, ()),
    "breast_distinct_layers12": ("breast", {"distinct_layer": LAYERS12}, ()),
    "liver_distinct_layers12": ("liver", {"distinct_layer": LAYERS12}, ()),
    # foreground seeds from the Otsu region eroded by 1 cell of the seed grid (default), 0 or 2 cells
    "glas_erosion0": ("glas", NO_EROSION, ("camelyon", "glas_stain")),
    "camelyon_erosion0": ("camelyon", NO_EROSION, ("glas",)),
    "glas_erosion2": ("glas", {"seeder#erosion": 2}, ("camelyon", "glas_stain")),
    # seed maps (the default 'auto' chooses per class on valpx among cam, distinct and cam+distinct)
    "glas_cam": ("glas", {"seed_maps": "cam", **NO_EROSION}, ("camelyon", "glas_stain")),
    "camelyon_cam": ("camelyon", {"seed_maps": "cam", **NO_EROSION}, ("glas",)),
    "glas_distinct": ("glas", {"seed_maps": "distinct", **NO_EROSION}, ("camelyon", "glas_stain")),
    "camelyon_distinct": ("camelyon", {"seed_maps": "distinct", **NO_EROSION}, ("glas",)),
    "glas_cam_distinct": ("glas", {"seed_maps": "cam+distinct", **NO_EROSION}, ("camelyon", "glas_stain")),
    "camelyon_cam_distinct": ("camelyon", {"seed_maps": "cam+distinct", **NO_EROSION}, ("glas",)),
    # PixelCAM on top of each WSOL source, seeded from that source's own maps (item 4 of issue 10)
    "glas_gradcampp": ("glas", {"cam_method": "gradcampp", "seed_maps": "gradcampp", **NO_EROSION}, ()),
    "glas_layercam": ("glas", {"cam_method": "layercam", "seed_maps": "layercam", **NO_EROSION}, ()),
    "glas_deepmil": ("glas", {"head": "deepmil", "seed_maps": "cam", **NO_EROSION}, ()),
    "glas_positive_evidence": ("glas", {
        "head": "positive_evidence", "classification_loss#_target_": "monai_pixelcam.losses.OneVsRestLoss",
        "seed_maps": "cam", **NO_EROSION,
    }, ()),
    # the ceiling: seeds from the ground-truth masks, same seeder and schedule
    "glas_oracle": ("glas", {"seed_maps": "oracle"}, ()),
    # the paper's claim that the pixel head sits on a transformer unchanged: our ViT-tiny, and a small DINOv2
    # loaded from a local snapshot (both randomly initialised: no weights can be downloaded here)
    "glas_vit_tiny": ("glas", {"encoder": "vit_tiny"}, ()),
    "glas_snapshot": ("glas", {"encoder_snapshot": "<small-dinov2-snapshot>"}, ()),
    "glas_oracle_erosion0": ("glas", {"seed_maps": "oracle", **NO_EROSION}, ()),
    # ablations on the CAM-seeded pipeline (glas_cam): each switch changed on its own
    "glas_precise_bn": ("glas", {"precise_bn": True, "seed_maps": "cam", **NO_EROSION}, ()),
    "glas_otsu5": ("glas", {"seeder#n_fg": 5, "seeder#n_bg": 5, "seed_maps": "cam", **NO_EROSION}, ()),
    "glas_bloc_ungated": ("glas", {"bloc_accuracy_margin": None, "seed_maps": "cam", **NO_EROSION}, ()),
    "glas_deepmil_bloc_ungated": ("glas", {
        "head": "deepmil", "bloc_accuracy_margin": None, "seed_maps": "cam", **NO_EROSION,
    }, ()),
}
#: a setting's value that main() replaces by a small random-init DINOv2 snapshot it writes (hidden 192, 6 blocks,
#: 3 heads, patch 16: ViT-tiny's width, half its depth)
SNAPSHOT = "<small-dinov2-snapshot>"
EXTERNAL_NAMES = {"camelyon": "camelyon_ood", "glas": "glas_ood", "glas_stain": "glas_stain_shifted"}


def _small_snapshot(folder: Path) -> Path:
    """The small DINOv2 of :data:`SNAPSHOT`, random init (seed 0), written as a local snapshot once."""
    if not (folder / "config.json").is_file():
        from bench_encoders import write_snapshot  # a sibling script, as bench_encoders imports bench_cost

        write_snapshot(folder, dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, patch_size=16,
                                    image_size=224, mlp_ratio=4))  # fmt: skip
    return folder


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _datasets(data_dir: Path, seed: int) -> dict[str, Path]:
    from monai_pixelcam.data.synthetic import synthesize

    paths = {}
    for name, kind, stain in (("glas", "glas", None), ("camelyon", "camelyon", None), ("glas_stain", "glas", STAIN_SHIFT)):
        out = data_dir / name
        paths[name] = out / "datalist.json" if (out / "datalist.json").exists() else synthesize(
            kind, out, seed=seed, stain=stain, progress=False
        )
    from unseen_tissue import TISSUES, generate  # a sibling script, as bench_encoders below

    for tissue in TISSUES:
        if not (data_dir / tissue / "datalist.json").exists():
            generate(data_dir / tissue, seed=seed, tissue=tissue)
        paths[tissue] = data_dir / tissue / "datalist.json"
    return {k: Path(v) for k, v in paths.items()}


def _workflow(run_dir: Path, datalist: Path, seed: int, overrides: dict, config_files: list[str], run_id: str):
    from monai.bundle import ConfigParser, ConfigWorkflow

    files = [str(CONFIGS / f) for f in config_files]
    config = ConfigParser()
    config.read_config(files)
    # an override of an id the config lacks would be added silently and change nothing
    missing = [key for key in overrides if key not in config]
    if missing:
        raise KeyError(f"the bundle config ({', '.join(config_files)}) has no id {missing}; overrides: {overrides}")
    workflow = ConfigWorkflow(
        config_file=files, logging_file=str(CONFIGS / "logging.conf"), meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=None, run_id=run_id, bundle_root=str(run_dir), datalist=str(datalist), seed=seed, **overrides,
    )
    workflow.initialize()
    return workflow


def _train(run_dir: Path, datalist: Path, seed: int, overrides: dict) -> float:
    """Run the bundle's training (source, CAMs, PixelCAM, test evaluation, export) in ``run_dir``; seconds."""
    workflow = _workflow(run_dir, datalist, seed, overrides, ["train.json"], "run")
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return seconds


def _external(run_dir: Path, datalist: Path, seed: int, overrides: dict, external: Path) -> dict:
    """The bundle's own ``evaluate`` run with ``external`` as its out-of-distribution datalist (thresholds from
    the training valpx); the ``metrics.json`` it writes for that set."""
    workflow = _workflow(
        run_dir, datalist, seed, {**overrides, "ood_datalist": str(external)}, ["train.json", "evaluate.json"],
        "evaluate",
    )
    workflow.run()
    workflow.finalize()
    return json.loads((run_dir / "eval" / "ood" / "metrics.json").read_text())


def constant_map_pxap(datalist: Path, split: str = "test") -> dict[str, float]:
    """PxAP of a constant map per class and pooled over the classes with a region of interest: a map equal
    everywhere has one operating point, recall 1 at precision = the fraction of mask pixels, so its PxAP is
    that fraction (in percent), the floor any localization map must beat."""
    from monai_pixelcam.data import load_datalist
    from monai_pixelcam.data.io import read_mask

    data = load_datalist(datalist)
    counts: dict[str, list[int]] = {}
    for item in data[split]:
        if item["label"] in data["negative_classes"]:
            continue
        mask = read_mask(item["mask"])
        for key in (data["classes"][item["label"]], "pooled"):
            pos, total = counts.setdefault(key, [0, 0])
            counts[key] = [pos + int(mask.sum()), total + int(mask.size)]
    return {key: 100.0 * pos / total for key, (pos, total) in counts.items()}


def _rows(metrics: dict) -> dict[str, dict]:
    """method -> B-LOC figures of one metrics.json."""
    rows = {f"source {m}": sel["bloc"] for m, sel in metrics["source"].items()}
    rows["PixelCAM"] = metrics["pixelcam"]["bloc"]
    return rows


def _named_choice(choice: dict[str, str], datalist: Path) -> dict[str, str]:
    """``{class index: method}`` of a store's ``auto`` selection, keyed by class name."""
    names = json.loads(Path(datalist).read_text())["classes"]
    return {names[int(k)]: v for k, v in choice.items()}


def _summary(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]  # None: a class absent from a run's test split
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def _distinct_methods(runs: list[dict], split: str) -> dict[str, list[str]]:
    """The methods of ``split`` with, for each, the later methods whose figures equal its own on every run (CAM
    and GradCAM on a CAM head: the GradCAM weights are the head's, averaged over a linear map), listed once."""
    groups: dict[str, list[str]] = {}
    for method in runs[0][split]:
        twin = next((m for m in groups if all(
            abs(r[split][m]["pxap"] - r[split][method]["pxap"]) < 1e-4 for r in runs)), None)
        if twin is None:
            groups[method] = []
        else:
            groups[twin].append(method)
    return groups


def _worst(values: list[float]) -> str:
    return f"{min(values):.1f}" if len(values) > 1 else "-"


def render_headline(results: dict) -> str:
    """The one table the bundle README opens its Performance section with: on the test split, under stain
    shift and out of distribution, the constant-map floor, the source CAM, PixelCAM seeded as the reference
    seeds it (``glas_reference``), PixelCAM with the defaults (``glas``) and the ceiling of ground-truth seeds
    (``glas_oracle``); mean ± std over seeds and the worst seed. Settings not in ``results`` are left out."""
    seeds = results["seeds"]

    def runs(setting):
        return [results["runs"][f"{setting}/seed{s}"] for s in seeds if f"{setting}/seed{s}" in results["runs"]]

    def cells(figs, key):
        values = [f[key] for f in figs if f.get(key) is not None]
        return f"{_summary(values)} | {_worst(values)}" if values else "- | -"

    floor = results.get("constant_map", {})

    def floor_of(name, key="pooled"):  # the stain-shifted set has the test split's masks, so its floor
        value = floor.get(name, {}).get(key)
        return "-" if value is None else f"{value:.1f}"

    rows = [f"| constant map (floor) | {floor_of('glas')} | - | {floor_of('glas', 'benign')} | - | {floor_of('glas')} "
            f"| {floor_of('camelyon_ood')} | - |"]
    models = [("source CAM", "glas", "source cam"), ("PixelCAM, the reference's seeds (source CAM)", "glas_reference",
              "PixelCAM"), ("**PixelCAM, defaults**", "glas", "PixelCAM"),
              ("PixelCAM, ground-truth seeds (ceiling)", "glas_oracle", "PixelCAM")]
    for name, setting, method in models:
        found = runs(setting)
        if not found:
            continue

        def split(key, found=found, method=method):
            return [r[key][method] for r in found if key in r]

        test, stain, shifted = split("test"), split("glas_stain_shifted"), split("camelyon_ood")
        rows.append(
            f"| {name} | {cells(test, 'pxap')} | {cells(test, 'pxap_benign')} | "
            f"{_summary([f['pxap'] for f in stain])} | {_summary([f['pxap'] for f in shifted])} | "
            f"{_summary([f['accuracy'] for f in test])} |"
        )
    header = ("| model | test PxAP | worst seed | benign PxAP | worst seed | stain shift PxAP | OOD PxAP (CAMELYON-like) "
              "| accuracy |\n|---|---|---|---|---|---|---|---|")
    return header + "\n" + "\n".join(rows) + "\n"


def render(results: dict) -> str:
    """Markdown table of one ``quality.json``: mean ± std over its seeds for every setting, split and method."""
    seeds = results["seeds"]
    lines = ["| trained on | evaluated on | method | PxAP | PxAP per class | Dice (valpx thr.) | accuracy |",
             "|---|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(key.split("/")[0] for key in results["runs"]))
    for setting in settings:
        runs = [results["runs"][f"{setting}/seed{s}"] for s in seeds if f"{setting}/seed{s}" in results["runs"]]
        for split in [k for k in runs[0] if k not in ("seconds", "seed_map_choice")]:
            for method, same in _distinct_methods(runs, split).items():
                figs = [r[split][method] for r in runs]
                method = " = ".join([method, *(m.removeprefix("source ") for m in same)])
                classes = sorted(k[5:] for k in figs[0] if k.startswith("pxap_"))
                per_class = ", ".join(f"{c} {_summary([f['pxap_' + c] for f in figs])}" for c in classes)
                acc = _summary([f["accuracy"] for f in figs if "accuracy" in f])
                lines.append(f"| {setting} | {split} | {method} | {_summary([f['pxap'] for f in figs])} | "
                             f"{per_class or '-'} | {_summary([f['dice'] for f in figs])} | {acc} |")
    if results.get("settings"):
        lines += ["", *render_comparison(results)]
    lines += render_per_seed(results)
    choices = {key: run["seed_map_choice"] for key, run in results["runs"].items() if "seed_map_choice" in run}
    if choices:
        lines += ["", "Seed maps chosen on valpx (`seed_maps: auto`), per run: " + "; ".join(
            f"{key}: " + ", ".join(f"{c} {m}" for c, m in choice.items()) for key, choice in choices.items()) + "."]
    minutes = _summary([r["seconds"] / 60 for r in results["runs"].values()])
    header = (f"Seeds {seeds}; bundle overrides {results['overrides'] or 'none'}; B-LOC checkpoints; figures in "
              f"percent, mean ± std over seeds; training minutes per run {minutes}. Stain shift: "
              f"{results['stain_shift']}.\n\n")
    return header + "\n".join(lines) + "\n"


def render_comparison(results: dict) -> list[str]:
    """Markdown lines: for every setting trained on synthetic GlaS, PixelCAM against the source CAM method that
    seeded it (test PxAP pooled and per class, accuracy) and PixelCAM's valpx PxAP (what selection saw), under
    the constant-map floor of the test split."""
    seeds = results["seeds"]
    lines = ["| setting | seeds from | source PxAP | PixelCAM PxAP | gain | source per class | PixelCAM per class "
             "| accuracy source / PixelCAM | PixelCAM valpx PxAP |", "|---|---|---|---|---|---|---|---|---|"]
    floor = results.get("constant_map", {}).get("glas")
    if floor:
        per_class = ", ".join(f"{k} {floor[k]:.1f}" for k in sorted(floor) if k != "pooled")
        lines.append(f"| constant map | - | {floor['pooled']:.1f} | {floor['pooled']:.1f} | - | {per_class} | "
                     f"{per_class} | - | - |")
    for setting, extra in results["settings"].items():
        runs = [results["runs"].get(f"{setting}/seed{s}") for s in seeds]
        runs = [r["test"] for r in runs if r is not None]
        if not runs or SETTINGS.get(setting, ("",))[0] != "glas":
            continue
        method = extra.get("cam_method", "cam")
        source = [r[f"source {method}"] for r in runs]
        pixelcam = [r["PixelCAM"] for r in runs]
        classes = sorted(k[5:] for k in pixelcam[0] if k.startswith("pxap_"))

        def per_class(figs):
            return ", ".join(f"{c} {_summary([f['pxap_' + c] for f in figs])}" for c in classes)

        gain = _summary([p["pxap"] - q["pxap"] for p, q in zip(pixelcam, source)])
        lines.append(
            f"| {setting} | {extra.get('seed_maps', DEFAULT_SEED_MAPS)} | {_summary([f['pxap'] for f in source])} | "
            f"{_summary([f['pxap'] for f in pixelcam])} | {gain} | {per_class(source)} | {per_class(pixelcam)} | "
            f"{_summary([f['accuracy'] for f in source])} (min {min(f['accuracy'] for f in source):.1f}) / "
            f"{_summary([f['accuracy'] for f in pixelcam])} (min {min(f['accuracy'] for f in pixelcam):.1f}) | "
            f"{_summary([f['valpx_pxap'] for f in pixelcam])} |"
        )
    return lines


def render_per_seed(results: dict) -> list[str]:
    """Markdown lines: for every data set with both a defaults setting (``glas``, ``liver``) and its reference
    (``<name>_reference``), one row per seed: the source CAM (test PxAP, accuracy), PixelCAM with the reference's
    seeds, with the defaults and, where ``<name>_oracle`` ran, with ground-truth seeds (the ceiling of any
    seeding), the defaults' margins over the reference and the source, the defaults' PxAP per class and accuracy."""
    lines = []
    for setting in dict.fromkeys(k.split("/")[0] for k in results["runs"]):
        reference, oracle = f"{setting}_reference", f"{setting}_oracle"
        seeds = [s for s in results["seeds"]
                 if f"{setting}/seed{s}" in results["runs"] and f"{reference}/seed{s}" in results["runs"]]  # fmt: skip
        if not seeds:
            continue
        lines += ["", f"Per seed, `{setting}` (the defaults) against `{reference}` (the reference's seeds) and "
                  f"`{oracle}` (ground-truth seeds), test split:", "", "| seed | source CAM PxAP (accuracy) | "
                  "PixelCAM, reference's seeds | PixelCAM, defaults | PixelCAM, ground-truth seeds (ceiling) | "
                  "defaults - reference | defaults - source CAM | defaults per class | accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in seeds:
            mine, ref = results["runs"][f"{setting}/seed{s}"]["test"], results["runs"][f"{reference}/seed{s}"]["test"]
            ceiling = results["runs"].get(f"{oracle}/seed{s}")
            ceiling = f"{ceiling['test']['PixelCAM']['pxap']:.1f}" if ceiling else "-"
            source, pixelcam = mine["source cam"], mine["PixelCAM"]
            per_class = ", ".join(f"{k[5:]} {v:.1f}" for k, v in sorted(pixelcam.items())
                                  if k.startswith("pxap_") and v is not None)  # fmt: skip
            lines.append(
                f"| {s} | {source['pxap']:.1f} ({source['accuracy']:.1f}) | {ref['PixelCAM']['pxap']:.1f} | "
                f"{pixelcam['pxap']:.1f} | {ceiling} | "
                f"{pixelcam['pxap'] - ref['PixelCAM']['pxap']:+.1f} | {pixelcam['pxap'] - source['pxap']:+.1f} | "
                f"{per_class or '-'} | {pixelcam['accuracy']:.1f} |"
            )
    return lines


def write_docs_figure(src: Path, dst: Path, max_kb: int = 1024) -> Path:
    """Copy a figure into the bundle's docs as a 256-colour PNG: the model zoo refuses files over 1024 KB, and a
    maps grid in full colour is just over it."""
    from PIL import Image

    with Image.open(src) as img:
        palette = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(dst) as tmp:
        palette.save(tmp, format="PNG", optimize=True)
    if dst.stat().st_size > max_kb * 1024:
        raise ValueError(f"{dst}: {dst.stat().st_size // 1024} KB, over the {max_kb} KB the model zoo accepts")
    return dst


#: the full tables, committed beside the other results and linked from the bundle's README
FULL_TABLES = ROOT / "benchmarks" / "results" / "quality.md"


def update_docs(all_results: list[dict], docs: Path = ROOT / "bundles" / "pixelcam" / "docs" / "README.md",
                full: Path = FULL_TABLES) -> None:
    """Write the headline table of the first results into the bundle's README (between the quality markers),
    and every table of all of them into ``full``."""
    text = docs.read_text()
    begin, end = "<!-- quality:begin -->", "<!-- quality:end -->"
    if begin not in text or end not in text:
        raise ValueError(f"{docs} has no {begin} ... {end} section")
    first = all_results[0]
    body = (f"Seeds {first['seeds']}; bundle overrides {first['overrides'] or 'none'}; B-LOC checkpoints; figures in "
            f"percent. Stain shift: {first['stain_shift']}.\n\n" + render_headline(first))
    with atomic_path(docs) as tmp:
        tmp.write_text(text[: text.index(begin) + len(begin)] + "\n" + body + text[text.index(end):])
    with atomic_path(full) as tmp:
        tmp.write_text("# Quality tables (generated by `benchmarks/quality.py`)\n\n" + "\n".join(
            render(r) for r in all_results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    parser.add_argument("--settings", nargs="+", default=["glas", "glas_noaug", "camelyon"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle overrides for every run")
    parser.add_argument("--update-docs", action="store_true", help="write the table into the bundle's README")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/quality.json (same overrides) and train only the others")
    parser.add_argument("--render", type=Path, nargs="+", metavar="DIR",
                        help="only render the quality.json of these result folders (no training)")
    args = parser.parse_args(argv)
    if args.render:
        all_results = [json.loads((d / "quality.json").read_text()) for d in args.render]
        print("\n".join(render(r) for r in all_results))
        if args.update_docs:
            update_docs(all_results)
        return 0
    overrides = _parse_set(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    data = _datasets(args.out / "data", seed=0)
    results: dict = {"overrides": overrides, "seeds": args.seeds, "stain_shift": STAIN_SHIFT, "runs": {},
                     "settings": {}, "constant_map": {}}
    previous = args.out / "quality.json"
    if args.resume and previous.is_file():
        done = json.loads(previous.read_text())
        if done["overrides"] != overrides:
            raise ValueError(f"--resume: {previous} was run with overrides {done['overrides']}, not {overrides}")
        results["runs"] = done["runs"]
    for setting in args.settings:
        data_name, extra, externals = SETTINGS[setting]
        results["settings"][setting] = extra
        if SNAPSHOT in extra.values():
            extra = {k: str(_small_snapshot(args.out / "small_dinov2")) if v == SNAPSHOT else v for k, v in extra.items()}
        results["constant_map"][data_name] = constant_map_pxap(data[data_name])
        for name in externals:
            results["constant_map"][EXTERNAL_NAMES[name]] = constant_map_pxap(data[name])
        for seed in args.seeds:
            if f"{setting}/seed{seed}" in results["runs"]:
                continue
            run_dir = args.out / "runs" / f"{setting}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            seconds = _train(run_dir, data[data_name], seed, {**overrides, **extra})
            metrics = json.loads((run_dir / "models" / "metrics.json").read_text())
            run = {"seconds": seconds, "test": _rows(metrics)}
            selection = CAMStore(run_dir / "models" / "cams").manifest.get("selection")
            if selection:
                run["seed_map_choice"] = _named_choice(selection["choice"], data[data_name])
            for name in externals:
                run[EXTERNAL_NAMES[name]] = _rows(
                    _external(run_dir, data[data_name], seed, {**overrides, **extra}, data[name])
                )
            results["runs"][f"{setting}/seed{seed}"] = run
            print(f"{setting} seed {seed}: {seconds:.0f} s; PixelCAM test PxAP {run['test']['PixelCAM']['pxap']:.1f}",
                  flush=True)
            if seed == args.seeds[0]:
                shutil.copyfile(run_dir / "models" / "figures" / "maps.png", args.out / f"maps_{setting}.png")
            write_json_atomic(results, args.out / "quality.json")

    markdown = render(results)
    with atomic_path(args.out / "quality.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)
    if args.update_docs:
        update_docs([results])
        if (args.out / "maps_glas.png").is_file():
            write_docs_figure(args.out / "maps_glas.png", ROOT / "bundles" / "pixelcam" / "docs" / "images" / "maps_glas.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
