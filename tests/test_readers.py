import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from plumbing.errors import ImageReadError
from preprocessing.demo import write_dicom_series, write_itk, write_nifti, write_png
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
    folder = write_dicom_series(
        tmp_path / "series",
        volume,
        spacing=(0.7, 0.9, 2.5),
        origin=(-10, 20, -300),
        patient_id="p1",
        col_dir=col_dir,
        rng=3,
    )
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
    folder = write_dicom_series(
        tmp_path / "one",
        np.arange(12, dtype=float).reshape(1, 3, 4) * 100,
        (1, 1, 1),
        (0, 0, 0),
        "p",
        intercept=0.0,
        rng=0,
    )
    path = next(folder.iterdir())
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path, ds


def test_monochrome1_is_inverted(tmp_path):
    path, ds = _single_dicom(
        tmp_path,
        PhotometricInterpretation="MONOCHROME1",
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
        Modality="CR",
    )
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


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_cardiac_mri_mat_gives_frames_times_slices(tmp_path, version):
    from preprocessing.demo import write_cardiac_mat

    y, x, z, t = 6, 5, 3, 4  # The real files: 256x256, 8-15 slices, 20 frames.
    volume = np.random.default_rng(0).integers(0, 4000, size=(y, x, z, t)).astype(np.uint16)
    path = tmp_path / "sol_yxzt_pat7.mat"
    write_cardiac_mat(path, volume, version)
    array, meta = read_image(path)
    # Frame-major: slice index i is frame i // z, slice i % z.
    expected = np.stack([volume[:, :, i % z, i // z] for i in range(z * t)]).astype(np.float32)
    np.testing.assert_array_equal(array, expected)
    header = read_header(path)
    assert header["num_slices"] == z * t == 12 and header["shape"] == (12, y, x) and header["modality"] == "MR"
    assert header["volumes_in_file"] == t and header["volumes_read"] == "all"
    part, _ = read_image(path, slices=[11, 4])
    np.testing.assert_array_equal(part, expected[[11, 4]])
    with pytest.raises(ImageReadError, match="has no slice 12 .it has 4 frames x 3 slices = 12"):
        read_image(path, slices=[12])


def test_a_header_may_not_read_outside_its_folder(tmp_path):
    from preprocessing.readers import OutsideRootError

    secret = tmp_path / "secret.txt"
    secret.write_bytes(bytes(range(256)) * 2)  # 512 bytes: what a 2x4x4 MET_SHORT header asks for... and more.
    good = tmp_path / "data" / "scan.mhd"
    write_itk(good, np.arange(32).reshape(2, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    text = good.read_text()
    cases = {"dotdot.mhd": "../secret.txt", "absolute.mhd": str(secret), "link.mhd": "link.raw"}
    (tmp_path / "data" / "link.raw").symlink_to(secret)
    for name, target in cases.items():
        (tmp_path / "data" / name).write_text(text.replace("ElementDataFile = scan.raw", f"ElementDataFile = {target}"))
        for read in (read_image, read_header):
            with pytest.raises(OutsideRootError) as error:
                read(tmp_path / "data" / name)
            assert str(error.value) == (
                f"{tmp_path / 'data' / name}: names the data file {target}, which lies outside "
                f"its folder {tmp_path / 'data'} (read only with --allow-outside-root)."
            )
        array, _ = read_image(tmp_path / "data" / name, allow_outside_root=True)  # Said explicitly: read.
        np.testing.assert_array_equal(array.ravel()[:2], np.frombuffer(secret.read_bytes()[:4], "<i2"))
    # A data file in a subfolder, or a path that leaves and comes back, stays inside: read.
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "scan.raw").rename(tmp_path / "data" / "sub" / "scan.raw")
    (tmp_path / "data" / "sub.mhd").write_text(text.replace("= scan.raw", "= sub/../sub/scan.raw"))
    np.testing.assert_array_equal(read_image(tmp_path / "data" / "sub.mhd")[0], np.arange(32).reshape(2, 4, 4))


def test_absurd_header_sizes_are_refused_before_allocating(tmp_path):
    import gzip

    import nibabel

    nibabel.save(nibabel.Nifti2Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "small.nii")
    header = nibabel.Nifti2Header.from_fileobj(open(tmp_path / "small.nii", "rb"))
    header.set_data_shape((100000, 100000, 100000))
    data = bytearray((tmp_path / "small.nii").read_bytes())
    data[: len(header.binaryblock)] = header.binaryblock
    (tmp_path / "huge.nii").write_bytes(bytes(data))
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    needed = 100000**3 * 2
    for name, read in (("huge.nii", read_header), ("huge.nii.gz", read_image)):
        actual = (tmp_path / name).stat().st_size
        with pytest.raises(
            ImageReadError,
            match=f"claims 100000x100000x100000 voxels .{needed:,} bytes., more than its "
            f"{actual:,}( compressed)? bytes on disk can hold",
        ):
            read(tmp_path / name)
    write_itk(tmp_path / "scan.mhd", np.zeros((2, 4, 4)), (1, 1, 1), (0, 0, 0))
    text = (tmp_path / "scan.mhd").read_text().replace("DimSize = 4 4 2", "DimSize = 100000 100000 100000")
    (tmp_path / "big.mhd").write_text(text)
    with pytest.raises(ImageReadError, match=f"holds 64 bytes but the header needs {needed:,}"):
        read_header(tmp_path / "big.mhd")


def test_nan_voxels_are_counted_replaced_or_refused(tmp_path, capsys):
    volume = np.full((4, 10, 10), 7.0, np.float32)
    volume[1, 2, 3] = -5.0
    volume[0, 0, 0], volume[3, 1, 1] = np.nan, np.inf  # 2 of 400: 0.5%.
    write_nifti(tmp_path / "few.nii.gz", volume, (1, 1, 1))
    array, _ = read_image(tmp_path / "few.nii.gz")
    assert array[0, 0, 0] == -5.0 and array[3, 1, 1] == -5.0 and np.isfinite(array).all()  # The lowest finite value.
    assert "2 NaN or infinite values (0.50% of those read) replaced" in capsys.readouterr().err
    volume[2] = np.nan  # 102 of 400.
    write_nifti(tmp_path / "many.nii.gz", volume, (1, 1, 1))
    with pytest.raises(
        ImageReadError,
        match=r"many.nii.gz: has 102 NaN or infinite values \(25.5% of the 400 read\), "
        r"more than the 1% tolerated",
    ):
        read_image(tmp_path / "many.nii.gz")
    write_nifti(tmp_path / "all.nii.gz", np.full((2, 4, 4), np.nan, np.float32), (1, 1, 1))
    with pytest.raises(ImageReadError, match="has 32 NaN"):
        read_image(tmp_path / "all.nii.gz")


def test_a_series_folder_or_analyze_pair_may_not_link_outside(tmp_path):
    import nibabel

    from preprocessing.readers import OutsideRootError

    volume = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)
    series = write_dicom_series(tmp_path / "series", volume, (1, 1, 1), (0, 0, 0), "p", rng=0)
    elsewhere = write_dicom_series(tmp_path / "elsewhere", volume, (1, 1, 1), (0, 0, 5), "p", rng=1)
    (series / "extra.dcm").symlink_to(next(elsewhere.iterdir()))
    with pytest.raises(OutsideRootError, match="series: holds extra.dcm, a link to outside its folder"):
        read_header(series)
    nibabel.save(nibabel.AnalyzeImage(np.zeros((4, 4, 2), np.int16), np.eye(4)), tmp_path / "scan.hdr")
    (tmp_path / "pair").mkdir()
    (tmp_path / "pair" / "scan.hdr").write_bytes((tmp_path / "scan.hdr").read_bytes())
    (tmp_path / "pair" / "scan.img").symlink_to(tmp_path / "scan.img")
    with pytest.raises(OutsideRootError, match="scan.hdr: names the data file scan.img, which lies outside"):
        read_image(tmp_path / "pair" / "scan.hdr")
    assert read_image(tmp_path / "pair" / "scan.hdr", allow_outside_root=True)[0].shape == (2, 4, 4)
