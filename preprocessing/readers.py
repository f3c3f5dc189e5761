"""Read medical images as `(array, meta)`, whatever the on-disk format.

`array` is float32, (z, y, x) for volumes and (y, x) for 2D images, in physical
units where the format has them (Hounsfield units for CT DICOM).

`meta` describes the geometry in the convention of ITK and of the LUNA16 csv
files: `spacing`, `origin` and `direction` are in (x, y, z) world order, in
millimetres, with patient LPS axes; `direction` is the row-major 3x3 matrix whose
columns are the world directions of the x, y and z index axes. So the world
position of voxel `array[k, j, i]` is `origin + direction @ ((i, j, k) * spacing)`.
It also holds `path`, `format`, `shape`, `modality` ('CT', 'MR', 'XR' or None when
the file does not say), for integer images `bit_depth`, and `patient_id` where the
file itself names the patient (the figshare brain tumour `.mat` files).

The reader is chosen by the suffix; a folder is read as one DICOM series. Heavy
libraries are imported where they are used. Every failure is an
`ImageReadError` whose message names the file and the problem.
"""

import sys
from pathlib import Path

import numpy as np

from plumbing.errors import ImageReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")  # .hdr: Analyze 7.5 (OASIS, IBSR), read by nibabel
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
NUMPY_SUFFIXES = (".npy",)
MATLAB_SUFFIXES = (".mat",)  # The figshare brain tumour set (thesis 3.1.2, item 10): MATLAB v7.3 = HDF5.

# DICOM Modality values of plain radiographs (computed, digital, intra-oral, mammography).
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "IO", "MG", "PX"}


def suffix_of(path):
    """The lower-case suffix, with `.nii.gz` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def read_image(path, slices=None):
    """Reads an image file or a DICOM series folder.

    Args:
        path: str or Path. A file, or a folder holding one DICOM series.
        slices: optional sequence of int. For volumes, only these z indices are
            returned (stacked in the given order); DICOM series and uncompressed
            NIfTI then read only those slices from disk. Defaults to all.

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
        array, meta = reader(path, slices)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # Each library has its own exception types.
        raise ImageReadError(path, f"cannot be read ({type(error).__name__}: {_short(error)})") from error
    if array.size == 0:
        raise ImageReadError(path, "holds no pixel data")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    meta.setdefault("modality", None)
    meta["path"] = str(path)
    meta["shape"] = tuple(int(s) for s in array.shape)
    return array, meta


def read_header(path):
    """Reads only what the manifest needs: `meta` with `shape` and `num_slices`.

    Cheap for every format (pixel data is not decoded, except for 2D rasters).
    """
    path = Path(path)
    reader = _header_reader_for(path)
    try:
        meta = reader(path)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(path, f"cannot be read ({type(error).__name__}: {_short(error)})") from error
    meta.setdefault("modality", None)
    meta["path"] = str(path)
    shape = meta["shape"]
    meta["num_slices"] = int(shape[0]) if len(shape) == 3 else 1
    return meta


def _short(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else "no details"


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
    raise ImageReadError(path, f"has an unknown suffix '{suffix}' (expected DICOM, NIfTI, MetaImage, NRRD, PNG/JPEG, .npy or .mat)")


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


def _dicom_pixels(ds, path):
    """Stored values -> physical values: MONOCHROME1 inverted, then the modality LUT."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ImageReadError(path, "has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(
            path, f"pixel data cannot be decoded (transfer syntax {name}: {_short(error)})"
        ) from error
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if raw.ndim >= 3 and raw.shape[-1] in (3, 4) and int(getattr(ds, "SamplesPerPixel", 1)) > 1:
        raw = _rgb_to_gray(raw[..., :3].astype(np.float32))
    array = raw.astype(np.float32)
    if photometric == "MONOCHROME1":
        # Low values display white in MONOCHROME1; flip within the representable range so
        # that, as in MONOCHROME2 and in CT, larger values mean denser tissue.
        bits = int(getattr(ds, "BitsStored", 16))
        if int(getattr(ds, "PixelRepresentation", 0)) == 0:
            array = (2.0**bits - 1.0) - array
        else:
            array = -1.0 - array
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(array.astype(raw.dtype), ds).astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return array * np.float32(slope) + np.float32(intercept)


def _rgb_to_gray(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _dicom_plane(ds):
    """(row direction, column direction, normal) of an image plane, or identity."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return np.eye(3)
    row = np.asarray(iop[:3], dtype=float)
    col = np.asarray(iop[3:], dtype=float)
    return np.stack([row, col, np.cross(row, col)])


def _dicom_geometry(ds, z_spacing, first_position):
    pixel_spacing = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None) or (1.0, 1.0)
    # PixelSpacing is (between rows, between columns) = (y, x).
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(z_spacing))
    plane = _dicom_plane(ds)
    direction = plane.T  # Columns: world directions of the x, y and z index axes.
    return {
        "spacing": spacing,
        "origin": tuple(float(v) for v in first_position),
        "direction": tuple(float(v) for v in direction.ravel()),
    }


def _dicom_common(ds, path):
    return {
        "format": "dicom",
        "modality": _dicom_modality(ds),
        "bit_depth": int(getattr(ds, "BitsStored", 0) or 0) or None,
        "patient_id": str(getattr(ds, "PatientID", "") or "") or None,
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "") or "") or None,
    }


def _dcmread(path, header_only=False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as error:
        raise ImageReadError(path, "is not a DICOM file") from error


def _read_dicom_file(path, slices):
    ds = _dcmread(path)
    array = _dicom_pixels(ds, path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1 and array.ndim == 2:
        array = array[None]
    position = getattr(ds, "ImagePositionPatient", None) or (0.0, 0.0, 0.0)
    z = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    meta = _dicom_common(ds, path) | _dicom_geometry(ds, z, position)
    return _select(array, slices), meta


def _header_dicom_file(path):
    ds = _dcmread(path, header_only=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
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
        if "Rows" not in ds:
            continue  # Not an image (a structured report, a DICOMDIR-like file).
        headers.append((file, ds))
    if not headers:
        raise ImageReadError(folder, "holds no DICOM image files")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise ImageReadError(folder, f"holds {len(series)} DICOM series; point at a folder with one series")
    normal = _dicom_plane(headers[0][1])[2]

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
            print(f"warning: {folder}: slices are missing between positions {distances[k]:.2f} and "
                  f"{distances[k + 1]:.2f} mm ({len(gaps)} gap(s); spacing {z_spacing:.2f} mm); read with that "
                  "spacing.", file=sys.stderr)
    else:
        ds = headers[0][1]
        z_spacing = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    return headers, z_spacing


def _read_dicom_series(folder, slices):
    headers, z_spacing = _series_headers(folder)
    chosen = range(len(headers)) if slices is None else [int(i) for i in slices]
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
    first = headers[0][1]
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
        return nibabel.load(str(path))
    except Exception as error:
        raise ImageReadError(path, f"is not a readable NIfTI file ({_short(error)})") from error


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
        data = _select(_nifti_to_zyx(np.asarray(proxy, dtype=np.float32)), slices)
    meta = {"format": "nifti", "volumes_in_file": int(image.shape[3]) if len(image.shape) == 4 else 1}
    return data, meta | _nifti_geometry(image)


def _header_nifti(path):
    image = _load_nifti(path)
    shape = image.shape
    zyx = tuple(reversed(shape[:3])) if len(shape) >= 3 else tuple(reversed(shape))
    return {"format": "nifti", "shape": zyx} | _nifti_geometry(image)


# --------------------------------------------------------------------------- ITK (MetaImage, NRRD)


def _itk_meta(image):
    return {
        "format": "itk",
        "spacing": tuple(float(v) for v in image.GetSpacing()),
        "origin": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
    }


_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _check_metaimage_data(path):
    """For a .mhd with an uncompressed data file: that file exists and holds what the header says.

    SimpleITK reports a short .raw as 'No such file or directory'; this says what is wrong.
    """
    if suffix_of(path) != ".mhd":
        return
    fields = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    data = fields.get("ElementDataFile", "")
    if not data or data == "LOCAL" or data.startswith("LIST") or "%" in data:
        return
    if fields.get("CompressedData", "False").lower() == "true":
        return
    data_path = Path(path).parent / data
    if not data_path.is_file():
        raise ImageReadError(path, f"names the data file {data}, which does not exist")
    try:
        size = np.prod([int(v) for v in fields["DimSize"].split()])
        needed = int(size) * _MET_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", 1))
    except (KeyError, ValueError):
        return  # Let SimpleITK judge a header this check does not understand.
    needed += max(0, int(fields.get("HeaderSize", 0) or 0))
    actual = data_path.stat().st_size
    if actual < needed:
        raise ImageReadError(path, f"its data file {data} holds {actual:,} bytes but the header needs {needed:,} "
                             "(cut short?)")


def _read_itk(path, slices):
    import SimpleITK as sitk

    _check_metaimage_data(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(path, f"cannot be read by SimpleITK ({_itk_reason(error)})") from error
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = _rgb_to_gray(array[..., :3].astype(np.float32))
    return _select(array.astype(np.float32), slices), _itk_meta(image)


def _header_itk(path):
    import SimpleITK as sitk

    _check_metaimage_data(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(path, f"cannot be read by SimpleITK ({_itk_reason(error)})") from error
    meta = {
        "format": "itk",
        "shape": tuple(reversed(reader.GetSize())),
        "spacing": tuple(reader.GetSpacing()),
        "origin": tuple(reader.GetOrigin()),
        "direction": tuple(reader.GetDirection()),
    }
    return meta


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


# --------------------------------------------------------------------------- MATLAB v7.3 (figshare brain tumours)


def _matlab_slice(path):
    """(image (y, x) float32, patient id) of a figshare brain tumour file: `cjdata.image`, `cjdata.PID`."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ImageReadError(path, f"is not a MATLAB v7.3 (HDF5) file ({_short(error)})") from error
    with handle:
        if "cjdata" not in handle or "image" not in handle["cjdata"]:
            raise ImageReadError(path, "holds no cjdata.image (expected a figshare brain tumour .mat file)")
        image = np.asarray(handle["cjdata"]["image"], dtype=np.float32).T  # MATLAB stores columns first.
        patient = None
        if "PID" in handle["cjdata"]:  # A MATLAB char array: UTF-16 code units.
            patient = "".join(chr(int(c)) for c in np.asarray(handle["cjdata"]["PID"]).ravel() if int(c)).strip() or None
    if image.ndim != 2:
        raise ImageReadError(path, f"holds a {image.ndim}D cjdata.image; expected one 2D slice")
    return image, patient


def _read_matlab(path, slices):
    image, patient = _matlab_slice(path)
    meta = {"format": "matlab", "modality": "MR", "spacing": (1.0, 1.0), "origin": (0.0, 0.0),
            "direction": (1.0, 0.0, 0.0, 1.0), "patient_id": patient}
    return image, meta


def _header_matlab(path):
    image, patient = _matlab_slice(path)
    return {"format": "matlab", "modality": "MR", "shape": image.shape, "patient_id": patient}
