"""The synthetic CT acceptance dataset: files, storage, geometry, content, what ingestion reads."""

import hashlib
import json
import os

import numpy as np
import pytest
from scipy import ndimage

from components.image_example_gen import cases
from modules import features as example_schema
from modules.io.nifti_reader import read_nifti
from modules.io.volume import to_canonical
from pipeline.tools.phantoms import CT_LABELS, synthesize_ct

N_CASES = 9
SEED = 3
LABEL_SET = {0, 1, 2}
# Lesion diameters are 14-22 mm with each semi-axis scaled by 0.9-1.1.
LESION_MM3_MIN = 4.0 / 3.0 * np.pi * (0.9 * 7.0) ** 3
LESION_MM3_MAX = 4.0 / 3.0 * np.pi * (1.1 * 11.0) ** 3
# The organ's nominal 90 x 70 x 60 mm ellipsoid; each semi-axis is scaled by 0.9-1.05.
ORGAN_MM3_NOMINAL = 4.0 / 3.0 * np.pi * 45.0 * 35.0 * 30.0


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    """(folder, result of synthesize_ct) for N_CASES cases: every storage orientation, and at
    least one case with a slice spacing other than 4 mm (checked in a test)."""
    out = str(tmp_path_factory.mktemp("ct"))
    calls = []
    result = synthesize_ct(out, n_cases=N_CASES, seed=SEED, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i + 1, N_CASES) for i in range(N_CASES)]
    return out, result


def _load(folder, sub, name):
    import nibabel as nib

    return nib.load(os.path.join(folder, sub, f"{name}.nii.gz"))


def _canonical_label(folder, name):
    img = _load(folder, "labelsTr", name)
    return to_canonical(np.asanyarray(img.dataobj), img.affine)


def test_decathlon_layout_and_dataset_json_as_cases_reads_it(ct_dataset):
    folder, result = ct_dataset
    names = [t["name"] for t in result["truth"]]
    assert names == [f"ct_{i:03d}" for i in range(N_CASES)] and result["cases"] == N_CASES
    for name in names:
        for sub in ("imagesTr", "labelsTr"):
            assert os.path.isfile(os.path.join(folder, sub, f"{name}.nii.gz"))
    with open(os.path.join(folder, "dataset.json")) as fh:
        meta = json.load(fh)
    assert meta["modality"] == {"0": "CT"} and meta["labels"] == CT_LABELS
    assert meta["numTraining"] == N_CASES and len(meta["training"]) == N_CASES
    specs, info = cases.find_cases(folder)
    assert info.layout == "decathlon" and info.modality == "CT"
    assert info.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert [(s.name, s.kind, s.problem) for s in specs] == [(n, "nifti", None) for n in names]


@pytest.mark.parametrize(
    "sub, dtype, slope, intercept",
    [
        ("imagesTr", np.uint16, 1.0, -1024.0),
        ("labelsTr", np.uint8, 1.0, 0.0),
    ],
)
def test_files_hold_the_stored_dtype_and_scaling(ct_dataset, sub, dtype, slope, intercept):
    folder, result = ct_dataset
    for truth in result["truth"]:
        img = _load(folder, sub, truth["name"])
        raw = img.dataobj.get_unscaled()
        assert img.get_data_dtype() == dtype and raw.dtype == dtype
        assert (float(img.dataobj.slope), float(img.dataobj.inter)) == (slope, intercept)
        np.testing.assert_array_equal(img.get_fdata(), raw.astype(np.float64) * slope + intercept)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        if sub == "imagesTr":
            assert raw.max() <= 4095
        else:
            assert set(np.unique(raw).tolist()) == LABEL_SET


def test_spacing_field_of_view_and_orientation(ct_dataset):
    import nibabel as nib

    folder, result = ct_dataset
    codes = {"RAS": ("R", "A", "S"), "LPS": ("L", "P", "S"), "LPI": ("L", "P", "I")}
    slice_spacings = []
    for truth in result["truth"]:
        img = _load(folder, "imagesTr", truth["name"])
        spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        np.testing.assert_allclose(spacing, truth["spacing_mm"], rtol=1e-5)
        assert 0.74 <= spacing[0] <= 0.86 and spacing[0] == pytest.approx(spacing[1], rel=1e-6)
        assert 3.6 <= spacing[2] <= 4.4
        fov = np.array(img.shape) * spacing
        assert np.all(np.abs(fov - 150.0) <= spacing / 2 + 1e-6), fov
        assert nib.aff2axcodes(img.affine) == codes[truth["orientation"]]
        slice_spacings.append(spacing[2])
    assert {t["orientation"] for t in result["truth"]} == set(codes)
    assert any(s == pytest.approx(4.0) for s in slice_spacings)
    assert any(s != pytest.approx(4.0) for s in slice_spacings)


def test_lesion_volume_position_and_containment(ct_dataset):
    folder, result = ct_dataset
    for truth in result["truth"]:
        label, affine = _canonical_label(folder, truth["name"])
        voxel_mm3 = float(np.prod(truth["spacing_mm"]))
        lesion = label == 2
        lesion_mm3 = lesion.sum() * voxel_mm3
        assert LESION_MM3_MIN * 0.85 <= lesion_mm3 <= LESION_MM3_MAX * 1.15
        assert lesion_mm3 == pytest.approx(truth["lesion_volume_mm3"], rel=0.15)
        organ_mm3 = (label == 1).sum() * voxel_mm3
        assert 0.6 * ORGAN_MM3_NOMINAL <= organ_mm3 <= 1.2 * ORGAN_MM3_NOMINAL
        # The label centroid, through the affine, lands on the lesion's world centre.
        centroid = affine[:3, :3] @ np.argwhere(lesion).mean(axis=0) + affine[:3, 3]
        np.testing.assert_allclose(centroid, truth["lesion_centre_mm"], atol=1.5)
        # Inside the organ: no background within 2 voxels in-plane, and every lesion column has
        # organ above and below it.
        in_plane = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), 2)[:, :, None]
        assert np.all(label[ndimage.binary_dilation(lesion, in_plane)] > 0)
        for i, j in zip(*np.nonzero(lesion.any(axis=2))):
            ks = np.nonzero(lesion[i, j])[0]
            assert label[i, j, ks.min() - 1] == 1 and label[i, j, ks.max() + 1] == 1


def _interior(mask):
    """Voxels of `mask` at least 2 voxels in-plane and 1 slice from its edge."""
    structure = np.ones((5, 5, 3), bool)
    return ndimage.binary_erosion(mask, structure)


def test_hu_content_air_organ_lesion(ct_dataset):
    folder, result = ct_dataset
    for truth in result["truth"]:
        img = _load(folder, "imagesTr", truth["name"])
        hu, _ = to_canonical(img.get_fdata(), img.affine)
        label, _ = _canonical_label(folder, truth["name"])
        assert np.median(hu[:8, :8, :]) == pytest.approx(-1000.0, abs=3)
        organ_mean = hu[_interior(label == 1)].mean()
        lesion_mean = hu[_interior(label == 2)].mean()
        assert organ_mean == pytest.approx(truth["organ_hu"], abs=4.0)
        assert lesion_mean == pytest.approx(truth["lesion_hu"], abs=6.0)
        assert 25.0 <= organ_mean - lesion_mean <= 45.0
        assert hu.min() >= -1024 and hu.max() <= 3071


def test_slices_show_z_partial_volume_at_the_organ_ends(ct_dataset):
    """Each slice averages a slab, so the first background slice past the organ's end in z holds
    some organ and the organ's first slice some background. With the organ's end uniform within
    a slice, both mix in 1/8 of the organ/soft-tissue contrast (about 20 HU) on average; slices
    sampled at their centres only would show no mixing at all."""
    folder, result = ct_dataset
    rim_outside, far_outside, rim_inside, middle = [], [], [], []
    for truth in result["truth"]:
        img = _load(folder, "imagesTr", truth["name"])
        hu, _ = to_canonical(img.get_fdata(), img.affine)
        label, _ = _canonical_label(folder, truth["name"])
        organ = label > 0
        for i, j in zip(*np.nonzero(organ.any(axis=2))):
            ks = np.nonzero(organ[i, j])[0]
            lo, hi, mid = ks.min(), ks.max(), (ks.min() + ks.max()) // 2
            if lo < 3 or hi > label.shape[2] - 4 or hi - lo < 6:
                continue
            if label[i, j, lo] != 1 or label[i, j, hi] != 1 or label[i, j, mid] != 1:
                continue  # the lesion would lower the organ side
            rim_outside += [hu[i, j, lo - 1], hu[i, j, hi + 1]]
            far_outside += [hu[i, j, lo - 3], hu[i, j, hi + 3]]
            rim_inside += [hu[i, j, lo], hu[i, j, hi]]
            middle.append(hu[i, j, mid])
    assert len(middle) > 1000
    assert 1.5 <= np.mean(rim_outside) - np.mean(far_outside) <= 4.0
    assert 1.5 <= np.mean(middle) - np.mean(rim_inside) <= 4.0


def _digests(folder):
    out = {}
    for sub in ("imagesTr", "labelsTr"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            with open(os.path.join(folder, sub, name), "rb") as fh:
                out[(sub, name)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_same_seed_same_files_other_seed_other_data(tmp_path):
    first = synthesize_ct(str(tmp_path / "a"), n_cases=2, seed=11)
    again = synthesize_ct(str(tmp_path / "b"), n_cases=2, seed=11)
    other = synthesize_ct(str(tmp_path / "c"), n_cases=2, seed=12)
    assert first["truth"] == again["truth"]
    assert _digests(str(tmp_path / "a")) == _digests(str(tmp_path / "b"))
    assert first["truth"] != other["truth"]
    other_digests = set(_digests(str(tmp_path / "c")).values())
    assert set(_digests(str(tmp_path / "a")).values()).isdisjoint(other_digests)


def test_synthesize_ct_refuses_no_cases(tmp_path):
    with pytest.raises(ValueError, match="n_cases"):
        synthesize_ct(str(tmp_path), n_cases=0)


@pytest.mark.parametrize("index", [0, 1, 2])  # RAS, LPS and LPI storage
def test_ingestion_keeps_hu(ct_dataset, index):
    """What the ExampleGen encodes is stored + intercept (HU), on the label's grid."""
    folder, result = ct_dataset
    truth = result["truth"][index]
    img = _load(folder, "imagesTr", truth["name"])
    expected_hu, expected_affine = to_canonical(img.dataobj.get_unscaled().astype(np.int32) - 1024, img.affine)
    expected_label, _ = _canonical_label(folder, truth["name"])

    volume = read_nifti(os.path.join(folder, "imagesTr", f"{truth['name']}.nii.gz"))
    np.testing.assert_array_equal(volume.array, expected_hu)

    specs, _ = cases.find_cases(folder)
    spec = next(s for s in specs if s.name == truth["name"])
    example, record = cases.process_case(spec, "salt", LABEL_SET)
    assert record["status"] == "ok", record["reason"]
    decoded = example_schema.decode_case(example)
    assert decoded["image"].dtype == np.int16
    np.testing.assert_array_equal(decoded["image"], expected_hu)
    np.testing.assert_array_equal(decoded["label"], expected_label)
    np.testing.assert_allclose(decoded["affine"], expected_affine, atol=1e-4)
    image, label = decoded["image"], decoded["label"]
    assert np.median(image[label == 0][:5000]) < -900  # the first x-rows are outside the body
    assert image[label == 1].mean() == pytest.approx(truth["organ_hu"], abs=6.0)
    assert image[label == 2].mean() == pytest.approx(truth["lesion_hu"], abs=8.0)
