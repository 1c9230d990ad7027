import numpy as np
import pytest

from modules.io.volume import CaseError, compact_dtype, label_values_ok, salted_hash, to_canonical


def _world(affine, ijk):
    return (affine @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_to_canonical_keeps_every_voxel_at_its_world_position(perm, flips):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, (4, 5, 6)).astype(np.int16)
    direction = np.eye(3)[:, perm] * np.array(flips)[np.newaxis, :]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array([0.7, 1.1, 2.5])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    out, out_affine = to_canonical(array, affine)
    # Canonical: diagonal positive direction.
    assert np.all(np.diag(out_affine[:3, :3]) > 0)
    assert np.count_nonzero(out_affine[:3, :3]) == 3
    # Every voxel value sits at the same world point as before.
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        p = _world(affine, ijk)
        q = np.linalg.solve(out_affine, np.append(p, 1.0))[:3]
        assert np.allclose(q, np.round(q), atol=1e-9)
        assert out[tuple(np.round(q).astype(int))] == array[ijk]


def test_compact_dtype_halves_integral_floats_and_keeps_real_floats():
    assert compact_dtype(np.array([[[1.0, 2.0]]], np.float32)).dtype == np.int16
    assert compact_dtype(np.array([[[1.5, 2.0]]], np.float32)).dtype == np.float32
    assert compact_dtype(np.array([[[70000.0]]], np.float64)).dtype == np.float32
    assert compact_dtype(np.zeros((2, 2, 2), np.uint8)).dtype == np.uint8
    with pytest.raises(CaseError, match="NaN"):
        compact_dtype(np.array([[[np.nan]]], np.float32))


def test_label_checks_name_the_problem():
    assert label_values_ok(np.array([0, 1, 2]), {0, 1, 2}) is None
    assert "not in the declared label set" in label_values_ok(np.array([0, 5]), {0, 1, 2})
    assert "non-integer" in label_values_ok(np.array([0.5]), None)


def test_salted_hash_depends_on_salt_and_hides_value():
    a = salted_hash("PATIENT-1", "s1")
    assert a != salted_hash("PATIENT-1", "s2")
    assert a == salted_hash("PATIENT-1", "s1")
    assert "PATIENT" not in a and len(a) == 16
