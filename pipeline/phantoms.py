"""Synthetic phantoms with known masks: the demo's data and the tests' ground truth.

Each case is a body ellipsoid with two or three labelled ellipsoids of distinct intensity, in
noise, defined in world (RAS, mm) coordinates and sampled on a grid with random spacing and
orientation, so readers must get geometry right for masks to line up. CT-like cases are int16
HU (stored in DICOM with RescaleIntercept -1024); MR-like cases are positive arbitrary units.
Written twice: as a Decathlon folder (NIfTI) and as DICOM series (one file per slice) with a
``label.nii.gz`` beside each series.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List

import numpy as np

from modules.io.nifti_reader import write_nifti

# Intensities: (background outside body, body, structure 1, 2, 3) and noise sigma.
CT_INTENSITY = (-1000.0, 40.0, 200.0, -120.0, 350.0)
CT_NOISE = 20.0
MR_INTENSITY = (0.0, 300.0, 650.0, 140.0, 900.0)
MR_NOISE = 25.0
FOV_MM = 64.0


@dataclasses.dataclass
class Phantom:
    """image: (X, Y, Z) int16; label: (X, Y, Z) uint8; affine: voxel-to-RAS (mm)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    modality: str
    patient_id: str


def rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """(3, 3) random rotation with angles up to `max_degrees` about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


# Axis permutations/flips giving axial, coronal and sagittal acquisitions (columns: voxel axes).
_BASE_ORIENTATIONS = (
    np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float),  # axial, as DICOM LPS rows/cols in RAS
    np.array([[1, 0, 0], [0, 0, -1], [0, -1, 0]], float),  # coronal
    np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),  # sagittal
)


def make_phantom(index: int, seed: int = 0, n_structures: int = 2, modality: str = "") -> Phantom:
    """One phantom case; deterministic in (index, seed)."""
    rng = np.random.default_rng([seed, index])
    modality = modality or ("CT" if index % 2 == 0 else "MR")
    spacing = np.array([rng.uniform(0.9, 1.4), rng.uniform(0.9, 1.4), rng.uniform(1.5, 2.5)])
    direction = rotation(rng, 10.0) @ _BASE_ORIENTATIONS[index % 3]
    shape = np.ceil(FOV_MM / spacing).astype(int)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[np.newaxis, :]
    # Centre the grid on the world origin (plus a little jitter), as a scanner centres the FOV.
    centre_vox = (shape - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre_vox + rng.uniform(-3, 3, 3)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4) @ affine.T
    world = world[:, :3].reshape(tuple(shape) + (3,))

    def ellipsoid(centre, radii, rot):
        local = (world - centre) @ rot
        return ((local / radii) ** 2).sum(axis=-1) <= 1.0

    label = np.zeros(shape, np.uint8)
    body = ellipsoid(np.zeros(3), np.array([30.0, 27.0, 29.0]), np.eye(3))
    centres = [np.array([-12.0, 0.0, 0.0]), np.array([13.0, 2.0, 0.0]), np.array([0.0, 0.0, 18.0])]
    radii = [np.array([10.0, 14.0, 12.0]), np.array([10.0, 12.0, 14.0]), np.array([8.0, 8.0, 6.0])]
    for s in range(n_structures):
        inside = ellipsoid(centres[s] + rng.uniform(-3, 3, 3), radii[s] * rng.uniform(0.85, 1.15, 3),
                           rotation(rng, 20.0))
        label[inside & body & (label == 0)] = s + 1
    levels = CT_INTENSITY if modality == "CT" else MR_INTENSITY
    noise = CT_NOISE if modality == "CT" else MR_NOISE
    image = np.full(shape, levels[0], np.float64)
    image[body] = levels[1]
    for s in range(n_structures):
        image[label == s + 1] = levels[2 + s]
    if modality != "CT":
        image *= rng.uniform(0.7, 1.4)  # MR has no absolute scale: vary gain per scan
    image += rng.normal(0, noise, shape)
    if modality != "CT":
        image = np.abs(image)  # magnitude images are non-negative (Rician-like floor)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return Phantom(f"phantom_{index:03d}", image, label, affine, modality, f"PHANTOM-{seed}-{index:04d}")


def write_decathlon(phantoms: List[Phantom], out_dir: str, n_structures: int) -> None:
    """imagesTr/ labelsTr/ dataset.json, as the Medical Segmentation Decathlon lays them out."""
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    for p in phantoms:
        write_nifti(os.path.join(out_dir, "imagesTr", f"{p.name}.nii.gz"), p.image, p.affine)
        write_nifti(os.path.join(out_dir, "labelsTr", f"{p.name}.nii.gz"), p.label, p.affine)
    labels = {"0": "background", "1": "structure_1", "2": "structure_2", "3": "structure_3"}
    meta = {"name": "medtfx-phantoms", "description": "synthetic phantoms (medtfx synth)",
            "licence": "CC0", "tensorImageSize": "3D", "modality": {"0": "mixed"},
            "labels": {k: v for k, v in labels.items() if int(k) <= n_structures},
            "numTraining": len(phantoms), "file_ending": ".nii.gz",
            "training": [{"image": f"./imagesTr/{p.name}.nii.gz", "label": f"./labelsTr/{p.name}.nii.gz"}
                         for p in phantoms]}
    with open(os.path.join(out_dir, "dataset.json"), "w") as fh:
        json.dump(meta, fh, indent=2)


def write_dicom_series(p: Phantom, out_dir: str, seed: int) -> None:
    """One file per slice with correct IPP/IOP/PixelSpacing, plus label.nii.gz beside it."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(out_dir, exist_ok=True)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction_lps = ras_to_lps @ p.affine[:3, :3]
    col_step, row_step, slice_step = direction_lps[:, 0], direction_lps[:, 1], direction_lps[:, 2]
    spacing = np.linalg.norm(direction_lps, axis=0)
    iop = np.concatenate([col_step / spacing[0], row_step / spacing[1]])
    origin_lps = ras_to_lps @ p.affine[:3, 3]
    study_uid = generate_uid(entropy_srcs=[p.patient_id, "study", str(seed)])
    series_uid = generate_uid(entropy_srcs=[p.patient_id, "series", str(seed)])
    ct = p.modality == "CT"
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if ct else "1.2.840.10008.5.1.4.1.1.4"
    stored = p.image.astype(np.int32) + (1024 if ct else 0)  # CT stores HU + 1024, intercept -1024
    for k in range(p.image.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName = f"Phantom^{p.name}"
        ds.PatientID = p.patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = study_uid
        ds.Modality = p.modality
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "medtfx-phantom"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in iop]
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in origin_lps + k * slice_step]
        ds.PixelSpacing = [float(f"{spacing[1]:.8f}"), float(f"{spacing[0]:.8f}")]  # row, column
        ds.SliceThickness = float(f"{spacing[2]:.8f}")
        ds.Rows, ds.Columns = int(p.image.shape[1]), int(p.image.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if ct else 1
        if ct:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        pixels = stored[:, :, k].T  # (rows, cols) = (j, i)
        ds.PixelData = pixels.astype(np.uint16 if ct else np.int16).tobytes()
        pydicom.dcmwrite(os.path.join(out_dir, f"slice_{k:04d}.dcm"), ds, enforce_file_format=True)
    write_nifti(os.path.join(out_dir, "label.nii.gz"), p.label, p.affine)


def synthesize(out_dir: str, n_cases: int = 12, seed: int = 0, n_structures: int = 2,
               progress=None) -> dict:
    """Writes `out_dir`/decathlon and `out_dir`/dicom with the same `n_cases` phantoms.

    Returns {"decathlon": path, "dicom": path, "cases": n}.
    """
    if n_structures not in (2, 3):
        raise ValueError("n_structures must be 2 or 3")
    phantoms = []
    for i in range(n_cases):
        phantoms.append(make_phantom(i, seed, n_structures))
        write_dicom_series(phantoms[-1], os.path.join(out_dir, "dicom", phantoms[-1].name), seed)
        if progress:
            progress(i + 1, n_cases)
    write_decathlon(phantoms, os.path.join(out_dir, "decathlon"), n_structures)
    return {"decathlon": os.path.join(out_dir, "decathlon"), "dicom": os.path.join(out_dir, "dicom"),
            "cases": n_cases}
