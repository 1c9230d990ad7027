"""Checks on DICOM SEG outputs shared by the predict tests."""

import numpy as np


def assert_seg_matches_mask_in_world(seg, mask, affine_ras):
    """The SEG, read back as a volume by highdicom (its own plane positions, orientation and
    spacing), labels the same world points as `mask` (X, Y, Z) on `affine_ras` (voxel -> RAS mm)."""
    from modules.io.dicom import LPS_TO_RAS

    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)  # (slice, row, column), LPS
    seg_labels = np.transpose(volume.array, (2, 1, 0))
    seg_affine = LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    # Every voxel of the mask's grid, mapped into the SEG volume's grid (which highdicom crops to
    # the frames present): labels must agree everywhere, including background.
    index = np.indices(mask.shape).reshape(3, -1)
    world = np.asarray(affine_ras, dtype=np.float64) @ np.vstack([index, np.ones(index.shape[1])])
    seg_index = np.linalg.solve(seg_affine, world)[:3]
    np.testing.assert_allclose(seg_index, np.rint(seg_index), atol=1e-2)  # same lattice
    seg_index = np.rint(seg_index).astype(int)
    inside = np.all((seg_index >= 0) & (seg_index < np.array(seg_labels.shape)[:, None]), axis=0)
    found = np.zeros(index.shape[1], np.uint8)
    found[inside] = seg_labels[tuple(seg_index[:, inside])]
    np.testing.assert_array_equal(found, mask.reshape(-1))
