"""Read medical images as `(array, meta)`, whatever the on-disk format.

`array` is float32, (z, y, x) for volumes and (y, x) for 2D images, in physical
units where the format has them (Hounsfield units for CT DICOM).

`meta` describes the geometry in the convention of ITK and of the LUNA16 csv
files: `spacing`, `origin` and `direction` are in (x, y, z) world order, in
millimetres, with patient LPS axes; `direction` is the row-major 3x3 matrix whose
columns are the world directions of the x, y and z index axes. So the world
position of voxel `array[k, j, i]` is `origin + direction @ ((i, j, k) * spacing)`.
It also holds `path`, `format`, `shape`, `modality` ('CT', 'MR', 'XR' or None when
the file does not say), for integer images `bit_depth`, `patient_id` where the
file itself names the patient (the figshare brain tumour `.mat` files), and for 4D
files `volumes_in_file` and `volumes_read`: which of them become slices ('first'
for NIfTI, whose second Prostate volume is ADC; 'all' for Cardiac MRI, whose 20
frames are all the patient's slices).

The reader is chosen by the suffix; a folder is read as one DICOM series. Heavy
libraries are imported where they are used. Every failure is an
`ImageReadError` whose message names the file and the problem.

What a file may not do, checked before any pixel is allocated:
- name data outside its own folder: the data files a MetaImage (`ElementDataFile`)
  or NRRD (`data file`) header names must lie, once `..` and symlinks are
  resolved, in the header's folder or below it, unless `allow_outside_root=True`
  (the commands' `--allow-outside-root`). A downloaded dataset could otherwise
  have any file of the machine (keys, `/etc/passwd`) read and stored in shards;
- claim more voxels than its bytes can hold: a NIfTI or MetaImage header is
  checked against the size of its data file (for compressed data, against
  deflate's largest ratio, 1032:1) so a header claiming 100000^3 voxels is one
  line, not a MemoryError;
- be more than `MAX_NONFINITE_SHARE` NaN or infinite: a few such values (a
  conversion's edge voxels) are replaced by the image's lowest finite value
  (the background) with one warning per file; more, and the file is refused;
- hand a library a header field it trusts: MetaImage fields that become sizes,
  numbers or file names are checked first (a `%s` data-file name crashed
  SimpleITK, which passes it to printf), and spacing of every format must be
  finite and positive;
- need more memory than is available (`memory_available`), judged from the
  header's dimensions before a whole volume is read;
- be a DICOM object that is not an image (a SEG, an RT dose or plan, a report:
  `NON_IMAGE_SOP_CLASSES`), or pixels a missing decoder would decode: the line
  names the package to install.

DICOM is read as pydicom decodes it, then in physical units: PALETTE COLOR
through its palette and colour to grey, MONOCHROME1 inverted, the modality LUT or
rescale applied, for Enhanced objects (Enhanced CT/MR) from each frame's
functional groups, with their spacing, position and orientation, frames in stack
order. Warnings raised while a file is read are printed as one line naming it.
"""

import contextlib
import math
import os
import re
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from plumbing.errors import ImageReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")  # .hdr: Analyze 7.5 (OASIS, IBSR), read by nibabel
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
NUMPY_SUFFIXES = (".npy",)
MATLAB_SUFFIXES = (".mat",)  # Figshare brain tumours (v7.3 = HDF5) and Cardiac MRI (thesis 3.1.2, items 10 and 8).

# This project's choice: up to 1% of the values read may be NaN or infinite (replaced by the lowest finite
# value, with a warning); beyond that an image is broken, and an all-NaN one would become blank training slices.
MAX_NONFINITE_SHARE = 0.01
DEFLATE_MAX_RATIO = 1032  # zlib's largest compression ratio: no compressed byte expands to more than this.

# DICOM Modality values of plain radiographs (computed, digital, intra-oral, mammography).
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "IO", "MG", "PX"}

# SOP class families that hold no image of anatomy, by UID prefix (DICOM PS3.4 Annex B): where they have
# pixels, those are labels, doses or drawings, which would become training slices without a word.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.1.3.10": "media directory",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy object",
    "1.2.840.10008.5.1.4.1.1.9": "waveform",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation, registration or raw data object",
    "1.2.840.10008.5.1.4.1.1.67": "real world value mapping",
    "1.2.840.10008.5.1.4.1.1.68": "surface object",
    "1.2.840.10008.5.1.4.1.1.88": "structured report",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.481": "radiotherapy object",
}
RT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.1"  # A portal X-ray image: read, unlike the other RT objects.


def suffix_of(path):
    """The lower-case suffix, with `.nii.gz` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def read_image(path, slices=None, allow_outside_root=False):
    """Reads an image file or a DICOM series folder.

    Args:
        path: str or Path. A file, or a folder holding one DICOM series.
        slices: optional sequence of int. For volumes, only these z indices are
            returned (stacked in the given order); DICOM series and uncompressed
            NIfTI then read only those slices from disk. Defaults to all.
        allow_outside_root: bool. Let a header name data files outside its own
            folder (see the module docstring). Defaults to False.

    Returns:
        `(array, meta)` as described in the module docstring.

    Raises:
        ImageReadError: the file is missing, truncated, corrupt or of an unknown kind.

    Example:
    >>> array, meta = read_image("scan.nii.gz")  # doctest: +SKIP
    >>> array.shape, meta["spacing"]             # doctest: +SKIP
    ((120, 512, 512), (0.7, 0.7, 2.5))
    """
    path = Path(path)
    reader = _reader_for(path)
    try:
        check_data_files(path, allow_outside_root)
        with _warnings_named(path):
            array, meta = reader(path, slices)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # Each library has its own exception types.
        raise ImageReadError(path, f"cannot be read ({type(error).__name__}: {_short(error)})") from error
    if array.size == 0:
        raise ImageReadError(path, "holds no pixel data")
    _check_spacing(path, meta)
    array = _finite(path, np.ascontiguousarray(array, dtype=np.float32))
    meta.setdefault("modality", None)
    meta["path"] = str(path)
    meta["shape"] = tuple(int(s) for s in array.shape)
    return array, meta


def read_header(path, allow_outside_root=False):
    """Reads only what the manifest needs: `meta` with `shape` and `num_slices`.

    Cheap for every format (pixel data is not decoded, except for 2D rasters). The
    same checks of data files and sizes as `read_image` apply.
    """
    path = Path(path)
    reader = _header_reader_for(path)
    try:
        check_data_files(path, allow_outside_root)
        with _warnings_named(path):
            meta = reader(path)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(path, f"cannot be read ({type(error).__name__}: {_short(error)})") from error
    _check_spacing(path, meta)
    meta.setdefault("modality", None)
    meta["path"] = str(path)
    shape = meta["shape"]
    meta["num_slices"] = int(shape[0]) if len(shape) == 3 else 1
    return meta


def _check_spacing(path, meta):
    """Spacing must be finite and positive: a NaN pixdim would otherwise travel on as spacing (nan, 1, 1)
    into patch sampling. (A 0 that a format uses for "not stated" has become 1 mm in its reader.)"""
    spacing = meta.get("spacing")
    if spacing is not None and not all(math.isfinite(v) and v > 0 for v in spacing):
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise ImageReadError(path, f"has spacing ({shown}); each value must be finite and positive")


_WARNED_NONFINITE = set()  # Files already warned about in this process (the pipeline reads them every epoch).


def _finite(path, array):
    """`array` with its few NaN/infinite values replaced by its lowest finite value; refused beyond the share."""
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if not count:
        return array
    share = count / array.size
    if share > MAX_NONFINITE_SHARE:
        raise ImageReadError(
            path,
            f"has {count:,} NaN or infinite values ({share:.1%} of the {array.size:,} read), "
            f"more than the {MAX_NONFINITE_SHARE:.0%} tolerated",
        )
    array = array.copy() if not array.flags.writeable else array
    array[bad] = float(array[~bad].min())
    if str(path) not in _WARNED_NONFINITE:
        _WARNED_NONFINITE.add(str(path))
        print(
            f"warning: {path}: {count:,} NaN or infinite values ({share:.2%} of those read) replaced by its lowest "
            "value.",
            file=sys.stderr,
        )
    return array


def _short(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else "no details"


_READING = threading.local()  # The file this thread reads with pydicom, named in the warnings it raises.
_HOOK_LOCK = threading.Lock()


@contextlib.contextmanager
def _warnings_named(path):
    """Prints each warning raised while this thread reads `path` as one line naming the file (read_image and
    read_header read every format inside it; a series names each of its files).

    pydicom's warnings span lines (the message, then Python's source line) and most do not say which
    file they are about. `warnings.catch_warnings` cannot fold them: it swaps process-wide state, which
    the pipeline's and the manifest's parallel reads would tangle. So a hook on `warnings.showwarning`,
    installed once (again if something, such as pytest, restored the default), looks up the file this
    thread is reading and leaves every other warning to the previous hook.
    """
    with _HOOK_LOCK:
        if warnings.showwarning is not _one_line_warning:
            _one_line_warning.previous = warnings.showwarning
            warnings.showwarning = _one_line_warning
    outer = getattr(_READING, "path", None)
    _READING.path = path
    try:
        yield
    finally:
        _READING.path = outer


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    path = getattr(_READING, "path", None)
    if path is None:
        return _one_line_warning.previous(message, category, filename, lineno, file, line)
    print(f"warning: {path}: {' '.join(str(message).split())[:300]}", file=sys.stderr)


def memory_available():
    """Bytes this process may still allocate: the least of the physical memory available (Linux's
    MemAvailable, else free pages), the room left under an address-space limit (`ulimit -v`,
    RLIMIT_AS) and the room left under a cgroup v2 memory limit (a container's or a job's)."""
    bounds = []
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        bounds.append(int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            bounds.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as handle:
                used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            bounds.append(limit - used)
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            bounds.append(int(limit) - int((cgroup / "memory.current").read_text()))
    return max(0, min(bounds)) if bounds else math.inf


def _check_memory(path, shape, bytes_per_value):
    """Refuses a volume whose pixels, as stored plus as float32, would not fit in `memory_available()`,
    from its header's dimensions and before any allocation: one line, not a MemoryError traceback."""
    values = math.prod(int(n) for n in shape)
    needed = values * (int(bytes_per_value) + 4)
    available = memory_available()
    if needed > available:
        raise ImageReadError(
            path,
            f"holds {'x'.join(str(int(n)) for n in shape)} values, {needed / 2**20:,.0f} MiB to read as float32, "
            f"but only {available / 2**20:,.0f} MiB of memory is available",
        )


def _reader_for(path):
    if path.is_dir():
        return _read_dicom_series
    if not path.exists():
        raise ImageReadError(path, "does not exist")
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti
    if suffix in ITK_SUFFIXES:
        return _read_itk
    if suffix in RASTER_SUFFIXES:
        return _read_raster
    if suffix in NUMPY_SUFFIXES:
        return _read_numpy
    if suffix in MATLAB_SUFFIXES:
        return _read_matlab
    if suffix in DICOM_SUFFIXES:
        return _read_dicom_file
    raise ImageReadError(
        path, f"has an unknown suffix '{suffix}' (expected DICOM, NIfTI, MetaImage, NRRD, PNG/JPEG, .npy or .mat)"
    )


def _header_reader_for(path):
    reader = _reader_for(path)
    return {
        _read_dicom_series: _header_dicom_series,
        _read_dicom_file: _header_dicom_file,
        _read_nifti: _header_nifti,
        _read_itk: _header_itk,
        _read_numpy: _header_numpy,
        _read_raster: _header_raster,
        _read_matlab: _header_matlab,
    }[reader]


def _select(array, slices):
    if slices is None or array.ndim != 3:
        return array
    return array[np.asarray(slices, dtype=int)]


# --------------------------------------------------------------------------- DICOM


def _dicom_modality(ds):
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if modality == "CT":
        return "CT"
    if modality == "MR":
        return "MR"
    if modality in XRAY_MODALITIES:
        return "XR"
    return None


def _sop_class(ds):
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")


def _non_image_kind(ds):
    """What a DICOM object is when its SOP class holds no image of anatomy, else None."""
    sop = _sop_class(ds)
    if sop == RT_IMAGE_STORAGE:
        return None
    for prefix, kind in NON_IMAGE_SOP_CLASSES.items():
        if sop == prefix or sop.startswith(prefix + "."):
            return kind
    return None


def _check_image_object(ds, path):
    kind = _non_image_kind(ds)
    if kind:
        from pydicom.uid import UID

        sop = _sop_class(ds)
        raise ImageReadError(path, f"is a DICOM {kind} ({UID(sop).name}, SOP class {sop}), not an image")


def _functional(ds, frame, sequence, keyword):
    """One frame's value of `keyword`: from its per-frame functional group, else the shared one, else the
    top-level attribute (DICOM PS3.3 C.7.6.16: Enhanced objects keep rescale, spacing, position and
    orientation in `sequence` items of the functional groups, classic objects at the top level)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    groups = ([per_frame[frame]] if frame < len(per_frame) else []) + list(shared[:1])
    for group in groups:
        items = group.get(sequence)
        if items and items[0].get(keyword) not in (None, ""):
            return items[0].get(keyword)
    value = ds.get(keyword)
    return None if value in (None, "") else value


def _frame_count(ds):
    return int(ds.get("NumberOfFrames") or 1)


def _dicom_pixels(ds, path):
    """Stored values -> physical values, frames in file order: PALETTE COLOR through its palette, colour to
    grey, MONOCHROME1 inverted, then the modality LUT or each frame's rescale."""
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "has no pixel data")
    _check_image_size(ds, path)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bytes_per_value = max(1, int(ds.get("BitsAllocated") or 16) // 8)
    _check_memory(path, (_frame_count(ds), int(ds.Rows), int(ds.Columns), samples), bytes_per_value)
    raw = _decoded(ds, path)
    stated = (_frame_count(ds),) * (_frame_count(ds) > 1) + (int(ds.Rows), int(ds.Columns)) + (samples,) * (samples > 1)
    if raw.shape != stated:  # pydicom fits surplus or odd-sized data to some shape; the header must agree.
        raise ImageReadError(path, f"holds pixels of shape {raw.shape}, but its header says {stated}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        raw = apply_color_lut(raw, ds)  # Indices -> RGB, which becomes grey below like any colour image.
    if raw.ndim >= 3 and raw.shape[-1] in (3, 4) and (samples > 1 or photometric == "PALETTE COLOR"):
        raw = _rgb_to_gray(raw[..., :3].astype(np.float32))
    array = raw.astype(np.float32)
    if photometric == "MONOCHROME1":
        # Low values display white in MONOCHROME1; flip within the representable range so
        # that, as in MONOCHROME2 and in CT, larger values mean denser tissue.
        bits = int(ds.get("BitsStored") or 16)
        if int(ds.get("PixelRepresentation") or 0) == 0:
            array = (2.0**bits - 1.0) - array
        else:
            array = -1.0 - array
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(array.astype(raw.dtype), ds).astype(np.float32)
    frames = len(array) if array.ndim == 3 else 1
    transform = "PixelValueTransformationSequence"
    slope = [float(_functional(ds, i, transform, "RescaleSlope") or 1.0) for i in range(frames)]
    intercept = [float(_functional(ds, i, transform, "RescaleIntercept") or 0.0) for i in range(frames)]
    if frames > 1:  # Each frame its own rescale.
        shape = (frames, 1, 1)
        return array * np.reshape(slope, shape).astype(np.float32) + np.reshape(intercept, shape).astype(np.float32)
    return array * np.float32(slope[0]) + np.float32(intercept[0])


def _check_image_size(ds, path):
    if not (int(ds.get("Rows") or 0) > 0 and int(ds.get("Columns") or 0) > 0):
        raise ImageReadError(path, "states no image size (Rows and Columns); it is not an image")


def _decoded(ds, path):
    """`ds.pixel_array`, or one line saying which package decodes this transfer syntax."""
    try:
        return ds.pixel_array
    except Exception as error:
        raise ImageReadError(path, _decoding_problem(ds, error)) from error


def _decoding_problem(ds, error):
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", str(syntax))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"is encoded as {name}, which pydicom cannot decode (convert it first, e.g. with gdcmconv --raw)"
    except Exception:
        decoder = None
    if decoder is not None and not decoder.is_available:
        # pydicom names each plugin's requirements as 'plugin - requires package>=x and package>=y'.
        needs = "; or ".join(text.split(" - requires ", 1)[-1] for text in decoder.missing_dependencies)
        return f"is compressed as {name}, and no decoder for it is installed (install {needs})"
    return f"pixel data cannot be decoded (transfer syntax {name}: {_short(error)})"


def _rgb_to_gray(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _dicom_plane(ds):
    """(row direction, column direction, normal) of an image plane, or identity."""
    iop = _functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return np.eye(3)
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    return np.stack([row, col, np.cross(row, col)])


def _dicom_geometry(ds, z_spacing, first_position):
    pixel_spacing = (
        _functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    )
    # PixelSpacing is (between rows, between columns) = (y, x). A 0 means not stated (some CR writers put
    # 0\0, as RG1_*.dcm of pydicom-data) and reads as 1 mm, as a missing PixelSpacing does.
    spacing = (float(pixel_spacing[1]) or 1.0, float(pixel_spacing[0]) or 1.0, float(z_spacing))
    plane = _dicom_plane(ds)
    direction = plane.T  # Columns: world directions of the x, y and z index axes.
    return {
        "spacing": spacing,
        "origin": tuple(float(v) for v in first_position),
        "direction": tuple(float(v) for v in direction.ravel()),
    }


def _slice_spacing(ds, frame=0):
    """The z spacing a file states (between slices, else the slice thickness), or 1 mm."""
    measures = "PixelMeasuresSequence"
    stated = _functional(ds, frame, measures, "SpacingBetweenSlices") or _functional(
        ds, frame, measures, "SliceThickness"
    )
    return float(stated or 1.0)


def _frame_order(ds):
    """(frame indices in stack order, z spacing, origin) of a single or multi-frame file.

    Frames whose positions are all known and distinct are sorted along the slice normal, as a series's
    files are; otherwise (one frame, or several at one position: phases, echoes) they keep the file's order.
    """
    count = _frame_count(ds)
    positions = [_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient") for i in range(count)]
    order, z_spacing = np.arange(count), _slice_spacing(ds)
    if count > 1 and all(p is not None and len(p) == 3 for p in positions):
        distances = np.array([np.asarray(p, dtype=float) @ _dicom_plane(ds)[2] for p in positions])
        steps = np.diff(np.sort(distances))
        if np.all(steps > 1e-6):
            order, z_spacing = np.argsort(distances, kind="stable"), float(np.median(steps))
    first = positions[int(order[0])]
    return order, z_spacing, first if first is not None and len(first) == 3 else (0.0, 0.0, 0.0)


def _dicom_common(ds, path):
    bit_depth = int(ds.get("BitsStored") or 0) or None
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bit_depth = int(descriptor[2]) if descriptor and len(descriptor) == 3 else bit_depth  # The palette's depth.
    return {
        "format": "dicom",
        "modality": _dicom_modality(ds),
        "bit_depth": bit_depth,
        "patient_id": str(ds.get("PatientID", "") or "") or None,
        "series_uid": str(ds.get("SeriesInstanceUID", "") or "") or None,
    }


def _dcmread(path, header_only=False):
    """The dataset of one image file, read with its warnings on one line each; non-images refused."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _warnings_named(path):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=header_only)
        except InvalidDicomError:
            ds = _forced(path, header_only)
    _check_image_object(ds, path)
    return ds


def _forced(path, header_only):
    """A file without DICOM's preamble and 'DICM' (an ACR-NEMA style file), kept only if it parses to an
    image: rows, columns and bits, and pixels unless only the header is read."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, force=True)
        image = all(key in ds for key in ("Rows", "Columns", "BitsAllocated"))
        image = image and (header_only or "PixelData" in ds) and int(ds.Rows) > 0 and int(ds.Columns) > 0
    except Exception:
        image, ds = False, None
    if not image:
        if ds is not None:
            _check_image_object(ds, path)  # A report or an RT object says what it is.
        raise ImageReadError(path, "is not a DICOM file")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # Such files are never compressed: the syntax is the encoding pydicom found while parsing.
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _read_dicom_file(path, slices):
    ds = _dcmread(path)
    array = _dicom_pixels(ds, path)
    order, z_spacing, position = _frame_order(ds)
    if _frame_count(ds) > 1:
        array = (array[None] if array.ndim == 2 else array)[order]
    meta = _dicom_common(ds, path) | _dicom_geometry(ds, z_spacing, position)
    return _select(array, slices), meta


def _header_dicom_file(path):
    ds = _dcmread(path, header_only=True)
    _check_image_size(ds, path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = _frame_count(ds)
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    return _dicom_common(ds, path) | {"shape": shape}


def _series_headers(folder):
    """Headers of the one series in a folder, sorted along the slice normal."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if file.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=True)
        except InvalidDicomError:
            continue  # Not DICOM (a README, a thumbnail): not part of the series.
        except Exception as error:
            raise ImageReadError(file, f"cannot be read as DICOM ({_short(error)})") from error
        if "Rows" not in ds or _non_image_kind(ds):
            continue  # Not an image (a structured report, a segmentation, a DICOMDIR-like file).
        headers.append((file, ds))
    if not headers:
        raise ImageReadError(folder, "holds no DICOM image files")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise ImageReadError(folder, f"holds {len(series)} DICOM series; point at a folder with one series")
    normal = _dicom_plane(headers[0][1])[2]
    _check_parallel(folder, normal, [ds for _, ds in headers])

    def position(ds):
        ipp = getattr(ds, "ImagePositionPatient", None)
        return np.asarray(ipp, dtype=float) if ipp is not None else None

    if all(position(ds) is not None for _, ds in headers):
        # Order by the position projected on the slice normal: file names and
        # InstanceNumber are not reliable orderings of space.
        headers.sort(key=lambda item: float(position(item[1]) @ normal))
        distances = np.array([float(position(ds) @ normal) for _, ds in headers])
    else:
        headers.sort(key=lambda item: int(getattr(item[1], "InstanceNumber", 0) or 0))
        distances = np.arange(len(headers), dtype=float)
    if len(headers) > 1:
        steps = np.diff(distances)
        if np.any(np.abs(steps) < 1e-6):
            raise ImageReadError(folder, "holds two slices at the same position")
        z_spacing = float(np.median(steps))
        gaps = np.flatnonzero(steps > 1.5 * z_spacing)
        if len(gaps):  # Read with the median spacing; a user who needs true geometry must know.
            k = int(gaps[0])
            print(
                f"warning: {folder}: slices are missing between positions {distances[k]:.2f} and "
                f"{distances[k + 1]:.2f} mm ({len(gaps)} gap(s); spacing {z_spacing:.2f} mm); read with that "
                "spacing.",
                file=sys.stderr,
            )
    else:
        ds = headers[0][1]
        z_spacing = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    return headers, z_spacing


PARALLEL_DEGREES = 1.0  # Slices of one volume lie in parallel planes; scanners' rounding stays far below 1 degree.


def _check_parallel(folder, normal, headers):
    """A series is stacked into a volume only when its slices are parallel: radial planes or orthogonal localizers
    would otherwise be stacked with an invented slice spacing."""
    normals = [_dicom_plane(ds)[2] for ds in headers]
    cosines = [abs(float(n @ normal)) / max(np.linalg.norm(n) * np.linalg.norm(normal), 1e-12) for n in normals]
    worst = float(np.degrees(np.arccos(min(1.0, min(cosines)))))
    if worst > PARALLEL_DEGREES:
        planes = len({tuple(np.round(n, 3)) for n in normals})
        raise ImageReadError(
            folder,
            f"holds slices in {planes} planes up to {worst:.1f} degrees apart (radial planes or localizers), not "
            "one volume; read each file on its own instead",
        )


def _read_dicom_series(folder, slices):
    headers, z_spacing = _series_headers(folder)
    chosen = range(len(headers)) if slices is None else [int(i) for i in slices]
    first = headers[0][1]
    _check_image_size(first, headers[0][0])
    bytes_per_value = max(1, int(first.get("BitsAllocated") or 16) // 8) * int(first.get("SamplesPerPixel") or 1)
    _check_memory(folder, (len(chosen), int(first.Rows), int(first.Columns)), bytes_per_value)
    planes = []
    for index in chosen:
        if not 0 <= index < len(headers):
            raise ImageReadError(folder, f"has no slice {index} (it has {len(headers)})")
        file = headers[index][0]
        ds = _dcmread(file)
        pixels = _dicom_pixels(ds, file)
        if pixels.ndim != 2:
            raise ImageReadError(file, "is a multi-frame file inside a series folder; read it on its own")
        if planes and pixels.shape != planes[0].shape:
            raise ImageReadError(file, f"has size {pixels.shape}, unlike the rest of its series {planes[0].shape}")
        planes.append(pixels)
    position = getattr(first, "ImagePositionPatient", None) or (0.0, 0.0, 0.0)
    meta = _dicom_common(first, folder) | _dicom_geometry(first, z_spacing, position)
    return np.stack(planes), meta


def _header_dicom_series(folder):
    headers, z_spacing = _series_headers(folder)
    first = headers[0][1]
    position = getattr(first, "ImagePositionPatient", None) or (0.0, 0.0, 0.0)
    meta = _dicom_common(first, folder) | _dicom_geometry(first, z_spacing, position)
    return meta | {"shape": (len(headers), int(first.Rows), int(first.Columns))}


# --------------------------------------------------------------------------- NIfTI

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _nifti_geometry(image):
    """nibabel's RAS affine -> ITK's LPS spacing, origin and direction."""
    affine = np.asarray(image.affine, dtype=float)
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    zooms = np.concatenate([zooms, np.ones(3 - len(zooms))])
    zooms[zooms == 0] = 1.0
    direction = _RAS_TO_LPS @ (affine[:3, :3] / zooms)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return {
        "spacing": tuple(float(v) for v in zooms),
        "origin": tuple(float(v) for v in origin),
        "direction": tuple(float(v) for v in direction.ravel()),
    }


def _load_nifti(path):
    import nibabel

    try:
        image = nibabel.load(str(path))
    except Exception as error:
        raise ImageReadError(path, f"is not a readable NIfTI file ({_short(error)})") from error
    _check_nifti_size(path, image)
    return image


def _check_nifti_size(path, image):
    """The header's dimensions are 2 to 4 positive sizes, and its voxels fit in the bytes on disk (deflate's
    largest ratio for .gz), before any allocation."""
    if not 2 <= len(image.shape) <= 4 or min(image.shape) < 1:
        raise ImageReadError(path, f"has dimensions {image.shape}; expected 2 to 4 positive sizes")
    voxels = int(np.prod([int(n) for n in image.shape], dtype=object))
    needed = voxels * image.header.get_data_dtype().itemsize
    data_file = Path(image.file_map["image"].filename or path)
    if not data_file.is_file():
        raise ImageReadError(path, f"has no data file {data_file.name} beside it")
    actual = data_file.stat().st_size
    compressed = data_file.name.lower().endswith(".gz")
    if needed > (DEFLATE_MAX_RATIO * actual + 1024 if compressed else actual):
        raise ImageReadError(
            path,
            f"claims {'x'.join(str(n) for n in image.shape)} voxels ({needed:,} bytes), more "
            f"than its {actual:,}{' compressed' if compressed else ''} bytes on disk can hold",
        )


def _nifti_to_zyx(data):
    """NIfTI (i, j, k[, t]) -> (z, y, x); a 4D file gives its first volume."""
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim == 3:
        return np.transpose(data, (2, 1, 0))
    if data.ndim == 2:
        return data.T
    raise ValueError(f"unsupported number of dimensions {data.ndim}")


def _read_nifti(path, slices):
    image = _load_nifti(path)
    proxy = image.dataobj
    if slices is not None and len(image.shape) in (3, 4) and suffix_of(path) != ".nii.gz":
        # Slicing the proxy reads only those planes of an uncompressed file (a gzip stream
        # would be decompressed again for every plane, so .nii.gz is read whole).
        planes = []
        for k in slices:
            index = (slice(None), slice(None), int(k)) + ((0,) if len(image.shape) == 4 else ())
            planes.append(np.asarray(proxy[index], dtype=np.float32).T)
        data = np.stack(planes)
    else:
        _check_memory(path, image.shape, image.header.get_data_dtype().itemsize)
        data = _select(_nifti_to_zyx(np.asarray(proxy, dtype=np.float32)), slices)
    meta = {"format": "nifti", "volumes_in_file": int(image.shape[3]) if len(image.shape) == 4 else 1}
    return data, meta | _nifti_geometry(image)


def _header_nifti(path):
    image = _load_nifti(path)
    shape = image.shape
    zyx = tuple(reversed(shape[:3])) if len(shape) >= 3 else tuple(reversed(shape))
    volumes = int(shape[3]) if len(shape) == 4 else 1
    return {"format": "nifti", "shape": zyx, "volumes_in_file": volumes, "volumes_read": "first"} | _nifti_geometry(
        image
    )


# --------------------------------------------------------------------------- ITK (MetaImage, NRRD)


def _itk_meta(image):
    return {
        "format": "itk",
        "spacing": tuple(float(v) for v in image.GetSpacing()),
        "origin": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


_MET_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_TEXT_HEADER_BYTES = 1 << 16  # A MetaImage/NRRD header's fields fit in this; a .mha or .nrrd's pixels follow them.
_LISTING_BYTES = 1 << 24  # ... and a LIST of slice files after them in this.


def _text_header(path):
    """(fields, lines after the data-file line) of a MetaImage (`Key = value`) or NRRD (`key: value`) header.

    Only the text before the pixel data is read (a LIST of files in full, up to 16 MB).
    """
    with open(path, "rb") as handle:
        text = handle.read(_TEXT_HEADER_BYTES).decode("latin-1")
        if "LIST" in text:
            text += handle.read(_LISTING_BYTES).decode("latin-1")
    lines = text.splitlines()
    fields, separator = {}, "=" if suffix_of(path) in (".mhd", ".mha") else ":"
    for number, line in enumerate(lines):
        if suffix_of(path) in (".nrrd", ".nhdr") and not line.strip():
            break  # NRRD: a blank line ends the header.
        key, found, value = line.partition(separator)
        if not found:
            continue
        key = key.strip().lower().replace(" ", "")
        fields[key] = value.strip()
        if key in ("elementdatafile", "datafile"):
            return fields, lines[number + 1 :]  # The last header field; a LIST's file names follow it.
    return fields, []


def _named_data_files(path):
    """The data files a file reads besides itself: those a MetaImage or detached NRRD header names,
    an Analyze/NIfTI pair's .img, a DICOM series folder's files."""
    path = Path(path)
    if path.is_dir():
        return [child.name for child in path.iterdir() if not child.name.startswith(".")]
    if suffix_of(path) == ".hdr":
        return [path.with_suffix(".img").name]
    if suffix_of(path) not in ITK_SUFFIXES:
        return []
    fields, rest = _text_header(path)
    value = fields.get("elementdatafile", fields.get("datafile", ""))
    if not value or value.upper() == "LOCAL":
        return []
    words = value.split()
    if words[0].upper() == "LIST":
        return [line.strip() for line in rest if line.strip()]
    if "%" in value:  # A numbered series, `pattern min max step`: its files, once the pattern is checked.
        numbers = _file_pattern(path, value)
        return [words[0] % i for i in numbers] if numbers is not None else [words[0]]
    return [value]


_FILE_PATTERN = re.compile(r"[^%]*%0?[1-9]?\d?d[^%]*")  # One integer conversion (%d, %03d), no other %.
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")  # What C's strtod reads, minus nan and inf.
MAX_PATTERN_FILES = 100_000


def _file_pattern(path, value):
    """The numbers of a numbered data-file series `pattern [min [max [step]]]` (MetaImage, NRRD), or None
    when the header leaves them to the library; refuses a pattern that is not one integer conversion.

    The libraries pass the pattern to printf: `%s` or `%n` there crashes the process (a segmentation
    fault in SimpleITK's MetaIO), and a step of 0 never ends. So the pattern is data, checked here.
    """
    words = value.split()
    if not _FILE_PATTERN.fullmatch(words[0]):
        raise ImageReadError(path, f"names its data files with the pattern {words[0]!r}, not a name with one %d")
    if not all(_INTEGER.fullmatch(word) for word in words[1:4]) or len(words) > 5:
        raise ImageReadError(path, f"names its data files as {value!r}, not 'pattern min max step'")
    if len(words) < 4:
        return None
    low, high, step = (int(word) for word in words[1:4])
    if step < 1 or not 0 <= (high - low) // step < MAX_PATTERN_FILES:
        raise ImageReadError(path, f"names its data files as {value!r}: min, max and step give no series")
    return range(low, high + 1, step)


class OutsideRootError(ImageReadError):
    """A header names a data file outside its folder: refused whole, never skipped as a damaged file."""


def check_data_files(path, allow_outside_root=False):
    """Raises OutsideRootError unless the files a header names (or a series folder holds) lie in its folder.

    `..` and symlinks are resolved first; `read_image` and `read_header` call it, and a
    caller may call it alone to check a dataset before reading any pixel.
    """
    if allow_outside_root:
        return
    path = Path(path)
    base = path if path.is_dir() else path.parent
    folder = base.resolve()
    for name in _named_data_files(path):
        target = (base / name).resolve()
        if not target.is_relative_to(folder):
            what = f"holds {name}, a link to" if path.is_dir() else f"names the data file {name}, which lies"
            raise OutsideRootError(path, f"{what} outside its folder {folder} (read only with --allow-outside-root)")


MAX_DIMS = 5  # Volumes, series of volumes and vector images; more is no image this project reads.
MAX_SIDE = 2**31 - 1
# MetaImage fields that hold one number per dimension, or a matrix of them, and must be finite.
_METAIMAGE_VECTORS = ("offset", "position", "origin", "centerofrotation")
_METAIMAGE_MATRICES = ("transformmatrix", "rotation", "orientation")
_METAIMAGE_FLAGS = ("binarydata", "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata")


def _check_metaimage(path):
    """A MetaImage header's fields that become sizes, numbers or file names, checked before SimpleITK sees them.

    SimpleITK's MetaIO trusts them: a printf pattern as ElementDataFile crashes the process, NDims beyond
    its arrays overruns them, and whatever DimSize claims is allocated before reading. So each field is
    data, checked here, and a wrong one is one line; then the data file must exist and hold what DimSize
    and ElementType need (compressed data is held to deflate's largest ratio).
    """
    if suffix_of(path) not in (".mhd", ".mha"):
        return
    fields, _ = _text_header(path)
    sizes, element, channels, header_size = _metaimage_fields(path, fields)
    _check_metaimage_data(path, fields, sizes, element, channels, header_size)


def _metaimage_fields(path, fields):
    """(DimSize, ElementType, channels, HeaderSize) of a MetaImage header's `fields`, every number field checked."""

    def numbers(key, count, pattern=_NUMBER, low=-math.inf, high=math.inf):
        words = fields[key].split()
        if len(words) != count or not all(pattern.fullmatch(w) and low <= float(w) <= high for w in words):
            raise ImageReadError(path, f"has {key} = {fields[key][:80]!r}; expected {count} numbers in [{low}, {high}]")
        return [int(w) if pattern is _INTEGER else float(w) for w in words]

    for key in ("ndims", "dimsize", "elementtype"):
        if key not in fields:
            raise ImageReadError(path, f"is a MetaImage header without {key}")
    ndims = numbers("ndims", 1, _INTEGER, 1, MAX_DIMS)[0]
    sizes = numbers("dimsize", ndims, _INTEGER, 1, MAX_SIDE)
    element = fields["elementtype"].upper()
    if element not in _MET_BYTES:
        raise ImageReadError(path, f"has ElementType {element[:40]!r}, not one of {', '.join(_MET_BYTES)}")
    channels = numbers("elementnumberofchannels", 1, _INTEGER, 1, 1024)[0] if "elementnumberofchannels" in fields else 1
    header_size = numbers("headersize", 1, _INTEGER, -1, 2**62)[0] if "headersize" in fields else 0
    for key in ("elementspacing", "elementsize"):
        if key in fields:
            numbers(key, ndims, low=1e-300)  # Spacing: finite and positive.
    for key in _METAIMAGE_VECTORS + _METAIMAGE_MATRICES:
        if key in fields:
            numbers(key, ndims * (ndims if key in _METAIMAGE_MATRICES else 1), low=-1e300, high=1e300)
    for key in _METAIMAGE_FLAGS:
        if key in fields and fields[key].lower() not in ("true", "false"):
            raise ImageReadError(path, f"has {key} = {fields[key][:40]!r}; expected True or False")
    return sizes, element, channels, header_size


def _check_metaimage_data(path, fields, sizes, element, channels, header_size):
    """The data file a MetaImage header names: a safe name that exists and holds the pixels the header claims."""
    data = fields.get("elementdatafile", "")
    if not data:
        raise ImageReadError(path, "is a MetaImage header without ElementDataFile")
    names = [data] if data.split()[0].upper() != "LIST" else _named_data_files(path)
    if any(ord(c) < 32 or ord(c) == 127 for name in names for c in name):
        raise ImageReadError(path, "names a data file with control characters")
    if "%" in data and data.split()[0].upper() != "LIST":
        _file_pattern(path, data)
        return
    if data.split()[0].upper() == "LIST":
        return
    local = data.upper() == "LOCAL"
    data_path = Path(path) if local else Path(path).parent / data
    if not data_path.is_file():
        raise ImageReadError(path, f"names the data file {data}, which does not exist")
    needed = math.prod(sizes) * _MET_BYTES[element] * channels
    actual = data_path.stat().st_size
    where = "it" if local else f"its data file {data}"
    if fields.get("compresseddata", "False").lower() == "true":
        if needed > DEFLATE_MAX_RATIO * actual + 1024:
            raise ImageReadError(
                path,
                f"claims {needed:,} bytes of pixels (DimSize {fields['dimsize']}), more than "
                f"{where} of {actual:,} compressed bytes can hold",
            )
        return
    if not local:
        needed += max(0, header_size)
    if actual < needed:
        raise ImageReadError(path, f"{where} holds {actual:,} bytes but the header needs {needed:,} (cut short?)")


def _itk_header(path):
    """SimpleITK's reader of `path` with the header read (no pixels) after this module's checks of it."""
    import SimpleITK as sitk

    _check_metaimage(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(path, f"cannot be read by SimpleITK ({_itk_reason(error)})") from error
    if not 1 <= reader.GetDimension() <= MAX_DIMS or min(reader.GetSize()) < 1:
        raise ImageReadError(path, f"has dimensions {reader.GetSize()}; expected 1 to {MAX_DIMS} positive sizes")
    return reader


def _read_itk(path, slices):
    import SimpleITK as sitk

    reader = _itk_header(path)
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())  # e.g. '16-bit signed integer'
    bits = re.search(r"(\d+)-bit", kind)
    components = reader.GetNumberOfComponents()
    _check_memory(path, tuple(reversed(reader.GetSize())) + (components,), int(bits.group(1)) // 8 if bits else 8)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(path, f"cannot be read by SimpleITK ({_itk_reason(error)})") from error
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = _rgb_to_gray(array[..., :3].astype(np.float32))
    return _select(array.astype(np.float32), slices), _itk_meta(image)


def _header_itk(path):
    reader = _itk_header(path)
    return {
        "format": "itk",
        "shape": tuple(reversed(reader.GetSize())),
        "spacing": tuple(reader.GetSpacing()),
        "origin": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }


def _itk_reason(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # SimpleITK's messages start with file/line boilerplate; the reason is last.
    return lines[-1][:200] if lines else "unknown error"


# --------------------------------------------------------------------------- PNG / JPEG


def _read_raster(path, slices):
    import cv2

    buffer = np.fromfile(str(path), dtype=np.uint8)  # Works with any path encoding.
    if buffer.size == 0:
        raise ImageReadError(path, "is empty")
    # OpenCV decodes a cut-off PNG or JPEG into a partly blank image with only a warning:
    # check that the file reaches its end marker first. The kind comes from the content, not
    # the suffix: a JPEG saved as .png is a JPEG.
    head, tail = buffer[:8].tobytes(), buffer[-1024:].tobytes()
    kind = "PNG" if head.startswith(b"\x89PNG") else "JPEG" if head.startswith(b"\xff\xd8") else None
    if (kind == "PNG" and b"IEND" not in tail) or (kind == "JPEG" and b"\xff\xd9" not in tail):
        raise ImageReadError(path, f"is truncated (a {kind} without its end-of-image marker)")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "cannot be decoded as an image (truncated or corrupt)")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] in (3, 4) else image[..., 0]
    bit_depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(image.dtype)
    meta = {
        "format": "raster",
        "bit_depth": bit_depth,
        "spacing": (1.0, 1.0),
        "origin": (0.0, 0.0),
        "direction": (1.0, 0.0, 0.0, 1.0),
    }
    return image.astype(np.float32), meta


def _header_raster(path):
    # A 2D image has no cheap header to read: decoding it is what proves it readable.
    image, meta = _read_raster(path, None)
    return meta | {"shape": image.shape}


# --------------------------------------------------------------------------- numpy (MRNet)


def _read_numpy(path, slices):
    array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    if array.ndim not in (2, 3):
        raise ImageReadError(path, f"holds a {array.ndim}D array; expected 2D or 3D")
    meta = {"format": "numpy", "spacing": (1.0,) * array.ndim, "origin": (0.0,) * array.ndim}
    return np.asarray(_select(array, slices), dtype=np.float32), meta


def _header_numpy(path):
    array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    if array.ndim not in (2, 3):
        raise ImageReadError(path, f"holds a {array.ndim}D array; expected 2D or 3D")
    return {"format": "numpy", "shape": tuple(array.shape)}


# ------------------------------------------------------------------------- MATLAB (figshare brain tumours, Cardiac MRI)
#
# Two layouts, in either MATLAB format (v7.3 is HDF5, read with h5py; v4-v7 with scipy):
# - `cjdata.image` (y, x) and `cjdata.PID`: one slice per file, the patient named inside
#   (the figshare brain tumour set, thesis 3.1.2 item 10);
# - `sol_yxzt` (y, x, z, t): a Cardiac MRI patient, `sol_yxzt_patN.mat`, 20 frames of 8-15
#   slices (thesis 3.1.2 item 8). Every frame of every slice is one of the patient's slices
#   (so 160-300 per patient, as Fig. 3.1 counts them), in frame-major order: slice index
#   i is frame i // z, slice i % z.
# HDF5 holds MATLAB's column-major arrays with their axes reversed.


def _matlab_is_hdf5(path):
    import h5py

    return h5py.is_hdf5(str(path))


def _matlab_layout(path):
    """('brain', shape (y, x)) or ('cardiac', shape (t, z, y, x)), from the file's variables alone."""
    if _matlab_is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as handle:
            if "sol_yxzt" in handle:
                return "cardiac", tuple(handle["sol_yxzt"].shape[:2]) + tuple(reversed(handle["sol_yxzt"].shape[2:]))
            if "cjdata" in handle and "image" in handle["cjdata"]:
                return "brain", tuple(reversed(handle["cjdata"]["image"].shape))
    else:
        from scipy.io import whosmat

        shapes = {name: shape for name, shape, _ in whosmat(str(path))}
        if "sol_yxzt" in shapes:
            y, x, *rest = shapes["sol_yxzt"]
            z, t = (list(rest) + [1, 1])[:2]
            return "cardiac", (t, z, y, x)
        if "cjdata" in shapes:
            image, _ = _matlab_slice(path)
            return "brain", image.shape
    raise ImageReadError(path, "holds neither sol_yxzt (Cardiac MRI) nor cjdata.image (figshare brain tumour)")


def _matlab_slice(path):
    """(image (y, x) float32, patient id) of a figshare brain tumour file: `cjdata.image`, `cjdata.PID`."""
    if not _matlab_is_hdf5(path):
        from scipy.io import loadmat

        data = loadmat(str(path), variable_names=["cjdata"], simplify_cells=True).get("cjdata")
        if not isinstance(data, dict) or "image" not in data:
            raise ImageReadError(path, "holds no cjdata.image (expected a figshare brain tumour .mat file)")
        image = np.asarray(data["image"], dtype=np.float32)
        patient = str(data.get("PID", "") or "").strip() or None
    else:
        import h5py

        with h5py.File(path, "r") as handle:
            if "cjdata" not in handle or "image" not in handle["cjdata"]:
                raise ImageReadError(path, "holds no cjdata.image (expected a figshare brain tumour .mat file)")
            image = np.asarray(handle["cjdata"]["image"], dtype=np.float32).T  # MATLAB stores columns first.
            patient = None
            if "PID" in handle["cjdata"]:  # A MATLAB char array: UTF-16 code units.
                patient = (
                    "".join(chr(int(c)) for c in np.asarray(handle["cjdata"]["PID"]).ravel() if int(c)).strip() or None
                )
    if image.ndim != 2:
        raise ImageReadError(path, f"holds a {image.ndim}D cjdata.image; expected one 2D slice")
    return image, patient


def _cardiac_planes(path, shape, slices):
    """The (frame, slice) planes of `sol_yxzt` at flat indices `slices` (all when None), as (n, y, x)."""
    t, z = shape[0], shape[1]
    chosen = range(t * z) if slices is None else [int(i) for i in slices]
    for index in chosen:
        if not 0 <= index < t * z:
            raise ImageReadError(path, f"has no slice {index} (it has {t} frames x {z} slices = {t * z})")
    if _matlab_is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as handle:  # Stored (t, z, x, y): read only the planes asked for.
            data = handle["sol_yxzt"]
            return np.stack([np.asarray(data[i // z, i % z], dtype=np.float32).T for i in chosen])
    from scipy.io import loadmat

    volume = np.asarray(loadmat(str(path), variable_names=["sol_yxzt"])["sol_yxzt"], dtype=np.float32)
    volume = volume.reshape(volume.shape[:2] + (z, t))
    return np.stack([volume[:, :, i % z, i // z] for i in chosen])


def _matlab_meta(layout, shape):
    meta = {
        "format": "matlab",
        "modality": "MR",
        "spacing": (1.0, 1.0, 1.0),
        "origin": (0.0, 0.0, 0.0),
        "direction": tuple(np.eye(3).ravel()),
    }
    if layout == "cardiac":
        meta |= {"volumes_in_file": shape[0], "volumes_read": "all", "slices_per_volume": shape[1]}
    return meta


def _read_matlab(path, slices):
    layout, shape = _matlab_layout(path)
    if layout == "cardiac":
        return _cardiac_planes(path, shape, slices), _matlab_meta(layout, shape)
    image, patient = _matlab_slice(path)
    meta = {
        "format": "matlab",
        "modality": "MR",
        "spacing": (1.0, 1.0),
        "origin": (0.0, 0.0),
        "direction": (1.0, 0.0, 0.0, 1.0),
        "patient_id": patient,
    }
    return image, meta


def _header_matlab(path):
    layout, shape = _matlab_layout(path)
    if layout == "cardiac":
        return _matlab_meta(layout, shape) | {"shape": (shape[0] * shape[1], shape[2], shape[3])}
    image, patient = _matlab_slice(path)
    return {"format": "matlab", "modality": "MR", "shape": image.shape, "patient_id": patient}
