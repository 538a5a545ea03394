"""Reconstruction and segmentation metrics. They run after an attack, outside it.

Images are compared in [0, 1] (the normalisation is undone first); masks as class-index maps.

A reconstruction score alone is not leakage: a flat image at the true mean already scores 19-23 dB on the bundled
nuclei crops. :func:`score` therefore also scores the guesses an attacker has without the update (the baselines)
and the gain over them, and :func:`identification` asks whether the reconstruction singles out its image among
distractors.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from .errors import SegauditError
from .types import Batch, Reconstruction


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[N,C,H,W]`` normalised images -> ``[N,C,H,W]`` in [0, 1] (clamped)."""
    c = images.shape[1]
    m = torch.as_tensor(tuple(mean) if len(mean) == c else tuple(mean) * c, dtype=images.dtype).view(1, c, 1, 1)
    s = torch.as_tensor(tuple(std) if len(std) == c else tuple(std) * c, dtype=images.dtype).view(1, c, 1, 1)
    return (images * s + m).clamp(0, 1)


def class_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU of two label maps; NaN for a class absent from both.

    Args:
        pred, target: ``[..., H, W]`` class indices.

    Returns:
        ``(dice[K], iou[K])``.
    """
    dice = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    for k in range(num_classes):
        p, t = pred == k, target == k
        inter, union = int((p & t).sum()), int((p | t).sum())
        if union:
            dice[k] = 2 * inter / (int(p.sum()) + int(t.sum()))
            iou[k] = inter / union
    return dice, iou


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean Dice and IoU over the foreground classes (class 0 is background), NaN-skipping."""
    dice, iou = class_scores(pred, target, num_classes)
    fg = slice(1, None) if num_classes > 1 else slice(None)
    with np.errstate(all="ignore"):
        return {"dice": _nanmean(dice[fg]), "iou": _nanmean(iou[fg])}


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else 1.0  # both empty everywhere: a perfect (trivial) agreement


def image_scores(rec: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of one ``[C,H,W]`` image pair in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio  # scikit-image and scipy load in about a second

    mse = float(np.mean((rec - true) ** 2))
    psnr = float(peak_signal_noise_ratio(true, rec, data_range=1.0)) if mse > 0 else math.inf
    return {"mse": mse, "psnr": psnr, "ssim": _ssim(rec, true)}


def _ssim(rec: np.ndarray, true: np.ndarray) -> float:
    """scikit-image SSIM of two ``[C,H,W]`` images in [0, 1] (window 7, or the largest odd side below it)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(true, rec, data_range=1.0, channel_axis=0,
                                       win_size=min(7, *[s - (s + 1) % 2 for s in true.shape[1:]])))


def match_order(rec: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    """One-to-one assignment of reconstructions to ground truth by minimal MSE (Hungarian).

    Args:
        rec, true: ``[N, ...]`` tensors.

    Returns:
        ``perm`` with ``rec[perm[i]]`` matched to ``true[i]``.
    """
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(true.flatten(1).double(), rec.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return cols[np.argsort(rows)]


#: The fewest distractors for which :func:`identification` gives a rank (a pool of 32: chance is 1/32).
MIN_DISTRACTORS = 31

#: Similarities :func:`identification` can rank candidates by.
SIMILARITIES = ("ncc", "ssim")

SCORE_KEYS = ("mse", "psnr", "ssim", "mask_dice", "mask_iou", "label_acc",
              "baseline_psnr", "baseline_ssim", "baseline_mask_dice", "psnr_gain", "ssim_gain", "mask_dice_gain",
              "rdlv")


def score(reconstruction: Reconstruction, batch: Batch, *, prior_image: torch.Tensor | None = None,
          public_masks: torch.Tensor | None = None) -> dict[str, float | None]:
    """Compare an attack's output with the client's true batch, and with what the attacker knew without it.

    Reconstructions are matched one-to-one to the true images (:func:`match_order`); every value is a mean over
    the batch's images.

    Args:
        reconstruction: the attack's output. Its ``extras["composition"]`` (per-class pixel shares ``[K]`` of
            the batch, recovered from the update), when present, feeds the composition mask baseline.
        batch: the client's true batch.
        prior_image: ``[C,H,W]`` in the model's normalised space: the attacker's prior image, the per-pixel mean
            of its public images. Optional.
        public_masks: ``[M,H,W]`` class maps the attacker holds (public data, never the client's). Optional.

    Returns:
        Flat scalars (``None`` where a field does not apply; all ``None`` when the attack produced nothing):

        - ``mse``, ``psnr``, ``ssim``: images in [0, 1]; ``psnr`` is ``inf`` for a perfect reconstruction.
        - ``mask_dice``, ``mask_iou``: :func:`segmentation_scores` (segmentation only).
        - ``label_acc``: recovered labels as a multiset (classification only).
        - ``baseline_psnr``, ``baseline_ssim``: per image, the better (higher PSNR, resp. SSIM, chosen per
          metric) of (a) the best constant image, a flat image at that image's true per-channel mean in [0, 1]
          (the constant with the lowest MSE, so an upper bound on the PSNR of every constant guess: a
          conservative yardstick), and (b) ``prior_image`` when given.
        - ``baseline_mask_dice`` (segmentation only): per image, the better of (a) the best constant class map,
          the constant class ``k`` whose map has the highest :func:`segmentation_scores` Dice on that mask, and
          (b) when ``public_masks`` and a recovered composition are both given, :func:`composition_mask`: the
          class map the composition gives without any location.
        - ``psnr_gain``, ``ssim_gain``, ``mask_dice_gain``: value minus baseline (``None`` where either is
          ``None``). With finite means this is exactly ``psnr - baseline_psnr``. A perfect reconstruction gives
          ``psnr_gain == inf`` (kept, like ``psnr``; :func:`segaudit.io.write_json` writes both as ``null``); when
          an infinite mean is involved the gain is the mean of per-image gains, counting a perfect image with
          a perfect baseline (a flat true image) as gain 0, and ``None`` if opposite infinities remain.
        - ``rdlv``: NVFlare's relative data leakage value ``(SSIM(rec, x) - SSIM(prior, x)) / SSIM(prior, x)``
          per image, averaged; the prior is ``prior_image`` or, when it is ``None``, the best constant image.
          Images with ``SSIM(prior, x) <= 0`` (undefined ratio) are skipped; ``None`` if none is left. NVFlare
          flags an update whose RDLV exceeds 1.

    Raises:
        SegauditError: ``prior_image``, ``public_masks`` or the composition do not fit the batch.
    """
    out: dict[str, float | None] = dict.fromkeys(SCORE_KEYS)
    prior_unit = _prior_unit(prior_image, batch)
    public = _check_public_masks(public_masks, batch)
    if reconstruction.status != "ok" or reconstruction.images is None:
        return out
    true = _unit(batch.images, batch)
    rec = _unit(reconstruction.images, batch)
    perm = match_order(torch.from_numpy(rec), torch.from_numpy(true))
    out.update(_image_fields([image_scores(rec[j], true[i]) for i, j in enumerate(perm)], true, prior_unit))
    if batch.task == "segmentation":
        out.update(_mask_fields(reconstruction, batch, perm, public))
    if batch.task == "classification" and reconstruction.labels is not None:
        # Labels are scored as a multiset: recovered labels need not follow the image order.
        common = Counter(reconstruction.labels.tolist()) & Counter(batch.masks.tolist())
        out["label_acc"] = sum(common.values()) / len(batch)
    return out


def _image_fields(rows: list[dict[str, float]], true: np.ndarray,
                  prior_unit: np.ndarray | None) -> dict[str, float | None]:
    """:func:`score`'s image fields from each matched image's scores ``rows`` and the true images in [0, 1]."""
    out: dict[str, float | None] = {key: float(np.mean([r[key] for r in rows])) for key in ("mse", "psnr", "ssim")}
    flat_rows = [image_scores(constant_image(t), t) for t in true]
    prior_rows = [image_scores(prior_unit, t) for t in true] if prior_unit is not None else None
    base = {key: [max(r[key] for r in ([fr] if prior_rows is None else [fr, prior_rows[i]]))
                  for i, fr in enumerate(flat_rows)] for key in ("psnr", "ssim")}
    out["baseline_psnr"] = float(np.mean(base["psnr"]))
    out["baseline_ssim"] = float(np.mean(base["ssim"]))
    out["psnr_gain"] = _gain([r["psnr"] for r in rows], base["psnr"])
    out["ssim_gain"] = _gain([r["ssim"] for r in rows], base["ssim"])
    prior_ssim = [r["ssim"] for r in (prior_rows if prior_rows is not None else flat_rows)]
    rdlv = [(r["ssim"] - p) / p for r, p in zip(rows, prior_ssim) if p > 0]
    out["rdlv"] = float(np.mean(rdlv)) if rdlv else None
    return out


def _mask_fields(reconstruction: Reconstruction, batch: Batch, perm: np.ndarray,
                 public: torch.Tensor | None) -> dict[str, float | None]:
    """:func:`score`'s mask fields; ``perm[i]`` is the reconstruction matched to true image ``i``."""
    k = batch.num_classes
    comp = _composition(reconstruction.extras.get("composition"), k) if public is not None else None
    comp_map = composition_mask(public, comp, k) if comp is not None else None
    mask_base = []
    for target in batch.masks:
        best = best_constant_class(target, k)[1]
        if comp_map is not None:
            best = max(best, segmentation_scores(comp_map, target, k)["dice"])
        mask_base.append(best)
    out: dict[str, float | None] = {"baseline_mask_dice": float(np.mean(mask_base))}
    if reconstruction.masks is not None:
        per = [segmentation_scores(reconstruction.masks[j], batch.masks[i], k) for i, j in enumerate(perm)]
        out["mask_dice"] = float(np.mean([p["dice"] for p in per]))
        out["mask_iou"] = float(np.mean([p["iou"] for p in per]))
        out["mask_dice_gain"] = _gain([p["dice"] for p in per], mask_base)
    return out


def baseline_guess(batch: Batch, reconstruction: Reconstruction | None = None, *,
                   prior_image: torch.Tensor | None = None,
                   public_masks: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor | None]:
    """The guesses :func:`score` holds each image against: what the attacker has without the update.

    Returns:
        ``(images, masks)``: ``[N,C,H,W]`` in [0, 1], per image the higher-PSNR of its best constant image and
        ``prior_image``; ``[N,H,W]`` class maps (``None`` unless segmentation), per mask the higher-Dice of its
        best constant class map and the composition mask (when ``public_masks`` and the reconstruction's
        recovered composition are given).
    """
    prior_unit = _prior_unit(prior_image, batch)
    true = _unit(batch.images, batch)
    images = []
    for t in true:
        guesses = [constant_image(t)] + ([prior_unit] if prior_unit is not None else [])
        images.append(max(guesses, key=lambda g: image_scores(g, t)["psnr"]))
    if batch.task != "segmentation":
        return np.stack(images), None
    k = batch.num_classes
    public = _check_public_masks(public_masks, batch)
    known = public is not None and reconstruction is not None
    comp = _composition(reconstruction.extras.get("composition"), k) if known else None
    comp_map = composition_mask(public, comp, k) if comp is not None else None
    masks = []
    for target in batch.masks:
        guesses = [torch.full_like(target, best_constant_class(target, k)[0])]
        guesses += [comp_map] if comp_map is not None else []
        masks.append(max(guesses, key=lambda g: segmentation_scores(g, target, k)["dice"]))
    return np.stack(images), torch.stack(masks)


def constant_image(true: np.ndarray) -> np.ndarray:
    """The best constant guess of a ``[C,H,W]`` image in [0, 1]: every pixel at the true per-channel mean."""
    return np.broadcast_to(true.mean(axis=(1, 2), keepdims=True), true.shape).copy()


def best_constant_class(target: torch.Tensor, num_classes: int) -> tuple[int, float]:
    """The constant class map with the highest :func:`segmentation_scores` Dice on ``target`` ``[H,W]``.

    Returns:
        ``(k, dice)``; the lowest such ``k`` on ties.
    """
    best_k, best = 0, -1.0
    # A class absent from ``target`` scores 0 as a constant map, never above class 0 or a present class.
    for k in sorted({0, *torch.as_tensor(target).unique().tolist()}):
        dice = segmentation_scores(torch.full_like(target, k), target, num_classes)["dice"]
        if dice > best:
            best_k, best = k, dice
    return best_k, best


def composition_mask(public_masks: torch.Tensor, composition, num_classes: int) -> torch.Tensor:
    """The class map a recovered composition gives without location, from the attacker's public masks.

    Rule: ``freq[k, p]`` is the share of ``public_masks`` ``[M,H,W]`` with class ``k`` at pixel ``p``. The
    composition (clipped at 0, renormalised to sum 1) becomes pixel quotas ``q_k`` summing to ``H*W`` by
    largest remainders (ties to the lower class). Then all (pixel, class) pairs are visited by decreasing
    ``freq`` (ties: lower class first, then row-major pixel order) and a pixel is given the class of its pair
    if it has none yet and the class is under its quota. Every class ends with exactly its quota, placed where
    the public masks hold it most often; for two classes this is the public mean foreground map thresholded
    so the foreground takes its recovered share.

    Returns:
        ``[H,W]`` long class map.
    """
    masks = torch.as_tensor(public_masks).long()
    h, w = masks.shape[-2:]
    n = h * w
    comp = np.clip(np.asarray(torch.as_tensor(composition, dtype=torch.float64)).reshape(-1), 0.0, None)
    comp = comp / comp.sum()
    raw = comp * n
    quota = np.floor(raw).astype(np.int64)
    short = n - int(quota.sum())
    order = sorted(range(num_classes), key=lambda k: (-(raw[k] - quota[k]), k))
    for k in order[:short]:
        quota[k] += 1
    flat = masks.reshape(masks.shape[0], n).numpy()
    freq = np.stack([(flat == k).mean(axis=0) for k in range(num_classes)])  # [K, n]
    cls = np.repeat(np.arange(num_classes), n)
    pix = np.tile(np.arange(n), num_classes)
    visit = np.lexsort((pix, cls, -freq.reshape(-1)))
    out = np.full(n, -1, dtype=np.int64)
    left = quota.copy()
    for i in visit:
        p, k = pix[i], cls[i]
        if out[p] < 0 and left[k] > 0:
            out[p] = k
            left[k] -= 1
    return torch.from_numpy(out.reshape(h, w))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson's r over all pixels and channels) of two images; 0 if either is flat."""
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def identification(reconstruction: Reconstruction, batch: Batch, distractors: Batch | None, *,
                   similarity: str = "ncc") -> dict:
    """Can the attacker tell which image (and which mask) a reconstruction is?

    For every true image of ``batch`` (in batch order), the reconstruction matched to it as in :func:`score` is
    ranked among candidates: the true image plus every distractor image. Distractors come from the same data
    and were not in the client's batch (the caller's duty); a distractor whose name shares its file stem (the
    part before ``@``) with any batch image is dropped here, because another crop of the same image is not a
    different image. At least :data:`MIN_DISTRACTORS` (31) must remain: a pool of 32, chance 1/32.

    Images are compared in [0, 1], each with its own batch's normalisation undone, by ``similarity``:

    - ``"ncc"`` (default): normalised cross-correlation, Pearson's r over pixels. The attacks recover the
      structure of an image far better than its brightness and contrast, to which NCC is invariant. Measured:
      ``seg`` attack, 60 steps, untrained U-Net in eval mode, one 64 px nuclei crop per client (32 runs, each
      tile twice), 40 distractor crops from the other 15 tiles (chance 1/41); mean PSNR 14.1 dB. NCC put the
      true image first in 23 of 32 runs (top 5: 27, mean rank 3.9), SSIM in 15 of 32 (top 5: 19, mean rank 7.3);
      NCC ranked it higher in 15 runs, SSIM in 2.
    - ``"ssim"``: scikit-image SSIM, as in :func:`score`.

    Masks (segmentation only) are ranked among the candidates' masks by :func:`segmentation_scores` Dice.

    Rank is 1 + the number of candidates strictly more similar than the true one + half the number tied with
    it (the average rank of the tie, so ties count neither for nor against the attacker; an ``int`` when whole,
    else a ``float`` ending in .5). ``identified`` is rank 1: the true candidate alone on top.

    Returns:
        ``{"identified": [bool], "identification_rank": [rank], "identification_rate": float,
        "identification_ci": [lo, hi], "mask_identified", "mask_identification_rank",
        "mask_identification_rate", "mask_identification_ci", "candidates": int, "similarity": str,
        "identification_note": str | None}``. Per-image lists follow the batch order; rates are over the
        batch's images with their Wilson 95 % interval (:func:`wilson_interval`). Fields are ``None`` with a
        note when there are no distractors, fewer than 31 after dropping same-stem crops, or no
        reconstruction; mask fields are ``None`` for classification or when the attack recovered no masks.

    Raises:
        SegauditError: an unknown ``similarity``, or distractors of another channel count, image size, task or
            class count than the batch.
    """
    if similarity not in SIMILARITIES:
        raise SegauditError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
    out: dict = {"identified": None, "identification_rank": None, "identification_rate": None,
                 "identification_ci": None, "mask_identified": None, "mask_identification_rank": None,
                 "mask_identification_rate": None, "mask_identification_ci": None, "candidates": None,
                 "similarity": similarity, "identification_note": None}
    if distractors is None:
        out["identification_note"] = "no distractors"
        return out
    _check_distractors(distractors, batch)
    stems = {_stem(n) for n in batch.names}
    keep = [i for i in range(len(distractors))
            if not (distractors.names and stems and _stem(distractors.names[i]) in stems)]
    if len(keep) < MIN_DISTRACTORS:
        out["identification_note"] = f"fewer than {MIN_DISTRACTORS} distractors"
        return out
    if reconstruction.status != "ok" or reconstruction.images is None:
        out["identification_note"] = "no reconstruction"
        return out
    pool = distractors.subset(keep)
    out["candidates"] = 1 + len(pool)
    true = _unit(batch.images, batch)
    rec = _unit(reconstruction.images, batch)
    others = _unit(pool.images, pool)
    perm = match_order(torch.from_numpy(rec), torch.from_numpy(true))
    sim = ncc if similarity == "ncc" else _ssim
    ranks = [_rank([sim(rec[j], true[i])] + [sim(rec[j], o) for o in others]) for i, j in enumerate(perm)]
    out.update(_rates(ranks, ""))
    if batch.task == "segmentation" and reconstruction.masks is not None:
        k = batch.num_classes

        def dice(a, b):
            return segmentation_scores(a, b, k)["dice"]

        mranks = [_rank([dice(reconstruction.masks[j], batch.masks[i])]
                        + [dice(reconstruction.masks[j], m) for m in pool.masks]) for i, j in enumerate(perm)]
        out.update(_rates(mranks, "mask_"))
    return out


def pooled_identification(found: Sequence[dict | None]) -> dict:
    """Pool several :func:`identification` results (a cell's runs): images, and masks, picked out of their pools.

    Returns:
        ``{"identification": {"rate", "ci", "n", "chance"} | None, "mask_identification": ...}``: the share of
        images identified with its Wilson 95 % interval, the number of images and the chance level (1 over the
        smallest candidate pool); ``None`` when no image was ranked.
    """
    out: dict = {}
    for prefix in ("", "mask_"):
        hits = [h for f in found for h in ((f or {}).get(f"{prefix}identified") or [])]
        pools = [c for f in found if (c := (f or {}).get("candidates"))]
        out[f"{prefix}identification"] = None if not hits else {
            "rate": sum(hits) / len(hits), "ci": list(wilson_interval(sum(hits), len(hits))), "n": len(hits),
            "chance": 1 / min(pools) if pools else None}
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % at ``z = 1.96``); ``(0, 1)`` when ``n == 0``.

    Example:
        >>> [round(v, 4) for v in wilson_interval(5, 10)]
        [0.2366, 0.7634]
    """
    if n < 0 or not 0 <= successes <= n:
        raise SegauditError(f"need 0 <= successes <= n, got {successes} successes of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


MIN_INTERVAL_N = 3  # below this a mean is shown as it is: "n = 1, no interval"


def mean_summary(values: Sequence[float | None]) -> dict | None:
    """``{"mean", "ci", "n"}`` of the values that are not None or NaN: their mean and its normal-approximation 95 %
    interval (``ci`` None below :data:`MIN_INTERVAL_N` values or with an infinite value, e.g. the PSNR of a perfect
    reconstruction); None when no value is left. A cell's entry in ``results.json``."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    mean = float(np.mean(v))
    if len(v) < MIN_INTERVAL_N or not math.isfinite(mean):
        return {"mean": mean, "ci": None, "n": len(v)}
    half = 1.96 * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(v)}


def eval_crop_size(dataset) -> int:
    """The side of the square crops a model is evaluated on: the data's smallest image side rounded down to a
    multiple of 32, within [32, 256]."""
    return max(32, min(256, dataset.min_size) // 32 * 32)


def _rank(sims: Sequence[float]) -> int | float:
    """Average rank (1 = most similar) of candidate 0 among ``sims``."""
    s = np.asarray(sims, dtype=np.float64)
    better = int((s[1:] > s[0]).sum())
    tied = int((s[1:] == s[0]).sum())
    rank = 1 + better + tied / 2
    return int(rank) if float(rank).is_integer() else float(rank)


def _rates(ranks: list, prefix: str) -> dict:
    hits = [r == 1 for r in ranks]
    lo, hi = wilson_interval(sum(hits), len(hits))
    return {f"{prefix}identified": hits, f"{prefix}identification_rank": ranks,
            f"{prefix}identification_rate": sum(hits) / len(hits), f"{prefix}identification_ci": [lo, hi]}


def _stem(name: str) -> str:
    return str(name).split("@", 1)[0]


def _unit(images: torch.Tensor, batch: Batch) -> np.ndarray:
    """``[N,C,H,W]`` normalised images of ``batch`` -> float64 numpy in [0, 1]."""
    c = images.shape[1]
    unit = denormalize(images.detach().cpu(), batch.mean or (0.5,) * c, batch.std or (0.5,) * c)
    return unit.numpy().astype(np.float64)


def _gain(values: Sequence[float], bases: Sequence[float]) -> float | None:
    """``mean(values) - mean(bases)``; with infinite means, the mean of per-image gains (inf - inf = 0)."""
    v, b = float(np.mean(values)), float(np.mean(bases))
    if math.isfinite(v) and math.isfinite(b):
        return v - b
    per = [0.0 if (math.isinf(x) and x == y) else x - y for x, y in zip(values, bases)]
    g = float(np.mean(per))
    return None if math.isnan(g) else g


def _shape(c: int, h: int, w: int) -> str:
    return f"{c} channel{'s' if c != 1 else ''} at {h}x{w} px"


def _prior_unit(prior_image, batch: Batch) -> np.ndarray | None:
    if prior_image is None:
        return None
    prior = torch.as_tensor(prior_image).detach().cpu()
    c, h, w = batch.images.shape[1:]
    if tuple(prior.shape) != (c, h, w):
        raise SegauditError(f"the prior image has shape {list(prior.shape)} but the batch's images have "
                            f"{_shape(c, h, w)}; give one [C,H,W] image in the model's normalised space")
    if not torch.isfinite(prior).all():
        raise SegauditError("the prior image holds NaN or infinite values; give a finite [C,H,W] image")
    return _unit(prior[None], batch)[0]


def _check_public_masks(public_masks, batch: Batch) -> torch.Tensor | None:
    if public_masks is None or batch.task != "segmentation":
        return None
    masks = torch.as_tensor(public_masks).detach().cpu()
    h, w = batch.masks.shape[1:]
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (h, w) or masks.shape[0] == 0:
        raise SegauditError(f"public masks have shape {list(masks.shape)} but the batch's masks are {h}x{w} px; "
                            "give [M,H,W] class maps of the batch's size")
    if masks.is_floating_point() or int(masks.min()) < 0 or int(masks.max()) >= batch.num_classes:
        raise SegauditError(f"public masks must hold class indices 0..{batch.num_classes - 1} "
                            f"of the batch's {batch.num_classes} classes")
    return masks.long()


def _composition(composition, num_classes: int) -> np.ndarray | None:
    if composition is None:
        return None
    comp = np.asarray(torch.as_tensor(composition, dtype=torch.float64).detach().cpu()).reshape(-1)
    if comp.size != num_classes:
        raise SegauditError(f"the recovered composition has {comp.size} shares but the batch has "
                            f"{num_classes} classes")
    if not np.isfinite(comp).all() or np.clip(comp, 0, None).sum() <= 0:
        return None  # nothing usable was recovered: no composition baseline
    return comp


def _check_distractors(distractors: Batch, batch: Batch) -> None:
    c, h, w = (int(v) for v in batch.images.shape[1:])
    dc, dh, dw = (int(v) for v in distractors.images.shape[1:])
    if (dc, dh, dw) != (c, h, w):
        raise SegauditError(f"distractors have {_shape(dc, dh, dw)} but the batch has {_shape(c, h, w)}; "
                            "use distractors from the same data, prepared like the batch")
    if distractors.task != batch.task or distractors.num_classes != batch.num_classes:
        raise SegauditError(f"distractors are {distractors.task} data with {distractors.num_classes} classes but "
                            f"the batch is {batch.task} data with {batch.num_classes} classes; "
                            "use distractors from the same data")
