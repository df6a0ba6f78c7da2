"""Quality of the source CAM methods and of PixelCAM on the default synthetic data, in and out of distribution.

For each seed, through the bundle (the same pipeline users run):

- ``glas``: train on synthetic GlaS with the bundle's defaults (stain + colour augmentation); test PxAP pooled
  and per class, Dice at the valpx threshold, accuracy, for every source CAM method and PixelCAM (B-LOC);
  then, without adaptation, on synthetic CAMELYON16 tumour patches (OOD) and on the GlaS test set re-rendered
  with shifted stain (same tissue, haematoxylin x1.3, eosin x0.7, hue +0.04 turn);
- ``glas_noaug``: the same without stain and colour augmentation, tested on the stain-shifted set (the
  ablation that shows what the augmentation is worth);
- ``camelyon``: train on synthetic CAMELYON16, test on it and on synthetic GlaS (the reverse OOD direction).

Writes ``benchmarks/results/quality/quality.json``, ``quality.md`` (mean and std over seeds) and
``maps_<setting>.png`` (image | mask | source CAMs | PixelCAM on the same test images).

Usage::

    python benchmarks/quality.py                       # 3 seeds, bundle defaults
    python benchmarks/quality.py --seeds 0 --set source_epochs=20 pixelcam_epochs=15   # a shorter run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from monai_pixelcam.data.atomic import atomic_path, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "pixelcam" / "configs"
STAIN_SHIFT = {"h_scale": 1.3, "e_scale": 0.7, "hue_shift": 0.04}


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
    return {k: Path(v) for k, v in paths.items()}


def _train(run_dir: Path, datalist: Path, seed: int, overrides: dict):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"), workflow_type="train", bundle_root=str(run_dir),
        datalist=str(datalist), seed=seed, **overrides,
    )
    workflow.initialize()
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return workflow, seconds


def _external(workflow, name: str, datalist: Path) -> dict:
    from monai_pixelcam.engines import evaluate_external

    p = workflow.parser
    return evaluate_external(
        p.get_parsed_content("eval#source_network"), p.get_parsed_content("eval#pixelcam_network"),
        p.get_parsed_content("output_dir"), p.get_parsed_content("loaders#valpx"),
        p.get_parsed_content("class_names"), p.get_parsed_content("negative_classes"), None, None, datalist,
        p.get_parsed_content("crop_size"), p.get_parsed_content("batch_size"), p.get_parsed_content("cam_methods"),
        Path(p.get_parsed_content("output_dir")) / "external" / name, p.get_parsed_content("device"),
    )


def _rows(metrics: dict) -> dict[str, dict]:
    """method -> B-LOC figures of one metrics.json."""
    rows = {f"source {m}": sel["bloc"] for m, sel in metrics["source"].items()}
    rows["PixelCAM"] = metrics["pixelcam"]["bloc"]
    return rows


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def render(results: dict) -> str:
    """Markdown table of one ``quality.json``: mean ± std over its seeds for every setting, split and method."""
    seeds = results["seeds"]
    lines = ["| trained on | evaluated on | method | PxAP | PxAP per class | Dice (valpx thr.) | accuracy |",
             "|---|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(key.split("/")[0] for key in results["runs"]))
    for setting in settings:
        runs = [results["runs"][f"{setting}/seed{s}"] for s in seeds if f"{setting}/seed{s}" in results["runs"]]
        for split in [k for k in runs[0] if k != "seconds"]:
            for method in runs[0][split]:
                figs = [r[split][method] for r in runs]
                classes = sorted(k[5:] for k in figs[0] if k.startswith("pxap_"))
                per_class = ", ".join(f"{c} {_summary([f['pxap_' + c] for f in figs])}" for c in classes)
                acc = _summary([f["accuracy"] for f in figs if "accuracy" in f])
                lines.append(f"| {setting} | {split} | {method} | {_summary([f['pxap'] for f in figs])} | "
                             f"{per_class or '-'} | {_summary([f['dice'] for f in figs])} | {acc} |")
    minutes = _summary([r["seconds"] / 60 for r in results["runs"].values()])
    header = (f"Seeds {seeds}; bundle overrides {results['overrides'] or 'none'}; B-LOC checkpoints; figures in "
              f"percent, mean ± std over seeds; training minutes per run {minutes}. Stain shift: "
              f"{results['stain_shift']}.\n\n")
    return header + "\n".join(lines) + "\n"


def update_docs(all_results: list[dict], docs: Path = ROOT / "bundles" / "pixelcam" / "docs" / "README.md") -> None:
    """Replace the generated results section of the bundle's README (between the quality markers)."""
    text = docs.read_text()
    begin, end = "<!-- quality:begin -->", "<!-- quality:end -->"
    if begin not in text or end not in text:
        raise ValueError(f"{docs} has no {begin} ... {end} section")
    body = "\n".join(render(r) for r in all_results)
    with atomic_path(docs) as tmp:
        tmp.write_text(text[: text.index(begin) + len(begin)] + "\n" + body + text[text.index(end):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    parser.add_argument("--settings", nargs="+", default=["glas", "glas_noaug", "camelyon"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle overrides for every run")
    parser.add_argument("--update-docs", action="store_true", help="write the table into the bundle's README")
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
    settings = {
        "glas": (data["glas"], {}, {"camelyon_ood": data["camelyon"], "glas_stain_shifted": data["glas_stain"]}),
        "glas_noaug": (data["glas"], {"stain_augment": False, "color_augment": False},
                       {"glas_stain_shifted": data["glas_stain"]}),
        "camelyon": (data["camelyon"], {}, {"glas_ood": data["glas"]}),
    }
    results: dict = {"overrides": overrides, "seeds": args.seeds, "stain_shift": STAIN_SHIFT, "runs": {}}
    for setting in args.settings:
        datalist, extra, externals = settings[setting]
        for seed in args.seeds:
            run_dir = args.out / "runs" / f"{setting}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            workflow, seconds = _train(run_dir, datalist, seed, {**overrides, **extra})
            metrics = json.loads((run_dir / "models" / "metrics.json").read_text())
            run = {"seconds": seconds, "test": _rows(metrics)}
            for name, path in externals.items():
                run[name] = _rows(_external(workflow, name, path))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
