"""Stain / colour transforms and the train / eval chains (monai_pixelcam.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from skimage.color import rgb2hed, rgb2hsv

from monai_pixelcam.transforms import (
    RGB_FROM_HED,
    MacenkoNormalize,
    MacenkoNormalized,
    RandColorJitter,
    RandColorJitterd,
    RandHEDJitter,
    RandHEDJitterd,
    RandStainAugment,
    RandStainAugmentd,
    adjust_hue,
    eval_transforms,
    hed_to_rgb,
    macenko_stain_matrix,
    optical_density,
    rgb_to_hed,
    rgb_to_hsv,
    train_transforms,
)

TOL = 1.0 / 255.0


def he_image(size: int = 48, seed: int = 0, stains: np.ndarray | None = None) -> torch.Tensor:
    """Float 3 x size x size H&E-like image (Beer-Lambert mix of two stains) with some bare glass."""
    rng = np.random.default_rng(seed)
    s = RGB_FROM_HED[:2].T if stains is None else np.asarray(stains, dtype=np.float64)
    s = s / np.linalg.norm(s, axis=0, keepdims=True)
    conc = rng.gamma(2.0, 0.3, size=(2, size * size))
    conc[:, : size * size // 8] = 0.0  # glass
    rgb = np.exp(-(s @ conc)).reshape(3, size, size)
    return torch.from_numpy(rgb.astype(np.float32)).clamp(0, 1)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round().to(torch.uint8)


def jitters(strength: float) -> list:
    s = strength
    return [
        RandHEDJitter(sigma=s, bias=s),
        RandStainAugment(stain_sigma=s, sigma=s, bias=s),
        RandColorJitter(brightness=s, contrast=s, saturation=s, hue=s),
    ]


# ---------------------------------------------------------------------------------------------- HED


def test_rgb_to_hed_matches_skimage_and_inverts():
    rng = np.random.default_rng(1)
    x = rng.random((3, 20, 20)).astype(np.float32)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0  # pure black and white
    hed = rgb_to_hed(x)
    assert isinstance(hed, np.ndarray) and hed.shape == x.shape
    # scikit-image clips negative concentrations; the rest must agree
    ref = rgb2hed(x.transpose(1, 2, 0)).transpose(2, 0, 1)
    np.testing.assert_allclose(np.maximum(hed, 0), ref, atol=1e-5)
    # the round trip covers colours outside the H-E-DAB cone too
    np.testing.assert_allclose(hed_to_rgb(hed), x, atol=TOL)
    t = torch.from_numpy(x)
    back = hed_to_rgb(rgb_to_hed(t))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    assert (back - t).abs().max() <= TOL


def test_rgb_to_hed_natural_colours_round_trip_and_uint8():
    img = he_image()
    assert (hed_to_rgb(rgb_to_hed(img)) - img).abs().max() <= TOL
    # uint8 input is read as value / 255
    u = to_uint8(img)
    np.testing.assert_allclose(rgb_to_hed(u).numpy(), rgb_to_hed(u.float() / 255).numpy(), atol=1e-6)
    h = rgb_to_hed(img)
    assert h[2].abs().max() < h[0].abs().max() / 2  # two stains, little DAB
    assert h[0].max() > 0.02 and h[1].max() > 0.02


def test_channel_check():
    with pytest.raises(ValueError, match="3 x H x W"):
        rgb_to_hed(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="3 x H x W"):
        RandColorJitter(brightness=0.2)(torch.rand(8, 8, 3))


# ---------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("transform", jitters(0.0), ids=lambda t: type(t).__name__)
def test_zero_strength_is_identity(transform):
    img = he_image()
    out = transform(img)
    assert out.dtype == torch.float32 and out.shape == img.shape
    assert (out - img).abs().max() <= TOL
    u = to_uint8(img)
    out_u = transform(u)
    assert out_u.dtype == torch.uint8
    assert (out_u.int() - u.int()).abs().max() <= 1


def test_hue_zero_and_full_turn_are_identity():
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    img[:, 0, 0] = 0.5  # a grey pixel
    for shift in (0.0, 1.0, -1.0, 2.0):
        assert (adjust_hue(img, shift) - img).abs().max() <= TOL
    assert (adjust_hue(adjust_hue(img, 0.3), 0.7) - img).abs().max() <= TOL
    assert (adjust_hue(img, 0.5) - img).abs().max() > 0.1  # a half turn does change colours
    full_turn = RandColorJitter(hue=(1.0, 1.0))
    assert (full_turn(img) - img).abs().max() <= TOL
    u = to_uint8(img)
    assert torch.equal(full_turn(u), u)


def test_hsv_matches_skimage():
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(3))
    x[:, 0, :3] = torch.tensor([[0.0, 1.0, 0.4]])  # black, white, grey
    ref = rgb2hsv(x.numpy().transpose(1, 2, 0)).transpose(2, 0, 1)
    np.testing.assert_allclose(rgb_to_hsv(x).numpy(), ref, atol=1e-5)


def test_color_jitter_factors_mean_what_they_say():
    img = he_image()
    grey = RandColorJitter(saturation=(0.0, 0.0))(img)
    assert (grey[0] - grey[1]).abs().max() < 1e-6 and (grey[1] - grey[2]).abs().max() < 1e-6
    dark = RandColorJitter(brightness=(0.5, 0.5))(img)
    assert (dark - img * 0.5).abs().max() < 1e-6
    flat = RandColorJitter(contrast=(0.0, 0.0))(img)
    assert flat.std() < 1e-6
    with pytest.raises(ValueError, match="brightness"):
        RandColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="sigma"):
        RandHEDJitter(sigma=1.5)


# ---------------------------------------------------------------------------------- range and dtype


@pytest.mark.parametrize("transform", jitters(0.5), ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_strong_jitter_keeps_range_and_dtype(transform, dtype):
    img = he_image(seed=2)
    x = to_uint8(img) if dtype == torch.uint8 else img.to(dtype)
    transform.set_random_state(0)
    outs = [transform(x) for _ in range(4)]
    top = 255 if dtype == torch.uint8 else 1.0
    for out in outs:
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.isfinite(out.double()).all()
        if dtype != torch.uint8:  # uint8 holds [0, 255] by its type
            assert out.min() >= 0 and out.max() <= top
    assert any((o.double() - x.double()).abs().max() > top * 0.02 for o in outs)  # it does something


def test_metatensor_and_numpy_inputs():
    img = he_image()
    meta = MetaTensor(img, meta={"filename_or_obj": "tile.png"})
    out = RandHEDJitter(sigma=0.1, bias=0.01)(meta)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "tile.png"
    out = RandColorJitter(brightness=0.2)(img.numpy())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    # explicit range: a float image holding 0..255
    x255 = img * 255
    out = RandStainAugment(stain_sigma=0, sigma=0, bias=0, max_value=255)(x255)
    assert (out - x255).abs().max() <= 1.0


def test_prob_zero_returns_input():
    img = he_image()
    for t in (RandHEDJitter(prob=0.0, sigma=0.5), RandStainAugment(prob=0.0), RandColorJitter(0.5, 0.5, 0.5, 0.5, 0.0)):
        assert torch.equal(t(img), img)


# ---------------------------------------------------------------------------------------- Macenko


def test_macenko_recovers_stain_vectors_hematoxylin_first():
    stains = RGB_FROM_HED[:2].T
    he = macenko_stain_matrix(optical_density(he_image(size=64, stains=stains)))
    assert he is not None and he.shape == (3, 2)
    ref = torch.from_numpy(stains / np.linalg.norm(stains, axis=0)).float()
    cos = (he * ref).sum(dim=0)
    assert cos.min() > 0.99, cos


@pytest.mark.parametrize(
    "blank",
    [torch.ones(3, 32, 32), torch.zeros(3, 32, 32), torch.full((3, 32, 32), 0.5), torch.full((3, 32, 32), 0.999)],
    ids=["white", "black", "grey", "near-white"],
)
def test_stain_augment_never_fails_on_blank_tiles(blank):
    assert macenko_stain_matrix(optical_density(blank)) is None
    t = RandStainAugment(stain_sigma=0.2, sigma=0.5, bias=0.2)
    t.set_random_state(0)
    for x in (blank, to_uint8(blank)):
        out = t(x)
        assert out.dtype == x.dtype and torch.isfinite(out.double()).all()
    # the Ruifrok fallback basis is still lossless at zero strength
    assert (RandStainAugment(stain_sigma=0, sigma=0, bias=0)(blank) - blank).abs().max() <= TOL


def test_stain_augment_on_tiny_tissue_and_noise():
    img = torch.ones(3, 32, 32)
    img[:, 3:5, 3:5] = he_image(size=2)  # 4 tissue pixels: too few for Macenko
    out = RandStainAugment(stain_sigma=0.1)(img)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    noise = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = RandStainAugment(stain_sigma=0.1)(noise)
    assert torch.isfinite(out).all()


MONAI_TARGET_HE = np.array(((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)))  # columns H, E


def monai_reference_stained(size=64):
    """``uint8 H x W x 3`` image in MONAI's reference stain, at its reference maximum concentrations."""
    rng = np.random.default_rng(0)
    conc = rng.gamma(2.0, 0.35, size=(2, size * size))
    conc = conc / np.percentile(conc, 99, axis=1, keepdims=True) * np.array([[1.9705], [1.0308]])
    return np.clip(np.round(240 * np.exp(-(MONAI_TARGET_HE @ conc)) - 1), 0, 255).T.reshape(size, size, 3)


def test_monai_extract_he_stains_puts_eosin_first_and_the_fix_is_gated(monkeypatch):
    """The MONAI defect MacenkoNormalize corrects, reproduced on the installed MONAI; a MONAI without it is used
    as it is."""
    from monai.apps.pathology.transforms import ExtractHEStains

    from monai_pixelcam.transforms import array
    from monai_pixelcam.transforms.stain import OrderedExtractHEStains, monai_extracts_eosin_first

    hwc = monai_reference_stained().astype(np.uint8)
    ref = MONAI_TARGET_HE / np.linalg.norm(MONAI_TARGET_HE, axis=0)
    first = ExtractHEStains()(hwc)[:, 0]
    assert first @ ref[:, 1] > 0.99 > first @ ref[:, 0]  # MONAI 1.6: eosin first, on its own reference stain
    assert monai_extracts_eosin_first()
    extractor = MacenkoNormalize().normalizer.stain_extractor
    assert isinstance(extractor, OrderedExtractHEStains) and extractor(hwc)[:, 0] @ ref[:, 0] > 0.99
    monkeypatch.setattr(array, "monai_extracts_eosin_first", lambda: False)
    assert type(MacenkoNormalize().normalizer.stain_extractor) is ExtractHEStains


def test_macenko_normalize_adapter():
    # an image already in MONAI's reference stain, with its reference maximum concentrations,
    # must come out nearly unchanged
    hwc = monai_reference_stained()
    img = torch.from_numpy(hwc.transpose(2, 0, 1).astype(np.float32) / 255.0)
    out = MacenkoNormalize()(img)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert (out - img).abs().mean() < 8 / 255
    out_u = MacenkoNormalized(keys="image")({"image": to_uint8(img)})["image"]
    assert out_u.dtype == torch.uint8 and out_u.shape == img.shape
    assert (out_u.float() / 255 - out).abs().max() <= 1.5 * TOL
    white = torch.ones(3, 16, 16)
    assert torch.equal(MacenkoNormalize()(white), white)


# ------------------------------------------------------------------------------------- dictionaries


@pytest.mark.parametrize(
    "make",
    [
        lambda k: RandHEDJitterd(keys=k, sigma=0.2, bias=0.05),
        lambda k: RandStainAugmentd(keys=k, stain_sigma=0.1),
        lambda k: RandColorJitterd(keys=k, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1),
    ],
    ids=["hed", "stain", "color"],
)
def test_dictionary_one_draw_for_all_keys_and_reproducible(make):
    img = he_image()
    data = {"image": img, "copy": img.clone(), "label": 1}
    t = make(["image", "copy"])
    t.set_random_state(7)
    out = t(data)
    assert torch.equal(out["image"], out["copy"]) and out["label"] == 1
    assert (out["image"] - img).abs().max() > TOL
    again = make(["image", "copy"]).set_random_state(7)(data)
    assert torch.equal(again["image"], out["image"])
    other = make(["image", "copy"]).set_random_state(8)(data)
    assert not torch.equal(other["image"], out["image"])
    # successive calls draw anew
    assert not torch.equal(t(data)["image"], out["image"])


def test_array_reproducible_with_set_random_state():
    img = he_image()
    for t1, t2, t3 in zip(jitters(0.3), jitters(0.3), jitters(0.3)):
        a = t1.set_random_state(3)(img)
        b = t2.set_random_state(3)(img)
        c = t3.set_random_state(4)(img)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_randomize_reused_with_randomize_false():
    img = he_image()
    t = RandHEDJitter(sigma=0.3, bias=0.05)
    t.set_random_state(0)
    t.randomize()
    a = t(img, randomize=False)
    b = t(img, randomize=False)
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="randomize"):
        RandColorJitter(brightness=0.1)(img, randomize=False)


# ---------------------------------------------------------------------------------------- pipelines


def blocky_item(size: int = 32, block: int = 4, seed: int = 0) -> dict:
    """Piecewise-constant image (blocks of ``block`` pixels) with mask = red channel > 0.5 and
    cam = green channel, so that any spatial draw applied alike keeps these relations exactly."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(3, size // block, size // block, generator=g)
    image = small.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return {"image": image, "mask": (image[:1] > 0.5).float(), "cam": image[1:2].clone(), "label": 1, "id": "x"}


def test_train_pipeline_one_spatial_draw_for_image_mask_cam():
    item = blocky_item()
    t = train_transforms(
        image_size=32, crop_size=24, stain_augment=False, color_augment=False, with_cam=True,
        load=False, noise_prob=0.0, smooth_prob=0.0,
    )
    seen = set()
    for seed in range(12):
        out = t.set_random_state(seed)(dict(item))
        img, mask, cam = out["image"], out["mask"], out["cam"]
        assert img.shape == (3, 24, 24) and mask.shape == (1, 24, 24) and cam.shape == (1, 24, 24)
        assert all(v.dtype == torch.float32 for v in (img, mask, cam))
        assert torch.equal(mask, (img[:1] > 0.5).float())
        assert torch.allclose(cam, img[1:2], atol=1e-6)
        seen.add(tuple(img[0, 0, :4].tolist()) + tuple(img[0, :4, 0].tolist()))
        assert out["label"] == 1 and out["id"] == "x"
    assert len(seen) > 4  # the draws differ between seeds


def test_train_pipeline_full_augmentation_shapes_ranges_reproducible():
    item = blocky_item(size=40, block=5)
    item["cam"] = torch.rand(1, 5, 5)  # feature resolution: resized with the image
    for stain in (True, "macenko"):
        t = train_transforms(image_size=32, crop_size=28, stain_augment=stain, with_cam=True, load=False,
                             noise_prob=1.0, smooth_prob=1.0)
        a = t.set_random_state(1)(dict(item))
        b = t.set_random_state(1)(dict(item))
        c = t.set_random_state(2)(dict(item))
        assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
        assert a["image"].shape == (3, 28, 28) and a["cam"].shape == (1, 28, 28) and a["mask"].shape == (1, 28, 28)
        assert 0 <= a["image"].min() and a["image"].max() <= 1
        assert 0 <= a["cam"].min() and a["cam"].max() <= 1
        assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("image_size,crop_size,expected", [(24, 24, 24), (32, None, 32), (32, 20, 20)])
def test_train_pipeline_output_size(image_size, crop_size, expected):
    t = train_transforms(image_size=image_size, crop_size=crop_size, load=False, with_mask=False)
    out = t.set_random_state(0)({"image": torch.rand(3, 50, 37)})
    assert out["image"].shape == (3, expected, expected) and "mask" not in out


def test_pipeline_argument_checks():
    with pytest.raises(ValueError, match="crop_size"):
        train_transforms(image_size=200, crop_size=224)
    with pytest.raises(ValueError, match="stain_augment must be a bool or one of \\['hed', 'macenko'\\]"):
        train_transforms(stain_augment="vahadane")
    with pytest.raises(ValueError, match="image_size"):
        eval_transforms(image_size=0)


@pytest.mark.parametrize(
    "name, expected", [(True, RandHEDJitterd), ("hed", RandHEDJitterd), ("macenko", RandStainAugmentd), (False, None)]
)
def test_stain_augment_by_name(name, expected):
    stain = [t for t in train_transforms(stain_augment=name).transforms if isinstance(t, (RandHEDJitterd, RandStainAugmentd))]
    assert [type(t) for t in stain] == ([expected] if expected else [])
    assert all(t.prob == 0.5 for t in stain)


def test_eval_pipeline_is_deterministic_resize_and_crop():
    item = blocky_item(size=40, block=5)
    item["cam"] = torch.rand(1, 5, 5)
    e = eval_transforms(image_size=24, with_cam=True, load=False)
    a, b = e(dict(item)), e(dict(item))
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 24, 24)
    assert a["mask"].shape == (1, 24, 24) and a["cam"].shape == (1, 24, 24)
    assert set(a["mask"].unique().tolist()) <= {0.0, 1.0}
    c = eval_transforms(image_size=32, crop_size=24, load=False)(dict(item))
    assert c["image"].shape == (3, 24, 24)


def test_pipelines_load_files(tmp_path):
    rgb = (he_image(size=40).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    items = [
        {"image": str(tmp_path / "img.png"), "mask": str(tmp_path / "mask.png"), "label": 1, "id": "a"},
        {"image": str(tmp_path / "img.png"), "mask": None, "label": 0, "id": "b"},
    ]
    train = train_transforms(image_size=32, crop_size=24, stain_augment="macenko").set_random_state(0)
    ev = eval_transforms(image_size=24)
    for item in items:
        for out in (train(dict(item)), ev(dict(item))):
            assert out["image"].shape == (3, 24, 24) and out["mask"].shape == (1, 24, 24)
            assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert ev(dict(items[0]))["mask"].sum() > 0 and ev(dict(items[1]))["mask"].sum() == 0


def test_antialiased_resize_shapes_range_and_dictionary_twin():
    from monai_pixelcam.transforms import AntialiasedResize, AntialiasedResized

    img = torch.rand(3, 64, 48)
    out = AntialiasedResize(32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # a constant stays constant, and the identity size returns the input values
    torch.testing.assert_close(AntialiasedResize((20, 30))(torch.full((1, 64, 48), 0.25)), torch.full((1, 20, 30), 0.25))
    torch.testing.assert_close(AntialiasedResize((64, 48))(img), img)
    # shrinking averages: a 1-pixel checkerboard becomes (nearly) flat grey instead of aliasing
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float()[None]
    assert float(AntialiasedResize(16)(board).std()) < 0.05
    d = AntialiasedResized(["image", "cam"], 16)({"image": img, "cam": img[:1], "label": 1})
    assert d["image"].shape == (3, 16, 16) and d["cam"].shape == (1, 16, 16) and d["label"] == 1
    with pytest.raises(ValueError):
        AntialiasedResize(16)(torch.rand(64, 48))


def test_chains_without_masks_collate_items_whose_mask_is_none(tmp_path):
    """Images without annotation (mask None) must batch in chains that do not load masks."""
    from monai.data import DataLoader, Dataset
    from PIL import Image

    items = []
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png"), "mask": None, "label": i % 2, "id": str(i)})
    for chain in (train_transforms(36, 32, with_mask=False), eval_transforms(32, with_mask=False)):
        batch = next(iter(DataLoader(Dataset(items, chain), batch_size=3)))
        assert batch["image"].shape == (3, 3, 32, 32) and "mask" not in batch
