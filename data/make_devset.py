"""Regenerate the development set data/dev/<kind>/ from files that ship inside installed packages.

A maintainer tool, never imported at run time. It needs no downloads: every source file is read from the
installed ``scikit-image``, ``pydicom`` and ``nibabel`` packages. Run it from the repository root:

    .venv/bin/python data/make_devset.py

Each kind is written in the folder layout ``segaudit.data.load_dataset`` reads:
``dev/<kind>/images/<stem>.png`` (8-bit greyscale or 8-bit RGB), ``dev/<kind>/masks/<stem>.png`` (8-bit,
one class index per pixel) and ``dev/<kind>/classes.json``.

The masks are NOT expert annotations. They come from the classical segmentations written out below
(Hounsfield thresholds, Otsu / multi-Otsu splits, a Sato ridge filter, colour deconvolution) and are
documented in data/README.md ("dev" section). They exist so that mask-recovery attacks have a plausible,
image-aligned target; do not use them to judge segmentation quality.

The output is deterministic: no randomness; tiles are taken on fixed grids and kept by fixed rules.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import skimage
from PIL import Image
from pydicom.pixels import apply_modality_lut
from scipy import ndimage as ndi
from skimage import color, filters, io, measure, morphology, transform

HERE = Path(__file__).resolve().parent
OUT = HERE / "dev"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"

TILE = 128
MIN_CLASS_SHARE = 0.05  # every tile: its least common *present* class covers at least this share of pixels
MIN_STD = 12 / 255  # ... and its image's standard deviation (in [0, 1]) is at least this


# -- helpers ----------------------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear window ``[lo, hi]`` -> 0..255 (clipped, rounded)."""
    return np.round(np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def _structured(image: np.ndarray, mask: np.ndarray) -> bool:
    """The tile rule: least common present class >= MIN_CLASS_SHARE, image std >= MIN_STD."""
    counts = np.bincount(mask.ravel())
    present = counts[counts > 0]
    return (len(present) >= 2 and present.min() / mask.size >= MIN_CLASS_SHARE
            and float((image / 255.0).std()) >= MIN_STD)


def _spread(items: list, n: int) -> list:
    """At most ``n`` items, evenly spaced over the list (deterministic)."""
    if len(items) <= n:
        return items
    return [items[i] for i in np.round(np.linspace(0, len(items) - 1, n)).astype(int)]


def _grid(length: int, tile: int, step: int) -> list[int]:
    """Tile origins along one axis, ``step`` apart, the grid centred in ``length``."""
    n = (length - tile) // step + 1
    start = (length - tile - (n - 1) * step) // 2
    return [start + i * step for i in range(n)]


def _tiles(image: np.ndarray, mask: np.ndarray, step: int, tile: int = TILE):
    for y in _grid(mask.shape[0], tile, step):
        for x in _grid(mask.shape[1], tile, step):
            yield y, x, image[y:y + tile, x:x + tile], mask[y:y + tile, x:x + tile]


def _downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by an integer ``factor`` (trailing rows/columns that do not fill a block are dropped)."""
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    factors = (factor, factor) + (1,) * (image.ndim - 2)
    return transform.downscale_local_mean(np.asarray(image[:h, :w], np.float64), factors)


def _largest_components(mask: np.ndarray, min_share: float) -> np.ndarray:
    """Connected components covering at least ``min_share`` of the largest one."""
    labels = measure.label(mask)
    if labels.max() == 0:
        return mask
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= min_share * areas.max()) + 1
    return np.isin(labels, keep)


def _write(kind: str, classes: list[str], samples: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    folder = OUT / kind
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for stem, image, mask in samples:
        assert image.dtype == np.uint8 and mask.dtype == np.uint8 and image.shape[:2] == mask.shape
        assert int(mask.max()) < len(classes)
        Image.fromarray(image, mode="RGB" if image.ndim == 3 else "L").save(folder / "images" / f"{stem}.png",
                                                                             optimize=True)
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{stem}.png", optimize=True)
    (folder / "classes.json").write_text(json.dumps(classes) + "\n")
    masks = np.stack([m for _, _, m in samples])
    shares = ", ".join(f"{c} {np.mean(masks == k):.1%}" for k, c in enumerate(classes))
    print(f"{kind}: {len(samples)} samples {samples[0][1].shape}, classes: {shares}")


# -- kinds ------------------------------------------------------------------------------------------------

# CT: Hounsfield window and class thresholds.
CT_WINDOW = (-1000.0, 1000.0)  # HU -> 0..255 (a wide window: lung, soft tissue and bone all keep contrast)
CT_AIR_BELOW = -400.0  # HU; air and lung
CT_BONE_FROM = 200.0  # HU; bone (cortical and trabecular) and calcification
CT_TILE, CT_STEP = 64, 32  # the only licence-clear CT slice is 128x128: 64 px crops, 50% overlap


def make_ct() -> None:
    """pydicom CT_small.dcm (one 128x128 axial slice) -> 64x64 crops; classes by HU thresholds."""
    ds = pydicom.dcmread(PYDICOM_DATA / "CT_small.dcm")
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    image = _to_uint8(hu, *CT_WINDOW)
    smooth = filters.gaussian(hu, sigma=1.0, preserve_range=True)
    mask = np.ones(hu.shape, np.uint8)  # soft tissue (incl. fat)
    mask[smooth < CT_AIR_BELOW] = 0
    mask[smooth >= CT_BONE_FROM] = 2
    samples = [(f"ct_small_y{y:02d}x{x:02d}", im, m) for y, x, im, m in _tiles(image, mask, CT_STEP, CT_TILE)
               if _structured(im, m)]
    _write("ct", ["air", "soft_tissue", "bone"], samples)
    print(f"  ct: HU range {hu.min():.0f}..{hu.max():.0f}; window {CT_WINDOW} -> [0, 255]")


MRI_SLICES = 10


def make_mri() -> None:
    """nibabel example4d.nii.gz (brain EPI, 128x96x24, first volume) -> axial slices padded to 128x128.

    Head mask: Otsu on the Gaussian-smoothed volume, holes filled per slice, largest 3-D component.
    Classes: a two-level split (Otsu) of the raw intensities inside the head mask, one threshold for the whole
    volume. (A 3-level multi-Otsu split leaves its darkest class under 5% of the pixels of every slice.)
    """
    img = nibabel.load(NIBABEL_DATA / "example4d.nii.gz")
    vol = np.asanyarray(img.dataobj)[..., 0].astype(np.float64)  # axes (L, A, S)
    smooth = filters.gaussian(vol, sigma=1.0, preserve_range=True)
    head = smooth > filters.threshold_otsu(smooth)
    head = np.stack([ndi.binary_fill_holes(head[..., z]) for z in range(head.shape[2])], axis=-1)
    head = _largest_components(head, 1.0)
    t1 = filters.threshold_otsu(vol[head])
    labels = np.zeros(vol.shape, np.uint8)
    labels[head] = 1 + (vol[head] >= t1)
    hi = float(np.percentile(vol[head], 99.5))
    pad = (TILE - vol.shape[1]) // 2
    candidates = []
    for z in range(vol.shape[2]):
        # rows anterior -> posterior, columns patient right -> left (radiological view); pad rows to 128
        im = np.pad(_to_uint8(vol[:, ::-1, z].T, 0.0, hi), ((pad, TILE - vol.shape[1] - pad), (0, 0)))
        m = np.pad(labels[:, ::-1, z].T, ((pad, TILE - vol.shape[1] - pad), (0, 0)))
        if _structured(im, m):
            candidates.append((f"example4d_z{z:02d}", im, m))
    _write("mri", ["background", "tissue_dark", "tissue_bright"], _spread(candidates, MRI_SLICES))
    print(f"  mri: Otsu threshold {t1:.0f} inside the head; window [0, {hi:.0f}] -> [0, 255]")


ABDOMEN_STEP = 86  # 128 px tiles on a 3x5 grid over 300x484 (neighbours share 42 px)


def make_mri_abdomen() -> None:
    """pydicom examples_overlay.dcm (axial abdominal MR, 300x484) -> 128x128 tiles at full resolution.

    Body mask: Li's minimum cross-entropy threshold on the smoothed image (Otsu there splits bright organs
    from the rest of the body), holes filled, largest component (the arms at the image edges drop out).
    Classes: 3-level multi-Otsu inside the body mask.
    """
    ds = pydicom.dcmread(PYDICOM_DATA / "examples_overlay.dcm")
    mr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    smooth = filters.gaussian(mr, sigma=2.0, preserve_range=True)
    body = ndi.binary_fill_holes(smooth > filters.threshold_li(smooth))
    body = _largest_components(body, 1.0)
    t1, t2 = filters.threshold_multiotsu(mr[body], classes=3)
    mask = np.zeros(mr.shape, np.uint8)
    mask[body] = 1 + (mr[body] >= t1) + (mr[body] >= t2)
    lo, hi = np.percentile(mr, [0.5, 99.5])
    image = _to_uint8(mr, lo, hi)
    samples = [(f"overlay_y{y:03d}x{x:03d}", im, m) for y, x, im, m in _tiles(image, mask, ABDOMEN_STEP)
               if _structured(im, m)]
    _write("mri_abdomen", ["background", "body_dark", "body_mid", "body_bright"], samples)
    print(f"  mri_abdomen: Li threshold {filters.threshold_li(smooth):.0f}, multi-Otsu {t1:.0f}, {t2:.0f}; "
          f"window [{lo:.0f}, {hi:.0f}] -> [0, 255]")


FUNDUS_FACTOR = 2  # 1411 px -> 705 px: main vessels ~6-10 px wide, tile = 18% of the disc diameter
FUNDUS_TILES = 8
FUNDUS_SIGMAS = (1.0, 2.0, 3.0)
FUNDUS_MIN_VESSEL = 30  # px; smaller ridge fragments are dropped


def make_fundus() -> None:
    """scikit-image retina.jpg (RGB fundus photograph) -> 2x downsampled, 128x128 tiles.

    Field of view: red channel > 20 (of 255), holes filled, eroded by 3 px.
    Vessels: Sato tubeness (dark ridges, sigmas 1-3 px) of the green channel inside the FOV, Otsu threshold
    of the response inside the FOV, objects under 30 px removed.
    """
    rgb = _downscale(io.imread(SKIMAGE_DATA / "retina.jpg"), FUNDUS_FACTOR)
    fov = ndi.binary_fill_holes(rgb[..., 0] > 20)
    fov = ndi.binary_erosion(fov, structure=morphology.disk(3))
    green = rgb[..., 1] / 255.0
    ridge = filters.sato(green, sigmas=FUNDUS_SIGMAS, black_ridges=True)
    ridge[~fov] = 0
    ridge_t = filters.threshold_otsu(ridge[fov])
    vessel = (ridge > ridge_t) & fov
    vessel = morphology.remove_small_objects(vessel, max_size=FUNDUS_MIN_VESSEL - 1)
    mask = np.where(fov, 1, 0).astype(np.uint8)
    mask[vessel] = 2
    image = np.round(rgb).astype(np.uint8)
    candidates = [(f"retina_y{y:03d}x{x:03d}", im, m) for y, x, im, m in _tiles(image, mask, TILE)
                  if _structured(im, m)]
    _write("fundus", ["outside_fov", "retina", "vessel"], _spread(candidates, FUNDUS_TILES))
    print(f"  fundus: {len(candidates)} tiles passed; Sato Otsu threshold {ridge_t:.4f}; vessel share of the FOV "
          f"{vessel[fov].mean():.1%}")


HISTO_TILES = 8
HISTO_MIN_OBJECT = 20  # px


def make_histology() -> None:
    """scikit-image ihc.png (IHC, DAB + hematoxylin, 512x512 RGB) -> 128x128 tiles at full resolution.

    Colour deconvolution (skimage.color.rgb2hed), each stain channel smoothed (Gaussian sigma 1).
    DAB: DAB channel > its Otsu threshold. Hematoxylin: hematoxylin channel > its Otsu threshold and not DAB.
    Both cleaned: objects and holes under 20 px removed. The rest is background (unstained tissue, lumen).
    """
    rgb = io.imread(SKIMAGE_DATA / "ihc.png")[..., :3]
    hed = color.rgb2hed(rgb)
    h = filters.gaussian(hed[..., 0], sigma=1.0)
    d = filters.gaussian(hed[..., 2], sigma=1.0)

    def clean(m: np.ndarray) -> np.ndarray:
        m = morphology.remove_small_objects(m, max_size=HISTO_MIN_OBJECT - 1)
        return morphology.remove_small_holes(m, max_size=HISTO_MIN_OBJECT - 1)

    t_d, t_h = filters.threshold_otsu(d), filters.threshold_otsu(h)
    dab = clean(d > t_d)
    hema = clean((h > t_h) & ~dab)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[hema] = 1
    mask[dab] = 2
    candidates = [(f"ihc_y{y:03d}x{x:03d}", im, m) for y, x, im, m in _tiles(rgb, mask, TILE)
                  if _structured(im, m)]
    _write("histology", ["background", "hematoxylin", "dab"], _spread(candidates, HISTO_TILES))
    print(f"  histology: {len(candidates)} tiles passed; Otsu thresholds hematoxylin {t_h:.4f}, DAB {t_d:.4f}")


CELL_FACTOR = 2  # 660x550 -> 330x275: the cell (~120 px across) becomes ~60 px
CELL_STEP = 32
CELL_TILES = 8


def make_microscopy() -> None:
    """scikit-image cell.png (quantitative phase image of one cell) -> 2x downsampled, 128x128 tiles.

    Cell: Otsu threshold of the Gaussian-smoothed (sigma 1.5 px) image, holes filled, binary opening
    (disk 2), largest component. Tiles overlap (one cell in the whole image): see data/README.md.
    """
    grey = _downscale(io.imread(SKIMAGE_DATA / "cell.png"), CELL_FACTOR)
    smooth = filters.gaussian(grey, sigma=1.5, preserve_range=True)
    t_cell = filters.threshold_otsu(smooth)
    cell = ndi.binary_fill_holes(smooth > t_cell)
    cell = ndi.binary_opening(cell, structure=morphology.disk(2))
    cell = _largest_components(cell, 1.0)
    mask = cell.astype(np.uint8)
    image = np.round(grey).astype(np.uint8)
    candidates = [(f"cell_y{y:03d}x{x:03d}", im, m) for y, x, im, m in _tiles(image, mask, CELL_STEP)
                  if _structured(im, m)]
    _write("microscopy", ["background", "cell"], _spread(candidates, CELL_TILES))
    print(f"  microscopy: {len(candidates)} tiles passed; Otsu threshold {t_cell:.1f}; cell {cell.sum()} px "
          f"(~{2 * np.sqrt(cell.sum() / np.pi):.0f} px across)")


KINDS = {"ct": make_ct, "mri": make_mri, "mri_abdomen": make_mri_abdomen, "fundus": make_fundus,
         "histology": make_histology, "microscopy": make_microscopy}


def main() -> None:
    print(f"scikit-image {skimage.__version__}, pydicom {pydicom.__version__}, nibabel {nibabel.__version__}")
    for make in KINDS.values():
        make()


if __name__ == "__main__":
    main()
