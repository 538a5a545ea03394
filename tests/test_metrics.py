"""Metrics against hand-computed values and scikit-image references."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from segaudit.metrics import class_scores, denormalize, match_order, score, segmentation_scores
from segaudit.types import Batch, Reconstruction


def test_dice_iou_known_answer():
    target = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 0], [0, 0, 2, 1]])
    dice, iou = class_scores(pred, target, 4)
    assert dice[1] == pytest.approx(2 * 2 / (3 + 3)) and iou[1] == pytest.approx(2 / 4)
    assert dice[2] == pytest.approx(2 * 1 / (1 + 2)) and iou[2] == pytest.approx(1 / 2)
    assert math.isnan(dice[3])  # absent from both
    s = segmentation_scores(pred, target, 4)
    assert s["dice"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_psnr_known_answer_and_matching():
    g = torch.Generator().manual_seed(0)
    true = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1  # normalised with mean 0.5, std 0.5
    noisy = true + 0.02  # +0.01 in [0, 1] space
    rec = Reconstruction(images=noisy[[2, 0, 1]], masks=torch.zeros(3, 16, 16, dtype=torch.long))
    batch = Batch(true, torch.zeros(3, 16, 16, dtype=torch.long), ("bg", "fg"), mean=(0.5,), std=(0.5,))
    out = score(rec, batch)
    clipped = (denormalize(noisy, (0.5,), (0.5,)) - denormalize(true, (0.5,), (0.5,))).pow(2).mean().item()
    assert out["mse"] == pytest.approx(clipped, rel=1e-5)
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / clipped), rel=1e-4)
    assert out["ssim"] > 0.95 and out["mask_dice"] == 1.0 and out["label_acc"] is None


def test_failed_reconstruction_scores_nothing():
    batch = Batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), ("bg", "fg"))
    out = score(Reconstruction(images=None, status="no valid reconstruction"), batch)
    assert all(v is None for v in out.values())


def test_label_accuracy_is_order_free():
    batch = Batch(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 2]), ("a", "b", "c"))
    rec = Reconstruction(images=torch.zeros(3, 1, 8, 8), labels=torch.tensor([2, 1, 0]))
    assert score(rec, batch)["label_acc"] == pytest.approx(2 / 3)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 1000))
def test_match_order_recovers_any_permutation(n, seed):
    g = torch.Generator().manual_seed(seed)
    true = torch.rand(n, 1, 6, 6, generator=g)
    perm = torch.randperm(n, generator=g)
    found = match_order(true[perm], true)
    assert torch.equal(true[perm][found], true)
