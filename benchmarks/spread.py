"""Where the seed-to-seed spread of PixelCAM comes from, measured on valpx only (never on test).

Reads the runs of ``benchmarks/quality.py`` (``OUT/runs/<setting>_seed<k>/models``: ``metrics.json`` and the CAM
store's manifest) and follows each seed through the pipeline's stages, each a candidate driver of the spread:

1. **the source model**: the B-LOC checkpoint's epoch, valcl accuracy and valpx PxAP of its CAM;
2. **the seed maps**: for each class with a region of interest, the valpx PxAP of every candidate map
   (source CAM, cross-class distinctiveness, their geometric mean) and which one ``auto`` chose;
3. **PixelCAM**: its B-LOC valpx PxAP, and, for the schedule, how much its valpx PxAP moves over its last
   ``--last`` validations (a run whose figure still swings there depends on when it stops).

Per stage: mean, standard deviation and worst seed over seeds, and the Pearson correlation of PixelCAM's valpx
PxAP with the stage's figure across seeds (with 5 seeds, only a large value says anything). The reference
setting (``<setting>_reference``: the source's CAM as seed maps), when its runs are there, gives PixelCAM's
valpx without the choice of maps.

Usage: ``python benchmarks/spread.py --out benchmarks/results/quality --settings glas liver``; writes
``OUT/spread.json`` and prints the tables (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.cams import CAMStore


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:  # a constant has no correlation
        return None
    return statistics.correlation(xs, ys)


def seed_record(models: Path, last: int) -> dict:
    """The valpx figures of one run's stages (see the module docstring); PxAP in percent."""
    metrics = json.loads((models / "metrics.json").read_text())
    classes = metrics["classes"]
    source = metrics["bloc_selection"]["source"]
    pixelcam = metrics["bloc_selection"]["pixelcam"]
    tail = [100 * v["score"] for v in pixelcam["validations"][-last:]]
    record = {
        "source_epoch": source["chosen"]["epoch"],
        "source_valcl_accuracy": 100 * source["chosen"]["accuracy"],
        "source_cam_valpx": metrics["source"]["cam"]["bloc"]["valpx_pxap"],
        "pixelcam_valpx": metrics["pixelcam"]["bloc"]["valpx_pxap"],
        "pixelcam_epoch": pixelcam["chosen"]["epoch"],
        "pixelcam_last_validations_range": max(tail) - min(tail),
        "seed_maps": {},
    }
    selection = CAMStore(models / "cams").manifest.get("selection")
    if selection:
        for index, scores in selection["valpx_pxap"].items():
            record["seed_maps"][classes[int(index)]] = {"candidates": scores, "chosen": selection["choice"][index]}
    return record


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values), "worst": min(values)}  # as quality.py


def summarize(records: dict[int, dict], reference: dict[int, dict]) -> dict:
    """Mean, std and worst seed of each stage's valpx figure, and its correlation with PixelCAM's valpx."""
    seeds = sorted(records)
    target = [records[s]["pixelcam_valpx"] for s in seeds]
    rows = {}

    def add(name, values):
        rows[name] = {**_stats(values), "corr_with_pixelcam_valpx": _pearson(values, target)}

    add("source CAM valpx PxAP (B-LOC)", [records[s]["source_cam_valpx"] for s in seeds])
    add("source valcl accuracy (B-LOC)", [records[s]["source_valcl_accuracy"] for s in seeds])
    for cls in records[seeds[0]]["seed_maps"]:
        for method in records[seeds[0]]["seed_maps"][cls]["candidates"]:
            add(f"seed map {method}, {cls}", [records[s]["seed_maps"][cls]["candidates"][method] for s in seeds])
        chosen = [records[s]["seed_maps"][cls]["candidates"][records[s]["seed_maps"][cls]["chosen"]] for s in seeds]
        add(f"seed map chosen (auto), {cls}", chosen)
    rows["PixelCAM valpx PxAP (B-LOC)"] = {**_stats(target), "corr_with_pixelcam_valpx": None}
    add("PixelCAM valpx range, last validations", [records[s]["pixelcam_last_validations_range"] for s in seeds])
    if reference and all(s in reference for s in seeds):
        add("PixelCAM valpx PxAP, reference seed maps (cam)", [reference[s]["pixelcam_valpx"] for s in seeds])
    return rows


def render(setting: str, records: dict[int, dict], summary: dict) -> str:
    seeds = sorted(records)
    lines = [f"### {setting}: valpx per seed", "",
             "| seed | source epoch | valcl acc | source CAM | seed maps (class: chosen, PxAP of each candidate) "
             "| PixelCAM | PixelCAM range, last validations |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in seeds:
        r = records[s]
        maps = "; ".join(
            f"{cls}: **{m['chosen']}** ({', '.join(f'{k} {v:.1f}' for k, v in m['candidates'].items())})"
            for cls, m in r["seed_maps"].items()
        )
        lines.append(f"| {s} | {r['source_epoch']} | {r['source_valcl_accuracy']:.0f} | {r['source_cam_valpx']:.1f} "
                     f"| {maps or '-'} | {r['pixelcam_valpx']:.1f} | {r['pixelcam_last_validations_range']:.1f} |")
    lines += ["", f"### {setting}: spread of each stage over seeds {seeds[0]}-{seeds[-1]} (valpx)", "",
              "| stage | mean | std | worst seed | correlation with PixelCAM valpx |", "|---|---|---|---|---|"]
    for name, row in summary.items():
        corr = "-" if row["corr_with_pixelcam_valpx"] is None else f"{row['corr_with_pixelcam_valpx']:+.2f}"
        lines.append(f"| {name} | {row['mean']:.1f} | {row['std']:.1f} | {row['worst']:.1f} | {corr} |")
    return "\n".join(lines) + "\n"


def _runs(out: Path, setting: str, last: int) -> dict[int, dict]:
    found = {}
    for models in sorted(out.glob(f"runs/{setting}_seed*/models")):
        seed = models.parent.name.rsplit("_seed", 1)[1]
        if seed.isdigit() and (models / "metrics.json").is_file():
            found[int(seed)] = seed_record(models, last)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "quality")
    parser.add_argument("--settings", nargs="+", default=["glas"])
    parser.add_argument("--last", type=int, default=4, help="PixelCAM validations at the end of a run to compare")
    args = parser.parse_args(argv)
    result, text = {}, []
    for setting in args.settings:
        records = _runs(args.out, setting, args.last)
        if not records:
            raise FileNotFoundError(f"no finished run of {setting!r} under {args.out / 'runs'}")
        summary = summarize(records, _runs(args.out, f"{setting}_reference", args.last))
        result[setting] = {"seeds": records, "summary": summary}
        text.append(render(setting, records, summary))
    write_json_atomic(result, args.out / "spread.json", indent=1)
    print("\n".join(text))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
