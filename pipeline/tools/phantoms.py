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
        inside = ellipsoid(
            centres[s] + rng.uniform(-3, 3, 3), radii[s] * rng.uniform(0.85, 1.15, 3), rotation(rng, 20.0)
        )
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
    meta = {
        "name": "medtfx-phantoms",
        "description": "synthetic phantoms (medtfx synth)",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "mixed"},
        "labels": {k: v for k, v in labels.items() if int(k) <= n_structures},
        "numTraining": len(phantoms),
        "file_ending": ".nii.gz",
        "training": [
            {"image": f"./imagesTr/{p.name}.nii.gz", "label": f"./labelsTr/{p.name}.nii.gz"} for p in phantoms
        ],
    }
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


def synthesize(out_dir: str, n_cases: int = 12, seed: int = 0, n_structures: int = 2, progress=None) -> dict:
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
    return {"decathlon": os.path.join(out_dir, "decathlon"), "dicom": os.path.join(out_dir, "dicom"), "cases": n_cases}


# CT acceptance dataset: anisotropic voxels, 150 mm FOV, uint16 storage with an intercept, and
# a small lesion inside a large organ. Tissue values in HU.
CT_FOV_MM = 150.0
CT_HU_AIR = -1000.0
CT_HU_SOFT_TISSUE = 40.0
CT_HU_FAT = -100.0
CT_HU_BONE = 700.0
CT_HU_NOISE = 15.0
# stored = HU - CT_STORAGE_INTERCEPT, clipped to 12 bits, as CT scanners store HU.
CT_STORAGE_INTERCEPT = -1024.0
CT_STORAGE_MAX = 4095
CT_LABELS = {"0": "background", "1": "organ", "2": "lesion"}
# Fine z-samples averaged into each stored slice (about 1 mm apart for 4 mm slices).
_CT_SUBSLICES = 4
# In-plane reconstruction blur (Gaussian sigma, mm), so edges are not one-voxel steps.
_CT_PSF_SIGMA_MM = 0.6
# Storage orientations: which array axes are flipped relative to RAS+ (the reader canonicalises).
_CT_STORAGE_FLIPS = {"RAS": (), "LPS": (0, 1), "LPI": (0, 1, 2)}


def _ellipsoid_mask(axes_mm, centre, semi_axes, rot) -> tuple:
    """Voxels of a rotated ellipsoid on an axis-aligned grid, evaluated only in its bounding box.

    Args:
      axes_mm: three ascending 1D arrays, the voxel-centre coordinates (mm) along x, y, z.
      centre: (3,) mm; semi_axes: (3,) mm; rot: (3, 3) whose columns are the ellipsoid's axes.
    Returns:
      (box, inside): `box` a tuple of three slices of the grid, `inside` the boolean
      (len_x, len_y, len_z) mask of the voxels within the ellipsoid inside that box.
    """
    # Half-extent along world axis i of an ellipsoid with axes R diag(a): |row i of R diag(a)|.
    half = np.sqrt(((rot * semi_axes[np.newaxis, :]) ** 2).sum(axis=1))
    box = tuple(
        slice(
            int(np.searchsorted(c, centre[i] - half[i], "left")), int(np.searchsorted(c, centre[i] + half[i], "right"))
        )
        for i, c in enumerate(axes_mm)
    )
    dx = (axes_mm[0][box[0]] - centre[0])[:, None, None]
    dy = (axes_mm[1][box[1]] - centre[1])[None, :, None]
    dz = (axes_mm[2][box[2]] - centre[2])[None, None, :]
    q = 0.0
    for axis in range(3):
        local = rot[0, axis] * dx + rot[1, axis] * dy + rot[2, axis] * dz
        q = q + (local / semi_axes[axis]) ** 2
    return box, q <= 1.0


def _make_ct_case(index: int, seed: int):
    """One CT case: (Phantom with HU int16 image in storage orientation, ground-truth dict)."""
    rng = np.random.default_rng([seed, index, 0xC7])
    in_plane = rng.uniform(0.74, 0.86)
    slice_mm = rng.uniform(3.6, 4.4) if rng.random() < 0.3 else 4.0
    nxy, nz = int(round(CT_FOV_MM / in_plane)), int(round(CT_FOV_MM / slice_mm))
    # Voxel-centre coordinates (mm) relative to the FOV centre, in RAS+ index order.
    xy = (np.arange(nxy) - (nxy - 1) / 2.0) * in_plane
    x, y = xy[:, None], xy[None, :]
    z_centre = (np.arange(nz) - (nz - 1) / 2.0) * slice_mm
    sub_offsets = ((np.arange(_CT_SUBSLICES) + 0.5) / _CT_SUBSLICES - 0.5) * slice_mm
    z_fine = (z_centre[:, None] + sub_offsets[None, :]).reshape(-1)

    # Body: an elliptical cylinder along z with a fat rim and a ring of rib-like bone arcs.
    body_axes = np.array([rng.uniform(64.0, 70.0), rng.uniform(52.0, 58.0)])
    radius = np.sqrt((x / body_axes[0]) ** 2 + (y / body_axes[1]) ** 2)
    angle = np.arctan2(y / body_axes[1], x / body_axes[0])
    slice_hu = np.full((nxy, nxy), CT_HU_AIR, np.float32)
    slice_hu[radius <= 1.0] = CT_HU_FAT
    slice_hu[radius <= 0.92] = CT_HU_SOFT_TISSUE
    rib_arcs = np.sin(7 * angle + rng.uniform(0, 2 * np.pi)) > -0.3
    ribs = (radius >= 0.84) & (radius <= 0.89) & rib_arcs
    slice_hu[ribs] = CT_HU_BONE

    # Organ: a large ellipsoid inside the rib ring, with smooth low-frequency texture.
    organ_axes = np.array([45.0, 35.0, 30.0]) * rng.uniform(0.9, 1.05, 3)
    organ_centre = np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-10, 10)])
    # Small tilt (a about x, b about y), larger in-plane turn (c about z).
    a, b = np.deg2rad(rng.uniform(-5, 5, 2))
    c = np.deg2rad(rng.uniform(-15, 15))
    organ_rot = (
        np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        @ np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        @ np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    )
    organ_hu = rng.uniform(55.0, 65.0)
    # Lesion: a small ellipsoid whose centre lies within 0.4 of the organ's normalised radius;
    # with semi-axes <= 12.1 mm and organ semi-axes >= 27 mm it is wholly inside the organ.
    lesion_diameter = rng.uniform(14.0, 22.0)
    lesion_axes = lesion_diameter / 2.0 * rng.uniform(0.9, 1.1, 3)
    direction = rng.normal(size=3)
    local = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.4) * organ_axes
    lesion_centre = organ_centre + organ_rot @ local
    lesion_rot = rotation(rng, 30.0)
    lesion_hu = organ_hu - rng.uniform(30.0, 40.0)
    waves = [
        (rng.normal(size=3), rng.uniform(25.0, 60.0), rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 4.0))
        for _ in range(3)
    ]

    fine = np.broadcast_to(slice_hu[:, :, None], (nxy, nxy, z_fine.size)).copy()
    box, organ = _ellipsoid_mask((xy, xy, z_fine), organ_centre, organ_axes, organ_rot)
    bx, by, bz = (xy[box[0]][:, None, None], xy[box[1]][None, :, None], z_fine[box[2]][None, None, :])
    texture = np.zeros(organ.shape, np.float32)
    for wave_dir, wavelength, phase, amplitude in waves:
        k = 2 * np.pi / wavelength * wave_dir / np.linalg.norm(wave_dir)
        texture += amplitude * np.cos(k[0] * bx + k[1] * by + k[2] * bz + phase).astype(np.float32)
    organ_box = fine[box]  # a view: writes go to `fine`
    organ_box[organ] = organ_hu + texture[organ]
    # The lesion lies inside the organ, so its bounding box lies inside the organ's.
    lesion_box, lesion = _ellipsoid_mask(
        (xy[box[0]], xy[box[1]], z_fine[box[2]]), lesion_centre, lesion_axes, lesion_rot
    )
    organ_box[lesion_box][lesion] = lesion_hu + 0.5 * texture[lesion_box][lesion]
    # Partial volume: each stored slice is the mean of its fine sub-slices (a slab).
    hu = fine.reshape(nxy, nxy, nz, _CT_SUBSLICES).mean(axis=3)
    from scipy import ndimage

    sigma_vox = _CT_PSF_SIGMA_MM / in_plane
    hu = ndimage.gaussian_filter(hu, sigma=(sigma_vox, sigma_vox, 0.0), mode="nearest")
    hu += rng.normal(0.0, CT_HU_NOISE, hu.shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, CT_STORAGE_MAX + CT_STORAGE_INTERCEPT).astype(np.int16)

    # Labels by the slab centre (nearest), as a segmentation drawn on the reconstructed slice.
    label = np.zeros((nxy, nxy, nz), np.uint8)
    for value, centre, semi_axes, rot in (
        (1, organ_centre, organ_axes, organ_rot),
        (2, lesion_centre, lesion_axes, lesion_rot),
    ):
        box, inside = _ellipsoid_mask((xy, xy, z_centre), centre, semi_axes, rot)
        label[box][inside] = value

    # Scanner table offset: the FOV centre is not exactly the world origin.
    offset = rng.uniform(-20.0, 20.0, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([in_plane, in_plane, slice_mm])
    affine[:3, 3] = offset - affine[:3, :3] @ ((np.array(image.shape) - 1) / 2.0)
    orientation = ("RAS", "LPS", "LPI")[index % 3]
    for axis in _CT_STORAGE_FLIPS[orientation]:
        image, label = np.flip(image, axis), np.flip(label, axis)
        affine[:3, 3] += affine[:3, axis] * (image.shape[axis] - 1)
        affine[:3, axis] = -affine[:3, axis]
    name = f"ct_{index:03d}"
    truth = {
        "name": name,
        "orientation": orientation,
        "shape": tuple(int(n) for n in image.shape),
        "spacing_mm": (float(in_plane), float(in_plane), float(slice_mm)),
        "organ_hu": float(organ_hu),
        "organ_semi_axes_mm": organ_axes.tolist(),
        "organ_centre_mm": (organ_centre + offset).tolist(),
        "lesion_hu": float(lesion_hu),
        "lesion_semi_axes_mm": lesion_axes.tolist(),
        "lesion_centre_mm": (lesion_centre + offset).tolist(),
        "lesion_volume_mm3": float(4.0 / 3.0 * np.pi * np.prod(lesion_axes)),
    }
    phantom = Phantom(
        name, np.ascontiguousarray(image), np.ascontiguousarray(label), affine, "CT", f"CT-PHANTOM-{seed}-{index:04d}"
    )
    return phantom, truth


def _write_ct_nifti(path: str, array: np.ndarray, affine: np.ndarray, intercept: float) -> None:
    """Writes `array` as stored on disk, with scl_slope 1 and scl_inter `intercept`, units mm.

    nibabel keeps an explicitly set slope/intercept and then writes the array unchanged; left
    unset (NaN) it would choose its own scaling, so it is always set here.
    """
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, intercept)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)


def synthesize_ct(out_dir: str, n_cases: int = 40, seed: int = 0, progress=None) -> dict:
    """Writes a CT-like Decathlon dataset: the acceptance data for the self-configuring planner.

    Layout: `out_dir`/imagesTr/ct_XXX.nii.gz, `out_dir`/labelsTr/ct_XXX.nii.gz, dataset.json
    (modality {"0": "CT"}, labels 0 background, 1 organ, 2 lesion).

    Each case covers a 150 mm field of view in every direction: in-plane spacing uniform in
    0.74-0.86 mm (square pixels), slice spacing 4.0 mm (about 30% of cases uniform 3.6-4.4 mm),
    so shapes are about (188, 188, 38) voxels. Storage orientation cycles through RAS, LPS and
    LPI (axes flipped in the array and the affine; readers canonicalise), with the FOV centre
    offset up to 20 mm from the world origin.

    Content, in HU: air -1000 around an elliptical body cylinder of soft tissue (+40) with a fat
    rim (-100) and rib-like bone arcs (+700); a large organ (ellipsoid about 90 x 70 x 60 mm,
    turned up to 15 degrees in-plane and tilted up to 5, HU 55-65 plus smooth texture of a few
    HU), label 1; inside it a hypodense lesion (ellipsoid 14-22 mm across, 30-40 HU below the
    organ), label 2 (label 1 excludes it). Images are rendered at four z-samples per slice
    and averaged (partial volume in z), blurred in-plane (sigma 0.6 mm), plus Gaussian noise
    (sigma 15 HU); labels are the geometry at each slice centre.

    Storage: images uint16 = clip(HU + 1024, 0, 4095) with scl_slope 1, scl_inter -1024 (so
    readers applying the NIfTI scaling get HU back exactly); labels uint8. sform and qform set.

    Deterministic in (`n_cases`, `seed`): case i depends only on (seed, i).

    Args:
      out_dir: folder to write into (created if needed).
      n_cases: number of cases.
      seed: random seed.
      progress: optional callable progress(done, total) after each case.
    Returns:
      {"decathlon": out_dir, "cases": n_cases, "truth": [per-case dict]}: each truth dict has
      name, orientation, shape, spacing_mm (array order), organ/lesion HU, semi-axes (mm),
      centres (world RAS mm) and the analytic lesion_volume_mm3.
    Raises:
      ValueError: n_cases < 1.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    truths = []
    for i in range(n_cases):
        phantom, truth = _make_ct_case(i, seed)
        stored = (phantom.image.astype(np.int32) - int(CT_STORAGE_INTERCEPT)).astype(np.uint16)
        _write_ct_nifti(
            os.path.join(out_dir, "imagesTr", f"{phantom.name}.nii.gz"), stored, phantom.affine, CT_STORAGE_INTERCEPT
        )
        _write_ct_nifti(os.path.join(out_dir, "labelsTr", f"{phantom.name}.nii.gz"), phantom.label, phantom.affine, 0.0)
        truths.append(truth)
        if progress:
            progress(i + 1, n_cases)
    meta = {
        "name": "medtfx-ct-phantoms",
        "description": "synthetic CT: anisotropic voxels, uint16 with intercept, lesion in organ",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": CT_LABELS,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "training": [
            {"image": f"./imagesTr/{t['name']}.nii.gz", "label": f"./labelsTr/{t['name']}.nii.gz"} for t in truths
        ],
    }
    with open(os.path.join(out_dir, "dataset.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    return {"decathlon": out_dir, "cases": n_cases, "truth": truths}
