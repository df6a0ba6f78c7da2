"""timm-format local snapshots (UNI, Virchow2, H-optimus, Prov-GigaPath as the Hub keeps them): ``config.json``
with ``architecture`` / ``model_args`` / ``pretrained_cfg`` and the weights. timm cannot be imported on these
machines, so a stand-in ``timm`` module takes its place: its ``create_model`` builds a small model with a timm
ViT's layout (``patch_embed``, ``cls_token``, ``pos_embed``, ``pos_drop``, ``blocks``, ``norm``, ``head``) whose
forward returns timm-shaped tokens (prefix first, then the patches row-major). What is ours is tested: the
folder's reading, the call to timm, the weights, the grid, the taps, the freezing, and the route from
``--encoder_snapshot`` through the networks to inference."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn as nn

safetensors_torch = pytest.importorskip("safetensors.torch")

from monai_pixelcam.export import META_FILE, MODEL_FILE  # noqa: E402
from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from monai_pixelcam.networks import build_pixelcam  # noqa: E402
from monai_pixelcam.networks.factory import build_encoder  # noqa: E402
from monai_pixelcam.networks.timm_snapshot import TimmSnapshotEncoder  # noqa: E402
from monai_pixelcam.networks.tokens import tokens_to_grid  # noqa: E402
from test_snapshot_encoders import check_maps_on_the_grid  # noqa: E402

MEAN, STD = (0.7, 0.6, 0.5), (0.2, 0.25, 0.3)


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)  # timm keeps a pair
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Block(nn.Module):
    def __init__(self, dim: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.norm1, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.act = act_layer()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm1(x))))


class StandInViT(nn.Module):
    """A timm ViT's layout and forward; ``num_classes=0, global_pool=""`` give the normed tokens."""

    def __init__(self, embed_dim=16, depth=3, patch_size=4, num_classes=1000, global_pool="token",
                 dynamic_img_size=False, pos_drop=0.0, act_layer=nn.GELU, note=None):  # fmt: skip
        super().__init__()
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1, embed_dim))  # broadcast: any grid size
        self.pos_drop = nn.Dropout(pos_drop)
        self.blocks = nn.Sequential(*(_Block(embed_dim, act_layer) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.num_prefix_tokens, self.num_features, self.global_pool = 1, embed_dim, global_pool

    def forward(self, x):
        tokens = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        x = self.norm(self.blocks(self.pos_drop(x)))
        return x if self.global_pool == "" else self.head(x[:, 0])


@pytest.fixture()
def timm(monkeypatch):
    """The stand-in ``timm``: ``create_model`` of ``vit_stand_in`` only, with its calls recorded."""
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        if name != "vit_stand_in":
            raise RuntimeError(f"Unknown model ({name})")
        torch.manual_seed(123)  # other weights than the file's: loading must replace them
        return StandInViT(**kwargs)

    module = types.ModuleType("timm")
    module.create_model, module.calls = create_model, calls
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def _write(folder, depth=3, weights="model.safetensors", **model_args):
    """A timm snapshot as the Hub leaves one: config.json (timm's keys) and the weights with a 1000-class head."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    state = StandInViT(depth=depth, pos_drop=model_args.get("pos_drop", 0.0)).state_dict()
    if weights.endswith(".safetensors"):
        safetensors_torch.save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    config = {"architecture": "vit_stand_in", "num_classes": 1000,
              "model_args": {"embed_dim": 16, "depth": depth, "patch_size": 4, **model_args},
              "pretrained_cfg": {"mean": list(MEAN), "std": list(STD), "input_size": [3, 24, 24]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder, state


def _normalized(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_the_encoder_snapshot_route_builds_it_with_the_files_weights(tmp_path, timm, weights):
    folder, state = _write(tmp_path / "uni-like", weights=weights)
    enc = build_encoder("resnet18_slim", snapshot=folder)  # the name is unused with a snapshot
    assert isinstance(enc, TimmSnapshotEncoder)
    name, pretrained, kwargs = timm.calls[-1]
    assert (name, pretrained) == ("vit_stand_in", False)
    assert kwargs == {"dynamic_img_size": True, "embed_dim": 16, "depth": 3, "patch_size": 4, "num_classes": 0,
                      "global_pool": ""}  # fmt: skip
    loaded = enc.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("head.")}  # the classifier head is dropped
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert (enc.out_channels, enc.stride, enc.num_blocks, enc.image_size) == (16, 4, 3, (24, 24))
    assert (enc.mean, enc.std) == (MEAN, STD)
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        grid = enc.eval()(x)
        tokens = enc.backbone(_normalized(x))
    assert grid.shape == (2, 16, 5, 7)
    torch.testing.assert_close(grid, tokens_to_grid(tokens, 1, (5, 7)))


def test_model_args_naming_torch_or_timm_layers_become_them_and_nothing_else(tmp_path, timm):
    """Virchow2's config names its layers as strings; only ``timm.layers.*`` and ``torch.nn.*`` resolve."""
    folder, _ = _write(tmp_path / "virchow-like", act_layer="torch.nn.SiLU", note="os.system")
    enc = build_encoder("", snapshot=folder)
    kwargs = timm.calls[-1][2]
    assert kwargs["act_layer"] is nn.SiLU and kwargs["note"] == "os.system"
    assert isinstance(enc.backbone.blocks[0].act, nn.SiLU)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["act_layer"] = "torch.nn.NoSuchLayer"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_args 'act_layer' names 'torch.nn.NoSuchLayer', which does not exist"):
        build_encoder("", snapshot=folder)


def test_block_taps_give_each_blocks_tokens_as_a_grid(tmp_path, timm):
    enc = build_encoder("", snapshot=_write(tmp_path / "s")[0]).eval()
    seen = {}
    enc.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("tap", o))
    enc.backbone.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("block", o))
    with torch.no_grad():
        enc(torch.rand(1, 3, 16, 12))
    torch.testing.assert_close(seen["tap"], tokens_to_grid(seen["block"], 1, (4, 3)))


def test_trainable_blocks_and_layer_decay(tmp_path, timm):
    folder, _ = _write(tmp_path / "s", pos_drop=0.5)
    enc = TimmSnapshotEncoder(folder, trainable_blocks=1).train()
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
                 for n, p in enc.backbone.named_parameters() if p.requires_grad}  # fmt: skip
    assert trainable == {"blocks.2", "norm"}
    assert not enc.backbone.pos_drop.training and not enc.backbone.blocks[1].training  # frozen: eval mode
    assert enc.backbone.blocks[2].training
    groups = enc.param_groups(1.0, 0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder.blocks.2", 1.0), ("encoder.norm", 1.0)]
    whole = TimmSnapshotEncoder(folder)
    full = whole.param_groups(1.0, 0.5)
    assert [(g["name"], g["lr"]) for g in full][:2] == [("encoder.embeddings", 0.125), ("encoder.blocks.0", 0.25)]
    embeddings = {id(p) for p in full[0]["params"]}
    b = whole.backbone
    assert embeddings == {id(p) for p in (b.cls_token, b.pos_embed, *b.patch_embed.parameters())}
    frozen = TimmSnapshotEncoder(folder, trainable_blocks=0).train()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.backbone.training


def test_errors_name_the_snapshot_and_what_is_wrong(tmp_path, timm, monkeypatch):
    folder, _ = _write(tmp_path / "s")
    other, _ = _write(tmp_path / "deeper", depth=4)
    (folder / "model.safetensors").unlink()
    (other / "model.safetensors").rename(folder / "model.safetensors")  # 4 blocks' weights for a 3-block config
    with pytest.raises(ValueError, match=r"timm snapshot .*/s: the weights do not fit vit_stand_in"):
        TimmSnapshotEncoder(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights \(model.safetensors or pytorch_model.bin\)"):
        TimmSnapshotEncoder(folder)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architecture": "vit_unknown"}))
    with pytest.raises(ValueError, match="timm cannot build 'vit_unknown'"):
        build_encoder("", snapshot=other)
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ImportError, match="pip install timm"):
        build_encoder("", snapshot=other)


def test_cams_distinct_maps_and_inference_from_model_meta(tmp_path, timm):
    """The networks the bundle builds from ``encoder_snapshot``, the CAMs and distinctiveness maps on a middle
    block, and a model folder (``model.pt`` + ``model_meta.json`` naming the snapshot) that inference rebuilds."""
    folder, _ = _write(tmp_path / "s")
    net = build_pixelcam(encoder_snapshot=str(folder), num_classes=2, init_seed=0)
    check_maps_on_the_grid(net, 8, 16, "encoder.blocks.1", method="cam+distinct")

    models = tmp_path / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / MODEL_FILE)
    meta = {"network": {"encoder": "resnet18_slim", "encoder_snapshot": str(folder), "head": "cam", "num_classes": 2},
            "classes": ["benign", "malignant"], "threshold": 0.5, "image_size": 32}  # fmt: skip
    (models / META_FILE).write_text(json.dumps(meta))
    predictor = PixelCAMPredictor.from_model_dir(models, device="cpu")
    assert isinstance(predictor.network.encoder, TimmSnapshotEncoder)
    out = predictor.predict(torch.randint(0, 256, (30, 20, 3), dtype=torch.uint8).numpy())
    assert out["map"].shape == (30, 20) and 0.0 <= float(out["map"].min()) <= float(out["map"].max()) <= 1.0
