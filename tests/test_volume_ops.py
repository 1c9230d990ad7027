"""Pure TF volume ops (modules.transform.resample, modules.transform.volume_ops) against references.

Resampling is checked against SimpleITK's ResampleImageFilter on real volumes (Decathlon
hippocampus via shared_path) and phantoms, with the same grid convention: identity direction,
input origin 0, output origin = ((n - 1) * s - (m - 1) * t) / 2 per axis (centred grids, voxel
centres at origin + i * spacing), and SimpleITK's nearest-neighbour extrapolator for the at most
half-voxel rim beyond the outermost input voxel centres (where our coordinates clamp).
Tolerances: trilinear max |ours - SimpleITK| <= 1e-6 * max|input| (measured <= 1.8e-7: float32 rounding; ITK
interpolates in double); nearest-neighbour identical except where a sample falls within 1e-6
voxel of a rounding tie.
"""

import glob
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from modules.io.volume import to_canonical as np_to_canonical
from modules.transform import resample, volume_ops
from pipeline.tools.phantoms import make_phantom, rotation
from tests.conftest import shared_path

LINEAR_RTOL = 1e-6
TIE_EPS = 1e-6


def sitk_resample(array, spacing, target_spacing, size, nearest=False):
    """SimpleITK reference (see module docstring). array (X, Y, Z) -> (size) float32."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)).astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    n, s, t, m = (np.asarray(v, float) for v in (array.shape, spacing, target_spacing, size))
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in m])
    f.SetOutputSpacing(t.tolist())
    f.SetOutputOrigin((((n - 1) * s - (m - 1) * t) / 2).tolist())
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)
    return np.transpose(sitk.GetArrayFromImage(f.Execute(image)), (2, 1, 0))


def _ours(array, spacing, target_spacing, method=resample.LINEAR):
    out, m = resample.to_network_grid(
        tf.constant(array, tf.float32),
        tf.constant(spacing, tf.float64),
        tf.constant(target_spacing, tf.float64),
        None,
        method,
    )
    return out.numpy(), m.numpy()


def _volumes():
    """(name, array, spacing): 3 hippocampus cases (uint8/float32 MR, 1 mm) and 2 phantoms
    (CT and MR int16, anisotropic)."""
    from modules.io.nifti_reader import read_nifti

    root = shared_path("hippocampus", "imagesTr")
    vols = []
    for path in sorted(glob.glob(os.path.join(root, "*.nii.gz")))[:3]:
        v = read_nifti(path)
        vols.append((os.path.basename(path), v.array.astype(np.float32), v.spacing))
    for i in (0, 1):
        p = make_phantom(i, seed=11)
        image, affine = np_to_canonical(p.image, p.affine)
        vols.append((p.name, image.astype(np.float32), np.linalg.norm(affine[:3, :3], axis=0)))
    return vols


@pytest.fixture(scope="module")
def volumes():
    return _volumes()


@pytest.mark.parametrize("target", [0.7, 1.3])
def test_trilinear_matches_simpleitk(volumes, target):
    for name, array, spacing in volumes:
        ours, m = _ours(array, spacing, [target] * 3)
        np.testing.assert_array_equal(m, np.maximum(np.round(np.array(array.shape) * spacing / target), 1))
        ref = sitk_resample(array, spacing, [target] * 3, m)
        err = np.abs(ours - ref).max()
        assert err <= LINEAR_RTOL * np.abs(array).max(), (name, target, err)


def _near_tie(n, s, t, m):
    coords, _ = resample.forward_coordinates(n, s, t, m, m, 0)
    frac = np.mod(coords.numpy(), 1.0)
    return np.abs(frac - 0.5) < TIE_EPS


@pytest.mark.parametrize("target", [0.7, 1.3])
def test_nearest_matches_simpleitk(volumes, target):
    for name, array, spacing in volumes:
        ours, m = _ours(array, spacing, [target] * 3, resample.NEAREST)
        ref = sitk_resample(array, spacing, [target] * 3, m, nearest=True)
        ties = [_near_tie(array.shape[a], spacing[a], target, m[a]) for a in range(3)]
        clear = ~(ties[0][:, None, None] | ties[1][None, :, None] | ties[2][None, None, :])
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(ours[clear], ref[clear], err_msg=f"{name} @ {target} mm")


def test_fixed_shape_is_centre_crop_pad_of_whole_volume():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(21, 30, 17)).astype(np.float32)
    spacing, target = [1.1, 0.8, 2.0], [1.5, 1.5, 1.5]
    whole, m = _ours(array, spacing, target)  # m = (15, 16, 23)
    size = [12, 20, 23]  # crop, pad, keep
    fixed, m2 = resample.to_network_grid(
        tf.constant(array), tf.constant(spacing, tf.float64), tf.constant(target, tf.float64), size, fill=-7.0
    )
    fixed = fixed.numpy()
    np.testing.assert_array_equal(m, m2.numpy())
    expected = np.full(size, -7.0, np.float32)
    src, dst = [], []
    for a in range(3):
        offset = int(np.trunc((size[a] - m[a]) / 2))
        lo = max(0, -offset)
        hi = min(m[a], size[a] - offset)
        src.append(slice(lo, hi))
        dst.append(slice(lo + offset, hi + offset))
    expected[tuple(dst)] = whole[tuple(src)]
    np.testing.assert_allclose(fixed, expected, atol=1e-6)


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            d[list(perm), range(3)] = signs
            yield d


def test_orientation_matches_ingestion_canonicalisation():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 1000, size=(5, 6, 7)).astype(np.float32)
    for base in _signed_permutations():
        direction = rotation(rng, 25.0) @ base  # oblique up to 25 degrees per axis
        affine = np.eye(4)
        affine[:3, :3] = direction * np.array([0.9, 1.2, 2.5])
        expected, _ = np_to_canonical(array, affine)
        order, flip = resample.orientation(tf.constant(direction.reshape(-1), tf.float32))
        canonical = resample.to_canonical(tf.constant(array), order, flip).numpy()
        np.testing.assert_array_equal(canonical, expected)
        np.testing.assert_array_equal(resample.from_canonical(tf.constant(canonical), order, flip), array)


def test_orientation_unknown_direction_is_identity_and_degenerate_raises():
    order, flip = resample.orientation(tf.zeros([9]))
    assert order.numpy().tolist() == [0, 1, 2] and not flip.numpy().any()
    with pytest.raises(tf.errors.InvalidArgumentError, match="degenerate"):
        resample.orientation(tf.constant([1, 1, 0, 0, 0, 0, 0, 0, 1], tf.float32))


def _one_hot(label, classes=3):
    return tf.one_hot(tf.cast(label, tf.int32), classes)


@pytest.mark.parametrize("index", [0, 2])
def test_label_round_trip_through_network_grid(index):
    """Raw (non-canonical) phantom label -> network grid -> back in the input's own geometry.

    At the input's own spacing and a grid holding the whole volume this is exact; at 2 mm with
    a crop it agrees where the grid covers the input (Dice > 0.9 per structure) and the cropped
    rim is background.
    """
    p = make_phantom(index, seed=5)
    spacing = np.linalg.norm(p.affine[:3, :3], axis=0)
    direction = tf.constant((p.affine[:3, :3] / spacing).reshape(-1), tf.float32)
    label = tf.constant(p.label)
    _, _, cshape, cspacing = volume_ops.canonical_geometry(tf.shape(label), spacing, direction)

    same = volume_ops.label_to_network(label, spacing, direction, cspacing)
    grid_shape = resample.resampled_shape(cshape, cspacing, cspacing)
    back = volume_ops.probabilities_to_mask(_one_hot(same), tf.shape(label), spacing, direction, cspacing, grid_shape)
    np.testing.assert_array_equal(back.numpy(), p.label)

    grid = tf.constant([2.0, 2.0, 2.0], tf.float64)
    net = volume_ops.label_to_network(label, spacing, direction, grid, [28, 28, 28])  # FOV 64 mm > 56 mm
    grid_shape = resample.resampled_shape(cshape, cspacing, grid)
    back = volume_ops.probabilities_to_mask(
        _one_hot(net), tf.shape(label), spacing, direction, grid, grid_shape
    ).numpy()
    assert back.shape == p.label.shape
    for k in (1, 2):
        a, b = back == k, p.label == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    # World-space check of the crop: raw voxels more than 28 mm (+ a voxel) from the FOV centre
    # along a canonical axis are outside the 56 mm grid -> background.
    order, flip = resample.orientation(direction)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in p.label.shape], indexing="ij"), -1)
    centre = (np.array(p.label.shape) - 1) / 2
    mm = (idx - centre) * spacing
    outside = (np.abs(mm) > 28 + spacing).any(axis=-1)
    assert outside.any() and not back[outside].any()


def test_intensity_modes():
    volume = tf.constant([[[0.0, 100.0], [200.0, 300.0]], [[-1000.0, 50.0], [0.0, 3000.0]]])
    stats = tf.constant([-100.0, 1000.0, 100.0, 50.0])
    window = (-500.0, 500.0)

    def run(mode):
        return volume_ops.normalise_intensity(volume, volume_ops.INTENSITY_MODES.index(mode), stats, window).numpy()

    v = volume.numpy()
    np.testing.assert_allclose(run("dataset"), (np.clip(v, -100, 1000) - 100) / 50, rtol=1e-6)
    nz = v[v != 0]
    np.testing.assert_allclose(run("zscore_nonzero"), (v - nz.mean()) / nz.std(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run("zscore"), (v - v.mean()) / v.std(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run("window"), np.clip(v, -500, 500) / 500, rtol=1e-6)


def test_dataset_stats_fall_back_to_finite_neutral_values():
    empty = volume_ops.dataset_stats(0.0, 0.0, 0.0, 0.0, 0).numpy()
    np.testing.assert_array_equal(empty, np.array(volume_ops.NEUTRAL_STATS, np.float32))
    assert np.all(np.isfinite(empty))
    constant = volume_ops.dataset_stats(5.0, 5.0, 5.0, 0.0, 10).numpy()
    np.testing.assert_array_equal(constant, [5.0, 5.0, 5.0, 1.0])
    np.testing.assert_allclose(volume_ops.dataset_stats(-1.0, 2.0, 0.5, 4.0, 10).numpy(), [-1, 2, 0.5, 2])


def test_foreground_sample_is_strided_subset_of_foreground():
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(20, 20, 20)).astype(np.float32)
    label = (rng.random((20, 20, 20)) < 0.3).astype(np.uint8)
    sample = volume_ops.foreground_sample(tf.constant(volume), tf.constant(label), 500).numpy()
    fg = volume.ravel()[label.ravel() > 0]
    stride = -(-fg.size // 500)
    np.testing.assert_array_equal(sample, fg[::stride])
    assert sample.size <= 500
    everything = volume_ops.foreground_sample(tf.constant(volume), None, 10**6).numpy()
    np.testing.assert_array_equal(everything, volume.ravel())
