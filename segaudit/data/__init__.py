"""Datasets: the two bundled examples, a folder loader, and albumentations preprocessing into a ``Batch``.

* :mod:`~segaudit.data.readers`: one image or mask file (PNG, TIFF, DICOM, NIfTI, JPEG) into pixels or labels;
* :mod:`~segaudit.data.dataset`: :class:`Dataset`, the bundled datasets, folder discovery, :func:`split`;
* :mod:`~segaudit.data.batches`: :func:`make_batch` and :func:`patches` (fitting, augmentation, normalisation).

A dataset folder pairs images and masks by file stem (``images/a.png`` with ``masks/a.png``), with the class
names in ``classes.json``; see :mod:`segaudit.data.dataset` for the layout and formats.

Example:
    >>> data = load_dataset("nuclei")
    >>> len(data), data.channels, data.class_names
    (16, 1, ('background', 'nucleus'))
    >>> batch = make_batch(data, [0, 1], size=64)
    >>> tuple(batch.images.shape), tuple(batch.masks.shape)
    ((2, 1, 64, 64), (2, 64, 64))
"""
from __future__ import annotations

from .batches import FITS, check_size_multiple, make_batch, patches
from .dataset import BUNDLED, Dataset, data_root, load_dataset, load_pair, split
from .readers import image_to_unit, mask_to_labels

__all__ = ["BUNDLED", "FITS", "Dataset", "check_size_multiple", "data_root", "image_to_unit",
           "load_dataset", "load_pair", "make_batch", "mask_to_labels", "patches", "split"]
