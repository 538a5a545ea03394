"""The in-memory :class:`Dataset`, the bundled datasets, finding and pairing a folder's files, and splits.

A dataset folder pairs images and masks by file stem::

    my_data/
      images/   a.png   b.tif   c.dcm   d.nii.gz   e.jpg
      masks/    a.png   b.tif   c.dcm   d.nii.gz   e.png    # one class index (0..K-1) per pixel
      classes.json                                          # ["background", "lesion"], or pass classes=

Images are PNG, TIFF, DICOM, NIfTI (2-D slices) or JPEG; masks the same formats except JPEG (lossy
compression changes class values). Everything is read eagerly: the audits work on a few dozen images.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SegauditError
from .readers import IMAGE_SUFFIXES, MASK_SUFFIXES, file_suffix, image_to_unit, mask_to_labels, read_file

__all__ = ["BUNDLED", "Dataset", "channels_phrase", "data_root", "load_dataset", "load_pair", "split"]


def data_root() -> Path:
    """The folder holding the bundled datasets: ``$SEGAUDIT_DATA_DIR``, else the repository's ``data/``."""
    return Path(os.environ.get("SEGAUDIT_DATA_DIR") or Path(__file__).resolve().parents[2] / "data")


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
                raise SegauditError(f"{where} has {channels_phrase(image.shape[-1])} but {other} has "
                                    f"{channels_phrase(first)}; convert all images to one channel count (greyscale "
                                    "or RGB)")
        object.__setattr__(self, "images", tuple(images))
        object.__setattr__(self, "masks", tuple(masks))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "class_names", names)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        where = f"{str(self.root)!r}, " if self.root else ""
        return (f"Dataset({where}{len(self)} samples, {channels_phrase(self.channels)}, "
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
            raise SegauditError(f"images have {channels_phrase(self.channels)} but the model expects {expected}; "
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
        image = image_to_unit(read_file(image_path, image_rel, is_mask=False), image_rel)
        if channels is not None and image.shape[-1] != channels:
            raise SegauditError(f"images have {channels_phrase(image.shape[-1])} but the model expects {channels}; "
                                f"convert the images (e.g. {image_rel}) or use a model built for {image.shape[-1]}")
        images.append(image)
        masks.append(mask_to_labels(read_file(mask_path, mask_rel, is_mask=True), mask_rel))
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
    pixels = image_to_unit(read_file(image_path, str(image_path), is_mask=False), str(image_path))
    if mask is None:
        labels = np.zeros(pixels.shape[:2], np.int64)
        files = ((str(image_path), "(no mask)"),)
    else:
        mask_path = Path(mask)
        if not mask_path.is_file():
            raise SegauditError(f"mask file {str(mask_path)!r} does not exist")
        labels = mask_to_labels(read_file(mask_path, str(mask_path), is_mask=True), str(mask_path))
        files = ((str(image_path), str(mask_path)),)
    return Dataset([pixels], [labels], (image_path.name.split(".")[0],), _class_names_from_arg(classes), files)


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


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _list_files(folder: Path, root: Path, suffixes: tuple[str, ...], kind: str) -> dict[str, Path]:
    """Stem -> file in ``folder``; hidden files are skipped, other formats refused."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        suffix = file_suffix(path)
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


def channels_phrase(c: int) -> str:
    """``"1 channel"`` or ``"<c> channels"``, for messages."""
    return f"{c} channel" if c == 1 else f"{c} channels"


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _few(items, limit: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
