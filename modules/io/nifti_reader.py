"""NIfTI volumes (nibabel) to canonical :class:`Volume` s."""
from __future__ import annotations

import numpy as np

from modules.io.volume import CaseError, Volume, to_canonical


def read_nifti(path: str) -> Volume:
    """Reads a 3D NIfTI file (any orientation, qform or sform, scl_slope/inter applied).

    Returns a Volume in canonical RAS+ orientation; labels keep their integer values.
    Raises CaseError naming the problem (unreadable, not 3D, ...).
    """
    import nibabel as nib

    try:
        img = nib.load(path)
        # nibabel chooses sform, then qform, as the NIfTI standard says; the array proxy
        # applies scl_slope/scl_inter (float result when scaled, native dtype otherwise).
        data = np.asanyarray(img.dataobj)
        affine = img.affine
        header = img.header
        # Neither sform nor qform: nibabel would invent an axis-aligned affine from pixdim, which
        # silently puts the volume in the wrong place/orientation. Refuse instead.
        no_orientation = (hasattr(header, "get_sform") and int(header["sform_code"]) == 0
                          and int(header["qform_code"]) == 0)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CaseError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if no_orientation:
        raise CaseError(f"{path}: the NIfTI header has neither sform nor qform (both codes 0): "
                        "orientation unknown")
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CaseError(f"{path}: the NIfTI header has no valid orientation (affine)")
    array, affine = to_canonical(data, affine)
    return Volume(array=array, affine=affine, source=path)


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """Writes (X, Y, Z) voxels with a voxel-to-RAS affine as NIfTI (sform and qform set)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
