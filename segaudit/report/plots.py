"""Figures written next to results (PNG, matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..metrics import baseline_guess, denormalize, match_order
from ..types import Batch, Reconstruction


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt




def _save(fig, path: str | Path, top: float = 1.0) -> Path:
    """Lay out ``fig`` below ``top`` (a figure fraction; a suptitle goes above it), write it as a PNG atomically
    and free it."""
    fig.tight_layout(rect=(0, 0, 1, top))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
    return Path(path)


def _show(image) -> np.ndarray:
    """``[C,H,W]`` in [0, 1] -> an array imshow takes (greyscale squeezed)."""
    array = image.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def reconstruction_grid(batch: Batch, rec: Reconstruction, path: str | Path, title: str = "", *,
                        prior_image: torch.Tensor | None = None, public_masks: torch.Tensor | None = None) -> Path:
    """One row per client image: the truth, the baseline, the reconstruction, then the same for the mask.

    The baseline is :func:`segaudit.metrics.baseline_guess`: what the attacker guesses without the update, from
    ``prior_image`` and ``public_masks`` when it has them (see :func:`segaudit.metrics.score`). Reconstructions
    are shown in the matched order of :func:`segaudit.metrics.match_order`.
    """
    plt = pyplot()
    mean, std = batch.mean or (0.5,), batch.std or (0.5,)
    true = denormalize(batch.images.detach(), mean, std)
    found = denormalize(rec.images.detach(), mean, std) if rec.images is not None else None
    perm = match_order(found, true) if found is not None else None
    base_images, base_masks = baseline_guess(batch, rec, prior_image=prior_image, public_masks=public_masks)
    seg = batch.task == "segmentation"
    cols = ["truth", "baseline", "reconstruction"] + (["true mask", "baseline mask", "recovered mask"] if seg else [])
    n = len(batch)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.1 * n), squeeze=False)
    k = max(batch.num_classes - 1, 1)
    for i in range(n):
        panels = [_show(true[i]), _show(torch.from_numpy(base_images[i])),
                  _show(found[perm[i]]) if found is not None else None]
        if seg:
            panels += [batch.masks[i].numpy(), None if base_masks is None else base_masks[i].numpy(),
                       rec.masks[perm[i]].numpy() if rec.masks is not None and perm is not None else None]
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.set_axis_off()
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
            if panel is None:
                ax.text(0.5, 0.5, "no valid\nreconstruction", ha="center", va="center", fontsize=8)
            elif j < 3:
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            else:
                ax.imshow(panel, cmap="viridis", vmin=0, vmax=k, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)  # titles carry user names: "$" is not maths
    return _save(fig, path, top=1 - 0.3 / fig.get_figheight() if title else 1.0)  # 0.3 in for the title


def reconstruction_only_grid(rec: Reconstruction, mean, std, path: str | Path, classes: int, title: str = "") -> Path:
    """One row per reconstructed image: the image, then its mask (segmentation); for an update with no truth."""
    plt = pyplot()
    n = int(rec.images.shape[0]) if rec.images is not None else 1
    cols = ["reconstruction"] + (["recovered mask"] if rec.masks is not None else [])
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.1 * n), squeeze=False)
    found = denormalize(rec.images.detach(), mean, std) if rec.images is not None else None
    for i in range(n):
        for j, ax in enumerate(axes[i]):
            ax.set_axis_off()
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
            if found is None:
                ax.text(0.5, 0.5, "no valid\nreconstruction", ha="center", va="center", fontsize=8)
            elif j == 0:
                panel = _show(found[i])
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            else:
                ax.imshow(rec.masks[i].numpy(), cmap="viridis", vmin=0, vmax=max(classes - 1, 1),
                          interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)
    return _save(fig, path, top=1 - 0.3 / fig.get_figheight() if title else 1.0)


def layer_scores_chart(report, path: str | Path) -> Path:
    """Horizontal bars of each layer group's combined leakage score (a ``LayerReport``), model order."""
    plt = pyplot()
    groups = report.groups
    colors = {"encoder": "tab:blue", "decoder": "tab:orange", "skip": "tab:green", "head": "tab:red"}
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(groups) + 1.2))
    ys = np.arange(len(groups))[::-1]
    ax.barh(ys, [g.score or 0.0 for g in groups], color=[colors.get(g.kind, "tab:gray") for g in groups])
    ax.set_yticks(ys, [g.name + ("" if g.score is not None else " (unscored)") for g in groups], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("combined leakage score (0 = none, 1 = fully exposed)")
    from matplotlib.patches import Patch

    # patches, not empty barh calls: those give every legend entry the default colour
    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items() if any(g.kind == k for g in groups)],
              fontsize=7, loc="lower right")
    return _save(fig, path)


def tradeoff_frontier(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Utility (held-out Dice) against leakage (the attack's PSNR and recovered-mask Dice gains over the attacker's
    baseline; 0, dotted, is what the attacker knew without the update) per defense.

    Args:
        rows: ``segaudit.tradeoff.run_tradeoff`` rows (``defense``, ``utility_dice``, ``attack_psnr_gain``,
            ``attack_mask_dice_gain``, ``epsilon``); rows missing a value are left out of that panel.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "attack_psnr_gain", "attack PSNR gain over its baseline (dB)  ← more private"),
                           (axes[1], "attack_mask_dice_gain",
                            "recovered-mask Dice gain over its baseline  ← more private")):
        ax.axvline(0.0, color="gray", lw=1, ls=":", zorder=1)
        pts = [(r[key], r["utility_dice"], r) for r in rows
               if r.get(key) is not None and r.get("utility_dice") is not None]
        for x, y, r in pts:
            dp = r.get("epsilon") is not None
            ax.scatter([x], [y], marker="s" if dp else "o", color="tab:red" if dp else "tab:blue", zorder=3)
            tag = r["defense"] + (f" (ε={r['epsilon']:.2g})" if dp else "")
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = _pareto([(x, y) for x, y, _ in pts])  # lower leakage and higher utility are better
        if len(front) > 1:
            ax.plot(*zip(*front), color="gray", lw=1, ls="--", zorder=1, label="frontier")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("utility: held-out Dice  (higher is better)")
    if title:
        fig.suptitle(title, fontsize=9, parse_math=False)  # titles carry user names: "$" is not maths
    return _save(fig, path)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by one with lower-or-equal x (leakage) and higher-or-equal y (utility), by x."""
    front, best = [], -np.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def roc_plot(labels, scores, path: str | Path, title: str = "") -> Path:
    """ROC curve of ``scores`` (higher = positive) against boolean ``labels``, with the chance diagonal."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fpr, tpr, _ = roc_curve(np.asarray(labels, bool), np.asarray(scores, float))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.axvline(0.01, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9, parse_math=False)  # titles carry user names: "$" is not maths
    return _save(fig, path)
