"""Data layer: bundled datasets (known answers), a round trip per format, preprocessing, and every bad input."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segaudit import data as sd
from segaudit.data import BUNDLED, Dataset, check_size_multiple, load_dataset, make_batch, patches, split
from segaudit.errors import SegauditError

# -- writers -------------------------------------------------------------------------------------------------


def write_png(path, array):
    Image.fromarray(array).save(path)


def write_tiff(path, array):
    tifffile.imwrite(path, array)


def write_nifti(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def write_dicom(path, array, slope=1.0, intercept=0.0, frames=1):
    """A minimal valid DICOM file (Secondary Capture, explicit VR little endian) holding ``array``."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = array.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = array.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = array.tobytes()
    ds.save_as(path, enforce_file_format=True)


WRITERS = {".png": write_png, ".tif": write_tiff, ".tiff": write_tiff, ".nii": write_nifti,
           ".nii.gz": write_nifti, ".dcm": write_dicom}


def make_folder(root, samples, classes=("background", "foreground"), image_ext=".png", mask_ext=".png"):
    """Write ``{stem: (image, mask)}`` as a dataset folder; ``classes=None`` writes no classes.json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for stem, (image, mask) in samples.items():
        WRITERS.get(image_ext, write_png)(root / "images" / f"{stem}{image_ext}", image)
        WRITERS[mask_ext](root / "masks" / f"{stem}{mask_ext}", mask)
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(list(classes)))
    return root


def grey(h=16, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def binary(h=16, w=16, seed=0):
    return (np.random.default_rng(seed + 1).random((h, w)) > 0.5).astype(np.uint8)


@pytest.fixture
def simple(tmp_path):
    return make_folder(tmp_path / "ds", {"a": (grey(seed=0), binary(seed=0)), "b": (grey(seed=1), binary(seed=1))})


# -- bundled data: known answers -----------------------------------------------------------------------------


def test_bundled_names():
    assert list(BUNDLED) == ["nuclei", "brain_mri"]
    assert all((BUNDLED[n] / "classes.json").is_file() for n in BUNDLED)


def test_bundled_nuclei():
    ds = load_dataset("nuclei")
    assert len(ds) == 16 and ds.channels == 1 and ds.class_names == ("background", "nucleus")
    assert ds.names[0] == "img2d_r0_c0" and ds.names[-1] == "img2d_r3_c3"
    assert all(img.shape == (128, 128, 1) and img.dtype == np.float32 for img in ds.images)
    assert all(m.shape == (128, 128) and m.dtype == np.int64 for m in ds.masks)
    assert set(np.unique(np.stack(ds.masks)).tolist()) == {0, 1}
    # 52226 of the 512x512 pixels of stardist's mask2d.tif are nuclei; tiling keeps every pixel.
    assert int(sum(m.sum() for m in ds.masks)) == 52226
    pixels = np.stack(ds.images)
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert np.allclose(pixels * 255, np.round(pixels * 255), atol=1e-4)  # uint8 PNGs divided by 255


def test_bundled_brain_mri():
    ds = load_dataset("brain_mri")
    assert len(ds) == 20 and ds.channels == 1 and ds.min_size == 128
    assert ds.class_names == ("background", "brain_dark", "brain_mid", "brain_bright")
    assert ds.names == tuple(f"t1_s{k:02d}" for k in range(8, 47, 2))
    assert all(set(np.unique(m).tolist()) == {0, 1, 2, 3} for m in ds.masks)
    # Brain classes lie inside the head: the image is never blank where the mask says brain.
    assert all((img[..., 0][m > 0] > 0).mean() > 0.99 for img, m in ds)


def test_bundled_data_dir_override(tmp_path, monkeypatch):
    shutil.copytree(BUNDLED["nuclei"], tmp_path / "nuclei")
    (tmp_path / "nuclei" / "classes.json").write_text('["bg", "nucleus"]')
    monkeypatch.setenv("SEGAUDIT_DATA_DIR", str(tmp_path))
    assert BUNDLED["nuclei"] == tmp_path / "nuclei"
    assert load_dataset("nuclei").class_names == ("bg", "nucleus")
    with pytest.raises(SegauditError, match="bundled dataset 'brain_mri' is missing.*SEGAUDIT_DATA_DIR"):
        load_dataset("brain_mri")


# -- formats: round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm"])
def test_round_trip_uint8(tmp_path, ext):
    image, mask = grey(12, 20), binary(12, 20)
    root = make_folder(tmp_path, {"x": (image, mask)}, image_ext=ext, mask_ext=ext)
    ds = load_dataset(root)
    got_image, got_mask = ds[0]
    assert got_image.shape == (12, 20, 1) and got_image.dtype == np.float32
    np.testing.assert_allclose(got_image[..., 0], image / 255.0, atol=1e-6)
    np.testing.assert_array_equal(got_mask, mask)
    assert ds.files == ((f"images/x{ext}", f"masks/x{ext}"),)


@pytest.mark.parametrize("ext", [".png", ".tif", ".dcm", ".nii.gz"])
def test_round_trip_16_bit_is_min_max_scaled(tmp_path, ext):
    image = np.linspace(1000, 4000, 16 * 16).reshape(16, 16).astype(np.uint16)
    root = make_folder(tmp_path, {"x": (image, binary())}, image_ext=ext)
    got = load_dataset(root)[0][0][..., 0]
    np.testing.assert_allclose(got, (image - 1000.0) / 3000.0, atol=1e-6)


def test_dicom_rescale_slope_and_intercept(tmp_path):
    stored = np.array([[0, 10], [20, 30]], np.uint16)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_dicom(tmp_path / "images" / "ct.dcm", stored, slope=2.0, intercept=-1024.0)
    write_dicom(tmp_path / "masks" / "ct.dcm", np.array([[0, 1], [1, 2]], np.uint16))
    ds = load_dataset(tmp_path, classes=3)
    np.testing.assert_allclose(ds[0][0][..., 0], stored / 30.0, atol=1e-6)  # affine rescale, then min-max
    np.testing.assert_array_equal(ds[0][1], [[0, 1], [1, 2]])
    assert ds.class_names == ("class_0", "class_1", "class_2")


def test_rgb_rgba_palette_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((10, 14, 1), 7, np.uint8)], axis=-1)
    palette_mask = Image.fromarray(binary(10, 14)).convert("P")  # palette index = class
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_png(tmp_path / "images" / "a.png", rgba)
    tifffile.imwrite(tmp_path / "images" / "b.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    yy, xx = np.mgrid[0:10, 0:14]
    smooth = np.stack([yy * 20, xx * 15, 255 - yy * 20], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "images" / "c.jpg", quality=95)
    for stem in "abc":
        palette_mask.save(tmp_path / "masks" / f"{stem}.png")
    ds = load_dataset(tmp_path, classes=["bg", "fg"], channels=3)
    assert ds.channels == 3 and ds.names == ("a", "b", "c")
    np.testing.assert_allclose(ds[0][0], rgb / 255.0, atol=1e-6)  # alpha dropped
    np.testing.assert_allclose(ds[1][0], rgb / 255.0, atol=1e-6)  # planar TIFF -> channels last
    assert np.abs(ds[2][0] - smooth / 255.0).mean() < 0.03  # lossy JPEG
    assert all(np.array_equal(m, binary(10, 14)) for m in ds.masks)


def test_nifti_singleton_dimension_is_a_slice(tmp_path):
    image, mask = grey(), binary()
    root = make_folder(tmp_path, {"s": (image[:, :, None], mask[:, :, None])}, image_ext=".nii.gz", mask_ext=".nii.gz")
    np.testing.assert_array_equal(load_dataset(root)[0][1], mask)


def test_dataset_from_arrays():
    ds = Dataset([np.ones((4, 6))], [np.zeros((4, 6), np.uint8)], ("a",), ("bg", "fg"))
    assert ds[0][0].shape == (4, 6, 1) and ds[0][1].dtype == np.int64 and ds.num_classes == 2
    with pytest.raises(ValueError):
        ds.images[0][0, 0, 0] = 2.0  # stored read-only
    assert "1 samples, 1 channel" in repr(ds)


# -- preprocessing -------------------------------------------------------------------------------------------


def test_make_batch_shapes_and_normalisation(simple):
    ds = load_dataset(simple)
    batch = make_batch(ds, [0, 1, 0], size=32, stride=32)
    assert batch.images.shape == (3, 1, 32, 32) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (3, 32, 32) and batch.masks.dtype == torch.int64
    assert batch.mean == (0.5,) and batch.std == (0.5,) and batch.names == ("a", "b", "a")
    raw = make_batch(ds, [0, 1, 0], size=32, normalize=False)
    assert raw.mean == (0.0,) and raw.std == (1.0,)
    assert 0.0 <= float(raw.images.min()) and float(raw.images.max()) <= 1.0
    torch.testing.assert_close(batch.images, (raw.images - 0.5) / 0.5)


def test_normalising_with_dataset_statistics_gives_zero_mean_unit_std():
    ds = load_dataset("nuclei")
    pixels = np.stack(ds.images)
    mean, std = float(pixels.mean()), float(pixels.std())
    batch = make_batch(ds, None, size=128, mean=mean, std=std)  # 128 px: no resize, no padding
    assert batch.mean == (pytest.approx(mean),) and batch.std == (pytest.approx(std),)
    assert abs(float(batch.images.mean())) < 1e-4 and abs(float(batch.images.std()) - 1) < 1e-3
    torch.testing.assert_close(batch.images * std + mean, torch.from_numpy(pixels).permute(0, 3, 1, 2),
                               atol=1e-5, rtol=0)


def test_per_channel_normalisation(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ds = load_dataset(make_folder(tmp_path, {"a": (rgb, binary())}))
    batch = make_batch(ds, [0], size=16, stride=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    expected = (torch.from_numpy(rgb / 255.0).permute(2, 0, 1) - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) \
        / torch.tensor([0.5, 0.25, 2.0])[:, None, None]
    torch.testing.assert_close(batch.images[0], expected.float(), atol=1e-5, rtol=0)
    assert batch.mean == (0.1, 0.2, 0.3) and batch.std == (0.5, 0.25, 2.0)
    with pytest.raises(SegauditError, match="mean has 2 values but the images have 3 channels"):
        make_batch(ds, [0], size=16, stride=16, mean=(0.1, 0.2))
    with pytest.raises(SegauditError, match="std must be positive"):
        make_batch(ds, [0], size=16, stride=16, std=0.0)


def test_augmentation_is_deterministic_by_seed_and_keeps_image_and_mask_aligned():
    ds = load_dataset("nuclei")
    first = make_batch(ds, list(range(8)), size=128, augment=True, seed=7)
    again = make_batch(ds, list(range(8)), size=128, augment=True, seed=7)
    other = make_batch(ds, list(range(8)), size=128, augment=True, seed=8)
    plain = make_batch(ds, list(range(8)), size=128)
    torch.testing.assert_close(first.images, again.images)
    assert torch.equal(first.masks, again.masks)
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.images, plain.images)
    for k in range(8):  # the augmented pair is one of the 8 flips/rotations of the plain pair, the same one
        variants = [(torch.rot90(im, r, (-2, -1)), torch.rot90(m, r, (-2, -1)))
                    for im, m in [(plain.images[k], plain.masks[k]),
                                  (plain.images[k].flip(-1), plain.masks[k].flip(-1))]
                    for r in range(4)]
        assert any(torch.equal(first.images[k], im) and torch.equal(first.masks[k], m) for im, m in variants)


def test_crop_is_deterministic_and_prefers_foreground(tmp_path):
    mask = np.zeros((200, 300), np.uint8)
    mask[150:160, 20:30] = 1  # one small object far from the centre
    ds = load_dataset(make_folder(tmp_path, {"a": (grey(200, 300), mask)}))
    crops = make_batch(ds, [0] * 6, size=32, fit="crop", seed=3)
    assert crops.names == make_batch(ds, [0] * 6, size=32, fit="crop", seed=3).names
    assert all(name.startswith("a@y") for name in crops.names)
    assert all(int(m.sum()) > 0 for m in crops.masks)
    anywhere = make_batch(ds, [0] * 6, size=32, fit="crop", seed=3, foreground=0.0)
    assert sum(int(m.sum()) > 0 for m in anywhere.masks) < 6
    # the crop holds exactly the pixels at the corner it is named after
    y, x = (int(v) for v in crops.names[0].split("@y")[1].split("x"))
    raw = make_batch(ds, [0], size=32, fit="crop", seed=3, normalize=False)
    np.testing.assert_allclose(raw.images[0, 0].numpy(), ds[0][0][y:y + 32, x:x + 32, 0])


def test_patches_are_deterministic_and_cover_images():
    ds = load_dataset("brain_mri")
    batch = patches(ds, size=32, count=24, seed=1)
    assert batch.images.shape == (24, 1, 32, 32)
    assert batch.names == patches(ds, size=32, count=24, seed=1).names
    assert batch.names != patches(ds, size=32, count=24, seed=2).names
    assert {n.split("@")[0] for n in batch.names} == set(ds.names)  # 24 >= 20: every image used
    assert all(int((m > 0).sum()) > 0 for m in batch.masks)


@pytest.mark.parametrize("fit", ["resize", "center", "crop"])
def test_non_square_and_small_images(tmp_path, fit):
    image, mask = grey(40, 100), np.ones((40, 100), np.uint8)
    ds = load_dataset(make_folder(tmp_path, {"wide": (image, mask)}))
    batch = make_batch(ds, [0], size=64, fit=fit, seed=0)
    assert batch.images.shape == (1, 1, 64, 64) and batch.masks.shape == (1, 64, 64)
    assert set(batch.masks.unique().tolist()) == {0, 1}  # padding rows are class 0
    if fit == "resize":  # 100 -> 64 wide, 40 -> 26 (rounded) tall, centred
        assert int(batch.masks[0, :, 0].sum()) in (25, 26) and int(batch.masks[0, 32].sum()) == 64


def test_resize_keeps_mask_values(tmp_path):
    mask = np.random.default_rng(0).integers(0, 5, (37, 53)).astype(np.uint8)
    ds = load_dataset(make_folder(tmp_path, {"a": (grey(37, 53), mask)}, classes=list("abcde")))
    for size in (32, 96):
        values = set(make_batch(ds, [0], size=size, stride=32).masks.unique().tolist())
        assert values <= set(range(5))


def test_stride_handling():
    check_size_multiple(96, 32)
    with pytest.raises(SegauditError, match=r"size 100 is not a multiple of the model's output stride 32; "
                                            r"use 96 or 128"):
        check_size_multiple(100, 32)
    with pytest.raises(SegauditError, match=r"size 16 is not a multiple of the model's output stride 32; use 32$"):
        check_size_multiple(16, 32)
    with pytest.raises(SegauditError, match="positive number of pixels"):
        check_size_multiple(0, 32)
    ds = load_dataset("nuclei")
    with pytest.raises(SegauditError, match="use 96 or 128"):
        make_batch(ds, [0], size=100)
    assert make_batch(ds, [0], size=48, stride=16).images.shape[-1] == 48


def test_split_is_deterministic_disjoint_and_complete():
    ds = load_dataset("nuclei")
    train, held = split(ds, holdout=0.25, seed=0)
    assert (train, held) == split(ds, holdout=0.25, seed=0)
    assert len(held) == 4 and sorted(train + held) == list(range(16))
    assert split(ds, holdout=0.25, seed=1) != (train, held)
    assert split(2, holdout=0.01) == ([0], [1]) or split(2, holdout=0.01) == ([1], [0])
    with pytest.raises(SegauditError, match="holdout must be a share in"):
        split(ds, holdout=1.0)
    with pytest.raises(SegauditError, match="cannot split 1 sample"):
        split(1)


def test_bad_batch_arguments():
    ds = load_dataset("nuclei")
    with pytest.raises(SegauditError, match="sample index 16 is out of range.*0..15"):
        make_batch(ds, [16])
    with pytest.raises(SegauditError, match="no samples selected"):
        make_batch(ds, [])
    with pytest.raises(SegauditError, match="unknown fit 'stretch'; use one of resize, center, crop"):
        make_batch(ds, [0], fit="stretch")
    with pytest.raises(SegauditError, match="count must be a positive integer"):
        patches(ds, count=0)


# -- bad inputs: one clear error each ------------------------------------------------------------------------


def test_mask_values_outside_class_range(tmp_path):
    mask = binary() * 3
    root = make_folder(tmp_path, {"a": (grey(), mask)})
    with pytest.raises(SegauditError, match=r"mask masks/a.png has values \[0, 3\] outside 0..1 \(2 classes\); "
                                            r"masks must hold class indices .* declare more classes"):
        load_dataset(root)
    (root / "classes.json").unlink()
    assert load_dataset(root, classes=4).num_classes == 4


def test_0_255_mask_says_divide_by_255(tmp_path):
    root = make_folder(tmp_path, {"a": (grey(), binary() * 255)})
    with pytest.raises(SegauditError, match=r"mask masks/a.png has values \[0, 255\] outside 0..1 \(2 classes\).*"
                                            r"a 0/255 binary mask needs dividing by 255"):
        load_dataset(root)


def test_channel_mismatch(tmp_path, simple):
    """The fix names no flag that does not exist (there is no --in-channels outside 'attack')."""
    with pytest.raises(SegauditError, match=r"^images have 1 channel but the model expects 3; convert the images "
                                            r"\(e.g. images/a.png\) or use a model built for 1$"):
        load_dataset(simple, channels=3)
    rgb = np.zeros((16, 16, 3), np.uint8)
    root = make_folder(tmp_path / "rgb", {"c": (rgb, binary())})
    with pytest.raises(SegauditError, match="images have 3 channels but the model expects 1; convert the images"):
        load_dataset(root, channels=1)
    with pytest.raises(SegauditError, match=r"expects 3; convert the images.* or use a model built for 1$"):
        load_dataset("nuclei").check_channels(3)


def test_mixed_channel_counts(tmp_path):
    root = make_folder(tmp_path, {"a": (grey(), binary()), "b": (np.zeros((16, 16, 3), np.uint8), binary())})
    with pytest.raises(SegauditError, match="images/b.png has 3 channels but images/a.png has 1 channel"):
        load_dataset(root)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SegauditError, match="has no masks/ folder; a dataset folder needs images/ and masks/"):
        load_dataset(tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(SegauditError, match="holds no images; add PNG, TIFF, DICOM, NIfTI or JPEG"):
        load_dataset(tmp_path, classes=2)
    with pytest.raises(SegauditError, match="no dataset folder .*bundled datasets: nuclei, brain_mri"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(SegauditError, match="no dataset folder 'nucleii'"):
        load_dataset("nucleii")


def test_unpaired_files_are_named(simple):
    write_png(simple / "images" / "lonely.png", grey())
    write_png(simple / "masks" / "stray.png", binary())
    with pytest.raises(SegauditError, match=r"unpaired files .*images without a mask: images/lonely.png; "
                                            r"masks without an image: masks/stray.png"):
        load_dataset(simple)


def test_duplicate_stems_and_unsupported_files(simple):
    write_tiff(simple / "images" / "a.tif", grey())
    with pytest.raises(SegauditError, match="images/a.png and images/a.tif share the name 'a'"):
        load_dataset(simple)
    (simple / "images" / "a.tif").unlink()
    (simple / "images" / "notes.txt").write_text("hi")
    with pytest.raises(SegauditError, match="images/notes.txt is not a supported image format"):
        load_dataset(simple)
    (simple / "images" / "notes.txt").unlink()
    (simple / "images" / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    assert len(load_dataset(simple)) == 2


def test_jpeg_mask_refused(tmp_path):
    root = make_folder(tmp_path, {"a": (grey(), binary())})
    (root / "masks" / "a.png").unlink()
    Image.fromarray(binary()).save(root / "masks" / "a.jpg")
    with pytest.raises(SegauditError, match="masks/a.jpg is not a supported mask format; save masks as PNG or TIFF"):
        load_dataset(root)


@pytest.mark.parametrize("ext", [".png", ".tif", ".dcm", ".nii.gz", ".jpg"])
def test_unreadable_file_is_named(simple, ext):
    (simple / "images" / "a.png").unlink()
    (simple / "images" / f"a{ext}").write_bytes(b"this is not an image" * 10)
    with pytest.raises(SegauditError, match=rf"cannot read images/a{ext} \(.*\); check the file is a valid"):
        load_dataset(simple)


def test_truncated_mask_is_named(simple):
    path = simple / "masks" / "b.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(SegauditError, match="cannot read masks/b.png"):
        load_dataset(simple)


def test_size_mismatch_is_named(tmp_path):
    root = make_folder(tmp_path, {"a": (grey(16, 16), binary(8, 16))})
    with pytest.raises(SegauditError, match="images/a.png is 16x16 but its mask masks/a.png is 8x16; an image and "
                                            "its mask must have the same size"):
        load_dataset(root)


def test_no_class_count(tmp_path):
    root = make_folder(tmp_path, {"a": (grey(), binary())}, classes=None)
    with pytest.raises(SegauditError, match=r"has no classes.json, so the number of classes is unknown; add "
                                            r"classes.json .* or pass --classes N"):
        load_dataset(root)
    assert load_dataset(root, classes=2).class_names == ("class_0", "class_1")
    assert load_dataset(root, classes=["sky", "cell"]).class_names == ("sky", "cell")


@pytest.mark.parametrize("content, message", [
    ("not json", "is not readable JSON"),
    ('{"0": "background", "1": "cell"}', "holds a JSON dict; it must be a JSON list of class names"),
    ('["background", 1]', "class names must be non-empty strings"),
    ('["cell", "cell"]', "class names must be unique"),
    ('["background"]', "need at least 2 class names"),
    ("2", "holds a JSON int"),
])
def test_bad_classes_json(simple, content, message):
    (simple / "classes.json").write_text(content)
    with pytest.raises(SegauditError, match=message):
        load_dataset(simple)


def test_classes_argument_must_agree_with_classes_json(simple):
    assert load_dataset(simple, classes=2).class_names == ("background", "foreground")
    with pytest.raises(SegauditError, match=r"classes.json .* lists 2 classes .* but 3 were given"):
        load_dataset(simple, classes=3)
    with pytest.raises(SegauditError, match="lists 2 classes"):
        load_dataset(simple, classes=["bg", "fg"])
    with pytest.raises(SegauditError, match="need at least 2 classes"):
        load_dataset(simple, classes=1)
    with pytest.raises(SegauditError, match="classes must be a class count"):
        load_dataset(simple, classes="two")


def test_3d_inputs_refused(simple):
    (simple / "images" / "a.png").unlink()
    write_nifti(simple / "images" / "a.nii.gz", np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(SegauditError, match="images/a.nii.gz is a 3-D volume of shape 16x16x5; .*save 2-D slices"):
        load_dataset(simple)
    (simple / "images" / "a.nii.gz").unlink()
    write_tiff(simple / "images" / "a.tif", np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(SegauditError, match="images/a.tif is a stack of shape 5x16x16"):
        load_dataset(simple)
    (simple / "images" / "a.tif").unlink()
    write_dicom(simple / "images" / "a.dcm", np.zeros((3, 16, 16), np.uint8), frames=3)
    with pytest.raises(SegauditError, match="images/a.dcm is a multi-frame DICOM of 3 frames"):
        load_dataset(simple)


def test_huge_image_refused_before_decoding(simple):
    path = simple / "images" / "a.png"
    write_png(path, np.zeros((8, 4097), np.uint8))
    path.write_bytes(path.read_bytes()[:64])  # header intact, pixels cut off: decoding would fail
    with pytest.raises(SegauditError, match=r"images/a.png is 8x4097 pixels .* the largest accepted is 4096x4096 "
                                            r"and 64 MB — cut it into tiles or downscale it first"):
        load_dataset(simple)


@pytest.mark.parametrize("ext", [".tif", ".dcm", ".nii.gz"])
def test_decoded_size_limit(simple, ext, monkeypatch):
    monkeypatch.setattr(sd.readers, "MAX_BYTES", 100)  # the limit lives with the readers
    (simple / "images" / "a.png").unlink()
    WRITERS[ext](simple / "images" / f"a{ext}", grey())
    with pytest.raises(SegauditError, match=rf"images/a{ext} is 16x16 pixels .*largest accepted"):
        load_dataset(simple)


def test_colour_float_and_nan_inputs_refused(simple):
    write_png(simple / "masks" / "a.png", np.stack([binary(), binary(seed=5), binary()], axis=-1))
    with pytest.raises(SegauditError, match="mask masks/a.png is a colour image"):
        load_dataset(simple)
    (simple / "masks" / "a.png").unlink()
    write_tiff(simple / "masks" / "a.tif", np.full((16, 16), 0.5, np.float32))
    with pytest.raises(SegauditError, match="mask masks/a.tif holds non-integer values"):
        load_dataset(simple)
    write_tiff(simple / "masks" / "a.tif", binary())
    (simple / "images" / "a.png").unlink()
    write_tiff(simple / "images" / "a.tif", np.full((16, 16), np.nan, np.float32))
    with pytest.raises(SegauditError, match="images/a.tif contains NaN or infinite values"):
        load_dataset(simple)


# -- properties ----------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(4, 70), w=st.integers(4, 70), k=st.integers(2, 6), n=st.integers(1, 4),
       c=st.sampled_from([1, 3]), size=st.sampled_from([16, 32, 48]), fit=st.sampled_from(sd.FITS),
       augment=st.booleans(), seed=st.integers(0, 2**40))
def test_make_batch_properties(h, w, k, n, c, size, fit, augment, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w, c)
    ds = Dataset([rng.random(shape, dtype=np.float32) for _ in range(n)],
                 [rng.integers(0, k, (h, w)) for _ in range(n)], tuple(f"s{i}" for i in range(n)), k)
    batch = make_batch(ds, list(range(n)), size=size, stride=16, augment=augment, seed=seed, fit=fit)
    assert batch.images.shape == (n, c, size, size) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (n, size, size) and batch.masks.dtype == torch.int64
    assert 0 <= int(batch.masks.min()) and int(batch.masks.max()) < k
    assert -1.0 - 1e-6 <= float(batch.images.min()) and float(batch.images.max()) <= 1.0 + 1e-6
    assert batch.num_classes == k and len(batch.names) == n and batch.mean == (0.5,) * c


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), holdout=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_split_properties(n, holdout, seed):
    train, held = split(n, holdout=holdout, seed=seed)
    assert sorted(train + held) == list(range(n)) and not set(train) & set(held)
    assert 1 <= len(held) <= n - 1 and abs(len(held) - n * holdout) <= 1
    assert (train, held) == split(n, holdout=holdout, seed=seed)
