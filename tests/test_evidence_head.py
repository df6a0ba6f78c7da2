"""PositiveEvidenceHead: non-negative per-position class evidence, top-k pooled; and its one-vs-rest loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_pixelcam.cams import CAM
from monai_pixelcam.losses import OneVsRestLoss
from monai_pixelcam.networks import WSOLClassifier, build_encoder
from monai_pixelcam.networks.evidence import PositiveEvidenceHead


def test_logit_is_top_k_mean_of_non_negative_evidence():
    torch.manual_seed(0)
    head = PositiveEvidenceHead(6, 3, top_fraction=0.1)
    with torch.no_grad():
        head.weight.uniform_(-1.0, 1.0)  # negative raw weights still give non-negative class weights
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    features = torch.rand(2, 6, 7, 9)
    k = math.ceil(0.1 * 63)  # 7 of 63 positions
    evidence = torch.einsum("kc,bchw->bkhw", head.weight.abs(), features)
    expected = evidence.flatten(2).sort(dim=-1, descending=True).values[..., :k].mean(-1) + head.bias
    torch.testing.assert_close(head(features), expected)
    assert bool((head.class_weights() >= 0).all()) and bool((head.evidence(features) >= 0).all())
    # whole-map pooling is GAP + linear with |weights|
    head.top_fraction = 1.0
    torch.testing.assert_close(head(features), F.linear(features.mean((2, 3)), head.weight.abs(), head.bias))
    with pytest.raises(ValueError, match="top_fraction must be in"):
        PositiveEvidenceHead(6, 3, top_fraction=0.0)
    with pytest.raises(ValueError, match="expects B x 6 x h x w"):
        head(torch.rand(2, 5, 4, 4))


def test_cam_of_the_head_is_its_evidence_map():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", base_width=8)
    head = PositiveEvidenceHead(encoder.out_channels, 2)
    model = WSOLClassifier(encoder, head).eval()
    x = torch.rand(2, 3, 64, 64)
    maps = CAM(model)(x, class_idx=torch.tensor([1, 0]))
    with torch.no_grad():
        ev = head.evidence(encoder(x))
    own = torch.stack([ev[0, 1], ev[1, 0]])[:, None]
    lo, hi = own.amin((2, 3), keepdim=True), own.amax((2, 3), keepdim=True)
    torch.testing.assert_close(maps, (own - lo) / (hi - lo), atol=1e-5, rtol=0)
    assert torch.jit.script(head)(encoder(x)).shape == (2, 2)


def test_one_vs_rest_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([0, 1])
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    torch.testing.assert_close(OneVsRestLoss()(logits, labels[:, None]), expected)
    # unlike softmax CE, adding the same amount to every logit changes the loss
    assert not torch.isclose(OneVsRestLoss()(logits + 5.0, labels), expected)
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        OneVsRestLoss()(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="must hold 2 labels"):
        OneVsRestLoss()(logits, torch.tensor([0, 1, 1]))
