"""Surface metrics (modules/metrics/surface_metrics.py): surfel areas, distances, surface Dice, HD95 and
mean surface distance against closed forms, a brute-force reference, DeepMind's surface-distance
library (when importable) and real hippocampus masks."""

import math
import os

import numpy as np
import pytest
from scipy import ndimage

from modules.metrics import surface_metrics as sm
from modules.metrics.dice import dice_per_label
from tests.conftest import shared_path

SQRT3 = math.sqrt(3.0)


def _box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _ball(shape, spacing, centre_mm, radius_mm):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def _blob(seed, shape=(24, 20, 16)):
    return ndimage.binary_opening(np.random.default_rng(seed).random(shape) > 0.5)


def _all_metrics(prediction, truth, spacing, tolerances=(0.0, 0.5, 1.0, 2.0, 3.0)):
    d = sm.surface_distances(prediction, truth, spacing)
    return (sm.robust_hausdorff(d, 95.0), sm.mean_surface_distance(d), [sm.surface_dice(d, t) for t in tolerances])


# --------------------------------------------------------------------------------------------
# Surfel areas


@pytest.mark.parametrize(
    "code, spacing, expected_mm2",
    [
        (0b00000000, (1, 1, 1), 0.0),  # all outside: no surface
        (0b11111111, (1, 1, 1), 0.0),  # all inside: no surface
        (0b00000001, (1, 1, 1), SQRT3 / 8),  # one voxel in: the corner triangle through 3 half edges
        (0b11111110, (1, 1, 1), SQRT3 / 8),  # its complement: the same triangle
        (0b00001111, (1, 1, 1), 1.0),  # the dx = 1 half in: one voxel face
        (0b00001111, (0.5, 2.0, 3.0), 6.0),  # ... a face in the (y, z) plane: 2 mm x 3 mm
        (0b00110011, (0.5, 2.0, 3.0), 1.5),  # the dy = 1 half in: a face in the (x, z) plane
        (0b01010101, (0.5, 2.0, 3.0), 1.0),  # the dz = 1 half in: a face in the (x, y) plane
        (0b00000011, (0.5, 2.0, 3.0), 3.0 * math.hypot(0.5, 2.0) / 2),  # edge along z: chamfer strip
    ],
)
def test_surfel_area_of_single_codes(code, spacing, expected_mm2):
    assert sm.surfel_area_table(spacing)[code] == pytest.approx(expected_mm2, rel=1e-12)


@pytest.mark.parametrize("spacing", [(1, 1, 1), (0.7, 1.3, 2.9)])
def test_surfel_area_table_is_complete_and_complement_symmetric(spacing):
    areas = sm.surfel_area_table(spacing)
    assert areas.shape == (256,)
    assert areas[0] == areas[255] == 0.0 and np.all(areas[1:255] > 0)
    np.testing.assert_allclose(areas, areas[::-1], rtol=1e-12)  # code c and 255 - c: same surface


@pytest.mark.parametrize(
    "size, spacing", [((10, 7, 4), (1, 1, 1)), ((10, 7, 4), (0.5, 2.0, 3.0)), ((3, 9, 5), (1.2, 0.4, 2.5))]
)
def test_box_area_is_faces_plus_chamfered_edges_plus_corner_triangles(size, spacing):
    """A box of a x b x c voxels: the marching-cubes surface lies on the voxel faces, with each edge
    cut by a strip half a face-diagonal wide and each corner by a triangle."""
    (a, b, c), (sx, sy, sz) = size, spacing
    faces = 2 * ((a - 1) * (b - 1) * sx * sy + (a - 1) * (c - 1) * sx * sz + (b - 1) * (c - 1) * sy * sz)
    edges = (
        4
        * ((a - 1) * sx * math.hypot(sy, sz) + (b - 1) * sy * math.hypot(sx, sz) + (c - 1) * sz * math.hypot(sx, sy))
        / 2
    )
    corners = 8 * math.sqrt((sy * sz) ** 2 + (sx * sz) ** 2 + (sx * sy) ** 2) / 8
    box = _box((a + 4, b + 4, c + 4), (2, 2, 2), (a + 2, b + 2, c + 2))
    d = sm.surface_distances(box, box, spacing)
    assert d.truth_areas.sum() == pytest.approx(faces + edges + corners, rel=1e-12)
    assert d.prediction_areas.sum() == pytest.approx(d.truth_areas.sum(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Distances and metrics on known shapes


@pytest.mark.parametrize(
    "mask, spacing",
    [
        (_box((12, 12, 12), (3, 3, 3), (9, 8, 7)), (1, 1, 1)),
        (_box((12, 12, 12), (0, 0, 0), (12, 5, 12)), (0.5, 1.0, 3.0)),  # touches the volume's faces
        (_ball((30, 30, 20), (0.7, 0.7, 1.5), (10, 10, 15), 8.0), (0.7, 0.7, 1.5)),
        (_blob(1), (0.8, 1.1, 2.0)),
    ],
)
def test_a_mask_against_itself_is_perfect(mask, spacing):
    assert _all_metrics(mask, mask, spacing) == (0.0, 0.0, [1.0] * 5)


@pytest.mark.parametrize(
    "shift, spacing, shift_mm",
    [
        ((0, 0, 2), (0.5, 1.0, 3.0), 6.0),
        ((2, 0, 0), (0.5, 1.0, 3.0), 1.0),
        ((0, 1, 0), (1.0, 1.0, 1.0), 1.0),
        ((0, -3, 0), (0.6, 0.9, 2.0), 2.7),
    ],
)
def test_box_shifted_along_an_axis(shift, spacing, shift_mm):
    """Every surfel of a translated surface is within the translation of the original, and the
    faces moved straight out are exactly that far (more than 5% of the area): HD95 = the shift,
    surface Dice reaches 1 exactly at that tolerance."""
    truth = _box((40, 40, 24), (10, 10, 6), (20, 20, 13))
    shifted = np.roll(truth, shift, axis=(0, 1, 2))
    d = sm.surface_distances(shifted, truth, spacing)
    assert sm.robust_hausdorff(d) == pytest.approx(shift_mm, rel=1e-12)
    assert sm.surface_dice(d, shift_mm) == 1.0
    assert sm.surface_dice(d, shift_mm * 0.99) < 1.0
    assert 0.0 < sm.mean_surface_distance(d) < shift_mm


@pytest.mark.parametrize("spacing, shift_voxels", [((1.0, 1.0, 1.0), 2), ((0.5, 0.8, 1.2), 3)])
def test_ball_shifted_along_z(spacing, shift_voxels):
    shape = tuple(int(40 / s) for s in spacing)
    truth = _ball(shape, spacing, (20, 20, 20), 12.0)
    shifted = np.roll(truth, shift_voxels, axis=2)
    shift_mm = shift_voxels * spacing[2]
    d = sm.surface_distances(shifted, truth, spacing)
    assert 0.5 * shift_mm < sm.robust_hausdorff(d) <= shift_mm
    assert sm.surface_dice(d, shift_mm) == 1.0
    assert sm.surface_dice(d, 0.3 * shift_mm) < 0.6
    # On continuous spheres a point is |t| |cos(angle)| away, |t| / 2 on average; surfels on the
    # voxel-corner grid find corner points of the other surface a little nearer.
    assert 0.3 * shift_mm < sm.mean_surface_distance(d) <= 0.5 * shift_mm


def _reference_metrics(prediction, truth, spacing, tolerances):
    """Brute force, independently of the module's code path: codes by correlating with the
    library's 2x2x2 kernel, corner coordinates in mm, all pairwise distances."""
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    spacing = np.asarray(spacing, float)
    areas_of_code = sm.surfel_area_table(spacing)

    def surfels(mask):
        padded = np.zeros(np.array(mask.shape) + 1, np.uint8)  # one zero layer at the far end
        padded[:-1, :-1, :-1] = mask
        codes = ndimage.correlate(padded, kernel, mode="constant", cval=0)
        border = (codes != 0) & (codes != 255)
        return np.argwhere(border) * spacing, areas_of_code[codes[border]]

    (points_p, areas_p), (points_t, areas_t) = surfels(prediction), surfels(truth)
    d = np.sqrt(((points_p[:, None, :] - points_t[None, :, :]) ** 2).sum(-1))
    d_pt, d_tp = d.min(axis=1), d.min(axis=0)

    def percentile(dist, areas, percent):
        order = np.argsort(dist)
        share = np.cumsum(areas[order]) / areas.sum()
        return dist[order][np.nonzero(share >= percent / 100.0 - 1e-12)[0][0]]

    total = areas_p.sum() + areas_t.sum()
    return (
        max(percentile(d_pt, areas_p, 95), percentile(d_tp, areas_t, 95)),
        (d_pt @ areas_p + d_tp @ areas_t) / total,
        [(areas_p[d_pt <= t].sum() + areas_t[d_tp <= t].sum()) / total for t in tolerances],
    )


@pytest.mark.parametrize(
    "seed_p, seed_t, spacing", [(3, 4, (0.8, 1.1, 2.0)), (5, 6, (1, 1, 1)), (7, 8, (2.5, 0.6, 0.6))]
)
def test_metrics_match_brute_force_on_random_blobs(seed_p, seed_t, spacing):
    # Tolerances off the lattice of grid distances: a distance equal to the tolerance up to
    # rounding could fall either side in the two computations.
    tolerances = (0.0, 0.73, 1.52, 3.07)
    prediction, truth = _blob(seed_p), _blob(seed_t)
    hd, msd, sdice = _all_metrics(prediction, truth, spacing, tolerances)
    ref_hd, ref_msd, ref_sdice = _reference_metrics(prediction, truth, spacing, tolerances)
    assert hd == pytest.approx(ref_hd, rel=1e-9)
    assert msd == pytest.approx(ref_msd, rel=1e-9)
    np.testing.assert_allclose(sdice, ref_sdice, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# Against DeepMind's surface-distance library itself (skipped when it is not importable)


def _library_cases():
    cases = [(_blob(s), _blob(s + 1), sp) for s, sp in ((11, (0.8, 1.1, 2.0)), (13, (1, 1, 1)))]
    ball = _ball((30, 30, 20), (0.7, 0.7, 1.5), (10, 10, 15), 8.0)
    cases.append((np.roll(ball, (2, -1, 1), axis=(0, 1, 2)), ball, (0.7, 0.7, 1.5)))
    edge = _box((12, 12, 12), (0, 0, 0), (12, 5, 12))  # touching the volume's faces
    cases.append((np.roll(edge, 1, axis=1), edge, (0.5, 1.0, 3.0)))
    return cases


@pytest.mark.parametrize("prediction, truth, spacing", _library_cases())
def test_metrics_equal_deepmind_surface_distance(prediction, truth, spacing):
    lib = pytest.importorskip("surface_distance", reason="DeepMind's surface-distance not installed")
    ours = sm.surface_distances(prediction, truth, spacing)
    theirs = lib.compute_surface_distances(truth, prediction, spacing)  # (gt, pred) order there
    np.testing.assert_allclose(
        sm.surfel_area_table(spacing), lib.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    )
    np.testing.assert_array_equal(np.sort(ours.truth_to_prediction), theirs["distances_gt_to_pred"])
    np.testing.assert_array_equal(np.sort(ours.prediction_to_truth), theirs["distances_pred_to_gt"])
    assert sm.robust_hausdorff(ours, 95.0) == lib.compute_robust_hausdorff(theirs, 95)
    for tolerance in (0.0, 0.5, 1.0, 2.0):
        assert sm.surface_dice(ours, tolerance) == pytest.approx(
            lib.compute_surface_dice_at_tolerance(theirs, tolerance), rel=1e-12
        )
    gt_to_pred, pred_to_gt = lib.compute_average_surface_distance(theirs)
    area_gt, area_pred = theirs["surfel_areas_gt"].sum(), theirs["surfel_areas_pred"].sum()
    assert sm.mean_surface_distance(ours) == pytest.approx(
        (gt_to_pred * area_gt + pred_to_gt * area_pred) / (area_gt + area_pred), rel=1e-12
    )


# --------------------------------------------------------------------------------------------
# Real masks: hippocampus labels against themselves shifted by one voxel


def _hippocampus_labels(n=3):
    nib = pytest.importorskip("nibabel")
    root = os.path.join(shared_path("hippocampus"), "labelsTr")
    names = sorted(f for f in os.listdir(root) if f.endswith(".nii.gz"))[:n]
    return [np.asarray(nib.load(os.path.join(root, name)).dataobj) for name in names]


@pytest.mark.parametrize(
    "axis, spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.0, 1.0, 1.0)), (2, (0.8, 0.8, 2.5)), (0, (0.8, 0.8, 2.5))]
)
def test_hippocampus_label_shifted_by_one_voxel(axis, spacing):
    """Spacing is the one declared here (the files are 1 mm isotropic): a one-voxel shift moves
    every surfel by at most spacing[axis]."""
    for label_map in _hippocampus_labels():
        for k in (1, 2):
            truth = label_map == k
            d = sm.surface_distances(np.roll(truth, 1, axis=axis), truth, spacing)
            assert 0.0 < sm.robust_hausdorff(d) <= spacing[axis]
            assert sm.surface_dice(d, spacing[axis]) == 1.0
            assert sm.surface_dice(d, 0.0) < 0.9
            assert 0.0 < sm.mean_surface_distance(d) < 0.5 * spacing[axis]


def test_hippocampus_labels_equal_the_library():
    lib = pytest.importorskip("surface_distance", reason="DeepMind's surface-distance not installed")
    for label_map in _hippocampus_labels():
        for k in (1, 2):
            truth = label_map == k
            prediction = ndimage.binary_dilation(np.roll(truth, (1, 1), axis=(0, 1)))
            spacing = (0.8, 1.0, 2.5)
            ours = sm.surface_distances(prediction, truth, spacing)
            theirs = lib.compute_surface_distances(truth, prediction, spacing)
            assert sm.robust_hausdorff(ours) == lib.compute_robust_hausdorff(theirs, 95)
            assert sm.surface_dice(ours, 2.0) == pytest.approx(
                lib.compute_surface_dice_at_tolerance(theirs, 2.0), rel=1e-12
            )


# --------------------------------------------------------------------------------------------
# Conventions, label maps, validation

EMPTY = np.zeros((6, 6, 6), bool)
CUBE = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))


@pytest.mark.parametrize(
    "prediction, truth, expected",
    [
        (EMPTY, EMPTY, (math.nan, math.nan, math.nan)),  # undefined: skipped in means
        (EMPTY, CUBE, (math.inf, math.inf, 0.0)),  # missed structure
        (CUBE, EMPTY, (math.inf, math.inf, 0.0)),  # false positive structure
    ],
)
def test_empty_masks_follow_the_documented_conventions(prediction, truth, expected):
    d = sm.surface_distances(prediction, truth, (1, 1, 1))
    got = (sm.robust_hausdorff(d), sm.mean_surface_distance(d), sm.surface_dice(d, 1.0))
    for value, want in zip(got, expected):
        assert (math.isnan(value) and math.isnan(want)) or value == want


def test_label_metrics_are_the_module_functions_per_label():
    truth = np.where(_blob(21), 1, np.where(_blob(22), 2, 0))
    prediction = np.roll(truth, 1, axis=0)
    spacing = (0.8, 1.1, 2.0)
    metrics = sm.label_metrics(prediction, truth, spacing, [1, 2, 3], 1.5)
    assert set(metrics) == {1, 2, 3}
    for k in (1, 2):
        d = sm.surface_distances(prediction == k, truth == k, spacing)
        assert metrics[k] == {
            "dice": dice_per_label(truth, prediction, [k])[k],
            "hd95_mm": sm.robust_hausdorff(d),
            "msd_mm": sm.mean_surface_distance(d),
            "surface_dice": sm.surface_dice(d, 1.5),
        }
        assert 0.0 < metrics[k]["surface_dice"] < 1.0
    assert all(math.isnan(v) for v in metrics[3].values())  # label 3 absent from both maps


def test_summarise_skips_nan_and_counts_inf_apart():
    summary = sm.summarise([1.0, math.inf, math.nan, 3.0])
    assert summary == {"mean": 2.0, "median": 2.0, "n": 3, "n_infinite": 1}
    assert sm.summarise([math.nan]) == {"mean": None, "median": None, "n": 0, "n_infinite": 0}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sm.surface_distances(CUBE, CUBE[:5], (1, 1, 1)), "equal shape"),
        (lambda: sm.surface_distances(CUBE[0], CUBE[0], (1, 1, 1)), "3D"),
        (lambda: sm.surface_distances(CUBE, CUBE, (1, 1)), "spacing"),
        (lambda: sm.surface_distances(CUBE, CUBE, (1, 0, 1)), "spacing"),
        (lambda: sm.surface_dice(sm.surface_distances(CUBE, CUBE, (1, 1, 1)), -1.0), "tolerance"),
        (lambda: sm.robust_hausdorff(sm.surface_distances(CUBE, CUBE, (1, 1, 1)), 101.0), "percent"),
    ],
)
def test_invalid_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
