"""Metrics against hand-computed values and scikit-image references."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from skimage.metrics import structural_similarity

from segaudit.errors import SegauditError
from segaudit.io import write_json
from segaudit.metrics import (
    MIN_DISTRACTORS,
    best_constant_class,
    class_scores,
    composition_mask,
    denormalize,
    identification,
    match_order,
    ncc,
    score,
    segmentation_scores,
    wilson_interval,
)
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


# -- baselines, gains, RDLV and re-identification (issue 17) ------------------------------------------------------

FG = ("bg", "fg")


def smooth_images(n, c=1, h=16, w=16, seed=0):
    """Normalised (mean 0.5, std 0.5) images with structure, values inside (-1, 1) so nothing is clamped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (x * 1.6 - 0.8).contiguous()


def make(images, masks=None, names=(), classes=FG):
    n, _, h, w = images.shape
    masks = torch.zeros(n, h, w, dtype=torch.long) if masks is None else masks
    c = images.shape[1]
    return Batch(images, masks, classes, tuple(names), mean=(0.5,) * c, std=(0.5,) * c)


def unit(x):
    """[N,C,H,W] normalised -> [0, 1] float64, as score() does it (undone in the images' dtype)."""
    return denormalize(x, (0.5,), (0.5,)).numpy().astype(np.float64)


def ssim_by_hand(a, b):
    return structural_similarity(b, a, data_range=1.0, channel_axis=0, win_size=7)


def test_flat_image_at_the_true_mean_gains_nothing():
    images = smooth_images(3, c=3)
    flat = images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    out = score(Reconstruction(flat, masks=torch.zeros(3, 16, 16, dtype=torch.long)), make(images))
    by_hand = [10 * math.log10(1 / np.mean((t - t.mean(axis=(1, 2), keepdims=True)) ** 2)) for t in unit(images)]
    assert out["baseline_psnr"] == pytest.approx(np.mean(by_hand), abs=1e-9)
    assert out["psnr"] == pytest.approx(out["baseline_psnr"], abs=1e-9)
    assert out["psnr_gain"] == pytest.approx(0.0, abs=1e-9) and out["psnr_gain"] == out["psnr"] - out["baseline_psnr"]
    assert out["ssim_gain"] == pytest.approx(0.0, abs=1e-9) and out["rdlv"] == pytest.approx(0.0, abs=1e-6)


def test_a_better_prior_image_is_the_baseline_per_metric():
    images = smooth_images(2)
    prior = images[0] + 0.01  # nearly the first image: beats its flat image, not the second's
    out = score(Reconstruction(images.clone()), make(images), prior_image=prior)
    t = unit(images)
    p = unit(prior[None])[0]
    flat = [np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape) for x in t]
    psnr = [max(10 * math.log10(1 / np.mean((f - x) ** 2)), 10 * math.log10(1 / np.mean((p - x) ** 2)))
            for f, x in zip(flat, t)]
    ssim = [max(ssim_by_hand(f, x), ssim_by_hand(p, x)) for f, x in zip(flat, t)]
    assert out["baseline_psnr"] == pytest.approx(np.mean(psnr), rel=1e-6)
    assert out["baseline_ssim"] == pytest.approx(np.mean(ssim), rel=1e-6)


def test_rdlv_matches_nvflares_formula_on_hand_computed_ssims():
    images = smooth_images(2, seed=1)
    g = torch.Generator().manual_seed(2)
    rec = images + 0.2 * torch.randn(images.shape, generator=g)
    prior = images.mean(0) + 0.05  # the per-pixel mean of 'public' images, slightly off
    t, r, p = unit(images), unit(rec), unit(prior[None])[0]
    expected = np.mean([(ssim_by_hand(r[i], t[i]) - ssim_by_hand(p, t[i])) / ssim_by_hand(p, t[i]) for i in range(2)])
    assert score(Reconstruction(rec), make(images), prior_image=prior)["rdlv"] == pytest.approx(expected, rel=1e-9)
    # Without a prior image the best constant image is the prior.
    flat = [np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape) for x in t]
    expected = np.mean([(ssim_by_hand(r[i], t[i]) - ssim_by_hand(flat[i], t[i])) / ssim_by_hand(flat[i], t[i])
                        for i in range(2)])
    assert score(Reconstruction(rec), make(images))["rdlv"] == pytest.approx(expected, rel=1e-9)


def test_the_best_constant_class_map_of_a_mostly_foreground_crop_is_all_foreground():
    mask = torch.ones(1, 10, 10, dtype=torch.long)
    mask[0, :3, :6] = 0  # 82 % foreground
    all_fg = torch.ones_like(mask)
    out = score(Reconstruction(smooth_images(1, h=10, w=10), masks=all_fg), make(smooth_images(1, h=10, w=10), mask))
    assert out["baseline_mask_dice"] == pytest.approx(segmentation_scores(all_fg[0], mask[0], 2)["dice"])
    assert out["baseline_mask_dice"] == pytest.approx(2 * 82 / (100 + 82))
    assert out["mask_dice"] == pytest.approx(out["baseline_mask_dice"]) and out["mask_dice_gain"] == pytest.approx(0.0)


def test_the_composition_mask_gives_each_class_its_share_where_public_masks_hold_it():
    public = torch.zeros(4, 4, 4, dtype=torch.long)
    public[:, 0, 0] = 1          # always foreground
    public[:3, 1, 1] = 1         # 3 of 4
    public[:2, 2, 2] = 1         # 2 of 4
    public[:1, 3, 3] = 1         # 1 of 4
    got = composition_mask(public, torch.tensor([0.75, 0.25]), 2)
    assert got.sum() == 4 and got[0, 0] == got[1, 1] == got[2, 2] == got[3, 3] == 1
    three = composition_mask(torch.stack([public, 2 * public.flip(-1)])[:, 0], [0.5, 0.25, 0.25], 3)
    assert [(three == k).sum().item() for k in range(3)] == [8, 4, 4]
    # As a baseline: the truth is the public mean mask, so the composition mask beats every constant map.
    truth = (public.float().mean(0) >= 0.5).long()[None]
    images = smooth_images(1, h=4, w=4)
    rec = Reconstruction(images, masks=torch.zeros_like(truth), extras={"composition": torch.tensor([13 / 16, 3 / 16])})
    out = score(rec, make(images, truth), public_masks=public)
    assert out["baseline_mask_dice"] == pytest.approx(1.0)
    assert score(rec, make(images, truth))["baseline_mask_dice"] == pytest.approx(2 * 3 / (16 + 3))  # all foreground


def test_a_perfect_reconstruction_is_identified_at_rank_1_and_writes_to_json(tmp_path):
    images, distract = smooth_images(2, seed=4), smooth_images(MIN_DISTRACTORS, seed=5)
    g = torch.Generator().manual_seed(6)
    masks, dmasks = torch.randint(0, 2, (2, 16, 16), generator=g), torch.randint(0, 2, (31, 16, 16), generator=g)
    batch = make(images, masks, names=("a@y0x0", "b@y0x0"))
    pool = make(distract, dmasks, names=[f"d{i}@y0x0" for i in range(31)])
    rec = Reconstruction(images.clone(), masks=masks.clone())
    out = score(rec, batch)
    assert out["psnr"] == out["psnr_gain"] == math.inf and math.isfinite(out["baseline_psnr"])
    for similarity in ("ncc", "ssim"):
        ident = identification(rec, batch, pool, similarity=similarity)
        assert ident["identified"] == [True, True] and ident["identification_rank"] == [1, 1]
        assert ident["identification_rate"] == 1.0 and ident["candidates"] == 32
        assert ident["mask_identification_rank"] == [1, 1] and ident["mask_identification_rate"] == 1.0
        assert ident["identification_ci"] == pytest.approx(list(wilson_interval(2, 2)))
    written = json.loads(write_json(tmp_path / "m.json", {"metrics": out, "identification": ident}).read_text())
    assert written["metrics"]["psnr"] is None and written["metrics"]["psnr_gain"] is None  # inf -> null, valid JSON
    assert written["identification"]["identified"] == [True, True]


def test_a_perfect_reconstruction_of_a_flat_image_gains_nothing():
    images = torch.cat([torch.full((1, 1, 8, 8), 0.2), smooth_images(1, h=8, w=8)])
    out = score(Reconstruction(images.clone()), make(images))
    assert out["psnr"] == out["baseline_psnr"] == math.inf
    assert out["psnr_gain"] == math.inf  # the second image is perfect against a finite baseline
    flat_only = score(Reconstruction(images[:1].clone()), make(images[:1]))
    assert flat_only["psnr_gain"] == 0.0 and flat_only["ssim_gain"] == pytest.approx(0.0)


@pytest.mark.parametrize("similarity", ["ncc", "ssim"])
def test_a_random_image_is_identified_at_chance(similarity):
    draws, pool_size = 200, MIN_DISTRACTORS + 1
    g = torch.Generator().manual_seed(7)
    hits = mask_hits = 0
    ranks = []
    for d in range(draws):
        images = torch.rand(1 + pool_size, 1, 12, 12, generator=g) * 2 - 1
        masks = torch.randint(0, 2, (1 + pool_size, 12, 12), generator=g)
        batch = make(images[:1], masks[:1], names=(f"t{d}",))
        pool = make(images[1:-1], masks[1:-1], names=[f"d{i}" for i in range(MIN_DISTRACTORS)])
        rec = Reconstruction(images[-1:], masks=masks[-1:])  # unrelated to the truth
        out = identification(rec, batch, pool, similarity=similarity)
        hits += out["identified"][0]
        mask_hits += out["mask_identified"][0]
        ranks.append(out["identification_rank"][0])
    lo, hi = binom.ppf(0.0005, draws, 1 / pool_size), binom.isf(0.0005, draws, 1 / pool_size)
    assert lo <= hits <= hi and lo <= mask_hits <= hi
    assert np.mean(ranks) == pytest.approx((pool_size + 1) / 2, abs=2.5)


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(SegauditError, match="successes"):
        wilson_interval(11, 10)


def test_other_crops_of_a_batch_image_are_not_distractors():
    images = smooth_images(1 + 32, seed=8)
    batch = make(images[:1], names=("scan1@y0x0",))
    names = ["scan1@y8x8"] + [f"scan{i}@y0x0" for i in range(2, 33)]  # one other crop of scan1, 31 others
    out = identification(Reconstruction(images[:1].clone()), batch, make(images[1:], names=names))
    assert out["candidates"] == 32 and out["identification_note"] is None
    out = identification(Reconstruction(images[:1].clone()), batch, make(images[1:32], names=names[:31]))
    assert out["identification_note"] == "fewer than 31 distractors"
    assert out["identified"] is out["identification_rate"] is out["mask_identification_rate"] is None
    assert identification(Reconstruction(images[:1]), batch, None)["identification_note"] == "no distractors"


def test_classification_has_no_mask_fields():
    images = smooth_images(2, seed=9)
    batch = Batch(images, torch.tensor([0, 1]), ("a", "b"), ("x", "y"), (0.5,), (0.5,))
    pool = Batch(smooth_images(31, seed=10), torch.zeros(31, dtype=torch.long), ("a", "b"),
                 tuple(f"p{i}" for i in range(31)), (0.5,), (0.5,))
    rec = Reconstruction(images.clone(), labels=torch.tensor([1, 0]))
    out = score(rec, batch, public_masks=torch.zeros(1, 16, 16, dtype=torch.long))
    assert out["baseline_mask_dice"] is out["mask_dice_gain"] is out["mask_dice"] is None
    assert out["baseline_psnr"] is not None and out["label_acc"] == 1.0
    ident = identification(rec, batch, pool)
    assert ident["identification_rate"] == 1.0 and ident["mask_identification_rate"] is None


def test_failed_reconstruction_has_no_baselines_and_no_identification():
    batch = make(smooth_images(1))
    out = score(Reconstruction(images=None, status="no valid reconstruction"), batch)
    assert all(v is None for v in out.values())
    pool = make(smooth_images(31, seed=11), names=[f"p{i}" for i in range(31)])
    ident = identification(Reconstruction(images=None, status="no valid reconstruction"), batch, pool)
    assert ident["identification_note"] == "no reconstruction" and ident["identified"] is None


@pytest.mark.parametrize("pool, match", [
    (make(smooth_images(31, c=3)), "distractors have 3 channels at 16x16 px but the batch has 1 channel at 16x16 px"),
    (make(smooth_images(31, h=32, w=32)), "distractors have 1 channel at 32x32 px but the batch has 1 channel at 16"),
    (make(smooth_images(31), classes=("a", "b", "c")), "distractors are segmentation data with 3 classes but the"),
])
def test_distractors_that_do_not_fit_the_batch_are_refused(pool, match):
    batch = make(smooth_images(1))
    with pytest.raises(SegauditError, match=match) as err:
        identification(Reconstruction(batch.images.clone()), batch, pool)
    assert "\n" not in str(err.value)


def test_bad_similarity_prior_and_public_masks_are_refused():
    batch = make(smooth_images(1))
    rec = Reconstruction(batch.images.clone())
    with pytest.raises(SegauditError, match="unknown similarity 'lpips'"):
        identification(rec, batch, None, similarity="lpips")
    with pytest.raises(SegauditError, match=r"prior image has shape \[3, 16, 16\].*1 channel at 16x16"):
        score(rec, batch, prior_image=torch.zeros(3, 16, 16))
    with pytest.raises(SegauditError, match=r"public masks have shape \[2, 8, 8\]"):
        score(rec, batch, public_masks=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(SegauditError, match="class indices 0..1"):
        score(rec, batch, public_masks=torch.full((2, 16, 16), 5))
    with pytest.raises(SegauditError, match="composition has 3 shares but the batch has 2 classes"):
        score(Reconstruction(batch.images.clone(), extras={"composition": torch.ones(3)}), batch,
              public_masks=torch.zeros(2, 16, 16, dtype=torch.long))


def test_ncc_ignores_brightness_and_contrast():
    x = unit(smooth_images(1, seed=12))[0]
    assert ncc(x, 0.3 * x + 0.2) == pytest.approx(1.0) and ncc(x, np.full_like(x, 0.5)) == 0.0


def test_the_best_constant_class_is_the_best_of_all_constant_maps():
    g = torch.Generator().manual_seed(13)
    for t in range(60):
        k = int(torch.randint(1, 6, (1,), generator=g))
        target = torch.randint(0, k, (5, 5), generator=g)
        if t % 3 == 0:
            target = torch.full_like(target, int(torch.randint(0, k, (1,), generator=g)))
        dice = [segmentation_scores(torch.full_like(target, c), target, k)["dice"] for c in range(k)]
        assert best_constant_class(target, k) == (int(np.argmax(dice)), max(dice))
