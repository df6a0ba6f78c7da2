import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.losses import OneVsRestLoss, PartialCrossEntropyLoss, PixelCAMLoss, resize_cam
from monai_pixelcam.seeding import ProbabilitySeeder, ThresholdSeeder


def test_partial_ce_equals_cross_entropy_with_ignore_index():
    logits = torch.tensor(
        [[[[2.0, -1.0], [0.5, 0.0]], [[-1.0, 3.0], [0.5, 1.0]]],
         [[[0.0, 0.0], [1.0, -2.0]], [[1.0, 0.0], [-1.0, 2.0]]]]
    )  # 2 x 2 x 2 x 2
    seeds = torch.tensor([[[0, 1], [-100, -100]], [[-100, 1], [0, -100]]])
    ours = PartialCrossEntropyLoss()(logits, seeds)
    ref = F.cross_entropy(logits, seeds, ignore_index=-100)
    assert torch.allclose(ours, ref)
    # by hand: mean over the 4 seeded pixels of -log softmax of the seeded class
    lsm = logits.log_softmax(1)
    by_hand = -(lsm[0, 0, 0, 0] + lsm[0, 1, 0, 1] + lsm[1, 1, 0, 1] + lsm[1, 0, 1, 0]) / 4
    assert torch.allclose(ours, by_hand)
    # another ignore_index and a B x 1 x h x w seed map
    assert torch.allclose(PartialCrossEntropyLoss(ignore_index=7)(logits, seeds.masked_fill(seeds < 0, 7)[:, None]), ref)


def test_partial_ce_without_seeds_is_zero_with_grad():
    logits = torch.randn(3, 2, 5, 5, requires_grad=True)
    loss = PartialCrossEntropyLoss()(logits, torch.full((3, 5, 5), -100))
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_partial_ce_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        PartialCrossEntropyLoss()(torch.randn(2, 2, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="B x C x h x w"):
        PartialCrossEntropyLoss()(torch.randn(2, 2, 4), torch.zeros(2, 4, dtype=torch.long))


class TinyPixelCAMNet(nn.Module):
    """Encoder + image head + pixel head, like PixelCAMNet: 32 x 32 input -> 8 x 8 features."""

    def __init__(self, num_classes=2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.cls_head = nn.Linear(8, num_classes)
        self.pix_head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = self.encoder(x)
        return {"cls": self.cls_head(f.mean((2, 3))), "pix": self.pix_head(f)}


def batch(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    cam = torch.rand(b, 1, size // 4, size // 4, generator=g)
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)  # as the pipeline does
    cam = (cam - cam.amin((2, 3), keepdim=True)) / (cam.amax((2, 3), keepdim=True) - cam.amin((2, 3), keepdim=True))
    label = torch.arange(b) % 2
    return x, {"label": label, "cam": cam}


@pytest.mark.parametrize("resolution", ["feature", "input"])
def test_pixelcam_loss_terms_add_up_and_match_direct_computation(resolution):
    torch.manual_seed(0)
    net = TinyPixelCAMNet()
    x, target = batch()
    seeder = ThresholdSeeder(n_fg=3, n_bg=5, disjoint_pools=True)
    loss_fn = PixelCAMLoss(seeder, lambda_pix=0.5, seed_resolution=resolution,
                           generator=torch.Generator().manual_seed(7))
    assert loss_fn.last_terms == {}
    pred = net(x)
    loss = loss_fn(pred, target)
    terms = loss_fn.last_terms
    assert set(terms) == {"loss_cls", "loss_pix", "n_fg", "n_bg"}
    assert all(isinstance(v, float) for v in terms.values())
    assert loss.item() == pytest.approx(terms["loss_cls"] + 0.5 * terms["loss_pix"], rel=1e-6)
    assert terms["n_fg"] == 3.0 and terms["n_bg"] == 5.0

    # the same draw, computed by hand at the chosen resolution
    g = torch.Generator().manual_seed(7)
    if resolution == "feature":
        cam = resize_cam(target["cam"], (8, 8))
        pix = pred["pix"]
    else:
        cam = target["cam"]
        pix = F.interpolate(pred["pix"], size=(32, 32), mode="bilinear", align_corners=False)
    seeds = seeder(cam, labels=target["label"], generator=g)
    assert seeds.shape[1:] == ((8, 8) if resolution == "feature" else (32, 32))
    ref_pix = F.cross_entropy(pix, seeds, ignore_index=-100)
    ref_cls = F.cross_entropy(pred["cls"], target["label"])
    assert terms["loss_pix"] == pytest.approx(ref_pix.item(), rel=1e-5)
    assert terms["loss_cls"] == pytest.approx(ref_cls.item(), rel=1e-5)


def test_pixelcam_loss_uses_the_given_classification_loss():
    torch.manual_seed(0)
    net = TinyPixelCAMNet()
    x, target = batch()
    pred = net(x)
    pred["cls"] = pred["cls"] + torch.tensor([[2.0, 1.0], [0.5, -1.0], [1.0, 3.0], [-2.0, 0.0]])
    loss_fn = PixelCAMLoss(ThresholdSeeder(n_fg=2, n_bg=2), classification_loss=OneVsRestLoss())
    loss_fn(pred, target)
    expected = OneVsRestLoss()(pred["cls"], target["label"])
    assert loss_fn.last_terms["loss_cls"] == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(F.cross_entropy(pred["cls"], target["label"]).item(), rel=1e-3)


@pytest.mark.parametrize("resolution", ["feature", "input"])
def test_gradient_reaches_both_heads_and_encoder(resolution):
    torch.manual_seed(0)
    net = TinyPixelCAMNet()
    x, target = batch()
    loss_fn = PixelCAMLoss(ProbabilitySeeder(n_fg=4, n_bg=4), seed_resolution=resolution)
    loss_fn(net(x), target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the pixel head is trained by the pixel term only, the image head by the image term only
    net.zero_grad()
    loss_fn = PixelCAMLoss(ProbabilitySeeder(n_fg=4, n_bg=4), lambda_pix=0.0, seed_resolution=resolution)
    loss_fn(net(x), target).backward()
    assert net.pix_head.weight.grad is None or net.pix_head.weight.grad.abs().sum() == 0


def test_seeds_are_redrawn_every_call_and_labels_reach_the_seeder():
    calls = []

    class RecordingSeeder(ProbabilitySeeder):
        def __call__(self, cam, labels=None, generator=None):
            seeds = super().__call__(cam, labels, generator)
            calls.append((cam.shape, labels.clone(), seeds))
            return seeds

    net = TinyPixelCAMNet()
    x, target = batch()
    target["label"] = target["label"][:, None]  # B x 1 labels are accepted
    loss_fn = PixelCAMLoss(RecordingSeeder(n_fg=2, n_bg=2, negative_classes=[0]))
    loss_fn(net(x), target)
    loss_fn(net(x), target)
    assert len(calls) == 2 and not torch.equal(calls[0][2], calls[1][2])
    assert calls[0][0] == (4, 1, 8, 8)
    assert torch.equal(calls[0][1], torch.tensor([0, 1, 0, 1]))
    # negative images (label 0) contribute no foreground seeds
    assert (calls[0][2][[0, 2]] == 1).sum() == 0
    assert loss_fn.last_terms["n_fg"] == 1.0  # 2 foreground seeds on 2 of 4 images


def test_pixelcam_loss_without_any_seed_is_finite():
    net = TinyPixelCAMNet()
    x, target = batch()
    loss_fn = PixelCAMLoss(ThresholdSeeder(n_fg=0, n_bg=0))
    loss = loss_fn(net(x), target)
    assert torch.isfinite(loss) and loss_fn.last_terms["loss_pix"] == 0.0
    assert loss.item() == pytest.approx(loss_fn.last_terms["loss_cls"])
    loss.backward()


def test_resize_cam_area_average_and_range():
    cam = torch.rand(2, 1, 28, 28)
    small = resize_cam(cam, (7, 7))
    assert torch.allclose(small, F.avg_pool2d(cam, 4))
    low = torch.rand(2, 1, 7, 7)
    # bilinear up (a convex combination: stays in [0, 1]); one dimension down and one up counts as up
    torch.testing.assert_close(resize_cam(low, (28, 28)), F.interpolate(low, size=(28, 28), mode="bilinear"))
    torch.testing.assert_close(resize_cam(low, (5, 14)), F.interpolate(low, size=(5, 14), mode="bilinear"))
    assert resize_cam(cam, (28, 28)) is cam


def test_pixelcam_loss_input_errors():
    net = TinyPixelCAMNet()
    x, target = batch()
    pred = net(x)
    with pytest.raises(ValueError, match="seed_resolution"):
        PixelCAMLoss(ThresholdSeeder(), seed_resolution="low")
    loss_fn = PixelCAMLoss(ThresholdSeeder())
    with pytest.raises(KeyError, match="'cam'"):
        loss_fn(pred, {"label": target["label"]})
    with pytest.raises(KeyError, match="'pix'"):
        loss_fn({"cls": pred["cls"]}, target)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(pred, {"label": torch.tensor([0, 1]), "cam": target["cam"]})
    with pytest.raises(ValueError, match="target\\['cam'\\]"):
        loss_fn(pred, {"label": target["label"], "cam": target["cam"][:2]})
