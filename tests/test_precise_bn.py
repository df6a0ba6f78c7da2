"""PreciseBatchNorm: BatchNorm statistics recomputed over a loader, once per trainer epoch, nothing else touched."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.engines import SupervisedEvaluator

from monai_pixelcam.handlers.precise_bn import PreciseBatchNorm, recompute_batchnorm


class Net(nn.Module):
    """conv -> BN (trained) and a frozen BN that stays in eval mode under train(), like a frozen backbone."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.BatchNorm2d(4)

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        return self.frozen(self.bn(self.conv(x)))


class CountingLoader:
    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def batches(n=3, b=4):
    g = torch.Generator().manual_seed(0)
    return [{"image": 2.0 + 3.0 * torch.randn(b, 3, 5, 5, generator=g)} for _ in range(n)]


def test_statistics_are_the_loader_average_and_nothing_else_changes():
    torch.manual_seed(0)
    net = Net().eval()
    net.bn.running_mean.fill_(100.0)  # stale statistics, as after a fast-moving training
    net.bn.running_var.fill_(1e-4)
    frozen_state = {k: v.clone() for k, v in net.frozen.state_dict().items()}
    params = [p.clone() for p in net.parameters()]
    data = batches()
    seen = recompute_batchnorm(net, data)
    with torch.no_grad():
        feats = [net.conv(d["image"]) for d in data]
    # equal batch sizes: the cumulative average of batch means is the mean over every pixel of every image
    expected_mean = torch.cat(feats).mean(dim=(0, 2, 3))
    expected_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert seen == 12
    torch.testing.assert_close(net.bn.running_mean, expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.bn.running_var, expected_var, rtol=1e-5, atol=1e-5)
    assert net.bn.momentum == 0.1 and not net.training and not net.bn.training
    for k, v in net.frozen.state_dict().items():
        torch.testing.assert_close(v, frozen_state[k])
    for p, q in zip(net.parameters(), params):
        assert torch.equal(p, q)


def test_num_batches_and_empty_loader():
    net = Net()
    recompute_batchnorm(net, batches(), num_batches=1)
    assert int(net.bn.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="yielded no batch"):
        recompute_batchnorm(net, [])
    assert net.training and net.bn.momentum == 0.1


def test_handler_runs_once_per_trainer_epoch_for_all_validators():
    net = Net()
    loader = CountingLoader(batches(n=2))
    handler = PreciseBatchNorm(net, loader)
    data = [{"image": torch.rand(2, 3, 5, 5), "label": torch.zeros(2)}]
    valcl, valpx = (SupervisedEvaluator(device="cpu", val_data_loader=data, network=net) for _ in range(2))
    handler.attach(valcl)
    handler.attach(valpx)
    handler.attach(valpx)  # attaching twice is harmless
    for epoch in (2, 4):  # what ValidationHandler does every val_interval epochs: each validator, global epoch
        valcl.run(epoch)
        valpx.run(epoch)
        assert loader.passes == epoch // 2
    PreciseBatchNorm(net, loader, enabled=False).attach(valcl)
    valcl.run(6)
    assert loader.passes == 3  # the disabled handler added nothing; the enabled one ran once more
    with pytest.raises(ValueError, match="num_batches must be >= 1"):
        PreciseBatchNorm(net, loader, num_batches=0)
