"""Per-image cost of the encoders PixelCAM can run on, as ratios to a ResNet50 fine-tune measured in the same run.

Rows (issue 22 item 3), each a PixelCAM training step (forward, ``PixelCAMLoss`` with the bundle's seeder,
backward, SGD step; :class:`bench_cost.Workload`) and PixelCAM inference (class logits and map):

- ``resnet50`` fine-tuned: the denominator of every ratio;
- ``resnet18_slim`` fine-tuned: the bundle's CPU default;
- both ResNets again with ``channels_last`` (:func:`monai_pixelcam.precision.with_channels_last`): on a CPU,
  what oneDNN's channels-last convolutions save; these rows also give their ratio to the same encoder in the
  default memory format;
- a ViT-B/16-sized DINOv2 (hidden 768, 12 blocks, 12 heads, patch 16; random init, written as a local snapshot
  the way a download leaves one) fine-tuned (``trainable_blocks`` null) and frozen (0);
- the same frozen encoder with its features cached once per training image (no spatial augmentation): a
  training step is then the heads alone on stored features, which is what a cache would save per step.

Each step is timed in strict rotation over the rows (:func:`bench_cost.interleaved`, so that load drifts hit all
alike); the figure is the median per image, and the ratio is of medians. One torch thread unless ``--threads``.

Usage: ``python benchmarks/bench_encoders.py [--size 224] [--batch 4] [--rounds 5]``; ``--smoke`` runs the same
path on tiny sizes. Writes ``benchmarks/results/bench_encoders.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench_cost import Workload, interleaved
from monai_pixelcam.atomic import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "bench_encoders.json"
VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224, mlp_ratio=4)
SMOKE_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32, mlp_ratio=2)


def write_snapshot(folder: Path, config: dict) -> Path:
    """A randomly initialised DINOv2 saved as a local snapshot (``config.json`` + ``model.safetensors``)."""
    import transformers

    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(**config)).save_pretrained(folder, safe_serialization=True)
    return folder


class CachedFeatures:
    """The frozen-encoder step with features cached: the heads of ``work.pixelcam`` on stored features."""

    def __init__(self, work: Workload) -> None:
        self.work = work
        with torch.no_grad():
            self.features = work.pixelcam.encoder(work.x)

    def step(self) -> None:
        net, work = self.work.pixelcam, self.work
        work.opt_pixelcam.zero_grad(set_to_none=True)
        out = {"cls": net.image_head(self.features), "pix": net.pixel_head(self.features)}
        work.loss(out, {"label": work.y, "cam": work.cam}).backward()
        work.opt_pixelcam.step()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the same path in seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, vit = (32, SMOKE_VIT) if args.smoke else (args.size, VIT_B)
    # the snapshot is read once, when the networks are built; it is scratch after that
    with tempfile.TemporaryDirectory(prefix="vit_b_dinov2_") as scratch:
        snapshot = write_snapshot(Path(scratch), vit)
        rows = {
            "resnet50 fine-tuned": ("resnet50", {}),
            "resnet18_slim fine-tuned": ("resnet18_slim", {}),
            "resnet50 fine-tuned, channels_last": ("resnet50", {"channels_last": True}),
            "resnet18_slim fine-tuned, channels_last": ("resnet18_slim", {"channels_last": True}),
            "dinov2 ViT-B/16 fine-tuned": ("dinov2", {"encoder_snapshot": str(snapshot)}),
            "dinov2 ViT-B/16 frozen": ("dinov2", {"encoder_snapshot": str(snapshot), "trainable_blocks": 0}),
        }
        works = {name: Workload(enc, size, args.batch, network_kwargs=kw) for name, (enc, kw) in rows.items()}
    for work in works.values():
        work.train(True)
    cached = CachedFeatures(works["dinov2 ViT-B/16 frozen"])
    train = interleaved({**{n: w.pixelcam_step for n, w in works.items()},
                         "dinov2 ViT-B/16 frozen, features cached": cached.step}, args.rounds, 1)  # fmt: skip
    for work in works.values():
        work.train(False)
    infer = interleaved({n: w.pixelcam_infer for n, w in works.items()}, args.rounds, 1)

    def per_image_ms(times):
        return 1000 * statistics.median(times) / args.batch

    base_train, base_infer = per_image_ms(train["resnet50 fine-tuned"]), per_image_ms(infer["resnet50 fine-tuned"])
    table = {}
    for name, times in train.items():
        row = {"train_ms_per_image": per_image_ms(times), "train_ratio": per_image_ms(times) / base_train}
        if name in infer:  # the cache saves training steps only: inference runs the encoder
            row |= {"infer_ms_per_image": per_image_ms(infer[name]), "infer_ratio": per_image_ms(infer[name]) / base_infer}
        plain = name.removesuffix(", channels_last")
        if plain != name:  # the same encoder in the default memory format, from the same run
            row |= {"train_ratio_to_contiguous": per_image_ms(times) / per_image_ms(train[plain]),
                    "infer_ratio_to_contiguous": per_image_ms(infer[name]) / per_image_ms(infer[plain])}  # fmt: skip
        table[name] = row
    result = {"settings": vars(args) | {"out": str(args.out), "vit": vit}, "rows": table}
    write_json_atomic(result, args.out, indent=1)
    for name, row in table.items():
        infer_text = f"infer {row['infer_ratio']:.2f}x" if "infer_ratio" in row else "infer -"
        if "train_ratio_to_contiguous" in row:
            infer_text += (f"  (to contiguous: train {row['train_ratio_to_contiguous']:.2f}x, "
                           f"infer {row['infer_ratio_to_contiguous']:.2f}x)")  # fmt: skip
        print(f"{name:42s} train {row['train_ms_per_image']:8.1f} ms/img ({row['train_ratio']:.2f}x)  {infer_text}")
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
