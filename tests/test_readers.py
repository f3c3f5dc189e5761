import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from preprocessing.demo import write_dicom_series, write_itk, write_nifti, write_png
from plumbing.errors import ImageReadError
from preprocessing.readers import read_header, read_image


def test_ct_small_is_in_hounsfield_units_as_pydicom_computes_them():
    path = get_testdata_file("CT_small.dcm")
    array, meta = read_image(path)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert array.dtype == np.float32 and array.shape == (128, 128)
    np.testing.assert_allclose(array, expected, rtol=0, atol=1e-3)
    assert meta["modality"] == "CT"
    assert meta["spacing"][:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    assert meta["origin"] == tuple(float(v) for v in ds.ImagePositionPatient)


def test_mr_small_and_its_rle_compressed_twin_agree():
    array, meta = read_image(get_testdata_file("MR_small.dcm"))
    rle, _ = read_image(get_testdata_file("MR_small_RLE.dcm"))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert meta["modality"] == "MR"
    np.testing.assert_allclose(array, apply_modality_lut(ds.pixel_array, ds))
    np.testing.assert_array_equal(array, rle)


def test_truncated_dicom_is_one_clear_error():
    path = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    message = str(error.value)
    assert message.startswith(str(path)) and message.count("\n") == 0


def _itk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("col_dir", [(0, 1, 0), (0, -1, 0)], ids=["feet-to-head", "head-to-feet"])
def test_dicom_series_is_ordered_by_position_with_itk_geometry(tmp_path, col_dir):
    volume = np.stack([np.full((6, 5), 10.0 * k - 500) for k in range(7)])  # Slice k holds 10k - 500 HU.
    folder = write_dicom_series(tmp_path / "series", volume, spacing=(0.7, 0.9, 2.5), origin=(-10, 20, -300),
                                patient_id="p1", col_dir=col_dir, rng=3)
    array, meta = read_image(folder)
    itk = _itk_series(folder)
    np.testing.assert_allclose(array, sitk.GetArrayFromImage(itk))
    np.testing.assert_allclose(meta["spacing"], itk.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(meta["origin"], itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(meta["direction"], itk.GetDirection(), atol=1e-6)
    # Along the slice normal the written order is kept, whatever the file names say.
    np.testing.assert_allclose(array[:, 0, 0], 10.0 * np.arange(7) - 500)
    assert read_header(folder)["num_slices"] == 7
    # Only some slices: read from their files alone, in the order asked.
    part, _ = read_image(folder, slices=[5, 1])
    np.testing.assert_allclose(part[:, 0, 0], [0.0 - 450, 10.0 - 500])


def test_dicom_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        read_image(tmp_path / "empty")
    both = tmp_path / "both"
    write_dicom_series(both, np.zeros((2, 4, 4)), (1, 1, 1), (0, 0, 0), "a", rng=0)
    write_dicom_series(tmp_path / "other", np.zeros((2, 4, 4)), (1, 1, 1), (0, 0, 5), "b", rng=1)
    for file in (tmp_path / "other").iterdir():
        shutil.move(file, both / ("x" + file.name))
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_image(both)


def _single_dicom(tmp_path, **changes):
    folder = write_dicom_series(tmp_path / "one", np.arange(12, dtype=float).reshape(1, 3, 4) * 100,
                                (1, 1, 1), (0, 0, 0), "p", intercept=0.0, rng=0)
    path = next(folder.iterdir())
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path, ds


def test_monochrome1_is_inverted(tmp_path):
    path, ds = _single_dicom(tmp_path, PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11,
                             PixelRepresentation=0, Modality="CR")
    array, meta = read_image(path)
    raw = np.arange(12, dtype=float).reshape(3, 4) * 100
    np.testing.assert_allclose(array, 4095 - raw)
    assert meta["modality"] == "XR" and meta["bit_depth"] == 12


def test_multiframe_dicom(tmp_path):
    frames = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    path, ds = _single_dicom(tmp_path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 5, 3
    ds.PixelData = frames.tobytes()
    ds.RescaleIntercept = "-1024"
    ds.save_as(path)
    array, _ = read_image(path)
    np.testing.assert_allclose(array, frames - 1024.0)
    assert read_header(path)["num_slices"] == 3


def test_nibabel_sample_matches_nibabel_and_itk_geometry():
    import nibabel
    from nibabel.testing import data_path

    path = f"{data_path}/anatomical.nii"
    array, meta = read_image(path)
    expected = np.transpose(nibabel.load(path).get_fdata(), (2, 1, 0))
    np.testing.assert_allclose(array, expected, rtol=1e-6)
    itk = sitk.ReadImage(path)
    np.testing.assert_allclose(meta["spacing"], itk.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(meta["origin"], itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(meta["direction"], itk.GetDirection(), atol=1e-5)
    assert read_header(path)["shape"] == array.shape


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mhd", ".nrrd"])
def test_volume_formats_round_trip_with_geometry(tmp_path, suffix):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=(5, 7, 9)).astype(np.float32)
    path = tmp_path / f"scan{suffix}"
    if suffix.startswith(".nii"):
        write_nifti(path, volume, (0.8, 0.6, 2.0), (-100.0, 50.0, -300.0))
    else:
        write_itk(path, volume, (0.8, 0.6, 2.0), (-100.0, 50.0, -300.0))
    array, meta = read_image(path)
    np.testing.assert_allclose(array, volume)
    np.testing.assert_allclose(meta["spacing"], (0.8, 0.6, 2.0), atol=1e-6)
    np.testing.assert_allclose(meta["origin"], (-100.0, 50.0, -300.0), atol=1e-4)
    np.testing.assert_allclose(meta["direction"], np.eye(3).ravel(), atol=1e-6)
    part, _ = read_image(path, slices=[4, 0])
    np.testing.assert_allclose(part, volume[[4, 0]])


@pytest.mark.parametrize("bit_depth,rgb", [(8, False), (16, False), (8, True)])
def test_png(tmp_path, bit_depth, rgb):
    image = np.linspace(0, 1, 30 * 20).reshape(30, 20)
    write_png(tmp_path / "x.png", image, bit_depth=bit_depth, rgb=rgb)
    array, meta = read_image(tmp_path / "x.png")
    peak = 2**bit_depth - 1
    np.testing.assert_allclose(array, np.round(image * peak), atol=1.0 if rgb else 0)
    assert array.shape == (30, 20) and meta["bit_depth"] == bit_depth


def test_bad_files_raise_one_sentence_naming_the_file(tmp_path):
    write_png(tmp_path / "x.png", np.ones((20, 20)))
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(0).random((4, 8, 8)), (1, 1, 1))
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.xyz").write_text("hello")
    (tmp_path / "junk.nii").write_bytes(b"\0" * 10)
    cases = ["cut.png", "cut.nii.gz", "notes.xyz", "junk.nii", "missing.mhd"]
    for name in cases:
        with pytest.raises(ImageReadError) as error:
            read_image(tmp_path / name)
        message = str(error.value)
        assert str(tmp_path / name) in message and "\n" not in message, message
