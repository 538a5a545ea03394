"""Preprocessing samples of a :class:`~segaudit.data.Dataset` into a model-ready ``Batch``: fitting each image
to a square side (resize, centre or random crop), augmentation and normalisation, with albumentations.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import SegauditError
from ..types import Batch
from .dataset import Dataset, channels_phrase

__all__ = ["FITS", "check_size_multiple", "make_batch", "patches"]

FITS = ("resize", "center", "crop")


def check_size_multiple(size: int, stride: int = 32) -> None:
    """Refuse a ``size`` that is not a positive multiple of the model's output ``stride``, naming the sizes to use."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise SegauditError(f"size must be a positive number of pixels, got {size!r}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise SegauditError(f"stride must be a positive integer, got {stride!r}")
    if size % stride:
        lower, upper = size // stride * stride, (size // stride + 1) * stride
        use = f"{lower} or {upper}" if lower else f"{upper}"
        raise SegauditError(f"size {size} is not a multiple of the model's output stride {stride}; use {use}")


def make_batch(dataset: Dataset, indices: Sequence[int] | None = None, size: int = 64, stride: int = 32,
               normalize: bool = True, augment: bool = False, seed: int | None = None, *, fit: str = "resize",
               mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
               foreground: float = 1.0) -> Batch:
    """Preprocess samples of ``dataset`` into a model-ready ``Batch`` of ``size`` x ``size`` images.

    Args:
        dataset: from :func:`load_dataset`.
        indices: sample positions (repeats allowed); ``None`` means all.
        size: output side in pixels; must be a multiple of ``stride``, the model's output stride.
        normalize: subtract ``mean`` and divide by ``std`` per channel (recorded in ``Batch.mean/std``);
            without it images stay in [0, 1] and the batch records mean 0, std 1.
        augment: random horizontal/vertical flips and 90-degree rotations, applied after ``fit``.
        seed: makes ``augment`` and ``fit="crop"`` reproducible; ``None`` draws fresh randomness.
        fit: how an image becomes ``size`` x ``size``: ``"resize"`` scales the longer side to ``size``
            and pads the shorter one (non-square images keep their aspect ratio); ``"center"`` pads then
            takes the central crop (no scaling); ``"crop"`` takes a random crop, containing a foreground
            (non-zero class) pixel with probability ``foreground`` when there is one. Padding is 0 in the
            image and class 0 in the mask.
        mean, std: per-channel normalisation (a single value applies to every channel).
        foreground: see ``fit="crop"``.

    Returns:
        ``Batch`` with images ``[N, C, size, size]`` float32, masks ``[N, size, size]`` int64 in ``0..K-1``.
        Names are the file stems, with ``@y<row>x<col>`` (the crop's top-left corner) for ``"crop"``.

    Example:
        >>> batch = make_batch(load_dataset("brain_mri"), [0, 1, 2], size=64, fit="crop", seed=0)
        >>> batch.images.shape, batch.num_classes
        (torch.Size([3, 1, 64, 64]), 4)
    """
    import cv2

    A = _albumentations()
    check_size_multiple(size, stride)
    if fit not in FITS:
        raise SegauditError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    if not 0.0 <= foreground <= 1.0:
        raise SegauditError(f"foreground must be a probability in [0, 1], got {foreground}")
    picks = list(range(len(dataset))) if indices is None else [_check_index(i, len(dataset)) for i in indices]
    if not picks:
        raise SegauditError("no samples selected; pass at least one index")
    c = dataset.channels
    mean_c, std_c = _normalisation(normalize, mean, std, c)
    pad = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    rng = np.random.default_rng(seed)
    images, masks, names = [], [], []
    for i in picks:
        image, mask = dataset[i]
        steps, name = _fit_steps(A, fit, size, pad, mask, rng, foreground, dataset.names[i])
        if augment:
            steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
        steps.append(A.Normalize(mean=mean_c, std=std_c, max_pixel_value=1.0))
        pipeline = A.Compose(steps, seed=int(rng.integers(2**31)))
        # cv2 (under albumentations) cannot resize int64 arrays; uint8/int32 masks keep their values.
        out = pipeline(image=np.ascontiguousarray(image),
                       mask=mask.astype(np.uint8 if dataset.num_classes <= 256 else np.int32))
        images.append(np.asarray(out["image"], np.float32).reshape(size, size, c))
        masks.append(np.asarray(out["mask"], np.int64))
        names.append(name)
    return Batch(images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                 masks=torch.from_numpy(np.stack(masks)), class_names=dataset.class_names, names=tuple(names),
                 mean=mean_c, std=std_c)


def _normalisation(normalize: bool, mean: float | Sequence[float], std: float | Sequence[float],
                   channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` for ``make_batch``: the given values, or ``(0, 1)`` without ``normalize``."""
    if not normalize:
        return (0.0,) * channels, (1.0,) * channels
    mean_c, std_c = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    if any(s <= 0 for s in std_c):
        raise SegauditError(f"std must be positive, got {std_c}")
    return mean_c, std_c


def _fit_steps(A, fit: str, size: int, pad: dict, mask: np.ndarray, rng: np.random.Generator, foreground: float,
               name: str) -> tuple[list, str]:
    """The albumentations steps that bring one ``[H, W(, C)]`` sample to ``size`` x ``size`` by ``fit``, and its name
    (``<name>@y<row>x<col>`` for a random crop, whose corner is drawn from ``rng``)."""
    if fit == "resize":
        return [A.LongestMaxSize(max_size=size), A.PadIfNeeded(size, size, **pad)], name
    if fit == "center":
        return [A.PadIfNeeded(size, size, **pad), A.CenterCrop(size, size)], name
    y0, x0 = _crop_corner(mask, size, rng, foreground)
    return [A.PadIfNeeded(size, size, position="top_left", **pad),
            A.Crop(x_min=x0, y_min=y0, x_max=x0 + size, y_max=y0 + size)], f"{name}@y{y0}x{x0}"


def patches(dataset: Dataset, size: int = 64, count: int = 8, stride: int = 32, *,
            indices: Sequence[int] | None = None, seed: int = 0, foreground: float = 1.0, normalize: bool = True,
            augment: bool = False, mean: float | Sequence[float] = 0.5,
            std: float | Sequence[float] = 0.5) -> Batch:
    """``count`` random ``size`` px crops from larger images, for CPU-sized work (deterministic by ``seed``).

    Images are drawn from ``indices`` (default all) without replacement while they last; each crop holds a
    foreground pixel with probability ``foreground`` (see :func:`make_batch`, ``fit="crop"``).

    Returns:
        ``Batch`` of ``count`` crops, images ``[count, C, size, size]``, names ``<stem>@y<row>x<col>``.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise SegauditError(f"count must be a positive integer, got {count!r}")
    pool = list(range(len(dataset))) if indices is None else [_check_index(i, len(dataset)) for i in indices]
    if not pool:
        raise SegauditError("no samples selected; pass at least one index")
    rng = np.random.default_rng(seed)
    picks = [pool[j] for j in rng.permutation(max(count, len(pool))) % len(pool)][:count]
    return make_batch(dataset, picks, size, stride, normalize, augment, int(rng.integers(2**31)), fit="crop",
                      mean=mean, std=std, foreground=foreground)


# -- small helpers --------------------------------------------------------------------------------------------


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network version check on import
    import albumentations

    return albumentations


def _crop_corner(mask: np.ndarray, size: int, rng: np.random.Generator, foreground: float) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop in ``mask`` padded at the bottom/right up to ``size``."""
    height, width = max(mask.shape[0], size), max(mask.shape[1], size)
    hits = np.flatnonzero(mask)
    if hits.size and rng.random() < foreground:
        y, x = divmod(int(hits[rng.integers(hits.size)]), mask.shape[1])
        y0 = rng.integers(max(0, y - size + 1), min(y, height - size) + 1)
        x0 = rng.integers(max(0, x - size + 1), min(x, width - size) + 1)
    else:
        y0, x0 = rng.integers(height - size + 1), rng.integers(width - size + 1)
    return int(y0), int(x0)


def _per_channel(value: float | Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    values = (float(value),) if np.isscalar(value) else tuple(float(v) for v in value)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise SegauditError(f"{what} has {len(values)} values but the images have {channels_phrase(channels)}; "
                            f"give one value or {channels}")
    return values


def _check_index(index: int, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise SegauditError(f"sample index {index!r} is out of range; the dataset has {n} samples (0..{n - 1})")
    return int(index) % n
