import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import decollate_batch
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score, precision_recall_curve

from monai_pixelcam.metrics import (
    LocalizationDice,
    LocalizationDiceMetric,
    PixelHistogram,
    PxAP,
    PxAPMetric,
    ThresholdSelection,
    ThresholdSelector,
    from_engine_roi,
    select_threshold,
)


def random_maps(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 1, size, size, generator=g) > 0.7).float()
    scores = (0.4 * y + 0.8 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    return scores, y


def blob_maps(n=6, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.08, 0.2) * size
            masks[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    scores = np.stack([gaussian_filter(m, sigma=3) for m in masks]) + rng.normal(0, 0.15, masks.shape)
    return torch.from_numpy(np.clip(scores, 0, 1).astype(np.float32)), torch.from_numpy(masks)


def sklearn_ap(scores, y):
    return average_precision_score(y.numpy().ravel(), scores.numpy().ravel())


def pxap(scores, y, **kwargs):
    metric = PxAPMetric()
    metric(scores, y, **kwargs)
    return metric.aggregate()


@pytest.mark.parametrize("maps", [random_maps, blob_maps])
def test_pxap_agrees_with_sklearn(maps):
    scores, y = maps()
    ours, ref = pxap(scores, y), sklearn_ap(scores, y)
    assert 0.3 < ref < 0.999  # neither trivial nor perfect
    assert abs(ours - ref) <= 0.005


@pytest.mark.parametrize("maps", [random_maps, blob_maps])
def test_pxap_exact_on_scores_on_the_grid(maps):
    scores, y = maps(seed=3)
    scores = torch.from_numpy(np.round(scores.numpy(), 3))
    assert abs(pxap(scores, y) - sklearn_ap(scores, y)) < 1e-9
    # the PR curve points are sklearn's too (sklearn adds a final precision 1 / recall 0 point)
    metric = PxAPMetric()
    metric(scores, y)
    precision, recall, thresholds = metric.curve()
    p_ref, r_ref, t_ref = precision_recall_curve(y.numpy().ravel(), scores.numpy().ravel())
    np.testing.assert_allclose(thresholds, t_ref, atol=1e-6)
    np.testing.assert_allclose(precision, p_ref[:-1], atol=1e-12)
    np.testing.assert_allclose(recall, r_ref[:-1], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bins_compare_exactly_like_scores_ge_threshold(dtype):
    # the grid values k / 1000 in the scores' dtype reach threshold k (float32(k/1000) * 1000 floors to k - 1
    # for some k), and the next value below them does not
    grid = torch.from_numpy((np.arange(1001) / 1000).astype(dtype)).view(1, 1, 1, -1)
    ones = torch.ones(1001, dtype=torch.long)
    counts = PixelHistogram()(grid, torch.ones_like(grid))
    assert torch.equal(counts[1], ones) and counts[0].sum() == 0
    below = torch.nextafter(grid[..., 1:], torch.zeros((), dtype=grid.dtype))
    counts = PixelHistogram()(below, torch.zeros_like(below))
    assert torch.equal(counts[0][:1000], ones[:1000]) and counts[0][1000] == 0


def test_pxap_extreme_maps():
    _, y = blob_maps()
    assert pxap(y.clone(), y) == pytest.approx(1.0, abs=1e-12)
    assert pxap(y.bool(), y.bool()) == pytest.approx(1.0, abs=1e-12)
    # a constant map predicts everything at every threshold up to it: precision = positive fraction
    positive_fraction = y.double().mean().item()
    assert pxap(torch.full_like(y, 0.3), y) == pytest.approx(positive_fraction, rel=1e-12)
    assert pxap(1 - y, y) == pytest.approx(positive_fraction, rel=1e-12)  # inverted: worst ranking


def test_out_of_range_scores_are_clipped():
    scores, y = random_maps()
    stretched = scores * 1.6 - 0.3
    assert pxap(stretched, y) == pxap(stretched.clamp(0, 1), y)


def test_bad_inputs_raise_clear_errors():
    scores, y = random_maps(n=2)
    bad = scores.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PxAPMetric()(bad, y)
    with pytest.raises(ValueError, match="binary"):
        PxAPMetric()(scores, y * 0.5)
    with pytest.raises(ValueError, match="does not match"):
        PxAPMetric()(scores, y[:, :, :10])
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        PxAPMetric()(scores.repeat(1, 2, 1, 1), y.repeat(1, 2, 1, 1))
    with pytest.raises(ValueError, match="flags"):
        PxAPMetric()(scores, y, include=[True])
    with pytest.raises(ValueError, match="nothing accumulated"):
        PxAPMetric().aggregate()
    metric = PxAPMetric()
    metric(scores, torch.zeros_like(y))
    with pytest.raises(ValueError, match="no positive ground-truth pixel"):
        metric.aggregate()
    with pytest.raises(ValueError, match="not on the grid"):
        LocalizationDiceMetric(threshold=0.4567)
    with pytest.raises(ValueError, match="not on the grid"):
        LocalizationDiceMetric(threshold=1.5)


def test_include_flag_excludes_images():
    scores, y = blob_maps(n=4)
    # two "normal" images: no region of interest, but high scores that would add false positives
    scores_all = torch.cat([scores, torch.full_like(scores[:2], 0.9)])
    y_all = torch.cat([y, torch.zeros_like(y[:2])])
    include = torch.tensor([True] * 4 + [False] * 2)
    assert pxap(scores_all, y_all, include=include) == pxap(scores, y)
    assert pxap(scores_all, y_all) < pxap(scores, y) - 0.05
    # include as a list of 0/1 flags, and on decollated (list) inputs
    assert pxap(list(scores_all), list(y_all), include=[1, 1, 1, 1, 0, 0]) == pxap(scores, y)
    assert pxap(scores_all.numpy(), y_all.numpy(), include=include.numpy()) == pxap(scores, y)
    # all excluded: nothing counted, no error until aggregate
    metric = PxAPMetric()
    metric(scores_all[4:], y_all[4:], include=[False, False])
    metric(list(scores_all[4:]), list(y_all[4:]), include=[False, False])
    assert metric.histogram().sum() == 0


def test_accumulating_batches_equals_one_batch():
    scores, y = blob_maps(n=9)
    whole = PxAPMetric()
    whole(scores, y)
    parts = PxAPMetric()
    for start in range(0, 9, 2):
        parts(scores[start : start + 2], y[start : start + 2])
    np.testing.assert_array_equal(parts.histogram(), whole.histogram())
    assert parts.aggregate() == whole.aggregate()
    # many calls add to one running sum without changing the result
    many = PxAPMetric()
    for i in range(9):
        for _ in range(10):
            many(scores[i : i + 1], y[i : i + 1])
    assert len(many.get_buffer()) == 1  # one running sum, whatever the number of calls
    np.testing.assert_array_equal(many.histogram(), 10 * whole.histogram())
    assert many.aggregate() == pytest.approx(whole.aggregate(), abs=1e-12)
    parts.reset()
    with pytest.raises(ValueError, match="nothing accumulated"):
        parts.aggregate()


def direct_overlap(scores, y, threshold):
    pred = scores.numpy().ravel() >= np.float32(threshold)
    gt = y.numpy().ravel() > 0.5
    tp, fp = np.sum(pred & gt), np.sum(pred & ~gt)
    fn, tn = np.sum(~pred & gt), np.sum(~pred & ~gt)
    iou_fg, iou_bg = tp / (tp + fp + fn), tn / (tn + fp + fn)
    return {"dice": 2 * tp / (2 * tp + fp + fn), "miou": (iou_fg + iou_bg) / 2, "iou_fg": iou_fg, "iou_bg": iou_bg}


def test_dice_and_miou_match_a_direct_computation():
    scores, y = blob_maps(n=5, seed=1)
    metric = LocalizationDiceMetric()
    metric(scores[:2], y[:2])
    metric(scores[2:], y[2:])
    for threshold in (0.5, 0.3, 0.0, 1.0, 0.735):
        ref = direct_overlap(scores, y, threshold)
        ours = metric.aggregate(threshold)
        assert ours.keys() == ref.keys()
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], abs=1e-12), (threshold, key)
    metric.threshold = 0.3  # after accumulation
    assert metric.aggregate() == metric.aggregate(0.3)
    perfect = LocalizationDiceMetric()
    perfect(y, y)
    assert perfect.aggregate() == {"dice": 1.0, "miou": 1.0, "iou_fg": 1.0, "iou_bg": 1.0}


def test_threshold_selector_picks_the_known_best_threshold():
    # fg pixels: 100 at 0.8, 10 at 0.3; bg pixels: 100 at 0.1, 5 at 0.6.
    # t in (0.6, 0.8]: tp 100, fp 0, fn 10 -> mIoU (100/110 + 105/115) / 2 = 0.9111
    # t in (0.1, 0.3]: tp 110, fp 5, fn 0  -> mIoU (110/115 + 100/105) / 2 = 0.9544  <- best; lowest: 0.101
    scores = torch.tensor([0.8] * 100 + [0.3] * 10 + [0.1] * 100 + [0.6] * 5).view(1, 1, 1, -1)
    y = torch.tensor([1.0] * 110 + [0.0] * 105).view(1, 1, 1, -1)
    selector = ThresholdSelector()
    selector(scores, y)
    best = selector.aggregate()
    assert best["threshold"] == pytest.approx(0.101)
    assert best["miou"] == pytest.approx((110 / 115 + 100 / 105) / 2, abs=1e-12)
    assert best["dice"] == pytest.approx(220 / 225, abs=1e-12)
    assert select_threshold(scores, y) == best
    # the selected threshold is on the grid of LocalizationDiceMetric and gives the same mIoU there
    dice = LocalizationDiceMetric(threshold=best["threshold"])
    dice(scores, y)
    assert dice.aggregate()["miou"] == pytest.approx(best["miou"], abs=1e-12)


def test_threshold_selector_matches_brute_force():
    scores, y = blob_maps(n=4, seed=2)
    best = select_threshold(scores, y)
    grid = np.arange(1001) / 1000
    miou = [direct_overlap(scores, y, t)["miou"] for t in grid]
    k = int(np.argmax(miou))
    assert best["threshold"] == pytest.approx(grid[k])
    assert best["miou"] == pytest.approx(miou[k], abs=1e-12)


def _engine_data(seed=0):
    """Batches of engine outputs: pred maps, masks and roi flags; the second batch is all negatives."""
    scores, y = blob_maps(n=6, seed=seed)
    flags = torch.tensor([1, 1, 0, 0, 0, 1])
    y = y * flags.view(-1, 1, 1, 1)  # negative images have empty masks
    batches = [
        {"pred_map": scores[:2], "mask": y[:2], "roi": flags[:2], "label": flags[:2]},
        {"pred_map": scores[2:5], "mask": y[2:5], "roi": flags[2:5], "label": flags[2:5]},
        {"pred_map": scores[5:], "mask": y[5:], "roi": flags[5:], "label": flags[5:]},
    ]
    return batches, scores[flags.bool()], y[flags.bool()]


@pytest.mark.parametrize("decollate", [False, True])
def test_handlers_in_an_ignite_engine(decollate):
    batches, kept_scores, kept_y = _engine_data()
    engine = Engine(lambda e, batch: decollate_batch(batch) if decollate else batch)
    PxAP(output_transform=from_engine_roi()).attach(engine, "pxap")
    PxAP(output_transform=from_engine_roi(include_key=None, label_key="label", negative_labels=[0])).attach(
        engine, "pxap_by_label"
    )
    LocalizationDice(output_transform=from_engine_roi()).attach(engine, "loc05")
    LocalizationDice(threshold=0.3, output_key="miou", output_transform=from_engine_roi()).attach(engine, "miou03")
    ThresholdSelection(output_transform=from_engine_roi()).attach(engine, "valpx")
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["pxap"] == pytest.approx(pxap(kept_scores, kept_y), abs=1e-12)
    assert metrics["pxap_by_label"] == metrics["pxap"]
    ref = direct_overlap(kept_scores, kept_y, 0.5)
    for key, value in ref.items():
        assert metrics[f"loc05_{key}"] == pytest.approx(value, abs=1e-12)
    assert metrics["miou03"] == pytest.approx(direct_overlap(kept_scores, kept_y, 0.3)["miou"], abs=1e-12)
    assert metrics["valpx_threshold"] == select_threshold(kept_scores, kept_y)["threshold"]


def test_handler_threshold_can_be_set_between_runs():
    batches, kept_scores, kept_y = _engine_data(seed=4)
    engine = Engine(lambda e, batch: batch)
    handler = LocalizationDice(output_key="dice", output_transform=from_engine_roi())
    handler.attach(engine, "dice")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["dice"] == pytest.approx(direct_overlap(kept_scores, kept_y, 0.5)["dice"], abs=1e-12)
    handler.threshold = 0.2
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["dice"] == pytest.approx(direct_overlap(kept_scores, kept_y, 0.2)["dice"], abs=1e-12)
    with pytest.raises(ValueError, match="output_key"):
        LocalizationDice(output_key="accuracy")


def test_from_engine_roi_nested_keys_and_errors():
    batches, _, _ = _engine_data()
    roi = torch.tensor([1, 0])
    nested = {"pred": {"map": batches[0]["pred_map"]}, "label": {"mask": batches[0]["mask"], "roi": roi}}
    transform = from_engine_roi(pred_key=("pred", "map"), mask_key=("label", "mask"), include_key=("label", "roi"))
    y_pred, y = transform(nested)
    assert torch.equal(y_pred, batches[0]["pred_map"][:1]) and torch.equal(y, batches[0]["mask"][:1])
    y_pred, y = transform(decollate_batch(nested))
    assert len(y_pred) == 1 and torch.equal(y_pred[0], batches[0]["pred_map"][0])
    with pytest.raises(KeyError, match="'roi'"):
        from_engine_roi()({"pred_map": y_pred, "mask": y})
    with pytest.raises(ValueError, match="label_key"):
        from_engine_roi(negative_labels=[0])
