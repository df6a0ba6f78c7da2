"""Transformer encoders from local Hugging Face snapshots (monai_pixelcam.networks.snapshot).

Every snapshot is a tiny randomly initialised model (hidden 32, 2 blocks, 2 heads, patch 8, image 32) that the
test writes with ``save_pretrained`` (safetensors) next to a ``preprocessor_config.json``; nothing is downloaded.
"""

from __future__ import annotations

import json
import socket
import warnings

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from monai_pixelcam.cams import build_cam, build_distinct  # noqa: E402
from monai_pixelcam.networks import CAMHead, PixelCAMNet, PixelHead, WSOLClassifier  # noqa: E402
from monai_pixelcam.networks import tokens as tokens_module  # noqa: E402
from monai_pixelcam.networks.snapshot import (  # noqa: E402
    SNAPSHOT_MODEL_TYPES,
    SnapshotEncoder,
    build_snapshot_encoder,
    layer_decay_param_groups,
)
from monai_pixelcam.networks.tokens import IMAGENET_MEAN, IMAGENET_STD, TokenGridAdapter, tokens_to_grid  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32)
REGISTERS = 3
#: family -> (config class, model class, extra config, prefix tokens, preprocessor config or None)
FAMILIES = {
    "vit": (
        "ViTConfig", "ViTModel", dict(intermediate_size=64, hidden_dropout_prob=0.3), 1,
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 32, "width": 32}},
    ),
    "deit": ("DeiTConfig", "DeiTModel", dict(intermediate_size=64), 2, None),
    "dinov2": (
        "Dinov2Config", "Dinov2Model", dict(mlp_ratio=2), 1,
        {
            "image_mean": [0.6, 0.5, 0.4], "image_std": [0.2, 0.25, 0.3], "do_center_crop": True,
            "crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 28},
        },
    ),
    "dinov2_with_registers": (
        "Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", dict(mlp_ratio=2, num_register_tokens=REGISTERS),
        1 + REGISTERS, {"image_mean": [0.4, 0.4, 0.4], "image_std": [0.3, 0.3, 0.3]},
    ),
}


def _write_snapshot(folder, family: str, **overrides):
    config_cls, model_cls, extra, _, pre = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**TINY, **extra, **overrides})
    getattr(transformers, model_cls)(config).save_pretrained(folder, safe_serialization=True)
    if pre is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    return {family: _write_snapshot(root / family, family) for family in FAMILIES}


def _hf_model(folder, family):
    kwargs = {"add_pooling_layer": False} if family in ("vit", "deit") else {}
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs)
    return model.eval()


def _normalized(x, encoder):
    return (x - torch.tensor(encoder.mean).view(1, 3, 1, 1)) / torch.tensor(encoder.std).view(1, 3, 1, 1)


def test_supported_model_types():
    assert set(SNAPSHOT_MODEL_TYPES) >= {"vit", "dinov2", "dinov2_with_registers"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_grid_shapes_and_attributes(snapshots, family):
    enc = build_snapshot_encoder(snapshots[family]).eval()
    assert isinstance(enc, SnapshotEncoder) and enc.model_type == family
    assert (enc.out_channels, enc.stride, enc.patch_size, enc.num_blocks) == (32, 8, 8, 2)
    assert enc.num_prefix_tokens == FAMILIES[family][3]
    with torch.no_grad():
        assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 32, 4, 4)  # the pretraining size
        assert enc(torch.rand(2, 3, 48, 40)).shape == (2, 32, 6, 5)  # another multiple of the patch: interpolated


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefix_tokens_dropped_as_the_hf_model_orders_them(snapshots, family):
    """The grid is the HF model's own last_hidden_state without its prefix (class, registers, distillation),
    and the block taps are its hidden states after each block."""
    enc = build_snapshot_encoder(snapshots[family]).eval()
    hf = _hf_model(snapshots[family], family)
    prefix = FAMILIES[family][3]
    x = torch.rand(2, 3, 48, 40)
    taps = {}
    hooks = [enc.blocks[j].register_forward_hook(lambda m, i, o, j=j: taps.setdefault(j, o)) for j in range(2)]
    with torch.no_grad():
        grid = enc(x)
        kwargs = {"interpolate_pos_encoding": True} if family in ("vit", "deit") else {}
        out = hf(pixel_values=_normalized(x, enc), output_hidden_states=True, **kwargs)
    for h in hooks:
        h.remove()
    tokens = out.last_hidden_state
    assert tokens.shape == (2, prefix + 6 * 5, 32)  # e.g. 1 class + 3 registers + 30 patches
    expected = tokens[:, prefix:].reshape(2, 6, 5, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(grid, expected)
    for j in range(2):
        block = out.hidden_states[j + 1][:, prefix:].reshape(2, 6, 5, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(taps[j], block)
    assert not torch.allclose(taps[1], grid)  # the last tap is before the final norm


def test_register_tokens_dropped(snapshots):
    enc = build_snapshot_encoder(snapshots["dinov2_with_registers"]).eval()
    hf = _hf_model(snapshots["dinov2_with_registers"], "dinov2_with_registers")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tokens = hf(pixel_values=_normalized(x, enc)).last_hidden_state
        grid = enc(x)
    registers = tokens[:, 1:1 + REGISTERS]
    patches = grid.flatten(2).transpose(1, 2)
    assert patches.shape[1] == 16 and tokens.shape[1] == 1 + REGISTERS + 16
    # no register (nor the class token) is among the grid cells
    for r in torch.cat([tokens[:, :1], registers], dim=1)[0]:
        assert not torch.isclose(patches[0], r).all(dim=1).any()
    torch.testing.assert_close(patches, tokens[:, 1 + REGISTERS:])


def test_preprocessor_statistics_and_normalisation(snapshots):
    dino = build_snapshot_encoder(snapshots["dinov2"])
    assert dino.mean == (0.6, 0.5, 0.4) and dino.std == (0.2, 0.25, 0.3)
    assert dino.image_size == (24, 24)  # the centre crop, not the resize or config.image_size
    vit = build_snapshot_encoder(snapshots["vit"])
    assert vit.mean == (0.5, 0.5, 0.5) and vit.image_size == (32, 32)
    deit = build_snapshot_encoder(snapshots["deit"])  # no preprocessor_config.json
    assert deit.mean == IMAGENET_MEAN and deit.std == IMAGENET_STD and deit.image_size == (32, 32)
    # normalize=True takes [0, 1] input; normalize=False expects it already normalised
    raw = build_snapshot_encoder(snapshots["dinov2"], normalize=False).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dino.eval()(x), raw(_normalized(x, dino)))
    assert set(dino.state_dict()) == set(raw.state_dict())  # the statistics are not in the state dict


def test_unknown_model_type_lists_supported(tmp_path):
    folder = tmp_path / "swin-snapshot"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "swin"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="swin") as err:
        build_snapshot_encoder(folder)
    message = str(err.value)
    assert str(folder) in message
    assert all(t in message for t in ("vit", "dinov2", "dinov2_with_registers"))


def test_missing_folder_or_files(tmp_path, snapshots):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_snapshot_encoder(tmp_path / "nowhere")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((snapshots["vit"] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        build_snapshot_encoder(no_weights)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_snapshot_encoder(no_config)


def test_weights_that_leave_parameters_missing(tmp_path, snapshots):
    """A config that asks for more blocks than the file holds must not silently leave a block random."""
    folder = tmp_path / "deeper"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((snapshots["vit"] / "model.safetensors").read_bytes())
    config = json.loads((snapshots["vit"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="uninitialised"):
        build_snapshot_encoder(folder)


def test_input_sides_must_be_patch_multiples(snapshots):
    enc = build_snapshot_encoder(snapshots["dinov2"]).eval()
    with pytest.raises(ValueError, match="multiples of its patch size 8"):
        enc(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        enc(torch.rand(3, 32, 32))


def _trainable(enc):
    return {n for n, p in enc.backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_trainable_blocks(snapshots, family):
    full = build_snapshot_encoder(snapshots[family])
    names = [n for n, _ in full.backbone.named_parameters()]
    layers = full._layers_name + "."  # "layers." (ViT, transformers 5) or "encoder.layer." (DINOv2)
    unused = {n for n in names if n.endswith("mask_token")}
    assert _trainable(full) == set(names) - unused  # None: full fine-tuning (the mask token is never used)
    assert (family == "dinov2") == bool(unused)

    frozen = build_snapshot_encoder(snapshots[family], trainable_blocks=0)
    assert _trainable(frozen) == set()
    assert frozen.param_groups(1.0, 0.5) == []

    last = build_snapshot_encoder(snapshots[family], trainable_blocks=1)
    expected = {n for n in names if n.startswith(layers + "1.") or n.startswith("layernorm.")}
    assert _trainable(last) == expected and expected
    n_last = sum(p.numel() for n, p in last.backbone.named_parameters() if n in expected)
    assert sum(p.numel() for p in last.parameters() if p.requires_grad) == n_last

    assert _trainable(build_snapshot_encoder(snapshots[family], trainable_blocks=2)) == set(names) - unused - {
        n for n in names if n.startswith("embeddings.")
    }
    for bad in (3, -1):
        with pytest.raises(ValueError, match="trainable_blocks"):
            build_snapshot_encoder(snapshots[family], trainable_blocks=bad)


def test_frozen_part_stays_in_eval_mode(snapshots):
    """The ViT snapshot has dropout 0.3: the frozen part must not drop anything even under .train()."""
    enc = build_snapshot_encoder(snapshots["vit"], trainable_blocks=1)
    net = WSOLClassifier(enc, CAMHead(32, 2))
    net.train()
    bb = enc.backbone
    assert not bb.embeddings.training and not any(m.training for m in bb.embeddings.modules())
    assert not bb.layers[0].training and not any(m.training for m in bb.layers[0].modules())
    assert bb.layers[1].training and bb.layernorm.training and net.image_head.training and net.training
    net.eval()
    assert not bb.layers[1].training

    frozen = build_snapshot_encoder(snapshots["vit"], trainable_blocks=0).train()
    assert not any(m.training for m in frozen.backbone.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), frozen(x))  # no dropout anywhere
        trained = build_snapshot_encoder(snapshots["vit"]).train()
        assert not torch.allclose(trained(x), trained(x))  # (the dropout does act when not frozen)


def test_layer_decay_groups(snapshots):
    enc = build_snapshot_encoder(snapshots["vit"])
    groups = enc.param_groups(lr=1.0, layer_decay=0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("encoder.embeddings", 0.25),  # decay ** L, L = 2 blocks
        ("encoder.blocks.0", 0.5),  # block i = 1: decay ** (L - 1)
        ("encoder.blocks.1", 1.0),  # block i = 2: decay ** 0
        ("encoder.norm", 1.0),
    ]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in enc.parameters() if p.requires_grad}
    emb = {id(p) for p in enc.backbone.embeddings.parameters()}
    assert {id(p) for p in groups[0]["params"]} == emb
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in enc.backbone.layers[1].parameters()}

    last = build_snapshot_encoder(snapshots["vit"], trainable_blocks=1)
    assert [(g["name"], g["lr"]) for g in last.param_groups(0.1, 0.5)] == [
        ("encoder.blocks.1", 0.1), ("encoder.norm", 0.1)
    ]
    with pytest.raises(ValueError, match="layer_decay"):
        enc.param_groups(1.0, 1.5)


def test_layer_decay_composes_with_the_network_groups(snapshots):
    net = PixelCAMNet(build_snapshot_encoder(snapshots["dinov2"]), CAMHead(32, 2), PixelHead(32))
    groups = layer_decay_param_groups(net, lr=0.01, head_lr_mult=10.0, layer_decay=0.5)
    assert [g["name"] for g in groups] == [
        "encoder.embeddings", "encoder.blocks.0", "encoder.blocks.1", "encoder.norm", "heads"
    ]
    assert groups[0]["lr"] == pytest.approx(0.0025) and groups[-1]["lr"] == pytest.approx(0.1)
    original = {id(p) for g in net.param_groups(0.01, 10.0) for p in g["params"]}
    assert {id(p) for g in groups for p in g["params"]} == original
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # a valid optimiser input

    with pytest.raises(TypeError, match="param_groups"):
        layer_decay_param_groups(WSOLClassifier(_StandInTokens(), CAMHead(16, 2)), 0.01)


class _StandInTokens(nn.Module):
    """timm-shaped tokens: 2 prefix tokens then the 4 x 4-pixel patches of a conv, row-major; 16 channels."""

    out_channels = 16  # (only so that it can also pose as an encoder in the TypeError check above)

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 2, 16))

    def patches(self, x):
        return self.proj(x)

    def forward(self, x):
        grid = self.patches(x)
        return torch.cat([self.prefix.expand(x.shape[0], -1, -1), grid.flatten(2).transpose(1, 2)], dim=1)


def test_token_grid_adapter():
    inner = _StandInTokens()
    enc = TokenGridAdapter(inner, num_prefix_tokens=2, patch_size=4, hidden_size=16, normalize=False)
    assert (enc.out_channels, enc.stride, enc.patch_size) == (16, 4, 4)
    assert enc.mean == IMAGENET_MEAN and enc.image_size is None
    x = torch.rand(2, 3, 24, 20)
    torch.testing.assert_close(enc(x), inner.patches(x))  # prefix dropped, patches in place
    with pytest.raises(ValueError, match="multiples of its patch size 4"):
        enc(torch.rand(1, 3, 22, 20))
    normalising = TokenGridAdapter(inner, 2, (4, 4), 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(normalising(x), inner.patches((x - 0.5) / 0.25))
    wrong = TokenGridAdapter(inner, num_prefix_tokens=2, patch_size=4, hidden_size=8)
    with pytest.raises(ValueError, match="B x N x 8"):
        wrong(x)
    with pytest.raises(ValueError, match="expected 1 prefix tokens"):
        tokens_to_grid(inner(x), 1, (6, 5))


def test_one_token_to_grid_function(monkeypatch, snapshots):
    """Both adapters and the block taps go through the module's tokens_to_grid."""
    calls = []
    original = tokens_module.tokens_to_grid
    monkeypatch.setattr(tokens_module, "tokens_to_grid", lambda *a: calls.append(a[1]) or original(*a))
    TokenGridAdapter(_StandInTokens(), 2, 4, 16)(torch.rand(1, 3, 8, 8))
    assert calls == [2]
    build_snapshot_encoder(snapshots["dinov2_with_registers"]).eval()(torch.rand(1, 3, 16, 16))
    assert calls == [2] + [1 + REGISTERS] * 3  # two block taps and the output


def check_maps_on_the_grid(net, grid: int, channels: int, distinct_layer: str, method: str = "gradcam+distinct"):
    """CAM, GradCAM, LayerCAM and a distinct-map method of ``net`` on 32 px inputs: maps ``4 x 1 x grid x grid``
    in [0, 1], the distinctiveness bank of ``channels`` features (the tapped block's width)."""
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    for cam in ("cam", "gradcam", "layercam"):
        maps = build_cam(cam, net)(x, labels=labels)
        assert maps.shape == (4, 1, grid, grid) and maps.min() >= 0 and maps.max() <= 1
    distinct = build_distinct(method, net, distinct_layer=distinct_layer, k=2, bank_size=64)
    distinct.fit([(x, labels)])
    maps = distinct(x, labels)
    assert maps.shape == (4, 1, grid, grid) and maps.min() >= 0 and maps.max() <= 1
    assert distinct.distinct.banks[0].shape[1] == channels
    return x, labels


@pytest.mark.parametrize("family", ["vit", "dinov2_with_registers"])
def test_cams_and_distinct_maps_on_a_snapshot_encoder(snapshots, family):
    net = WSOLClassifier(build_snapshot_encoder(snapshots[family]), CAMHead(32, 2))
    x, labels = check_maps_on_the_grid(net, 4, 32, "encoder.blocks.0")
    assert net.training  # the extractors leave the modes as they were

    # the taps only observe: a gradient CAM on one finds no path to the logits and says so
    with pytest.raises(RuntimeError, match="do not depend"):
        build_cam("gradcam", net, target_layer="encoder.blocks.0")(x, labels=labels)
    # and without block grids nothing feeds them
    net.encoder.block_grids = False
    with pytest.raises(TypeError, match="B x C x h x w"):
        build_distinct("distinct", net, distinct_layer="encoder.blocks.0", k=2).features(x)


def test_nothing_touches_the_network(monkeypatch, snapshots):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network access in a test")

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for family in FAMILIES:
        enc = build_snapshot_encoder(snapshots[family], trainable_blocks=1)
        with torch.no_grad():
            enc.eval()(torch.rand(1, 3, 32, 32))
    # a Hub repository id is not a folder: refused here, never looked up
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        build_snapshot_encoder("facebook/dinov2-small")
    assert attempts == []


def test_traced_encoder_takes_other_sizes(snapshots):
    """torch.jit.trace works (the sizes stay symbolic); torch.jit.script does not (transformers' models are not
    scriptable)."""
    enc = build_snapshot_encoder(snapshots["dinov2"]).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(enc, torch.rand(1, 3, 32, 32), strict=False)
        x = torch.rand(2, 3, 48, 40)
        torch.testing.assert_close(traced(x), enc(x))
