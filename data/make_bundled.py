"""Regenerate the bundled datasets under data/ from their upstream files (a maintainer tool).

segaudit never runs this: it reads the PNG folders this script writes. Run it only to rebuild them,
after extracting the two upstream packages (see data/README.md for versions, licences and what changes):

    pip download --no-deps stardist==0.9.2 && unzip stardist-0.9.2-*.whl -d /tmp/dl/sd
    apt-get download insighttoolkit5-examples && dpkg-deb -x insighttoolkit5-examples_5.2.1*.deb /tmp/dl/itk
    python data/make_bundled.py --stardist /tmp/dl/sd/stardist/data/images \
        --itk /tmp/dl/itk/usr/share/doc/insighttoolkit5-examples/examples/Data

Both datasets are written in the folder layout ``segaudit.data.load_dataset`` reads:
``<name>/images/<stem>.png``, ``<name>/masks/<stem>.png`` and ``<name>/classes.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent
TILE = 128
# Contrast window for the 16-bit nuclei image: the 1st and 99.8th intensity percentiles of the whole
# 512x512 image (the usual choice for fluorescence, e.g. csbdeep/stardist `normalize`), so all tiles
# share one scale and a few saturated pixels do not darken everything else.
LOW_PCT, HIGH_PCT = 1.0, 99.8
# ITK k-means label -> bundled class index. See data/README.md for why.
KMEANS_TO_CLASS = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 2, 6: 3}
BRAIN_CLASSES = ["background", "brain_dark", "brain_mid", "brain_bright"]
MIN_BRAIN_FRACTION = 0.10  # keep slices where brain classes cover at least this share of pixels
SLICE_STEP = 2  # every second such slice: neighbours 3 mm apart are near duplicates


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)


def _save(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(image.astype(np.uint8), mode="L").save(folder / "images" / f"{stem}.png", optimize=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(folder / "masks" / f"{stem}.png", optimize=True)


def make_nuclei(src: Path, out: Path) -> int:
    """DSB2018 fluorescence nuclei (stardist's img2d/mask2d) -> 16 tiles of 128x128, binary masks."""
    image = tifffile.imread(src / "img2d.tif").astype(np.float64)  # (512, 512) uint16
    labels = tifffile.imread(src / "mask2d.tif")  # (512, 512) instance ids 0..183
    lo, hi = np.percentile(image, [LOW_PCT, HIGH_PCT])
    image8 = np.round(np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255)
    mask = (labels > 0).astype(np.uint8)
    _fresh(out)
    count = 0
    for r in range(image.shape[0] // TILE):
        for c in range(image.shape[1] // TILE):
            window = np.s_[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
            _save(out, f"img2d_r{r}_c{c}", image8[window], mask[window])
            count += 1
    (out / "classes.json").write_text(json.dumps(["background", "nucleus"]) + "\n")
    print(f"nuclei: {count} tiles, contrast window [{lo:g}, {hi:g}] -> [0, 255]")
    return count


def make_brain_mri(src: Path, out: Path) -> int:
    """ITK's KmeansTest T1 volume + k-means labels -> 2-D slices along the volume's third axis."""
    t1 = np.asanyarray(nib.load(src / "KmeansTest_T1UCharRaw.nii.gz").dataobj)  # (128, 128, 62) int16 0..255
    km = np.asanyarray(nib.load(src / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz").dataobj)  # uint8 0..6
    lut = np.zeros(256, np.uint8)
    for label, cls in KMEANS_TO_CLASS.items():
        lut[label] = cls
    classes = lut[km]
    brain_fraction = (classes > 0).mean(axis=(0, 1))
    keep = np.flatnonzero(brain_fraction >= MIN_BRAIN_FRACTION)[::SLICE_STEP]
    _fresh(out)
    for k in keep:
        # Array axes are (L, S, A) per the NIfTI header: transpose and flip so rows run superior ->
        # inferior and columns patient right -> left (the radiological view of a coronal slice).
        _save(out, f"t1_s{k:02d}", t1[:, :, k].T[::-1], classes[:, :, k].T[::-1])
    (out / "classes.json").write_text(json.dumps(BRAIN_CLASSES) + "\n")
    print(f"brain_mri: {len(keep)} slices ({', '.join(str(k) for k in keep)})")
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stardist", type=Path, default=Path("/tmp/dl/sd/stardist/data/images"),
                        help="folder holding stardist's img2d.tif and mask2d.tif")
    parser.add_argument("--itk", type=Path,
                        default=Path("/tmp/dl/itk/usr/share/doc/insighttoolkit5-examples/examples/Data"),
                        help="folder holding ITK's KmeansTest_*.nii.gz")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write nuclei/ and brain_mri/")
    args = parser.parse_args()
    make_nuclei(args.stardist, args.out / "nuclei")
    make_brain_mri(args.itk, args.out / "brain_mri")


if __name__ == "__main__":
    main()
