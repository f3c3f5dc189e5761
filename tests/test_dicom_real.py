"""Every file of `pydicom-data` (pydicom's test set of real DICOM: CT, MR, radiographs, ultrasound and
secondary captures in every transfer syntax) and of the test files pydicom itself ships, read through the
project's reader and compared with pydicom's own decoding, or refused in one line naming the reason.

The reference is what `read_image` promises: pydicom's `pixel_array`, PALETTE COLOR through
`apply_color_lut`, colour to grey (ITU-R 601 luma), MONOCHROME1 inverted within its stored range, then
the modality LUT or the rescale, the latter taken for an Enhanced object from its functional groups, and
frames in their stack order (`InStackPositionNumber` here, where the reader sorts along the slice normal:
two routes that must agree).
"""

import os
import sys
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
data_store = pytest.importorskip("data_store", reason="pydicom-data (the test extra) is not installed")

from plumbing.errors import ImageReadError, InputError  # noqa: E402
from preprocessing.normalize import hu_window  # noqa: E402
from preprocessing.readers import read_header, read_image  # noqa: E402

DATA = os.path.join(os.path.dirname(data_store.__file__), "data")
# pydicom's own test files, which ship with it: fewer images, but RT, SR, waveform and broken files.
BUNDLED = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
FILES = [os.path.join(DATA, name) for name in sorted(os.listdir(DATA)) if name.endswith(".dcm")]
FILES += [os.path.join(BUNDLED, name) for name in sorted(os.listdir(BUNDLED)) if name.endswith(".dcm")]

# The files refused, each with the words its one line must hold.
RT, SR = "radiotherapy object", "structured report"
REFUSED = {
    "liver.dcm": "segmentation",  # DICOM SEG: 1-bit masks, not an image.
    "liver_expb.dcm": "segmentation",
    "liver_1frame.dcm": "segmentation",
    "liver_expb_1frame.dcm": "segmentation",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "no pixel data",  # Cut off inside its pixel data.
    "badVR.dcm": RT,  # An RT Dose.
    **{f"rtdose{end}.dcm": RT for end in ("", "_1frame", "_expb", "_expb_1frame", "_rle", "_rle_1frame")},
    "rtplan.dcm": RT,
    "rtplan_truncated.dcm": RT,
    "reportsi.dcm": SR,
    "reportsi_with_empty_number_tags.dcm": SR,
    "test-SR.dcm": SR,
    "waveform_ecg.dcm": "waveform",
    # Without DICOM's preamble: RT objects, and a header without an image.
    "rtstruct.dcm": RT,
    "ExplVR_BigEndNoMeta.dcm": RT,
    "ExplVR_LitEndNoMeta.dcm": RT,
    "no_meta.dcm": "not a dicom file",
    # No pixel data, or no image size: private sequences, character-set tests.
    "UN_sequence.dcm": "no pixel data",
    "empty_charset_LEI.dcm": "no pixel data",
    "no_meta_group_length.dcm": "no pixel data",
    "priv_SQ.dcm": "no pixel data",
    "meta_missing_tsyntax.dcm": "no image size",
    "nested_priv_SQ.dcm": "no image size",
    # Broken on purpose (pydicom's README): pixel data cut short, a JPEG with delimiter bytes written
    # into it, and a non-conformant 12-bit JPEG (its fixed twin, JPGExtended.dcm, reads).
    "MR_truncated.dcm": "cannot be decoded",
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot be decoded",
    "JPEG-lossy.dcm": "cannot be decoded",
}
# Refusals the header reader cannot make, since it stops before the pixel data.
PIXEL_REFUSALS = ("no pixel data", "cannot be decoded")


def _rescale(ds, frame):
    """(slope, intercept) of one frame: per-frame functional group, else shared, else top level."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if groups:
            group = groups[frame] if len(groups) > 1 else groups[0]
            items = group.get("PixelValueTransformationSequence")
            if items and "RescaleSlope" in items[0]:
                return float(items[0].RescaleSlope), float(items[0].RescaleIntercept)
    return float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0)


def _stack_order(ds, count):
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    positions = [
        g.FrameContentSequence[0].get("InStackPositionNumber") if "FrameContentSequence" in g else None for g in groups
    ]
    if len(positions) == count and all(p is not None for p in positions):
        return np.argsort(positions, kind="stable")
    return np.arange(count)


def reference(path):
    """pydicom's decoding of `path` in the reader's physical values, frames first."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # OT-PAL-8-face.dcm: no preamble, no meta.
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    array = ds.pixel_array
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
    if photometric == "PALETTE COLOR" or int(ds.SamplesPerPixel) > 1:
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if photometric == "MONOCHROME1":
        array = (2.0 ** int(ds.BitsStored) - 1) - array.astype(np.float64)
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(array.astype(ds.pixel_array.dtype), ds).astype(np.float64)
    count = int(ds.get("NumberOfFrames") or 1)
    if count == 1:
        slope, intercept = _rescale(ds, 0)
        return array * slope + intercept
    frames = np.stack([array[i] * _rescale(ds, i)[0] + _rescale(ds, i)[1] for i in range(count)])
    return frames[_stack_order(ds, count)]


def test_the_data_sets_are_all_there():
    assert sum(path.startswith(DATA) for path in FILES) == 68, "pydicom-data 1.0 holds 68 DICOM files"
    assert sum(path.startswith(BUNDLED) for path in FILES) >= 78
    assert {os.path.basename(path) for path in FILES} >= set(REFUSED)


@pytest.mark.parametrize("path", FILES, ids=lambda path: os.path.basename(path))
def test_each_file_reads_as_pydicom_decodes_it_or_is_refused_in_one_line(path, capsys):
    name = os.path.basename(path)
    if name in REFUSED:
        words = REFUSED[name]
        for read in (read_image,) if words in PIXEL_REFUSALS else (read_image, read_header):
            with pytest.raises(InputError) as caught:
                read(path)
            message = str(caught.value)
            assert "\n" not in message and path in message and words in caught.value.problem.lower(), message
        return
    array, meta = read_image(path)
    expected = reference(path)
    assert array.dtype == np.float32 and array.shape == expected.shape, (array.shape, expected.shape)
    np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(expected).max())))
    header = read_header(path)
    assert header["shape"] == array.shape
    assert all(np.isfinite(meta["spacing"])) and min(meta["spacing"]) > 0
    for line in capsys.readouterr().err.splitlines():  # Warnings, if any: one line each, naming the file.
        assert line.startswith(f"warning: {path}: "), line


def test_enhanced_ct_reads_its_rescale_and_geometry_from_the_functional_groups():
    """eCT_Supplemental.dcm keeps rescale, spacing, position and orientation only in its functional groups."""
    array, meta = read_image(os.path.join(DATA, "eCT_Supplemental.dcm"))
    assert array.min() == -1024.0  # Air (stored 0) in Hounsfield units, not 0.
    assert hu_window(array).min() == 0.0  # ... so air is black after the window, not 0.417.
    np.testing.assert_allclose(meta["spacing"], (0.388672, 0.388672, 10.0))
    # Frame 2 (z -149) lies before frame 1 (z -159) along the normal of rows (-1, 0, 0) x columns (0, 1, 0).
    np.testing.assert_allclose(meta["origin"], (99.5, -301.5, -149.0))
    np.testing.assert_allclose(meta["direction"], (-1, 0, 0, 0, 1, 0, 0, 0, -1))


def test_palette_colour_is_read_through_its_palette_not_as_indices():
    from pydicom.pixels import apply_color_lut

    path = os.path.join(DATA, "OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    luminance = apply_color_lut(ds.pixel_array, ds).astype(float) @ [0.299, 0.587, 0.114]
    array, meta = read_image(path)
    assert np.corrcoef(array.ravel(), luminance.ravel())[0, 1] > 0.9999
    assert np.corrcoef(ds.pixel_array.ravel(), luminance.ravel())[0, 1] < 0.9  # The indices are not the image.
    assert (
        meta["bit_depth"] == 16
    )  # The palette's entries are 16-bit (its descriptor's third value), not the indices' 8.


def test_a_segmentation_in_a_series_folder_is_not_one_of_its_slices(tmp_path):
    from preprocessing.demo import write_dicom_series

    folder = write_dicom_series(tmp_path / "series", np.zeros((3, 4, 4)), (1, 1, 1), (0, 0, 0), "p", rng=0)
    (folder / "seg.dcm").write_bytes(open(os.path.join(DATA, "liver.dcm"), "rb").read())
    assert read_image(folder)[0].shape == (3, 4, 4)


SERIES = os.path.join(BUNDLED, "dicomdirtests")


@pytest.mark.parametrize(
    "folder, planes, degrees",
    [("98892003/MR700", 7, "49.1"), ("98892001/CT2N", 2, "90.0")],  # Radial MR planes; two orthogonal localizers.
)
def test_a_series_of_slices_that_are_not_parallel_is_refused_as_a_volume(tmp_path, folder, planes, degrees):
    """Stacked, these read as volumes with slice spacings of 25.9 and 265 mm that no scanner acquired."""
    import shutil

    copy = shutil.copytree(os.path.join(SERIES, folder), tmp_path / "series")
    with pytest.raises(ImageReadError) as error:
        read_image(copy)
    assert str(error.value) == (
        f"{copy}: holds slices in {planes} planes up to {degrees} degrees apart (radial planes or localizers), "
        "not one volume; read each file on its own instead."
    )
    for file in sorted(copy.iterdir()):  # Each file alone is an image.
        assert read_image(file)[0].squeeze().ndim == 2
    # A series of parallel slices from the same set still reads, with the spacing its positions give.
    array, meta = read_image(shutil.copytree(os.path.join(SERIES, "98892001/CT5N"), tmp_path / "parallel"))
    assert array.shape == (5, 16, 16) and meta["spacing"][2] == pytest.approx(2.5)


def test_a_missing_decoder_is_named_in_one_line():
    """With no JPEG plugin importable, a JPEG Lossless file says in one line which package to install."""
    import subprocess

    script = (
        "import sys\n"
        "for name in ('libjpeg', 'PIL', 'openjpeg', 'pylibjpeg', 'gdcm', 'jpeg_ls'):\n"
        "    sys.modules[name] = None  # Each import of them now fails.\n"
        "from plumbing.errors import InputError\n"
        "from preprocessing.readers import read_image\n"
        "try:\n"
        f"    read_image({os.path.join(DATA, 'JPEG-LL.dcm')!r})\n"
        "except InputError as error:\n"
        "    print(error)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "pylibjpeg-libjpeg" in lines[0] and "JPEG Lossless" in lines[0], done


def test_pydicom_warnings_are_one_line_naming_the_file(capsys):
    path = os.path.join(DATA, "emri_small_jpeg_2k_lossless_too_short.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError):
            read_image(path)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith(f"warning: {path}: ") for line in lines), lines
