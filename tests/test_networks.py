"""Tests for monai_pixelcam.networks: encoders, heads, WSOLClassifier, PixelCAMNet, weights, factory."""

import json

import pytest
import torch
import torch.nn as nn

from monai_pixelcam.networks import (
    CAMHead,
    DeepMILHead,
    PixelCAMLocalizer,
    PixelCAMNet,
    PixelHead,
    ResNetEncoder,
    VGG16Encoder,
    ViTTinyEncoder,
    WSOLClassifier,
    build_classifier,
    build_encoder,
    build_head,
    build_localizer,
    build_pixelcam,
    load_checkpoint,
    load_torchvision_weights,
    resnet18,
    resnet50,
)

torch.set_num_threads(2)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_classifier(head="cam", num_classes=3, **kw):
    return build_classifier("resnet18", head, num_classes, base_width=16, **kw)


# --------------------------------------------------------------------------------------------------------------
# torchvision checkpoint layouts, written out from torchvision's architecture definitions (resnet.py, vgg.py),
# independently of our encoders: names and shapes as in torchvision.models.resnet18/50().state_dict() and
# vgg16().state_dict(). Each tensor is filled with its own index so that a key loaded into the wrong slot shows.


def _fill(shape, i, dtype=torch.float32):
    return torch.full(shape, float(i), dtype=dtype)


def torchvision_resnet_state_dict(arch: str) -> dict:
    block, layers = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}[arch]
    expansion = 1 if block == "basic" else 4
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = _fill((cout, cin, k, k), len(sd))

    def bn(name, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{suffix}"] = _fill((c,), len(sd))
        sd[f"{name}.num_batches_tracked"] = torch.tensor(len(sd), dtype=torch.long)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if block == "basic":
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            if b == 0 and (li > 1 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = _fill((1000, inplanes), len(sd))
    sd["fc.bias"] = _fill((1000,), len(sd))
    return sd


def torchvision_vgg16_state_dict(batch_norm: bool = False) -> dict:
    # torchvision make_layers: per conv "Conv2d[, BatchNorm2d], ReLU", a MaxPool2d after each block
    sd = {}
    idx, cin = 0, 3
    for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for cout in block:
            sd[f"features.{idx}.weight"] = _fill((cout, cin, 3, 3), len(sd))
            sd[f"features.{idx}.bias"] = _fill((cout,), len(sd))
            if batch_norm:
                for suffix in ("weight", "bias", "running_mean", "running_var"):
                    sd[f"features.{idx + 1}.{suffix}"] = _fill((cout,), len(sd))
                sd[f"features.{idx + 1}.num_batches_tracked"] = torch.tensor(0)
            idx += 3 if batch_norm else 2
            cin = cout
        idx += 1
    # torchvision's classifier is (4096 x 25088, 4096 x 4096, 1000 x 4096); the loader drops it by name, so small
    # stand-ins under the real names keep the file small.
    for i in (0, 3, 6):
        sd[f"classifier.{i}.weight"] = _fill((4, 4), len(sd))
        sd[f"classifier.{i}.bias"] = _fill((4,), len(sd))
    return sd


def test_torchvision_layouts_have_torchvision_sizes():
    # entry and parameter counts of the real torchvision state dicts: guards the layout writers above
    r18, r50 = torchvision_resnet_state_dict("resnet18"), torchvision_resnet_state_dict("resnet50")
    assert len(r18) == 122 and len(r50) == 320
    count = lambda sd: sum(v.numel() for k, v in sd.items() if v.is_floating_point() and "running" not in k)
    assert count(r18) == 11_689_512 and count(r50) == 25_557_032
    vgg, vgg_bn = torchvision_vgg16_state_dict(), torchvision_vgg16_state_dict(batch_norm=True)
    assert sum(v.numel() for k, v in vgg.items() if k.startswith("features")) == 14_714_688
    assert len(vgg) == 32 and len(vgg_bn) == 32 + 13 * 5 and "features.41.running_var" in vgg_bn


# -------------------------------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    "factory, channels", [(resnet18, 128), (resnet50, 512)], ids=["resnet18", "resnet50"]
)
@pytest.mark.parametrize("wsol, size", [(True, 8), (False, 2)], ids=["wsol", "standard"])
def test_resnet_shapes(factory, channels, wsol, size):
    enc = factory(base_width=16, wsol_strides=wsol).eval()
    with torch.no_grad():
        y = enc(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, channels, size, size)
    assert enc.out_channels == channels and enc.stride == 64 // size


def test_resnet_224_gives_28_or_7():
    with torch.no_grad():
        assert resnet18(base_width=16).eval()(torch.rand(1, 3, 224, 224)).shape == (1, 128, 28, 28)
        assert resnet18(base_width=16, wsol_strides=False).eval()(torch.rand(1, 3, 224, 224)).shape[-2:] == (7, 7)


def test_resnet_full_width_parameter_counts():
    # torchvision resnet18 / resnet50 without fc
    assert n_params(resnet18()) == 11_689_512 - 513_000
    r50 = resnet50()
    assert n_params(r50) == 25_557_032 - 2_049_000 and r50.out_channels == 2048
    assert 0.6e6 < n_params(resnet18(base_width=16)) < 0.8e6


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block"):
        ResNetEncoder(block="wide")
    with pytest.raises(ValueError, match="layers"):
        ResNetEncoder(layers=(2, 2, 2))


@pytest.mark.parametrize(
    "kw, shape",
    [
        ({}, (1024, 8, 8)),
        ({"large_feature_map": False}, (1024, 4, 4)),
        ({"conv6": False}, (512, 8, 8)),
        ({"batch_norm": True}, (1024, 8, 8)),
    ],
)
def test_vgg16_shapes(kw, shape):
    enc = VGG16Encoder(**kw).eval()
    with torch.no_grad():
        y = enc(torch.rand(1, 3, 64, 64))
    assert y.shape[1:] == shape and enc.out_channels == shape[0] and enc.stride == 64 // shape[1]


def test_vgg16_keeps_torchvision_indices_and_count():
    enc = VGG16Encoder()
    convs = [int(name) for name, m in enc.features.named_children() if isinstance(m, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert n_params(enc) == 14_714_688 + 512 * 1024 * 9 + 1024  # torchvision features + conv6


def test_vit_tiny_224_gives_14x14():
    enc = ViTTinyEncoder().eval()
    assert 5.4e6 < n_params(enc) < 5.7e6  # DeiT-tiny without its 1000-class head
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 224, 224)).shape == (1, 192, 14, 14)
    assert enc.out_channels == 192 and enc.stride == 16


def test_vit_tiny_other_sizes_and_errors():
    enc = ViTTinyEncoder(img_size=64, num_layers=2).eval()
    with torch.no_grad():
        assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 192, 4, 4)
        assert enc(torch.rand(1, 3, 96, 64)).shape == (1, 192, 6, 4)  # position embeddings resized
    with pytest.raises(ValueError, match="multiples of patch_size"):
        enc(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTTinyEncoder(img_size=100)


# ----------------------------------------------------------------------------------------------------- heads


def test_cam_head_logits_and_weights():
    head = CAMHead(16, 3)
    f = torch.rand(2, 16, 5, 5)
    logits = head(f)
    assert logits.shape == (2, 3) and head.class_weights().shape == (3, 16)
    # the CAM (class weights . features) averages to the logit minus the bias
    cam = torch.einsum("kc,bchw->bkhw", head.class_weights(), f)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + head.fc.bias, logits)


@pytest.mark.parametrize("gated", [True, False])
def test_deepmil_head(gated):
    head = DeepMILHead(16, 3, attention_dim=8, gated=gated)
    with pytest.raises(RuntimeError, match="no forward pass"):
        head.last_attention_map()
    f = torch.rand(2, 16, 5, 4)
    logits = head(f)
    assert logits.shape == (2, 3) and head.class_weights().shape == (3, 16)
    att = head.last_attention_map()
    assert att.shape == (2, 1, 5, 4)
    torch.testing.assert_close(att.sum(dim=(1, 2, 3)), torch.ones(2))
    torch.testing.assert_close(att, head.attention(f))
    # logits are the linear layer applied to the attention-weighted bag
    torch.testing.assert_close(logits, head.fc((f * att).sum(dim=(2, 3))))


def test_deepmil_attention_follows_evidence():
    # one position carries a feature the attention scorer favours: it gets the largest weight
    head = DeepMILHead(4, 2, attention_dim=4, gated=True)
    with torch.no_grad():
        head.attention_v.weight.copy_(torch.eye(4))
        head.attention_v.bias.zero_()
        head.attention_u.weight.copy_(torch.eye(4))
        head.attention_u.bias.zero_()
        head.attention_w.weight.fill_(1.0)
    f = torch.zeros(1, 4, 3, 3)
    f[0, :, 1, 2] = 3.0
    head(f)
    att = head.last_attention_map()[0, 0]
    assert att.argmax().item() == 1 * 3 + 2


def test_pixel_head_parameters_and_shape():
    assert n_params(PixelHead(2048)) == 4098
    assert PixelHead(16)(torch.rand(2, 16, 5, 5)).shape == (2, 2, 5, 5)
    mlp = PixelHead(16, hidden_channels=8)
    assert n_params(mlp) == 16 * 8 + 8 + 8 * 2 + 2
    assert mlp(torch.rand(1, 16, 3, 3)).shape == (1, 2, 3, 3)


# ---------------------------------------------------------------------------------------- classifier, PixelCAM


@pytest.mark.parametrize("head", ["cam", "deepmil"])
def test_wsol_classifier(head):
    model = small_classifier(head)
    x = torch.rand(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    assert model.features(x).shape == (2, 128, 8, 8)
    assert isinstance(model.encoder, ResNetEncoder) and model.image_head.class_weights().shape == (3, 128)


def test_channel_mismatch_is_reported():
    with pytest.raises(ValueError, match="expects 64 input channels.*gives 128"):
        WSOLClassifier(resnet18(base_width=16), CAMHead(64, 2))
    with pytest.raises(ValueError, match="pixel head"):
        PixelCAMNet(resnet18(base_width=16), CAMHead(128, 2), PixelHead(64))


@pytest.mark.parametrize(
    "encoder, kw, hw",
    [("resnet18", {"base_width": 16}, 8), ("vgg16", {}, 8), ("vit_tiny", {"num_layers": 2}, 4)],
)
def test_pixelcam_forward_and_map_on_every_encoder(encoder, kw, hw):
    net = build_pixelcam(encoder, "cam", 3, **kw).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert set(out) == {"cls", "pix"}
        assert out["cls"].shape == (2, 3) and out["pix"].shape == (2, 2, hw, hw)
        loc = net.localization_map(x)
        assert loc.shape == (2, 1, 64, 64)
        # it is the softmax foreground channel of the pixel logits, upsampled
        fg = torch.softmax(out["pix"], 1)[:, 1:2]
        torch.testing.assert_close(net.localization_map(x, size=[hw, hw]), fg)
        torch.testing.assert_close(loc, nn.functional.interpolate(fg, size=(64, 64), mode="bilinear"))
        assert net.localization_map(x, size=[32, 48]).shape == (2, 1, 32, 48)


def test_source_and_pixelcam_share_state_dict_names():
    """One name per module: a source state dict is the PixelCAM state dict without the pixel head, no key mapping."""
    for head in ("cam", "deepmil"):
        source = small_classifier(head)
        net = build_pixelcam("resnet18", head, 3, base_width=16)
        assert set(source.state_dict()) == {k for k in net.state_dict() if not k.startswith("pixel_head.")}
        assert {k.split(".")[0] for k in source.state_dict()} == {"encoder", "image_head"}


def test_load_source_copies_without_aliasing(tmp_path):
    source = small_classifier("deepmil")
    net = build_pixelcam("resnet18", "deepmil", 3, base_width=16)
    pixel_before = {k: v.clone() for k, v in net.pixel_head.state_dict().items()}
    assert net.load_source(source) is net
    src_sd, net_sd = source.state_dict(), net.state_dict()
    for k, v in src_sd.items():
        torch.testing.assert_close(net_sd[k], v)
    for k, v in net.pixel_head.state_dict().items():
        assert torch.equal(v, pixel_before[k])  # the pixel head keeps its own weights
    x = torch.rand(2, 3, 64, 64)
    source.eval(), net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x)["cls"], source(x))
        before = source.encoder.conv1.weight.clone()
        net.encoder.conv1.weight.add_(1.0)
        net.image_head.fc.weight.add_(1.0)
    torch.testing.assert_close(source.encoder.conv1.weight, before)
    assert net.encoder.conv1.weight.data_ptr() != source.encoder.conv1.weight.data_ptr()
    assert not torch.equal(net.image_head.fc.weight, source.image_head.fc.weight)
    # a parallel wrapper, a state dict and a file (nested under a container key) load alike
    for src in (nn.DataParallel(source), source.state_dict()):
        again = build_pixelcam("resnet18", "deepmil", 3, base_width=16).load_source(src)
        torch.testing.assert_close(again.image_head.fc.weight, source.image_head.fc.weight)
    torch.save({"model": source.state_dict(), "epoch": torch.tensor(4)}, tmp_path / "source.pt")
    again = build_pixelcam("resnet18", "deepmil", 3, base_width=16).load_source(tmp_path / "source.pt")
    torch.testing.assert_close(again.encoder.layer4[1].conv2.weight, source.encoder.layer4[1].conv2.weight)


def test_load_source_is_strict_and_names_the_file(tmp_path):
    source = small_classifier("cam", num_classes=2)
    torch.save({"model": source.state_dict()}, tmp_path / "source.pt")
    net = build_pixelcam("resnet18", "cam", 3, base_width=16)
    before = net.image_head.fc.weight.clone()
    with pytest.raises(ValueError, match="source.pt(.|\n)*shape mismatches(.|\n)*image_head.fc.weight"):
        net.load_source(tmp_path / "source.pt")
    assert torch.equal(net.image_head.fc.weight, before)  # nothing loaded on error
    # a checkpoint of the old layout (``head.*``) is refused with both names listed, not silently half-loaded
    old = {(f"head.{k[len('image_head.'):]}" if k.startswith("image_head.") else k): v for k, v in source.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys(.|\n)*image_head.fc.weight(.|\n)*unexpected keys(.|\n)*head.fc.weight"):
        build_pixelcam("resnet18", "cam", 2, base_width=16).load_source(old)
    with pytest.raises(ValueError, match="no entry 'net'"):
        net.load_source(tmp_path / "source.pt", key="net")
    with pytest.raises(ValueError, match="no entry 'net'"):
        load_checkpoint(small_classifier(num_classes=2), tmp_path / "source.pt", key="net")


def test_mlp_pixel_head():
    net = build_pixelcam("resnet18", "cam", 2, base_width=16, pixel_hidden_channels=8)
    assert len(net.pixel_head.layers) == 3 and net.pixel_head.in_channels == 128


def test_freeze_backbone_two_step_variant():
    net = build_pixelcam("resnet18", "cam", 3, base_width=16, freeze_backbone=True)
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert all(not p.requires_grad for p in net.image_head.parameters())
    assert all(p.requires_grad for p in net.pixel_head.parameters())
    net.train()
    assert net.training and net.pixel_head.training
    assert not net.encoder.training and not any(m.training for m in net.encoder.modules())
    running = net.encoder.bn1.running_mean.clone()
    groups = net.param_groups(0.01)
    assert [g["name"] for g in groups] == ["heads"]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)
    out = net(torch.rand(2, 3, 64, 64))
    (out["pix"].mean() + out["cls"].mean()).backward()
    opt.step()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.pixel_head.layers[0].weight.grad is not None
    torch.testing.assert_close(net.encoder.bn1.running_mean, running)  # BatchNorm statistics frozen too


def test_param_groups_heads_at_ten_times():
    model = small_classifier()
    groups = model.param_groups(0.001)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", 0.001), ("heads", pytest.approx(0.01))]
    net = build_pixelcam("resnet18", "cam", 3, base_width=16)
    groups = net.param_groups(0.002, head_lr_mult=5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    heads = [*net.image_head.parameters(), *net.pixel_head.parameters()]
    assert set(map(id, groups[1]["params"])) == set(map(id, heads))
    assert groups[1]["lr"] == pytest.approx(0.01)
    torch.optim.SGD(groups, lr=0.002, momentum=0.9, nesterov=True, weight_decay=1e-4)


# ------------------------------------------------------------------------------------------ TorchScript / MONAI


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # expected: traced shape branches
def test_localizer_returns_tensor_traces_and_scripts():
    net = build_pixelcam("resnet18", "deepmil", 2, base_width=16).eval()
    loc = PixelCAMLocalizer(net).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = loc(x)
        assert isinstance(ref, torch.Tensor) and ref.shape == (2, 1, 64, 64)
        traced = torch.jit.trace(loc, x)
        scripted = torch.jit.script(loc)
        torch.testing.assert_close(traced(x), ref)
        torch.testing.assert_close(scripted(x), ref)
        x2 = torch.rand(1, 3, 96, 80)
        torch.testing.assert_close(scripted(x2), loc(x2))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_vit_localizer_scripts_and_traces():
    loc = PixelCAMLocalizer(build_pixelcam("vit_tiny", "cam", 2, img_size=64, num_layers=2)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.trace(loc, x)(x), loc(x))  # a trace is fixed to the traced size
        x2 = torch.rand(1, 3, 96, 64)
        torch.testing.assert_close(torch.jit.script(loc)(x2), loc(x2))


def test_monai_convert_to_torchscript_and_verify_net_in_out(tmp_path):
    from monai.bundle import verify_net_in_out
    from monai.networks.utils import convert_to_torchscript

    loc = PixelCAMLocalizer(build_pixelcam("resnet18", "cam", 2, base_width=16)).eval()
    x = torch.rand(1, 3, 64, 64)
    convert_to_torchscript(loc, tmp_path / "loc.ts", verify=True, inputs=[x], device="cpu")
    ts = torch.jit.load(tmp_path / "loc.ts")
    with torch.no_grad():
        torch.testing.assert_close(ts(x), loc(x))

    config = {
        "network_def": {
            "_target_": "monai_pixelcam.networks.build_localizer",
            "encoder": "resnet18",
            "head": "deepmil",
            "num_classes": 2,
            "base_width": 16,
        }
    }
    meta = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 3, "spatial_shape": [64, 64], "dtype": "float32"}},
            "outputs": {"pred": {"num_channels": 1, "dtype": "float32"}},
        }
    }
    (tmp_path / "inference.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "inference.json"),
        device="cpu",
    )
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 2  # the check itself can fail
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(tmp_path / "metadata.json"),
            config_file=str(tmp_path / "inference.json"),
            device="cpu",
        )


def test_localizer_shares_the_pixelcam_state_dict():
    net = build_pixelcam(encoder="resnet18", num_classes=2, base_width=16).eval()
    loc = build_localizer(encoder="resnet18", num_classes=2, base_width=16).eval()
    assert isinstance(loc, PixelCAMLocalizer)
    assert set(loc.state_dict()) == set(net.state_dict())
    loc.load_state_dict(net.state_dict())  # strict: a bundle's model.pt loads into network_def as is
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(loc(x), net.localization_map(x))


def test_bundle_config_instantiates_classifier():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "network_def": {
                "_target_": "monai_pixelcam.networks.build_classifier",
                "encoder": "resnet18",
                "head": "deepmil",
                "num_classes": 2,
                "head_kwargs": {"attention_dim": 32},
                "base_width": 16,
            }
        }
    )
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, WSOLClassifier) and isinstance(net.image_head, DeepMILHead)
    assert net.image_head.attention_v.out_features == 32


# ------------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_load_torchvision_resnet(tmp_path, arch):
    tv = torchvision_resnet_state_dict(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(tv, path)
    enc = build_encoder(arch, pretrained=str(path))
    ours = enc.state_dict()
    assert set(ours) == {k for k in tv if not k.startswith("fc.")}
    for k, v in ours.items():
        assert torch.equal(v, tv[k].to(v.dtype)), k


def test_load_torchvision_accepts_wrappers_and_old_files(tmp_path):
    tv = torchvision_resnet_state_dict("resnet18")
    # DataParallel prefix, nested under "state_dict", and no num_batches_tracked (pre-0.4.1 torchvision files)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tv.items() if "num_batches_tracked" not in k}}
    torch.save(wrapped, tmp_path / "w.pth")
    enc = load_torchvision_weights(resnet18(), tmp_path / "w.pth")
    assert torch.equal(enc.layer3[0].downsample[0].weight, tv["layer3.0.downsample.0.weight"])
    torch.save({"model": tv}, tmp_path / "m.pth")
    load_torchvision_weights(resnet18(), tmp_path / "m.pth")


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_load_torchvision_vgg16(tmp_path, batch_norm):
    tv = torchvision_vgg16_state_dict(batch_norm)
    torch.save(tv, tmp_path / "vgg.pth")
    enc = VGG16Encoder(batch_norm=batch_norm)
    conv6 = enc.conv6.weight.clone()
    load_torchvision_weights(enc, tmp_path / "vgg.pth")
    feats = enc.features.state_dict()
    assert set(feats) == {k[len("features."):] for k in tv if k.startswith("features.")}
    for k, v in feats.items():
        assert torch.equal(v, tv[f"features.{k}"].to(v.dtype)), k
    assert torch.equal(enc.conv6.weight, conv6)  # no torchvision counterpart: left as initialised
    other = "vgg16_bn" if batch_norm else "vgg16"
    with pytest.raises(ValueError, match=f"vgg.pth: a torchvision {other} checkpoint.*batch_norm={batch_norm}"):
        load_torchvision_weights(VGG16Encoder(batch_norm=not batch_norm), tmp_path / "vgg.pth")


def test_load_torchvision_mismatch_lists_every_problem(tmp_path):
    tv = torchvision_resnet_state_dict("resnet18")
    del tv["layer2.1.conv2.weight"]
    tv["layer5.0.conv1.weight"] = torch.zeros(3)
    tv["layer4.1.bn2.weight"] = torch.zeros(7)
    path = tmp_path / "broken_resnet18.pth"
    torch.save(tv, path)
    enc = resnet18()
    before = enc.conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_torchvision_weights(enc, path)
    msg = str(err.value)
    assert "broken_resnet18.pth" in msg
    assert "missing keys (1)" in msg and "layer2.1.conv2.weight" in msg
    assert "unexpected keys (1)" in msg and "layer5.0.conv1.weight" in msg
    assert "shape mismatches (1)" in msg and "layer4.1.bn2.weight: file (7,) vs model (512,)" in msg
    assert torch.equal(enc.conv1.weight, before)  # nothing loaded on error


def test_load_torchvision_wrong_architecture_or_width(tmp_path):
    torch.save(torchvision_resnet_state_dict("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_torchvision_weights(resnet18(base_width=16), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="missing keys.*\n(.|\n)*layer1.0.conv3.weight"):
        load_torchvision_weights(resnet50(base_width=16), tmp_path / "r18.pth")
    with pytest.raises(TypeError, match="ViTTinyEncoder"):
        load_torchvision_weights(ViTTinyEncoder(img_size=32, num_layers=1), tmp_path / "r18.pth")


def test_load_rejects_unsafe_missing_and_foreign_files(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pt")  # needs full unpickling: refused
    with pytest.raises(ValueError, match="pickled_module.pt.*weights-only"):
        load_torchvision_weights(resnet18(base_width=16), tmp_path / "pickled_module.pt")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_weights(resnet18(base_width=16), tmp_path / "nope.pth")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="no_weights.pt.*state dict"):
        load_torchvision_weights(resnet18(base_width=16), tmp_path / "no_weights.pt")


# ------------------------------------------------------------------------------------------------- factory


def test_factory_names_and_errors():
    assert build_encoder("resnet50", base_width=16).out_channels == 512
    assert isinstance(build_head("deepmil", 8, 2), DeepMILHead) and isinstance(build_head("cam", 8, 2), CAMHead)
    enc = build_encoder("resnet18_slim")
    assert enc.out_channels == 128 and sum(p.numel() for p in enc.parameters()) == 702_096
    # monai.utils.look_up_option: a close name (18 and 50 tie; which one follows set order) and every name
    with pytest.raises(ValueError, match="unknown encoder 'resnet34': By 'resnet34', did you mean 'resnet(18|50)'") as err:
        build_encoder("resnet34")
    assert all(name in str(err.value) for name in ("resnet18", "resnet18_slim", "resnet50", "vgg16", "vit_tiny"))
    with pytest.raises(ValueError, match="unknown head 'gap': By 'gap', did you mean 'cam'"):
        build_head("gap", 8, 2)
    with pytest.raises(ValueError, match="unknown head"):
        build_classifier("resnet18", "gap")
    frozen = build_pixelcam("resnet18", base_width=16, freeze_backbone=True, pixel_hidden_channels=4)
    assert frozen.freeze_backbone and len(frozen.pixel_head.layers) == 3
