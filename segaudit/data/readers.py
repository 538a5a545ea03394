"""Reading one image or mask file (PNG, TIFF, DICOM, NIfTI, JPEG) into a numpy array of pixels or class indices.

Files larger than :data:`MAX_SIDE` pixels per side or :data:`MAX_BYTES` decoded are refused from their header,
before decoding. The format libraries (Pillow, tifffile, pydicom, nibabel) load on first use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SegauditError

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIXES", "MAX_BYTES", "MAX_SIDE", "file_suffix", "image_to_unit",
           "mask_to_labels", "read_file"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
MAX_SIDE = 4096  # pixels per side
MAX_BYTES = 64 * 2**20  # decoded size of one file


def file_suffix(path: Path) -> str:
    """The lower-case suffix that names the format: ``.nii.gz`` counts as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_file(path: Path, rel: str, is_mask: bool) -> np.ndarray:
    """Decode one file to ``[H, W]`` or ``[H, W, C]``, refusing oversized files before decoding them.

    ``rel`` names the file in messages; ``is_mask`` keeps palette PNG indices and raw DICOM values (no modality
    rescale) as stored.
    """
    suffix = file_suffix(path)
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
    """Refuse a file over :data:`MAX_SIDE` per side or :data:`MAX_BYTES` decoded (read at call time)."""
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


def image_to_unit(array: np.ndarray, rel: str) -> np.ndarray:
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


def mask_to_labels(array: np.ndarray, rel: str) -> np.ndarray:
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
