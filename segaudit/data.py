"""Datasets: the two bundled examples, a folder loader, and albumentations preprocessing into a ``Batch``.

A dataset folder pairs images and masks by file stem::

    my_data/
      images/   a.png   b.tif   c.dcm   d.nii.gz   e.jpg
      masks/    a.png   b.tif   c.dcm   d.nii.gz   e.png    # one class index (0..K-1) per pixel
      classes.json                                          # ["background", "lesion"], or pass classes=

Images are PNG, TIFF, DICOM, NIfTI (2-D slices) or JPEG; masks the same formats except JPEG (lossy
compression changes class values). Everything is read eagerly: the audits work on a few dozen images.

Example:
    >>> data = load_dataset("nuclei")
    >>> len(data), data.channels, data.class_names
    (16, 1, ('background', 'nucleus'))
    >>> batch = make_batch(data, [0, 1], size=64)
    >>> tuple(batch.images.shape), tuple(batch.masks.shape)
    ((2, 1, 64, 64), (2, 64, 64))
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import SegauditError
from .types import Batch

__all__ = ["BUNDLED", "Dataset", "check_input_size", "data_root", "load_dataset", "make_batch", "patches",
           "split"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
MAX_SIDE = 4096  # pixels per side
MAX_BYTES = 64 * 2**20  # decoded size of one file
FITS = ("resize", "center", "crop")


def data_root() -> Path:
    """The folder holding the bundled datasets: ``$SEGAUDIT_DATA_DIR``, else the repository's ``data/``."""
    return Path(os.environ.get("SEGAUDIT_DATA_DIR") or Path(__file__).resolve().parents[1] / "data")


class _Bundled(Mapping):
    """Bundled dataset name -> folder, resolved on each access so ``SEGAUDIT_DATA_DIR`` can change."""

    _names = ("nuclei", "brain_mri")

    def __getitem__(self, name: str) -> Path:
        if name not in self._names:
            raise KeyError(name)
        return data_root() / name

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


#: ``{"nuclei": Path, "brain_mri": Path}``; see ``data/README.md`` for their origin and licences.
BUNDLED: Mapping[str, Path] = _Bundled()


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and masks held in memory.

    Attributes:
        images: one ``[H, W, C]`` float32 array in ``[0, 1]`` per sample (read-only).
        masks: one ``[H, W]`` int64 array in ``0..K-1`` per sample (read-only).
        names: sample identifiers (file stems).
        class_names: K class names; index 0 is the background by convention (padding uses it).
        files: (image, mask) paths relative to ``root``, used in messages; empty for in-memory data.
        root: the folder the data came from, if any.

    ``dataset[i]`` is ``(image, mask)``. Building one from arrays checks shapes and mask values; a 2-D
    image gets a channel axis.

    Example:
        >>> ds = Dataset([np.zeros((8, 8, 1), np.float32)], [np.zeros((8, 8), np.int64)], ("a",), ("bg", "fg"))
        >>> ds.channels, ds.num_classes, ds[0][1].shape
        (1, 2, (8, 8))
    """

    images: Sequence[np.ndarray] = field(repr=False)
    masks: Sequence[np.ndarray] = field(repr=False)
    names: tuple[str, ...]
    class_names: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    root: Path | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise SegauditError("the dataset holds no samples; add image/mask pairs")
        if not (len(self.masks) == len(self.names) == n) or (self.files and len(self.files) != n):
            raise SegauditError(f"got {n} images, {len(self.masks)} masks and {len(self.names)} names; "
                                "give one mask and one name per image")
        names = _class_names_from_arg(self.class_names)
        images, masks = [], []
        for i in range(n):
            image_at, mask_at = self.files[i] if self.files else (f"image {self.names[i]!r}", f"{self.names[i]!r}")
            image = np.asarray(self.images[i], dtype=np.float32)
            image = image[..., None] if image.ndim == 2 else image
            if image.ndim != 3:
                raise SegauditError(f"{image_at} has shape {image.shape}; images must be [H, W] or [H, W, C]")
            mask = np.asarray(self.masks[i])
            if mask.ndim != 2:
                raise SegauditError(f"mask {mask_at} has shape {mask.shape}; masks must be [H, W] class indices")
            if image.shape[:2] != mask.shape:
                raise SegauditError(f"{image_at} is {_hw(image.shape)} but its mask {mask_at} is {_hw(mask.shape)}; "
                                    "an image and its mask must have the same size")
            _check_labels(mask, len(names), mask_at)
            image.flags.writeable = False
            mask = mask.astype(np.int64)
            mask.flags.writeable = False
            images.append(image)
            masks.append(mask)
        first = images[0].shape[-1]
        for i, image in enumerate(images):
            if image.shape[-1] != first:
                where = self.files[i][0] if self.files else f"image {self.names[i]!r}"
                other = self.files[0][0] if self.files else f"image {self.names[0]!r}"
                raise SegauditError(f"{where} has {_channels(image.shape[-1])} but {other} has {_channels(first)}; "
                                    "convert all images to one channel count (greyscale or RGB)")
        object.__setattr__(self, "images", tuple(images))
        object.__setattr__(self, "masks", tuple(masks))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "class_names", names)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        where = f"{str(self.root)!r}, " if self.root else ""
        return (f"Dataset({where}{len(self)} samples, {_channels(self.channels)}, "
                f"classes={list(self.class_names)})")

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.masks[index]

    @property
    def channels(self) -> int:
        """C, the number of image channels (1 greyscale, 3 RGB)."""
        return int(self.images[0].shape[-1])

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    @property
    def min_size(self) -> int:
        """The smallest image side in the dataset, in pixels."""
        return int(min(min(image.shape[:2]) for image in self.images))

    def digest(self) -> str:
        """A short hash of every image, mask, name and class name as read (what a result depends on)."""
        import hashlib

        h = hashlib.sha256(json.dumps([list(self.names), list(self.class_names)]).encode())
        for image, mask in zip(self.images, self.masks):
            for array in (image, mask):
                h.update(str(array.shape).encode())
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]

    def check_channels(self, expected: int) -> None:
        """Refuse when the images do not have the ``expected`` channel count (the model's input channels)."""
        if self.channels != expected:
            where = f" (e.g. {self.files[0][0]})" if self.files else ""
            raise SegauditError(f"images have {_channels(self.channels)} but the model expects {expected}; "
                                f"convert the images{where} or use a model built for {self.channels}")


def load_dataset(name_or_dir: str | os.PathLike, classes: int | Sequence[str] | None = None,
                 channels: int | None = None) -> Dataset:
    """Load a bundled dataset or a folder of images and masks.

    Args:
        name_or_dir: ``"nuclei"`` or ``"brain_mri"`` (see :data:`BUNDLED`), or a folder holding ``images/``
            and ``masks/`` (and optionally ``classes.json``). A bundled name wins over a folder of the same
            name in the working directory; write ``./nuclei`` for the folder.
        classes: the class count K (names become ``class_0..``) or the K class names. Needed when the
            folder has no ``classes.json``; must agree with it otherwise. Never guessed from mask values.
        channels: the model's input channels; images with another count are refused.

    Returns:
        A :class:`Dataset`: images ``[H, W, C]`` float32 in [0, 1] (uint8 divided by 255; float images
        already in [0, 1] kept; anything else, e.g. 16-bit or DICOM values after their rescale slope,
        min-max scaled per image), masks ``[H, W]`` int64. Alpha channels are dropped.

    Raises:
        SegauditError: missing folders, unpaired/unreadable/oversized files, 3-D volumes, size or channel
            mismatches, mask values outside ``0..K-1``, or no class count.
    """
    root = _resolve_root(name_or_dir)
    pairs = _pair_files(root)
    class_names = _resolve_classes(root, classes)
    images, masks, files = [], [], []
    for image_path, mask_path in pairs.values():
        image_rel, mask_rel = _rel(image_path, root), _rel(mask_path, root)
        image = _image_to_unit(_read(image_path, image_rel, is_mask=False), image_rel)
        if channels is not None and image.shape[-1] != channels:
            raise SegauditError(f"images have {_channels(image.shape[-1])} but the model expects {channels}; "
                                f"convert the images (e.g. {image_rel}) or use a model built for {image.shape[-1]}")
        images.append(image)
        masks.append(_mask_to_labels(_read(mask_path, mask_rel, is_mask=True), mask_rel))
        files.append((image_rel, mask_rel))
    return Dataset(images, masks, tuple(pairs), class_names, tuple(files), root)


def load_pair(image: str | os.PathLike, mask: str | os.PathLike | None = None,
              classes: int | Sequence[str] = 2) -> Dataset:
    """One image (and its mask) as a one-sample :class:`Dataset`, for ``segaudit attack --image F --mask F``.

    Args:
        image, mask: file paths in any format :func:`load_dataset` reads; without a mask the sample gets an
            all-background mask (classification attacks take a label instead).
        classes: the class count K or the K class names.
    """
    image_path = Path(image)
    if not image_path.is_file():
        raise SegauditError(f"image file {str(image_path)!r} does not exist")
    pixels = _image_to_unit(_read(image_path, str(image_path), is_mask=False), str(image_path))
    if mask is None:
        labels = np.zeros(pixels.shape[:2], np.int64)
        files = ((str(image_path), "(no mask)"),)
    else:
        mask_path = Path(mask)
        if not mask_path.is_file():
            raise SegauditError(f"mask file {str(mask_path)!r} does not exist")
        labels = _mask_to_labels(_read(mask_path, str(mask_path), is_mask=True), str(mask_path))
        files = ((str(image_path), str(mask_path)),)
    return Dataset([pixels], [labels], (image_path.name.split(".")[0],), _class_names_from_arg(classes), files)


def check_input_size(size: int, stride: int = 32) -> None:
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
    check_input_size(size, stride)
    if fit not in FITS:
        raise SegauditError(f"unknown fit {fit!r}; use one of {', '.join(FITS)}")
    if not 0.0 <= foreground <= 1.0:
        raise SegauditError(f"foreground must be a probability in [0, 1], got {foreground}")
    picks = list(range(len(dataset))) if indices is None else [_check_index(i, len(dataset)) for i in indices]
    if not picks:
        raise SegauditError("no samples selected; pass at least one index")
    c = dataset.channels
    if normalize:
        mean_c, std_c = _per_channel(mean, c, "mean"), _per_channel(std, c, "std")
        if any(s <= 0 for s in std_c):
            raise SegauditError(f"std must be positive, got {std_c}")
    else:
        mean_c, std_c = (0.0,) * c, (1.0,) * c
    pad = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    rng = np.random.default_rng(seed)
    images, masks, names = [], [], []
    for i in picks:
        image, mask = dataset[i]
        name = dataset.names[i]
        if fit == "resize":
            steps = [A.LongestMaxSize(max_size=size), A.PadIfNeeded(size, size, **pad)]
        elif fit == "center":
            steps = [A.PadIfNeeded(size, size, **pad), A.CenterCrop(size, size)]
        else:
            y0, x0 = _crop_corner(mask, size, rng, foreground)
            steps = [A.PadIfNeeded(size, size, position="top_left", **pad),
                     A.Crop(x_min=x0, y_min=y0, x_max=x0 + size, y_max=y0 + size)]
            name = f"{name}@y{y0}x{x0}"
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


def split(dataset: Dataset | int, holdout: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train / held-out sample indices.

    Args:
        dataset: a :class:`Dataset` or its length N.
        holdout: share of samples held out, in (0, 1); at least one sample lands on each side.
        seed: the same seed gives the same split.

    Returns:
        ``(train, held_out)``: sorted, disjoint lists of indices covering ``0..N-1``.

    Example:
        >>> split(8, holdout=0.25, seed=0)[1]
        [2, 4]
    """
    n = dataset if isinstance(dataset, (int, np.integer)) else len(dataset)
    if not 0.0 < holdout < 1.0:
        raise SegauditError(f"holdout must be a share in (0, 1), got {holdout}")
    if n < 2:
        raise SegauditError(f"cannot split {n} sample(s) into train and held-out sets; add at least 2 samples")
    k = min(max(1, int(round(n * holdout))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


# -- folders, pairing and classes ---------------------------------------------------------------------------


def _resolve_root(name_or_dir: str | os.PathLike) -> Path:
    if isinstance(name_or_dir, str) and name_or_dir in BUNDLED:
        root = BUNDLED[name_or_dir]
        if not root.is_dir():
            raise SegauditError(f"bundled dataset {name_or_dir!r} is missing at {root}; set SEGAUDIT_DATA_DIR to the "
                                "folder holding nuclei/ and brain_mri/ (the repository's data/)")
        return root
    root = Path(name_or_dir).expanduser()
    if not root.is_dir():
        raise SegauditError(f"no dataset folder {str(root)!r} (bundled datasets: {', '.join(BUNDLED)}); pass a folder "
                            "holding images/ and masks/")
    return root


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _list_files(folder: Path, root: Path, suffixes: tuple[str, ...], kind: str) -> dict[str, Path]:
    """Stem -> file in ``folder``; hidden files are skipped, other formats refused."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        suffix = _suffix(path)
        if suffix not in suffixes:
            hint = "; save masks as PNG or TIFF (lossy JPEG changes class values)" if suffix in (".jpg", ".jpeg") \
                else f"; {kind} must be {', '.join(suffixes)} — move other files out of {folder.name}/"
            raise SegauditError(f"{_rel(path, root)} is not a supported {kind[:-1]} format{hint}")
        stem = path.name[: len(path.name) - len(suffix)]
        if stem in found:
            raise SegauditError(f"{_rel(found[stem], root)} and {_rel(path, root)} share the name {stem!r}; "
                                f"keep one file per name in {folder.name}/")
        found[stem] = path
    return found


def _pair_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """Stem -> (image, mask), sorted by stem."""
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise SegauditError(f"{root} has no {sub}/ folder; a dataset folder needs images/ and masks/ whose files "
                                "pair by name (images/a.png with masks/a.png)")
    images = _list_files(root / "images", root, IMAGE_SUFFIXES, "images")
    masks = _list_files(root / "masks", root, MASK_SUFFIXES, "masks")
    if not images:
        raise SegauditError(f"{root / 'images'} holds no images; add PNG, TIFF, DICOM, NIfTI or JPEG files")
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"images without a mask: {_few(_rel(images[s], root) for s in lonely_images)}")
        if lonely_masks:
            parts.append(f"masks without an image: {_few(_rel(masks[s], root) for s in lonely_masks)}")
        raise SegauditError(f"unpaired files in {root} ({'; '.join(parts)}); images and masks pair by file name")
    return {stem: (images[stem], masks[stem]) for stem in sorted(images)}


def _resolve_classes(root: Path, classes: int | Sequence[str] | None) -> tuple[str, ...]:
    from_file = _read_classes_json(root / "classes.json") if (root / "classes.json").is_file() else None
    if classes is None:
        if from_file is None:
            raise SegauditError(f"{root} has no classes.json, so the number of classes is unknown; add classes.json "
                                "(a JSON list of names, e.g. [\"background\", \"lesion\"]) or pass --classes N")
        return from_file
    given = _class_names_from_arg(classes)
    if from_file is not None:
        named = not isinstance(classes, (int, np.integer))
        if len(given) != len(from_file) or (named and given != from_file):
            raise SegauditError(f"classes.json in {root} lists {len(from_file)} classes {list(from_file)} but "
                                f"{len(given)} were given {list(given)}; drop --classes or fix classes.json")
        return from_file
    return given


def _read_classes_json(path: Path) -> tuple[str, ...]:
    example = 'it must be a JSON list of class names, e.g. ["background", "lesion"]'
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegauditError(f"{path} is not readable JSON ({exc}); {example}") from exc
    if not isinstance(value, list):
        raise SegauditError(f"{path} holds a JSON {type(value).__name__}; {example}")
    try:
        return _class_names_from_arg(value)
    except SegauditError as exc:
        raise SegauditError(f"{path}: {exc}") from exc


def _class_names_from_arg(classes: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if classes < 2:
            raise SegauditError(f"need at least 2 classes (background and one more), got {classes}")
        return tuple(f"class_{k}" for k in range(int(classes)))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise SegauditError(f"classes must be a class count (int) or a list of names, got {classes!r}")
    names = tuple(classes)
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise SegauditError(f"class names must be non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise SegauditError(f"class names must be unique, got {list(names)!r}")
    if len(names) < 2:
        raise SegauditError(f"need at least 2 class names (background and one more), got {list(names)!r}")
    return names


# -- reading one file -----------------------------------------------------------------------------------------


def _read(path: Path, rel: str, is_mask: bool) -> np.ndarray:
    """Decode one file to ``[H, W]`` or ``[H, W, C]``, refusing oversized files before decoding them."""
    suffix = _suffix(path)
    try:
        if suffix in (".png", ".jpg", ".jpeg"):
            return _read_pil(path, rel, is_mask)
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, rel)
        if suffix == ".dcm":
            return _read_dicom(path, rel, is_mask)
        return _read_nifti(path, rel)
    except SegauditError:
        raise
    except Exception as exc:  # each library raises its own types for a truncated or corrupt file
        detail = " ".join(str(exc).split())[:160]
        raise SegauditError(f"cannot read {rel} ({type(exc).__name__}: {detail}); check the file is a valid "
                            f"{suffix.lstrip('.').upper()} or re-export it") from exc


def _check_size(rel: str, height: int, width: int, bytes_per_pixel: int) -> None:
    decoded = height * width * bytes_per_pixel
    if height > MAX_SIDE or width > MAX_SIDE or decoded > MAX_BYTES:
        raise SegauditError(f"{rel} is {height}x{width} pixels ({decoded / 2**20:.0f} MB decoded); the largest "
                            f"accepted is {MAX_SIDE}x{MAX_SIDE} and {MAX_BYTES // 2**20} MB — cut it into tiles or "
                            "downscale it first")


def _read_pil(path: Path, rel: str, is_mask: bool) -> np.ndarray:
    from PIL import Image

    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own guard fires above ~179 M pixels
        raise SegauditError(f"{rel} is far larger than the accepted {MAX_SIDE}x{MAX_SIDE} pixels ({exc}); cut it "
                            "into tiles or downscale it first") from exc
    with im:
        width, height = im.size
        _check_size(rel, height, width, len(im.getbands()) * (4 if im.mode in ("I", "F") else 2
                                                              if im.mode.startswith("I;16") else 1))
        if im.mode == "P" and not is_mask:  # a palette mask holds class indices; a palette image holds colours
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "PA"):
            im = im.convert("RGBA" if im.mode == "PA" else "RGB")
        return np.asarray(im)


def _read_tiff(path: Path, rel: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = "".join(a for a, n in zip(series.axes, series.shape) if n != 1 or a in "YX")
        shape = tuple(n for a, n in zip(series.axes, series.shape) if n != 1 or a in "YX")
        planes = [a for a in axes if a not in "YXS"]
        if planes and (len(planes) > 1 or planes[0] != "C" or shape[axes.index("C")] > 4):
            raise SegauditError(f"{rel} is a stack of shape {'x'.join(map(str, shape))} (axes {axes}); segaudit "
                                "reads 2-D images — save one 2-D slice per file")
        channels = int(np.prod([n for a, n in zip(axes, shape) if a in "SC"]))
        _check_size(rel, shape[axes.index("Y")], shape[axes.index("X")], channels * series.dtype.itemsize)
        array = series.asarray().reshape(shape)
    if axes.startswith(("C", "S")):  # planar (channels first) -> channels last
        array = np.moveaxis(array, 0, -1)
    return array


def _read_dicom(path: Path, rel: str, is_mask: bool) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path, defer_size="1 MB")  # pixel data stays on disk until asked for
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise SegauditError(f"{rel} is a multi-frame DICOM of {frames} frames; segaudit reads 2-D images — "
                            "save one frame per file")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_size(rel, int(ds.Rows), int(ds.Columns), samples * max(1, int(ds.get("BitsAllocated", 8) or 8) // 8))
    array = ds.pixel_array
    if is_mask:
        return array
    array = apply_modality_lut(array, ds)  # stored values -> real units (e.g. CT Hounsfield)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # 0 means white there
        array = array.max() - array
    return array


def _read_nifti(path: Path, rel: str) -> np.ndarray:
    import nibabel as nib

    image = nib.load(path)  # header only; the voxels are read below
    plane = [n for n in image.shape if n != 1]
    if len(plane) > 2:
        raise SegauditError(f"{rel} is a 3-D volume of shape {'x'.join(map(str, image.shape))}; segaudit reads 2-D "
                            "images — save 2-D slices (one file per slice)")
    if len(plane) < 2:
        plane = list(image.shape[:2]) + [1] * (2 - len(image.shape[:2]))
    _check_size(rel, plane[0], plane[1], image.get_data_dtype().itemsize)
    # Array axes as stored (i, j) -> (row, col); images and masks get the same treatment, so they stay aligned.
    return np.asarray(image.dataobj).reshape(plane)


# -- converting arrays ----------------------------------------------------------------------------------------


def _image_to_unit(array: np.ndarray, rel: str) -> np.ndarray:
    """``[H, W(, C)]`` any dtype -> ``[H, W, C]`` float32 in [0, 1], C in (1, 3)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise SegauditError(f"{rel} has shape {array.shape}; images must be 2-D, greyscale or RGB")
    if array.shape[-1] in (2, 4):  # grey + alpha, RGBA: the alpha channel is not image content
        array = array[..., :-1]
    if array.shape[-1] not in (1, 3):
        raise SegauditError(f"{rel} has {array.shape[-1]} channels; images must be greyscale (1), RGB (3) or "
                            "RGBA (4, alpha dropped)")
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise SegauditError(f"{rel} contains NaN or infinite values; replace them before auditing")
    low, high = float(values.min()), float(values.max())
    if array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return values.astype(np.float32)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return scaled.astype(np.float32)


def _mask_to_labels(array: np.ndarray, rel: str) -> np.ndarray:
    """``[H, W]`` (or colour with equal channels) -> ``[H, W]`` int64 class indices."""
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]
        if array.shape[-1] > 1 and np.any(array != array[..., :1]):
            raise SegauditError(f"mask {rel} is a colour image; masks must be single-channel class indices "
                                "0..K-1 (greyscale or palette PNG)")
        array = array[..., 0]
    if array.ndim != 2:
        raise SegauditError(f"mask {rel} has shape {array.shape}; masks must be 2-D class indices")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or np.any(array != np.round(array)):
            raise SegauditError(f"mask {rel} holds non-integer values; masks must hold class indices 0..K-1")
    elif array.dtype.kind not in "uib":
        raise SegauditError(f"mask {rel} has pixel type {array.dtype}; masks must hold integer class indices")
    return array.astype(np.int64)


def _check_labels(mask: np.ndarray, k: int, where: str) -> None:
    values = np.unique(mask)
    if values.size and (values[0] < 0 or values[-1] >= k):
        shown = ", ".join(str(int(v)) for v in values[:12]) + (", ..." if values.size > 12 else "")
        if set(values.tolist()) <= {0, 255}:
            hint = "a 0/255 binary mask needs dividing by 255"
        else:
            hint = "fix the mask or declare more classes (classes.json or --classes)"
        raise SegauditError(f"mask {where} has values [{shown}] outside 0..{k - 1} ({k} classes); masks must hold "
                            f"class indices — {hint}")


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
        raise SegauditError(f"{what} has {len(values)} values but the images have {_channels(channels)}; "
                            f"give one value or {channels}")
    return values


def _check_index(index: int, n: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise SegauditError(f"sample index {index!r} is out of range; the dataset has {n} samples (0..{n - 1})")
    return int(index) % n


def _channels(c: int) -> str:
    return f"{c} channel" if c == 1 else f"{c} channels"


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _few(items, limit: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
