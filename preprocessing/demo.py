"""Write a small demo corpus in the real on-disk formats of the thesis's pretraining datasets.

    python -m preprocessing.demo --out demo_data

Writes `pretrain/` in seconds: CT as DICOM series, NIfTI and MetaImage; MRI as
NIfTI; X-ray as 8- and 16-bit PNG; and `pretrain/datasets.yaml`, a table for
`python -m preprocessing.manifest`. The phantoms and writers here also serve the
downstream tasks' demo trees (`luna16.demo`, `mura.demo`), which live with their
tasks; `python -m study.demo_data` writes all of them.

The images are synthetic phantoms with a learnable signal, so downstream demos
reach an AUC clearly above 0.5. They are not medical data.
"""

import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from plumbing.atomic import write_text
from plumbing.options import Options, build_parser, option

COMPLETE_MARKER = ".complete"
DEMO_VERSION = 5  # Bump when a generator changes, so old demo trees are rewritten.


# --------------------------------------------------------------------------- phantoms


def ct_phantom(shape, spacing, rng, nodules=(), vessels=()):
    """A chest-like CT volume in HU, (z, y, x), with optional nodules and vessels.

    Args:
        shape: (z, y, x) voxels.
        spacing: (x, y, z) mm.
        nodules: iterable of (center_xyz_index_mm, radius_mm): centre in mm from voxel (0, 0, 0).
        vessels: iterable of (start_mm, end_mm, radius_mm) in the same frame.
    """
    nz, ny, nx = shape
    sx, sy, sz = spacing
    z, y, x = np.meshgrid(np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij")
    width, height = nx * sx, ny * sy
    cx, cy = width / 2, height / 2
    volume = np.full(shape, -1000.0, dtype=np.float32)  # Air.
    body = ((x - cx) / (0.46 * width)) ** 2 + ((y - cy) / (0.40 * height)) ** 2 <= 1
    volume[body] = -100.0 + rng.normal(0, 3)  # Fat.
    muscle = ((x - cx) / (0.42 * width)) ** 2 + ((y - cy) / (0.36 * height)) ** 2 <= 1
    volume[muscle] = 45.0
    for side in (-1, 1):
        lung = ((x - cx - side * 0.2 * width) / (0.16 * width)) ** 2 + ((y - cy) / (0.27 * height)) ** 2 <= 1
        volume[lung] = -850.0
    spine = (x - cx) ** 2 + (y - cy - 0.28 * height) ** 2 <= (0.05 * width) ** 2
    volume[spine] = 700.0
    points = np.stack([x, y, z], axis=-1)
    for start, end, radius in vessels:
        start, end = np.asarray(start, float), np.asarray(end, float)
        axis = end - start
        t = np.clip(((points - start) @ axis) / max(axis @ axis, 1e-6), 0, 1)
        distance = np.linalg.norm(points - (start + t[..., None] * axis), axis=-1)
        volume[distance <= radius] = 40.0
    for center, radius in nodules:
        distance = np.linalg.norm(points - np.asarray(center, float), axis=-1)
        volume[distance <= radius] = 60.0
    volume += rng.normal(0, 12, size=shape).astype(np.float32)  # Quantum noise.
    return volume


def mr_phantom(shape, rng):
    """A head-like MR volume (z, y, x) with arbitrary positive intensities."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    r = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2
    volume = np.where(r <= 1, 300.0, 0.0) + np.where(r <= 0.8, 350.0, 0.0)  # Skull-ish rim, then brain.
    ventricles = (x / 0.15) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.6) ** 2 <= 1
    volume[ventricles] = 120.0
    volume *= rng.uniform(0.8, 1.5)
    volume += np.abs(rng.normal(0, 15, size=shape))
    return volume.astype(np.float32)


def xray_phantom(height, width, rng, lesion=False):
    """A radiograph-like 2D image in [0, 1]: bones on soft tissue; an abnormal one has a lesion."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 0.08 + 0.02 * rng.random((height, width), dtype=np.float32)
    soft = ((x - width / 2) / (0.42 * width)) ** 2 + ((y - height / 2) / (0.55 * height)) ** 2 <= 1
    image[soft] += 0.22
    angle = rng.uniform(-0.5, 0.5)
    for offset in (-0.12, 0.12):
        u = (x - width / 2 - offset * width) * np.cos(angle) + (y - height / 2) * np.sin(angle)
        v = -(x - width / 2 - offset * width) * np.sin(angle) + (y - height / 2) * np.cos(angle)
        bone = (u / (0.07 * width)) ** 2 + (v / (0.45 * height)) ** 2 <= 1
        image[bone] = 0.75 + 0.05 * rng.random()
    if lesion:
        # A bright lump and a dark fracture line: easy to see, learnable at 64 px.
        cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
        radius = 0.09 * min(height, width)
        image[(x - cx) ** 2 + (y - cy) ** 2 <= radius**2] = 1.0
        line = np.abs((y - cy) - np.tan(rng.uniform(-1, 1)) * (x - cx)) <= 0.015 * height
        image[line & soft] = 0.02
    image += rng.normal(0, 0.02, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


# --------------------------------------------------------------------------- writers


def write_dicom_series(
    folder,
    volume,
    spacing,
    origin,
    patient_id,
    modality="CT",
    row_dir=(1, 0, 0),
    col_dir=(0, 1, 0),
    rng=None,
    intercept=-1024.0,
    slope=1.0,
):
    """Writes a (z, y, x) volume as one DICOM series, one file per slice.

    File names and InstanceNumber are shuffled so that readers must order
    slices by ImagePositionPatient. `volume` is in physical units; stored values
    are `(volume - intercept) / slope` as signed 16-bit integers.

    Args:
        spacing: (x, y, z) mm.
        origin: (x, y, z) world position of the first slice's first pixel.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    rng = np.random.default_rng(rng)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    series_uid, study_uid = generate_uid(), generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    order = rng.permutation(len(volume))
    stored_all = np.round((np.asarray(volume, float) - intercept) / slope)
    stored_all = np.clip(stored_all, -32768, 32767).astype(np.int16)
    for k, plane in enumerate(stored_all):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = modality, str(patient_id), str(patient_id)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = int(order[k]) + 1
        position = np.asarray(origin, float) + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", f"{slope:g}"
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"IM{order[k]:04d}.dcm", enforce_file_format=True)
    return folder


def write_nifti(path, volume, spacing, origin_lps=(0.0, 0.0, 0.0)):
    """Writes a (z, y, x) volume as NIfTI with an axis-aligned LPS geometry."""
    import nibabel

    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS index axes in RAS world.
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    image = nibabel.Nifti1Image(np.transpose(volume, (2, 1, 0)).astype(np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))


def write_itk(path, volume, spacing, origin, direction=None, pixel_type=np.int16):
    """Writes a (z, y, x) volume through SimpleITK (.mhd/.raw, .nrrd, ...)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(volume).astype(pixel_type))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_brain_tumour_mat(path, image, patient_id, label=1):
    """A MATLAB v7.3 (HDF5) file laid out as the figshare brain tumour set: cjdata.{image, PID, label}.

    MATLAB writes arrays column-major, so the image is stored transposed, and a char
    array as uint16 code units.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        group = handle.create_group("cjdata")
        group["image"] = np.asarray(image, dtype=np.int16).T
        group["PID"] = np.array([[ord(c)] for c in str(patient_id)], dtype=np.uint16)
        group["label"] = np.array([[float(label)]])


def write_cardiac_mat(path, volume_yxzt, version="7.3"):
    """A Cardiac MRI file as distributed (`sol_yxzt_patN.mat`): one array `sol_yxzt` of (y, x, z, t).

    Args:
        version: '7.3' writes HDF5 as MATLAB does (column-major, so h5py sees (t, z, x, y));
            '5' writes a MATLAB v5 file through scipy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume_yxzt)
    if version == "5":
        from scipy.io import savemat

        savemat(str(path), {"sol_yxzt": volume})
        return
    import h5py

    with h5py.File(path, "w") as handle:
        handle["sol_yxzt"] = np.transpose(volume)


def write_png(path, image01, bit_depth=8, rgb=False):
    """Writes an image in [0, 1] as an 8- or 16-bit PNG (optionally as 3 equal channels)."""
    import cv2

    peak = 255 if bit_depth == 8 else 65535
    pixels = np.round(np.clip(image01, 0, 1) * peak).astype(np.uint8 if bit_depth == 8 else np.uint16)
    if rgb:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(encoded.tobytes())


# --------------------------------------------------------------------------- pretraining corpus

DEMO_TABLE = """\
# Demo pretraining corpus: the same fields as preprocessing/datasets.yaml.
datasets:
  - name: DEMO CT DICOM
    modality: CT
    body_part: CHEST
    files: "ct_dicom/*/"
    patient_id: "(patient\\\\d+)"
    slices_per_patient: 12
  - name: DEMO CT NIFTI
    modality: CT
    body_part: ABDOMEN
    files: "ct_nifti/*.nii.gz"
    patient_id: "(ct\\\\d+)"
    slices_per_patient: 12
  - name: DEMO CT MHD
    modality: CT
    body_part: CHEST
    files: "ct_mhd/*.mhd"
    patient_id: "(scan\\\\d+)"
    slices_per_patient: all
  - name: DEMO MRI
    modality: MR
    body_part: BRAIN
    files: "mr_nifti/*.nii.gz"
    patient_id: "(mr\\\\d+)"
    slices_per_patient: 16
  - name: DEMO XRAY 8BIT
    modality: XR
    body_part: CHEST
    files: "xr_png8/*.png"
    patient_id: "(p\\\\d+)_"
    slices_per_patient: 2
  - name: DEMO BRAIN TUMOUR MAT
    modality: MR
    body_part: BRAIN
    files: "brain_mat/*.mat"
    patient_id: header
    slices_per_patient: all
  - name: DEMO XRAY 16BIT
    modality: XR
    body_part: XR_HAND
    files: "xr_png16/*.png"
    patient_id: "(p\\\\d+)_"
    slices_per_patient: all
"""


def write_pretraining_corpus(out, rng, size=128, patients=4):
    """CT (DICOM, NIfTI, MetaImage), MRI (NIfTI) and X-ray (PNG) for pretraining."""
    out = Path(out)
    spacing = (0.8, 0.8, 2.5)
    for p in range(patients):
        volume = ct_phantom((20, size, size), spacing, rng)
        write_dicom_series(
            out / "ct_dicom" / f"patient{p:03d}",
            volume,
            spacing,
            (-150.0, -170.0, -300.0 + 7 * p),
            patient_id=f"patient{p:03d}",
            rng=rng,
        )
        write_nifti(
            out / "ct_nifti" / f"ct{p:03d}.nii.gz",
            ct_phantom((24, size, size), spacing, rng),
            spacing,
            (-160.0, -140.0, -400.0),
        )
        write_itk(
            out / "ct_mhd" / f"scan{p:03d}.mhd",
            ct_phantom((10, size, size), (0.7, 0.7, 2.0), rng),
            (0.7, 0.7, 2.0),
            (-120.0, -90.0, -250.0),
        )
        write_nifti(out / "mr_nifti" / f"mr{p:03d}.nii.gz", mr_phantom((24, size, size), rng), (1.0, 1.0, 1.2))
        for k in range(3):
            write_png(
                out / "xr_png8" / f"p{p:03d}_{k}.png",
                xray_phantom(size + 16 * k, size + 8 * p, rng),
                bit_depth=8,
                rgb=(k == 2),
            )
        write_png(out / "xr_png16" / f"p{p:03d}_0.png", xray_phantom(size, size, rng), bit_depth=16)
        for k in range(2):  # Figshare brain tumour style: one slice per file, the patient inside it.
            write_brain_tumour_mat(
                out / "brain_mat" / f"{2 * p + k + 1}.mat",
                mr_phantom((3, size, size), rng)[1],
                patient_id=f"{100000 + p}",
            )
    write_text(out / "datasets.yaml", DEMO_TABLE)


# --------------------------------------------------------------------------- entry points


def ensure_part(out, name, write, seed=0, version=DEMO_VERSION):
    """`out/name`, written by `write(folder, rng)` unless a complete one of this version and seed is there.

    Each part of the demo tree (the pretraining corpus here, the downstream trees in their
    own packages) has its own marker, so each is generated on first use and again when its
    generator changed; a half-written part is replaced, never trusted.
    """
    out = Path(out)
    folder, marker = out / name, out / f"{COMPLETE_MARKER}-{name}"
    stamp = f"version={version} seed={seed}\n"
    if marker.exists() and marker.read_text() == stamp and folder.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    print(f"writing demo {name} in {out} ...", flush=True)
    write(folder, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    write_text(marker, stamp)
    return folder


def ensure_pretraining_corpus(out, seed=0):
    """The demo pretraining corpus under `out/pretrain` (with its datasets.yaml), written on first use."""
    return ensure_part(out, "pretrain", write_pretraining_corpus, seed)


def default_demo_dir():
    """`demo_data/` at the top of the project checkout (git-ignored)."""
    return Path(__file__).resolve().parents[1] / "demo_data"


@dataclass(frozen=True)
class DemoCorpusOptions(Options):
    """What `python -m preprocessing.demo` takes."""

    out: str = option(None, "folder to write.", default_text="demo_data/ in the project", group="demo")
    seed: int = option(0, "random seed.", type=int, group="demo")
    force: bool = option(False, "rewrite the corpus even if it is complete.", action="store_true", group="demo")


def parse_args(argv=None):
    parser = build_parser(
        DemoCorpusOptions, "python -m preprocessing.demo", __doc__.split("\n\n")[0], config_flag=False
    )
    options = DemoCorpusOptions(**vars(parser.parse_args(argv)))
    return options if options.out else replace(options, out=str(default_demo_dir()))


def run(args):
    out = Path(args.out)
    if args.force:
        (out / f"{COMPLETE_MARKER}-pretrain").unlink(missing_ok=True)
    folder = ensure_pretraining_corpus(out, args.seed)
    print(f"demo pretraining corpus in {folder}")
    return folder


def main(argv=None):
    from plumbing.cli import run_command

    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    main()
