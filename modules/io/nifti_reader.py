"""NIfTI volumes (nibabel) to canonical :class:`Volume` s."""

from __future__ import annotations

import numpy as np

from modules.io import limits
from modules.io.volume import CaseError, Volume, to_canonical


def _image_from_bytes(data: bytes):
    """A nibabel NIfTI-1 or NIfTI-2 image over in-memory file content (header read, voxels not)."""
    import nibabel as nib

    head = data[:4]
    if 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big")):  # NIfTI-2 sizeof_hdr
        return nib.Nifti2Image.from_bytes(data)
    return nib.Nifti1Image.from_bytes(data)


def read_nifti(path: str, allow_channels: bool = False) -> Volume:
    """Reads a 3D NIfTI file (any orientation, qform or sform, scl_slope/inter applied); with
    `allow_channels`, also a 4D one whose 4th axis holds the channels of one case (Decathlon's
    multi-modal tasks: (X, Y, Z, C), e.g. T2 and ADC).

    Only regular files are read; .nii.gz content is decompressed with its CRC checked and within
    the byte limit (modules.io.limits), and the header's declared shape and type are checked
    against the limits and against the bytes actually present before any voxel is allocated.
    Returns a Volume in canonical RAS+ orientation (array (X, Y, Z) or (X, Y, Z, C)); labels keep
    their integer values.
    Raises CaseError naming the file and the problem (unreadable, truncated, too large, complex
    or structured voxels, not 3D, no orientation, ...).
    """
    data, _ = limits.read_file(path)
    try:
        img = _image_from_bytes(data)
        header = img.header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
        affine = img.affine
        # Neither sform nor qform: nibabel would invent an axis-aligned affine from pixdim, which
        # silently puts the volume in the wrong place/orientation. Refuse instead.
        no_orientation = (
            hasattr(header, "get_sform") and int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0
        )
    except CaseError:
        raise
    except BaseException as exc:  # nibabel raises many types for corrupt headers
        if limits.is_fatal(exc):
            raise
        raise CaseError(f"{path}: not a readable NIfTI file ({limits.describe_error(exc)})") from None
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise CaseError(f"{path}: voxels are of type {dtype} (complex or RGB); a scalar image is expected")
    squeezed = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(squeezed) != 3 and not (allow_channels and len(squeezed) == 4):
        raise CaseError(f"{path}: expected a 3D volume, got shape {shape}")
    limits.check_size(path, shape, dtype.itemsize)
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < needed:
        raise CaseError(
            f"{path}: the header declares {'x'.join(map(str, shape))} voxels of {dtype} "
            f"({needed} bytes with the header) but the file holds {len(data)}: truncated"
        )
    if no_orientation:
        raise CaseError(f"{path}: the NIfTI header has neither sform nor qform (both codes 0): orientation unknown")
    try:
        # The array proxy applies scl_slope/scl_inter (float result when scaled, native otherwise).
        array = np.asarray(np.asanyarray(img.dataobj))
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        raise CaseError(f"{path}: voxel data cannot be read ({limits.describe_error(exc)})") from None
    del data
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CaseError(f"{path}: the NIfTI header has no valid orientation (affine)")
    array, affine = to_canonical(array, affine)
    return Volume(array=array, affine=affine, source=path)


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """Writes (X, Y, Z) voxels with a voxel-to-RAS affine as NIfTI (sform and qform set)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
