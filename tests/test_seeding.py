import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from monai_pixelcam.seeding import (
    PixelSeeder,
    ProbabilitySeeder,
    ThresholdSeeder,
    binary_erosion,
    otsu_threshold,
    random_ranks,
    sample_without_replacement,
)

SEEDERS = [ThresholdSeeder, ProbabilitySeeder]


def blob_cams(b, h, w, seed=0, floor=0.0):
    """B x 1 x h x w min-max normalised Gaussian blobs; values below ``floor`` (before rescaling) set to 0."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centers = torch.rand(b, 2, 1, 1, generator=g) * 0.6 + 0.2
    sigma = torch.rand(b, 1, 1, generator=g) * 0.1 + 0.1
    cam = torch.exp(-((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) / (2 * sigma**2))
    cam = (cam - floor).clamp_min(0)
    cam = cam - cam.amin((1, 2), keepdim=True)
    cam = cam / cam.amax((1, 2), keepdim=True)
    return cam.unsqueeze(1)


def counts(seeds):
    return (seeds == 1).sum((1, 2)), (seeds == 0).sum((1, 2))


@pytest.mark.parametrize("cls", SEEDERS)
@pytest.mark.parametrize("size", [(28, 28), (224, 224), (20, 33)])
def test_counts_exact_at_any_resolution(cls, size):
    cam = blob_cams(5, *size)
    seeder = cls(n_fg=7, n_bg=11, disjoint_pools=True)
    seeds = seeder(cam, generator=torch.Generator().manual_seed(1))
    assert seeds.shape == (5, *size) and seeds.dtype == torch.long
    assert set(seeds.unique().tolist()) <= {-100, 0, 1}
    n_fg, n_bg = counts(seeds)
    assert n_fg.tolist() == [7] * 5
    assert n_bg.tolist() == [11] * 5
    # B x h x w input is accepted as well
    assert seeder(cam[:, 0], generator=torch.Generator().manual_seed(1)).equal(seeds)


def test_pool_smaller_than_n_takes_all_of_it():
    cam = torch.zeros(2, 1, 10, 10)
    cam[0, 0, 0, :3] = 1.0  # a 3-pixel foreground
    cam[1, 0, 0, :5] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6])  # 5 positive values
    seeds = ProbabilitySeeder(n_fg=50, n_bg=1000, bg_fraction=0.2)(cam)
    n_fg, n_bg = counts(seeds)
    assert n_fg.tolist() == [3, 5]  # every pixel with CAM > 0
    assert n_bg.tolist() == [20, 20]  # the whole background pool, ceil(0.2 * 100)
    seeds = ThresholdSeeder(n_fg=50, n_bg=1)(cam)
    assert counts(seeds)[0].tolist() == [3, 5]


def test_threshold_foreground_seeds_lie_above_otsu():
    cam = blob_cams(6, 32, 32)
    thr = otsu_threshold(cam)
    seeder = ThresholdSeeder(n_fg=20, n_bg=20)
    for seed in range(5):
        seeds = seeder(cam, generator=torch.Generator().manual_seed(seed))
        fg_values = torch.where(seeds == 1, cam[:, 0], torch.inf).amin((1, 2))
        assert (fg_values >= thr).all()
        assert counts(seeds)[0].tolist() == [20] * 6


def test_background_seeds_are_the_lowest_fraction_without_ties():
    cam = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    p, n = 0.3, 256
    size = math.ceil(p * n)  # 77
    for cls in SEEDERS:
        seeds = cls(n_fg=0, n_bg=30, bg_fraction=p)(cam, generator=torch.Generator().manual_seed(0))
        kth = cam.reshape(4, -1).sort(1).values[:, size - 1]
        bg_max = torch.where(seeds == 0, cam[:, 0], -torch.inf).amax((1, 2))
        assert (bg_max <= kth).all()
        assert counts(seeds)[1].tolist() == [30] * 4
        # taking more than the pool holds returns exactly the pool: the 77 lowest values
        seeds = cls(n_fg=0, n_bg=n, bg_fraction=p)(cam)
        expected = cam.reshape(4, -1) <= kth[:, None]
        assert torch.equal(seeds.reshape(4, -1) == 0, expected)


def test_background_pool_has_exact_size_when_values_tie():
    # 60% of the pixels are exactly 0 (as after a ReLU); a 40% quantile threshold would take all of them
    h = w = 20
    n = h * w
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(3, 1, h, w, generator=g) * 0.9 + 0.1
    zero = torch.rand(3, 1, h, w, generator=g).argsort(-1) < 12  # 12 of 20 per row
    cam = cam.masked_fill(zero, 0.0)
    assert (cam == 0).float().mean().item() == pytest.approx(0.6)
    size = math.ceil(0.4 * n)
    union = torch.zeros(3, h, w, dtype=torch.bool)
    for seed in range(20):
        seeder = ThresholdSeeder(n_fg=5, n_bg=n, bg_fraction=0.4)  # n_bg > pool: all of the pool
        seeds = seeder(cam, generator=torch.Generator().manual_seed(seed))
        bg = seeds == 0
        assert bg.sum((1, 2)).tolist() == [size] * 3  # 160, not the 240 tied zeros
        assert (cam[:, 0][bg] == 0).all()  # within the zeros
        union |= bg
    # ties are broken at random, not by pixel index: over many draws the pool moves over all the zeros
    assert (union.sum((1, 2)) > size).all()
    assert (cam[:, 0][union] == 0).all()


@pytest.mark.parametrize("p,n,expected", [(0.3, 100, 30), (0.07, 100, 7), (0.55, 200, 110), (0.4, 784, 314), (0.25, 784, 196), (1.0, 49, 49), (0.001, 50, 1)])
def test_background_pool_size(p, n, expected):
    assert ProbabilitySeeder(bg_fraction=p).background_size(n) == expected
    fg, bg = ProbabilitySeeder(bg_fraction=p).pools(torch.zeros(2, 1, 1, n))
    assert bg.sum((1, 2)).tolist() == [expected] * 2


def test_reproducible_with_seeded_generator():
    cam = blob_cams(4, 28, 28)
    labels = torch.tensor([0, 1, 1, 0])
    for cls in SEEDERS:
        seeder = cls(n_fg=10, n_bg=10, negative_classes=[0])
        a = seeder(cam, labels, generator=torch.Generator().manual_seed(123))
        b = seeder(cam, labels, generator=torch.Generator().manual_seed(123))
        c = seeder(cam, labels, generator=torch.Generator().manual_seed(124))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_negative_class_images_get_background_only_from_whole_image():
    cam = blob_cams(4, 28, 28)
    labels = torch.tensor([[0], [1], [0], [1]])  # B x 1 is accepted
    n = 28 * 28
    for cls in SEEDERS:
        seeder = cls(n_fg=10, n_bg=300, bg_fraction=0.4, negative_classes=[0])
        seeds = seeder(cam, labels, generator=torch.Generator().manual_seed(0))
        n_fg, n_bg = counts(seeds)
        assert n_fg.tolist() == [0, 10, 0, 10]
        # positives: the pool of 314 lowest values; negatives: 300 pixels from anywhere
        assert n_bg.tolist() == [300, 300, 300, 300]
        ranks = cam.reshape(4, -1).argsort(1).argsort(1).reshape(4, 28, 28)
        bg_ranks_neg = ranks[[0, 2]][seeds[[0, 2]] == 0].float()
        assert bg_ranks_neg.max() > 0.9 * n  # seeds on high-CAM pixels too
        assert abs(bg_ranks_neg.mean().item() - (n - 1) / 2) < 0.1 * n  # spread uniformly over the ranks
        assert ranks[[1, 3]][seeds[[1, 3]] == 0].max() < math.ceil(0.4 * n)
        # disabled, or without labels: negatives are seeded from their CAM like the others
        for off in (cls(n_fg=10, n_bg=10, negative_classes=[0], negative_background=False)(cam, labels),
                    cls(n_fg=10, n_bg=10, negative_classes=[0])(cam)):
            assert counts(off)[0].tolist() == [10] * 4


def test_erosion_that_empties_foreground_falls_back_to_top_k():
    # a 3 x 3 hot spot at 28 x 28: Otsu keeps it, an 11 x 11 erosion (radius 5) removes it entirely
    cam = torch.zeros(2, 1, 28, 28)
    cam[0, 0, 10:13, 10:13] = 1.0
    cam[0, 0, 11, 11] = 1.0
    cam[1, 0, 5:20, 6:22] = 1.0  # a 15 x 16 region keeps a 5 x 6 core after erosion
    region = cam[:, 0] >= otsu_threshold(cam).view(-1, 1, 1)
    assert not binary_erosion(region[:1], 5).any()  # the reference seeder would give no foreground here
    seeder = ThresholdSeeder(n_fg=4, n_bg=10, erosion=5, fallback_size=9)
    for seed in range(5):
        seeds = seeder(cam, generator=torch.Generator().manual_seed(seed))
        n_fg, n_bg = counts(seeds)
        assert n_fg.tolist() == [4, 4] and n_bg.tolist() == [10, 10]
        assert (cam[0, 0][seeds[0] == 1] == 1.0).all()  # among the 9 highest pixels
        # the second image keeps its eroded Otsu region
        core = binary_erosion(region[1:], 5)[0]
        assert core.sum() == 30 and core[seeds[1] == 1].all()


def test_all_zero_cam_still_gets_disjoint_seeds():
    cam = torch.zeros(3, 1, 8, 8)
    for cls in SEEDERS:
        seeds = cls(n_fg=3, n_bg=5)(cam, generator=torch.Generator().manual_seed(0))
        n_fg, n_bg = counts(seeds)
        assert n_fg.tolist() == [3] * 3 and n_bg.tolist() == [5] * 3


def test_pixel_drawn_both_ways_is_ignored():
    # one pixel: it is the whole foreground pool and the whole background pool
    cam = torch.ones(2, 1, 1, 1)
    seeds = ThresholdSeeder(n_fg=1, n_bg=1, bg_fraction=1.0)(cam)
    assert (seeds == -100).all()
    # with disjoint pools the foreground avoids the background pool
    cam = blob_cams(2, 10, 10)
    seeds = ProbabilitySeeder(n_fg=100, n_bg=100, bg_fraction=0.5, disjoint_pools=True, ignore_index=-1)(cam)
    assert (seeds != -1).all()
    seeds = ProbabilitySeeder(n_fg=100, n_bg=100, bg_fraction=0.5, ignore_index=-1)(cam)
    assert (seeds == -1).any()  # low but positive CAM pixels are candidates both ways


def test_probability_seeder_frequencies_match_cam():
    # 4000 copies of one 4 x 4 CAM in a batch: per-image draws are independent, so the batch gives the
    # frequency of each pixel, which must be proportional to its CAM value (n_fg=1).
    cam1 = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    cam = cam1.expand(4000, 1, 4, 4).contiguous()
    seeds = ProbabilitySeeder(n_fg=1, n_bg=0)(cam, generator=torch.Generator().manual_seed(0))
    freq = (seeds == 1).float().mean(0).flatten()
    expected = cam1.flatten() / cam1.sum()
    assert freq[0] == 0  # CAM 0 is never foreground
    assert torch.allclose(freq, expected, atol=0.02)


def test_threshold_seeder_is_uniform_over_its_pool_and_batch_matches_single():
    cams = blob_cams(3, 12, 12)
    seeder = ThresholdSeeder(n_fg=2, n_bg=2)
    # pools of a batch equal the pools of each image alone
    fg_batch, bg_batch = seeder.pools(cams)
    for i in range(3):
        fg_one, bg_one = seeder.pools(cams[i : i + 1])
        assert torch.equal(fg_batch[i], fg_one[0])
        assert torch.equal(bg_batch[i], bg_one[0])  # no ties in a Gaussian blob: the pool is deterministic
    # uniform within the pool: every pool pixel drawn about equally often
    big = cams[:1].expand(3000, 1, 12, 12).contiguous()
    seeds = seeder(big, generator=torch.Generator().manual_seed(0))
    pool = fg_batch[0] > 0
    freq = (seeds == 1).float().mean(0)
    assert (freq[~pool] == 0).all()
    assert torch.allclose(freq[pool], torch.full_like(freq[pool], 2 / pool.sum().item()), atol=0.03)


def test_otsu_matches_skimage():
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(2, 300, generator=g) * 0.3, 0.6 + torch.rand(2, 200, generator=g) * 0.4], 1)
    cams = torch.cat([a, blob_cams(2, 25, 20).reshape(2, -1)])
    cams = (cams - cams.amin(1, keepdim=True)) / (cams.amax(1, keepdim=True) - cams.amin(1, keepdim=True))
    ours = otsu_threshold(cams)
    for i in range(4):
        ref = threshold_otsu(cams[i].numpy(), nbins=256)
        assert abs(ours[i].item() - ref) <= 1 / 256 + 1e-6
    assert ((ours[:2] > 0.3) & (ours[:2] <= 0.6)).all()  # separates the two modes


def test_binary_erosion_matches_scipy():
    mask = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0)) > 0.2
    for radius in (0, 1, 2):
        ours = binary_erosion(mask, radius)
        for i in range(3):
            ref = ndimage.binary_erosion(
                mask[i].numpy(), structure=np.ones((2 * radius + 1,) * 2), border_value=1
            ) if radius else mask[i].numpy()
            assert np.array_equal(ours[i].numpy(), ref)


def test_random_ranks_and_sampling_helpers():
    values = torch.tensor([[0.0, 0.0, 0.5, 0.0, 1.0]] * 200)
    ranks = random_ranks(values, torch.Generator().manual_seed(0))
    assert torch.equal(ranks.sort(1).values, torch.arange(5).expand(200, 5))
    assert (ranks[:, 4] == 4).all() and (ranks[:, 2] == 3).all()
    assert set(ranks[:, 0].tolist()) == {0, 1, 2}  # tied zeros take every low rank
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    drawn = sample_without_replacement(w, 3)
    assert drawn.sum(1).tolist() == [2, 0, 3]
    assert not drawn[0, [0, 2]].any()
    assert sample_without_replacement(w, 0).sum() == 0


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="bg_fraction"):
        ThresholdSeeder(bg_fraction=0.0)
    with pytest.raises(ValueError, match="n_fg"):
        ProbabilitySeeder(n_fg=-1)
    with pytest.raises(ValueError, match="ignore_index"):
        ProbabilitySeeder(ignore_index=1)
    with pytest.raises(ValueError, match="erosion"):
        ThresholdSeeder(erosion=-2)
    with pytest.raises(ValueError, match="shape"):
        ThresholdSeeder()(torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        ThresholdSeeder()(torch.ones(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per image"):
        ThresholdSeeder(negative_classes=[0])(torch.rand(2, 8, 8), labels=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="generator is on"):
        ThresholdSeeder()(torch.empty(2, 8, 8, device="meta"), generator=torch.Generator())
    with pytest.raises(TypeError, match="abstract"):
        PixelSeeder()  # a seeder must say how it weighs foreground candidates


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeds_on_cuda_match_counts_and_device():
    cam = blob_cams(8, 28, 28).cuda()
    for cls in SEEDERS:
        g = torch.Generator(device="cuda").manual_seed(0)
        seeds = cls(n_fg=5, n_bg=5, disjoint_pools=True, negative_classes=[1])(
            cam, torch.tensor([0, 1] * 4, device="cuda"), generator=g
        )
        assert seeds.device == cam.device
        n_fg, n_bg = counts(seeds)
        assert n_fg.tolist() == [5, 0] * 4 and n_bg.tolist() == [5] * 8
