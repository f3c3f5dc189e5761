"""Headers and table cells are data: random values thrown at the readers and table parsers give a correct
result or exactly one InputError line, never another exception, a crash or a traceback.

Each property starts from a valid file and replaces some of its fields with values drawn by hypothesis:
printf patterns, NaN, infinities, negative and huge sizes, other fields' values, random text. A result is
checked against the library that reads the format when the project's reader accepts the file (SimpleITK,
nibabel), so "correct" is not just "it ran". Examples are bounded and derandomized (the same inputs each
run, no example database written): EXAMPLES below are the numbers the README states.

A crash (the segmentation fault a `%s` data-file name caused in SimpleITK) would kill the test process;
the subprocess test runs the manifest command on such a header and checks its exit.
"""

import csv
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plumbing.errors import InputError  # noqa: E402
from preprocessing.readers import read_header, read_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Inputs tried per property (the README states the total).
EXAMPLES = {
    "metaimage": 1000,
    "nrrd": 500,
    "nifti": 1000,
    "dicom": 300,
    "candidates": 500,
    "findings": 200,
    "mura": 300,
}


def _settings(name):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Values that have broken readers somewhere: printf patterns, special numbers, sizes at and past limits.
HOSTILE = [
    "%s",
    "%n",
    "%d",
    "%s%s%s%n",
    "x%03d.raw 1 3 1",
    "x%d.raw 1 3 0",
    "x%d.raw 3 1 1",
    "LOCAL",
    "LIST",
    "LIST 2D",
    "../x.raw",
    "/etc/passwd",
    "nan",
    "NaN NaN NaN",
    "inf",
    "-inf 1 1",
    "-1",
    "0",
    "0 0 0",
    "-4 5 6",
    "1e309",
    "4294967297 1 1",
    "99999999 99999999 99999999",
    "4 5",
    "4 5 6 7",
    "4 5 6 7 8 9 10 11 12 13 14",
    "MET_SHORT",
    "MET_FLOAT_ARRAY",
    "MET_STRING",
    "True",
    "yes",
    "",
    " ",
    "\x00",
    "é",
]
VALUE = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(-(2**40), 2**40).map(str),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4).map(
        lambda values: " ".join(repr(v) for v in values)
    ),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), max_size=20),
)


def _one_line_refusal(error, path):
    message = str(error)
    assert isinstance(error, InputError), f"{type(error).__name__}: {message}"
    assert "\n" not in message and str(path) in message, message


def _read_both(path):
    """(array, meta) from read_image after read_header agreed on the shape, or the InputError raised."""
    try:
        header = read_header(path)
        array, meta = read_image(path)
    except InputError as error:
        _one_line_refusal(error, path)
        return None
    assert header["shape"] == array.shape
    assert array.dtype == np.float32 and np.isfinite(array).all()
    assert all(math.isfinite(v) and v > 0 for v in meta["spacing"]), meta["spacing"]
    return array, meta


# --------------------------------------------------------------------------- MetaImage

METAIMAGE = {
    "ObjectType": "Image",
    "NDims": "3",
    "BinaryData": "True",
    "BinaryDataByteOrderMSB": "False",
    "CompressedData": "False",
    "TransformMatrix": "1 0 0 0 1 0 0 0 1",
    "Offset": "0 0 0",
    "CenterOfRotation": "0 0 0",
    "ElementSpacing": "0.7 0.7 2.5",
    "DimSize": "4 5 6",
    "ElementNumberOfChannels": "1",
    "HeaderSize": "0",
    "ElementType": "MET_SHORT",
    "ElementDataFile": "x.raw",  # Last: MetaIO reads no field after it.
}


@pytest.mark.slow
@_settings("metaimage")
@given(changes=st.dictionaries(st.sampled_from(list(METAIMAGE)), VALUE, min_size=1, max_size=4))
def test_random_metaimage_fields_read_as_simpleitk_reads_them_or_are_refused_in_one_line(changes):
    import SimpleITK as sitk

    fields = METAIMAGE | changes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.mhd"
        text = "".join(f"{key} = {value}\n" for key, value in fields.items())
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        (Path(folder) / "x.raw").write_bytes(np.arange(120, dtype="<i2").tobytes())
        for number in (1, 2, 3):  # A numbered series, x001.raw..x003.raw, for the patterns to find.
            (Path(folder) / f"x{number:03d}.raw").write_bytes(np.arange(40, dtype="<i2").tobytes())
        result = _read_both(path)
        if result is not None:  # Accepted: what SimpleITK itself reads.
            expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
            if expected.ndim == result[0].ndim + 1:  # Channels, which the reader turns to grey.
                return
            np.testing.assert_array_equal(result[0], expected)


@pytest.mark.slow
def test_a_printf_pattern_as_data_file_is_one_line_in_the_manifest_command_not_a_crash(tmp_path):
    """`ElementDataFile = %s` once killed the manifest command with a segmentation fault (exit 139)."""
    from preprocessing.demo import write_itk

    root = tmp_path / "data"
    write_itk(root / "mhd" / "p1.mhd", np.zeros((2, 8, 8), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for number, pattern in ((2, "%s"), (3, "%n")):
        text = (root / "mhd" / "p1.mhd").read_text().replace("= p1.raw", f"= {pattern}")
        (root / "mhd" / f"p{number}.mhd").write_text(text)
    table = tmp_path / "table.yaml"
    table.write_text(
        "datasets:\n  - name: MHD\n    modality: CT\n    body_part: CHEST\n"
        '    files: "mhd/*.mhd"\n    patient_id: "(p\\\\d+)"\n    slices_per_patient: all\n'
    )
    argv = [
        "--datasets",
        str(table),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "m.csv"),
        "--fractions",
        "1",
        "0",
        "0",
        "--min-side",
        "8",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "preprocessing.manifest", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done  # Not 139: the two headers are skipped as unreadable, p1 is kept.
    for number, pattern in ((2, "%s"), (3, "%n")):
        lines = [line for line in done.stderr.splitlines() if f"p{number}.mhd" in line]
        assert len(lines) == 1 and f"pattern '{pattern}'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


NRRD = {
    "type": "short",
    "dimension": "3",
    "space": "left-posterior-superior",
    "sizes": "4 5 6",
    "space directions": "(0.7,0,0) (0,0.7,0) (0,0,2.5)",
    "kinds": "domain domain domain",
    "endian": "little",
    "encoding": "raw",
    "space origin": "(0,0,0)",
    "data file": "x.raw",
}


@pytest.mark.slow
@_settings("nrrd")
@given(changes=st.dictionaries(st.sampled_from(list(NRRD)), VALUE, min_size=1, max_size=4))
def test_random_nrrd_fields_read_as_simpleitk_reads_them_or_are_refused_in_one_line(changes):
    import SimpleITK as sitk

    fields = NRRD | changes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.nhdr"
        text = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in fields.items())
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        (Path(folder) / "x.raw").write_bytes(np.arange(120, dtype="<i2").tobytes())
        for number in (1, 2, 3):
            (Path(folder) / f"x{number:03d}.raw").write_bytes(np.arange(40, dtype="<i2").tobytes())
        result = _read_both(path)
        if result is not None and result[0].ndim == 3:
            np.testing.assert_array_equal(result[0], sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


# --------------------------------------------------------------------------- NIfTI


def _nifti_bytes():
    import nibabel

    image = nibabel.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.diag([0.7, 0.7, 2.5, 1.0]))
    return image.to_bytes()


NIFTI_FIELDS = ["dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "qform_code"]
NIFTI_FIELDS += ["sform_code", "srow_x", "quatern_b", "qoffset_x", "sizeof_hdr", "magic", "dim_info", "intent_code"]


@pytest.mark.slow
@_settings("nifti")
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(NIFTI_FIELDS),
            st.integers(0, 7),
            st.one_of(
                st.integers(-(2**31), 2**31 - 1),
                st.sampled_from([0, -1, 1, 2, 7, 8, 9, 32767, -32768]),
                st.floats(allow_nan=True, allow_infinity=True, width=32),
            ),
        ),
        min_size=1,
        max_size=3,
    ),
    gzipped=st.booleans(),
)
def test_random_nifti_header_fields_read_as_nibabel_reads_them_or_are_refused_in_one_line(changes, gzipped):
    import gzip

    import nibabel

    data = bytearray(_nifti_bytes())
    fields = nibabel.nifti1.header_dtype.fields
    for name, index, value in changes:
        dtype, offset = fields[name][:2]
        base = dtype.base
        count = max(1, dtype.itemsize // base.itemsize)
        where = offset + (index % count) * base.itemsize
        if base.kind in "iu":
            info = np.iinfo(base)
            value = int(np.clip(int(value) if math.isfinite(value) else 0, info.min, info.max))
        elif base.kind == "S":
            value = str(value).encode()[: base.itemsize]
        data[where : where + base.itemsize] = np.array(value, dtype=base).tobytes()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("scan.nii.gz" if gzipped else "scan.nii")
        path.write_bytes(gzip.compress(bytes(data), compresslevel=1) if gzipped else bytes(data))
        result = _read_both(path)
        if result is not None:  # Accepted: the voxels nibabel itself reads, as (z, y, x).
            volume = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
            volume = volume[..., 0] if volume.ndim == 4 else volume
            np.testing.assert_array_equal(result[0], volume.T)


@pytest.mark.slow
def test_a_nan_pixdim_is_one_line(tmp_path):
    import nibabel

    image = nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    image.header["pixdim"][1] = np.nan
    path = tmp_path / "nan.nii"
    image.to_filename(path)
    for read in (read_image, read_header):
        with pytest.raises(InputError, match=r"has spacing \(nan, 1, 1\); each value must be finite and positive"):
            read(path)


def _big_nifti(path):
    """An honest .nii.gz of 512x512x400 int16 zeros: 200 MiB of voxels, about 0.2 MiB on disk."""
    import gzip

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((512, 512, 400))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        chunk = bytes(2**24)
        for _ in range(512 * 512 * 400 * 2 // len(chunk)):
            handle.write(chunk)
    return path


@pytest.mark.slow
def test_a_volume_larger_than_memory_is_refused_from_its_header_before_allocating(tmp_path, monkeypatch):
    from preprocessing import readers

    path = _big_nifti(tmp_path / "big.nii.gz")
    monkeypatch.setattr(readers, "memory_available", lambda: 100 * 2**20)
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: holds 512x512x400 values, 600 MiB to read as float32, but only 100 MiB of memory is available."
    )


@pytest.mark.slow
def test_an_address_space_limit_is_seen_before_allocating(tmp_path):
    """Under `ulimit -v` (RLIMIT_AS) leaving 300 MiB, the same file is one line, not a MemoryError traceback."""
    path = _big_nifti(tmp_path / "big.nii.gz")
    script = (
        "import resource\n"
        "from plumbing.errors import InputError\n"
        "from preprocessing.readers import read_image\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    read_image({str(path)!r})\n"
        "except InputError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done
    assert "600 MiB to read as float32, but only" in done.stdout and done.stdout.count("\n") == 1, done


@pytest.mark.slow
def test_memory_available_is_a_positive_number_of_bytes():
    from preprocessing.readers import memory_available

    assert 0 < memory_available() < 2**60


# --------------------------------------------------------------------------- DICOM

DICOM_TAGS = {
    "Rows": st.integers(0, 65535),
    "Columns": st.integers(0, 65535),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 65535]),
    "BitsStored": st.integers(0, 70),
    "HighBit": st.integers(0, 70),
    "PixelRepresentation": st.integers(0, 3),
    "SamplesPerPixel": st.integers(0, 5),
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-3", "100000", "nan", "x"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "%s", ""]),
    "PixelSpacing": st.sampled_from([["nan", "1"], ["0", "0"], ["-1", "1"], ["inf", "1"], ["1e308", "1e308"]]),
    "RescaleSlope": st.sampled_from(["nan", "0", "-1", "1e308", "inf"]),
    "RescaleIntercept": st.sampled_from(["nan", "-1024", "1e308", "-inf"]),
    "SOPClassUID": st.sampled_from(["1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.2", "%n", ""]),
    "ImagePositionPatient": st.sampled_from([["nan", "0", "0"], ["1", "2"], ["1e308", "0", "0"]]),
    "ImageOrientationPatient": st.sampled_from([["nan"] * 6, ["0"] * 6, ["1", "0", "0"]]),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, as this test writes the invalid values.
@_settings("dicom")
@given(changes=st.dictionaries(st.sampled_from(list(DICOM_TAGS)), st.none(), min_size=1, max_size=3), data=st.data())
def test_random_dicom_tags_read_or_are_refused_in_one_line(changes, data):
    import pydicom

    from preprocessing.demo import write_dicom_series

    with tempfile.TemporaryDirectory() as folder:
        series = write_dicom_series(
            Path(folder) / "s", np.arange(2 * 4 * 5).reshape(2, 4, 5), (1, 1, 1), (0, 0, 0), "p", rng=0
        )
        path = sorted(series.iterdir())[0]
        ds = pydicom.dcmread(path)
        for key in changes:
            value = data.draw(DICOM_TAGS[key], label=key)
            try:
                setattr(ds, key, value)
            except (ValueError, TypeError, OverflowError):  # pydicom will not hold it as its VR: write it as text.
                ds[key] = pydicom.DataElement(pydicom.datadict.tag_for_keyword(key), "LO", str(value))
        ds.save_as(path)
        _read_both(path)


# --------------------------------------------------------------------------- CSV cells

CELL = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e309", "0", "1", "2", "-1", "0.5", "1,2", '"', "\x00"]),
    st.sampled_from(["%s", "=cmd|' /C calc'!A0", "../../etc/passwd", "1.3.6.1.4 ", "é", "\ufeff1"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=12),
)


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


@pytest.mark.slow
@_settings("candidates")
@given(rows=st.lists(st.lists(CELL, min_size=5, max_size=5), min_size=1, max_size=4))
def test_random_candidate_cells_give_a_checked_table_or_one_line(rows):
    from luna16.data import CANDIDATE_COLUMNS, read_candidates

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidates_V2.csv"
        _write_csv(path, CANDIDATE_COLUMNS, rows)
        try:
            frame = read_candidates(folder, warn=lambda line: None)
        except InputError as error:
            _one_line_refusal(error, path)
            return
        assert list(frame.columns) == CANDIDATE_COLUMNS and len(frame) >= 1
        assert set(frame["class"]) <= {0, 1}
        # Numbers; a missing or infinite coordinate stays, to be dropped and counted at extraction.
        assert frame[["coordX", "coordY", "coordZ"]].dtypes.map(lambda kind: kind.kind in "fiu").all()
        assert (frame["seriesuid"].str.strip() == frame["seriesuid"]).all() and (frame["seriesuid"] != "").all()


@pytest.mark.slow
@_settings("findings")
@given(rows=st.lists(st.lists(CELL, min_size=5, max_size=5), min_size=0, max_size=4))
def test_random_annotation_cells_give_a_table_or_one_line(rows):
    from luna16.froc import read_findings

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "annotations.csv"
        _write_csv(path, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], rows)
        try:
            frame = read_findings(path, "annotations")
        except InputError as error:
            _one_line_refusal(error, path)
            return
        assert list(frame.columns)[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]


def _mura_tree(folder):
    from preprocessing.demo import write_png

    root = Path(folder) / "MURA-v1.1"
    for study, label in (("patient1/study1_positive", 1), ("patient2/study1_negative", 0)):
        write_png(root / "valid" / "XR_SHOULDER" / study / "image1.png", np.full((8, 8), 0.4 + 0.1 * label))
    return root


MURA_CELL = st.one_of(
    CELL,
    st.sampled_from(
        [
            "MURA-v1.1/valid/XR_SHOULDER/patient1/study1_positive/",
            "MURA-v1.1/valid/XR_SHOULDER/patient1/study1_positive/image1.png",
            "MURA-v1.1/valid/XR_SHOULDER/patient2/study1_negative/image1.png",
            "MURA-v1.1/valid/XR_SHOULDER/patient2/study1_negative",
            "MURA-v1.1/../../x.png",
            "/MURA-v1.1/valid/XR_SHOULDER/p/s/i.png",
        ]
    ),
)


@pytest.mark.slow
@_settings("mura")
@given(
    images=st.lists(st.lists(MURA_CELL, min_size=1, max_size=1), min_size=1, max_size=3),
    studies=st.lists(st.lists(MURA_CELL, min_size=2, max_size=2), min_size=1, max_size=3),
)
def test_random_mura_cells_give_a_split_or_one_line(images, studies):
    from mura.data import read_split

    with tempfile.TemporaryDirectory() as folder:
        root = _mura_tree(folder)
        _write_csv(root / "valid_image_paths.csv", None, images)
        _write_csv(root / "valid_labeled_studies.csv", None, studies)
        try:
            frame = read_split(folder, "valid", verify=True)
        except InputError as error:
            message = str(error)
            assert "\n" not in message and folder in message, message
            return
        assert set(frame["label"]) <= {0, 1} and all(Path(p).is_file() for p in frame["path"])
