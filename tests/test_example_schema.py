import numpy as np

from modules import features as es
from modules.io.volume import Volume


def test_encode_decode_roundtrip_keeps_voxels_geometry_and_bytes_compact():
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    label = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    affine[:3, 3] = [1, 2, 3]
    ex = es.encode_case(Volume(array, affine, "CT"), label, "case-a", "abc123", "nifti")
    out = es.decode_case(ex)
    np.testing.assert_array_equal(out["image"], array)
    np.testing.assert_array_equal(out["label"], label)
    np.testing.assert_allclose(out["affine"], affine, atol=1e-6)
    assert len(ex.features.feature[es.IMAGE_RAW].bytes_list.value[0]) == array.size * 2
    assert out["modality"] == "CT" and out["patient_hash"] == "abc123"


def test_schema_covers_every_feature_and_marks_voxels():
    schema = es.tfmd_schema()
    assert {f.name for f in schema.feature} == {f.name for f in es.FEATURES}
    assert set(es.VOXEL_FEATURES) == {es.IMAGE_RAW, es.LABEL_RAW}
    assert not set(es.VOXEL_FEATURES) & set(es.METADATA_FEATURES)
    spec = es.raw_feature_spec(include_label=False)
    assert es.LABEL_RAW not in spec and es.IMAGE_RAW in spec
