"""How often the seeds PixelCAM learns from are right, on valpx, for a trained bundle and several seeders.

For each valpx image with a region of interest, the seed map the bundle stores for its class (the method the
store's manifest names; for ``auto``, the one chosen for that class) is computed from the bundle's source
checkpoint at its own resolution, where training draws the seeds. Each seeder's pools give, exactly (no
sampling), the expected share of foreground seeds inside the mask and of background seeds outside it; a map
cell counts as the share of its footprint inside the mask. The Otsu region's size (share of the map cells) is
given next to the mask's.

Writes ``OUT/seed_precision.json`` (default ``benchmarks/results/seed_precision/``) and prints a table. The
masks are valpx's: choose seeding there, as the bundle chooses thresholds and B-LOC, never on test.

Usage::

    python benchmarks/seed_precision.py --bundle_root RUN_DIR --datalist RUN_DATA/datalist.json --erosion 0 1 2
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from monai_pixelcam.cams import CAMStore
from monai_pixelcam.cams.auto import ValpxSelectedMaps, selection_batches
from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.networks.weights import load_checkpoint
from monai_pixelcam.seeding import ThresholdSeeder

from quality import ROOT, _parse_set, _workflow  # a sibling script: this one runs from benchmarks/


def seed_precision(seeder, maps: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> dict:
    """Per image: expected foreground / background seed precision, Otsu-region and mask shares, in [0, 1].

    Args:
        seeder: a :class:`~monai_pixelcam.seeding.PixelSeeder`.
        maps: B x 1 x h x w in [0, 1]; masks: B x 1 x H x W binary.
    """
    share = F.adaptive_avg_pool2d(masks.float(), maps.shape[-2:]).flatten(1)
    fg, bg = seeder.pools(maps, generator=generator)
    fg, bg = fg.flatten(1), bg.flatten(1).float()
    # the seeder never leaves a pool empty (it falls back to the top cells), so the sums are > 0
    return {
        "foreground": ((fg * share).sum(1) / fg.sum(1)).tolist(),
        "background": ((bg * (1.0 - share)).sum(1) / bg.sum(1)).tolist(),
        "foreground_pool": (fg > 0).float().mean(1).tolist(),
        "mask": share.mean(1).tolist(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", type=Path, required=True, help="a trained bundle (models/ with the store)")
    parser.add_argument("--datalist", type=Path, required=True, help="the datalist it was trained on")
    parser.add_argument("--erosion", type=int, nargs="+", default=[0, 1, 2], help="seeder erosions to compare")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "seed_precision")
    parser.add_argument("--seed", type=int, default=0, help="the seed it was trained with")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the bundle overrides it was trained with (e.g. image_size=56 crop_size=48)")
    args = parser.parse_args(argv)

    # the bundle's config as quality.py runs it, with the same check that every override names an existing id
    overrides = {**_parse_set(args.set), "num_workers": 0}
    config = _workflow(args.bundle_root, args.datalist, args.seed, overrides, ["train.json"], "run").parser
    manifest = CAMStore(config.get_parsed_content("cam_store_dir")).manifest
    method = manifest["method"]
    if method == "oracle":
        raise ValueError(f"{args.bundle_root}: the store holds the masks ('oracle'), whose seeds are the masks'")
    choice = {int(k): v for k, v in manifest.get("selection", {}).get("choice", {}).items()}
    model = config.get_parsed_content("source#network_def")
    load_checkpoint(model, config.get_parsed_content("source#checkpoint"))
    model.eval()
    # one candidate per method the store used, so that auto's maps are the same extractors it chose among
    candidates = sorted(set(choice.values())) if method == "auto" else [method]
    maps_of = ValpxSelectedMaps(
        model, candidates, distinct_layer=config.get_parsed_content("distinct_layer"),
        k=config.get_parsed_content("distinct_k"),
    ).fit((torch.as_tensor(b["image"]).float(), torch.as_tensor(b["label"]))
          for b in config.get_parsed_content("cams#dataloader"))
    base = config.get_parsed_content("seeder")
    if not isinstance(base, ThresholdSeeder):
        raise ValueError(f"--erosion compares erosions of a ThresholdSeeder; the bundle's seeder is {base!r}")
    seeders = {e: type(base)(n_fg=base.n_fg, n_bg=base.n_bg, bg_fraction=base.bg_fraction, erosion=e)
               for e in args.erosion}
    rows: dict = defaultdict(lambda: defaultdict(list))
    generator = torch.Generator().manual_seed(0)
    for images, masks, labels in selection_batches(config.get_parsed_content("cams#selection_dataloader"), "cpu"):
        masks = (masks.float() > 0.5).float()
        for label in labels.unique().tolist():
            keep = (labels == label) & (masks.flatten(1).sum(1) > 0)
            if not keep.any():
                continue
            name = choice.get(label, candidates[0])
            maps = maps_of.extractors[name](images[keep], labels[keep])
            for erosion, seeder in seeders.items():
                for key, values in seed_precision(seeder, maps, masks[keep], generator).items():
                    rows[(label, name, erosion)][key] += values
    class_names = config.get_parsed_content("class_names")
    result = []
    print("| class | seed map | erosion | images | foreground seeds in mask | background seeds outside | "
          "foreground pool | mask |\n|---|---|---|---|---|---|---|---|")
    for (label, name, erosion), figures in sorted(rows.items()):
        mean = {k: 100.0 * sum(v) / len(v) for k, v in figures.items()}
        result.append({"class": class_names[label], "seed_map": name, "erosion": erosion,
                       "images": len(figures["mask"]), **{k: round(v, 2) for k, v in mean.items()}})
        print(f"| {class_names[label]} | {name} | {erosion} | {len(figures['mask'])} | {mean['foreground']:.1f} | "
              f"{mean['background']:.1f} | {mean['foreground_pool']:.1f} | {mean['mask']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"bundle_root": str(args.bundle_root), "method": method, "rows": result},
                      args.out / "seed_precision.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
