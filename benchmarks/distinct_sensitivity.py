"""How the cross-class distinctiveness seed maps depend on their settings, on valpx only (never on test).

For each finished run of ``benchmarks/quality.py`` (``OUT/runs/<setting>_seed<k>``), the run's own source
checkpoint (B-LOC) is loaded into the bundle's source network, and the seed-map candidates are computed again as
the bundle's CAM writer computes them (the same loaders: the training images for the feature banks, valpx for the
scores), once for every ``distinct_layer`` x ``distinct_k`` of the grid. The valpx PxAP of every candidate per
class is what ``seed_maps: auto`` would choose from. No PixelCAM is trained: this isolates the maps.

Usage: ``python benchmarks/distinct_sensitivity.py --out benchmarks/results/quality --setting glas --seeds 0 1 2
3 4 --layers encoder.layer2 encoder.layer3 --ks 10 50 200`` (``--datalist``: the runs' datalist, by default the
setting's data set under ``OUT/data``; a datalist of other classes than the runs' is refused); writes
``OUT/distinct_sensitivity_<setting>.json`` and prints a table (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.data import load_datalist

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "pixelcam" / "configs"


def candidate_scores(
    run_dir: Path, datalist: Path, seed: int, grid: list[tuple[str, int]], overrides: dict | None = None
) -> dict:
    """``{"<layer> k=<k>": {class name: {candidate: valpx PxAP}}}`` of one run's source model; ``overrides``: the
    bundle overrides the run was trained with."""
    from monai.bundle import ConfigWorkflow

    from monai_pixelcam.cams import prepare_seed_maps
    from monai_pixelcam.networks.weights import load_checkpoint

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type=None, bundle_root=str(run_dir),
        seed=seed, datalist=str(datalist), **(overrides or {}),
    )
    workflow.initialize()
    parser = workflow.parser
    classes = parser.get_parsed_content("class_names")
    model = parser.get_parsed_content("source#network_def")
    load_checkpoint(model, run_dir / "models" / "source_bloc.pt")
    model.eval()
    train_loader = parser.get_parsed_content("cams#dataloader")
    valpx = parser.get_parsed_content("cams#selection_dataloader")
    candidates = parser.get_parsed_content("seed_map_candidates")  # what the run's auto chose from
    out = {}
    for layer, k in grid:
        maps = prepare_seed_maps(
            "auto", model, train_loader, device="cpu", distinct_kwargs={"distinct_layer": layer, "k": k},
            candidates=candidates, selection_loader=valpx,
        )
        out[f"{layer} k={k}"] = {classes[int(c)]: scores for c, scores in maps.report["valpx_pxap"].items()}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    parser.add_argument("--setting", default="glas")
    parser.add_argument("--datalist", type=Path,
                        help="the runs' datalist (default: OUT/data/<the setting's data set>/datalist.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--layers", nargs="+", default=["encoder.layer2", "encoder.layer3"])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="the runs' bundle overrides")
    args = parser.parse_args(argv)
    from quality import SETTINGS, _parse_set  # a sibling script: the runs' data sets and KEY=VALUE parsing

    overrides = _parse_set(args.set)
    if args.datalist is None and args.setting not in SETTINGS:
        raise SystemExit(f"--setting {args.setting!r} is not a quality.py setting: give its runs' --datalist")
    datalist = args.datalist or args.out / "data" / SETTINGS[args.setting][0] / "datalist.json"
    classes = load_datalist(datalist)["classes"]
    grid = [(layer, k) for layer in args.layers for k in args.ks]
    runs = {}
    for seed in args.seeds:
        run_dir = args.out / "runs" / f"{args.setting}_seed{seed}"
        if not (run_dir / "models" / "source_bloc.pt").is_file():
            raise FileNotFoundError(f"no finished run at {run_dir} (models/source_bloc.pt)")
        trained_on = json.loads((run_dir / "models" / "metrics.json").read_text())["classes"]
        if trained_on != classes:  # another data set's maps would be scored against the wrong masks
            raise SystemExit(f"{datalist}: classes {classes}, but {run_dir} was trained on {trained_on}")
        runs[seed] = candidate_scores(run_dir, datalist, seed, grid, overrides)
        print(f"seed {seed} done", flush=True)
    write_json_atomic(runs, args.out / f"distinct_sensitivity_{args.setting}.json", indent=1)
    seeds = list(runs)
    setting_names = list(runs[seeds[0]])
    scored = list(runs[seeds[0]][setting_names[0]])  # the classes valpx judged
    lines = ["| distinct settings | class | candidate | valpx PxAP per seed | mean | worst |", "|---|---|---|---|---|---|"]
    for name in setting_names:
        for cls in scored:
            for cand in runs[seeds[0]][name][cls]:
                values = [runs[s][name][cls][cand] for s in seeds]
                lines.append(f"| {name} | {cls} | {cand} | {' / '.join(f'{v:.1f}' for v in values)} | "
                             f"{statistics.fmean(values):.1f} | {min(values):.1f} |")
    print("\n".join(lines))
    return runs


if __name__ == "__main__":
    main()
    sys.exit(0)
