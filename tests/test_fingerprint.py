"""Dataset fingerprint: per-case numbers on boxes of known size, combine() on hand-made cases
with known percentiles, decoding real tf.train.Examples, and ten real hippocampus cases."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from modules import features
from modules.io.volume import Volume, compact_dtype
from modules.plan import fingerprint as fp
from tests.conftest import REPO, shared_path

# Two labelled boxes on a (10, 12, 6) grid of 0.8 x 0.8 x 4 mm voxels (2.56 mm^3 each).
SPACING = (0.8, 0.8, 4.0)
SHAPE = (10, 12, 6)
BOXES = {  # label: (x slice, y slice, z slice)
    1: (slice(1, 4), slice(2, 7), slice(0, 2)),  # 3 x 5 x 2 = 30 voxels
    2: (slice(6, 10), slice(8, 12), slice(3, 6)),  # 4 x 4 x 3 = 48 voxels
}
FOREGROUND_VOXELS = 30 + 48


def two_boxes():
    """(image, label): image values 0..719 in C order (integral), label with BOXES."""
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    for value, box in BOXES.items():
        label[box] = value
    return image, label


def boxes_fingerprint(**kwargs):
    image, label = two_boxes()
    return fp.case_fingerprint(image, label, SPACING, "MR", "boxes", **kwargs)


# label, voxels, bbox (mm): (voxels along the axis) * spacing
LABEL_CASES = [
    ("1", 30, [3 * 0.8, 5 * 0.8, 2 * 4.0]),
    ("2", 48, [4 * 0.8, 4 * 0.8, 3 * 4.0]),
]


@pytest.mark.parametrize("key,voxels,bbox_mm", LABEL_CASES)
def test_case_fingerprint_counts_and_bboxes_of_known_boxes(key, voxels, bbox_mm):
    case = boxes_fingerprint()
    assert case["label_voxels"][key] == voxels
    np.testing.assert_allclose(case["label_bbox_mm"][key], bbox_mm)


def test_case_fingerprint_whole_case_fields():
    case = boxes_fingerprint()
    assert case["case"] == "boxes" and case["modality"] == "MR"
    assert case["shape"] == list(SHAPE)
    np.testing.assert_allclose(case["spacing"], SPACING)
    assert case["labels"] == [0, 1, 2]
    assert set(case["label_voxels"]) == set(case["label_bbox_mm"]) == {"1", "2"}
    # Union of both boxes: x 1..9 (9 voxels), y 2..11 (10), z 0..5 (6).
    np.testing.assert_allclose(case["foreground_bbox_mm"], [9 * 0.8, 10 * 0.8, 6 * 4.0])
    assert case["integer_valued"] is True
    json.dumps(case)


@pytest.mark.parametrize("offset,integer_valued", [(0.0, True), (0.5, False), (-3.0, True), (1e-3, False)])
def test_integer_valued_detects_fractional_voxels(offset, integer_valued):
    image, label = two_boxes()
    case = fp.case_fingerprint(image + np.float32(offset), label, SPACING, "CT", "c")
    assert case["integer_valued"] is integer_valued


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
def test_integer_dtype_images_are_integer_valued(dtype):
    image, label = two_boxes()
    case = fp.case_fingerprint((image % 100).astype(dtype), label, SPACING, "CT", "c")
    assert case["integer_valued"] is True


# max_samples, expected sample length: stride ceil(78 / max_samples) over the 78 foreground voxels.
SAMPLE_CAP_CASES = [(10000, 78), (78, 78), (77, 39), (10, 10), (7, 7), (1, 1)]


@pytest.mark.parametrize("max_samples,expected_len", SAMPLE_CAP_CASES)
def test_foreground_sample_is_capped_strided_and_deterministic(max_samples, expected_len):
    image, label = two_boxes()
    first = boxes_fingerprint(max_samples=max_samples)["foreground_sample"]
    assert len(first) == expected_len <= max_samples
    stride = -(-FOREGROUND_VOXELS // max_samples)
    assert first == image[label > 0][::stride].tolist()
    assert boxes_fingerprint(max_samples=max_samples)["foreground_sample"] == first


@pytest.mark.parametrize("label_kind,labels", [("none", []), ("empty", [0])])
def test_without_foreground_the_sample_is_the_whole_image(label_kind, labels):
    image, _ = two_boxes()
    label = None if label_kind == "none" else np.zeros(SHAPE, np.uint8)
    case = fp.case_fingerprint(image, label, SPACING, "CT", "c", max_samples=100)
    assert case["labels"] == labels
    assert case["label_voxels"] == {} and case["label_bbox_mm"] == {}
    assert case["foreground_bbox_mm"] == [0.0, 0.0, 0.0]
    assert case["foreground_sample"] == image.ravel()[::8].tolist()  # ceil(720 / 100) = 8


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_label_dtypes_give_the_same_fingerprint(label_dtype):
    image, label = two_boxes()
    case = fp.case_fingerprint(image, label.astype(label_dtype), SPACING, "MR", "boxes")
    assert case == boxes_fingerprint()


def _bad_inputs(kind):
    image, label = two_boxes()
    spacing = SPACING
    if kind == "label_shape":
        label = label[:-1]
    elif kind == "nan_image":
        image[0, 0, 0] = np.nan
    elif kind == "negative_label":
        label = label.astype(np.int16) - 1
    elif kind == "fractional_label":
        label = label.astype(np.float32) * 0.5
    elif kind == "two_spacings":
        spacing = SPACING[:2]
    elif kind == "zero_spacing":
        spacing = (0.8, 0.0, 4.0)
    elif kind == "image_2d":
        image, label = image[:, :, 0], None
    return image, label, spacing


@pytest.mark.parametrize(
    "kind,message",
    [
        ("label_shape", "label shape"),
        ("nan_image", "NaN"),
        ("negative_label", "negative"),
        ("fractional_label", "non-integer"),
        ("two_spacings", "spacing"),
        ("zero_spacing", "spacing"),
        ("image_2d", "X, Y, Z"),
    ],
)
def test_case_fingerprint_rejects_bad_inputs_naming_the_case(kind, message):
    image, label, spacing = _bad_inputs(kind)
    with pytest.raises(ValueError, match=message) as info:
        fp.case_fingerprint(image, label, spacing, "MR", "case-17")
    assert "case-17" in str(info.value)


# --------------------------------------------------------------------------------------------
# combine(): five hand-made cases. Per axis over cases:
#   spacing x [0.5, 0.5, 0.5, 0.5, 1.0]: median 0.5, p10 0.5, p90 0.5 + 0.6 * 0.5 = 0.8
#   spacing y [1, 1, 1, 1, 1]
#   spacing z [1, 2, 3, 4, 5]:           median 3, p10 1.4, p90 4.6
#   shape x  [10, 20, 30, 40, 50]:       median 30, p90 46
# Pooled intensity samples are 0..200 split unevenly: mean 100, p0.5 1, p50 100, p99.5 199.


def hand_made_cases():
    spacings = [(0.5, 1, 1), (0.5, 1, 2), (0.5, 1, 3), (0.5, 1, 4), (1.0, 1, 5)]
    shapes = [(10, 8, 4), (20, 8, 4), (30, 8, 4), (40, 8, 4), (50, 8, 4)]
    modalities = ["MR", "CT", "MR", "CT", "MR"]
    labels = [[0, 1], [0, 1, 2], [0], [], [0, 2]]
    label_voxels = [{"1": 10}, {"1": 30, "2": 4}, {}, {}, {"2": 6}]
    bboxes = [{"1": [1.0, 2.0, 3.0]}, {"1": [3.0, 4.0, 5.0], "2": [1.0, 1.0, 2.0]}, {}, {}, {"2": [2.0, 2.0, 10.0]}]
    fg_bbox = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 9.0, 10.0]]
    samples = [list(range(0, 10)), list(range(10, 110)), list(range(110, 111)), [], list(range(111, 201))]
    cases = []
    for i in range(5):
        cases.append(
            {
                "case": f"case_{i}",
                "spacing": list(map(float, spacings[i])),
                "shape": list(shapes[i]),
                "modality": modalities[i],
                "integer_valued": True,
                "labels": labels[i],
                "label_voxels": label_voxels[i],
                "label_bbox_mm": bboxes[i],
                "foreground_bbox_mm": fg_bbox[i],
                "foreground_sample": [float(v) for v in samples[i]],
            }
        )
    return cases


def combined():
    cases = hand_made_cases()
    return fp.combine([cases[i] for i in (3, 0, 4, 2, 1)])  # order must not matter


@pytest.mark.parametrize(
    "path,expected",
    [
        (("num_cases",), 5),
        (("version",), 1),
        (("spacing", "median"), [0.5, 1.0, 3.0]),
        (("spacing", "p10"), [0.5, 1.0, 1.4]),
        (("spacing", "p90"), [0.8, 1.0, 4.6]),
        (("spacing", "min"), [0.5, 1.0, 1.0]),
        (("spacing", "max"), [1.0, 1.0, 5.0]),
        (("shape", "median"), [30.0, 8.0, 4.0]),
        (("shape", "p90"), [46.0, 8.0, 4.0]),
        (("shape", "min"), [10, 8, 4]),
        (("shape", "max"), [50, 8, 4]),
        # extent x: 5, 10, 15, 20, 50 mm; z: 4, 8, 12, 16, 20 mm
        (("extent_mm", "median"), [15.0, 8.0, 12.0]),
        (("extent_mm", "max"), [50.0, 8.0, 20.0]),
        (("labels",), [0, 1, 2]),
        (("foreground_bbox_mm_max",), [4.0, 9.0, 10.0]),
        (("channels", 0, "modality"), "MR"),
        (("channels", 0, "modality_counts"), {"CT": 2, "MR": 3}),
        (("channels", 0, "integer_valued"), True),
        (("channels", 0, "foreground_intensity", "mean"), 100.0),
        (("channels", 0, "foreground_intensity", "min"), 0.0),
        (("channels", 0, "foreground_intensity", "max"), 200.0),
        (("channels", 0, "foreground_intensity", "p00_5"), 1.0),
        (("channels", 0, "foreground_intensity", "p50"), 100.0),
        (("channels", 0, "foreground_intensity", "p99_5"), 199.0),
        (("channels", 0, "foreground_intensity", "std"), float(np.std(np.arange(201)))),
        # label 1 in case_0 (10 voxels of 0.5 mm^3) and case_1 (30 voxels of 1 mm^3)
        (("label_stats", "1", "cases"), 2),
        (("label_stats", "1", "voxels_median"), 20.0),
        (("label_stats", "1", "volume_mm3_median"), 17.5),
        (("label_stats", "1", "volume_mm3_min"), 5.0),
        (("label_stats", "1", "bbox_mm_median"), [2.0, 3.0, 4.0]),
        # label 2 in case_1 (4 voxels of 1 mm^3) and case_4 (6 voxels of 5 mm^3)
        (("label_stats", "2", "cases"), 2),
        (("label_stats", "2", "volume_mm3_median"), 17.0),
        (("label_stats", "2", "volume_mm3_min"), 4.0),
        (("label_stats", "2", "bbox_mm_median"), [1.5, 1.5, 6.0]),
    ],
)
def test_combine_known_answers(path, expected):
    value = combined()
    for key in path:
        value = value[key]
    if isinstance(expected, (list, float)):
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12)
    else:
        assert value == expected


def test_combine_format_and_case_list():
    result = combined()
    assert list(result) == [
        "version",
        "num_cases",
        "channels",
        "spacing",
        "shape",
        "extent_mm",
        "labels",
        "label_stats",
        "foreground_bbox_mm_max",
        "cases",
    ]
    assert list(result["label_stats"]) == ["1", "2"]
    assert [c["case"] for c in result["cases"]] == [f"case_{i}" for i in range(5)]
    assert set(result["cases"][0]) == {"case", "spacing", "shape", "modality", "label_voxels"}
    assert result["cases"][1]["label_voxels"] == {"1": 30, "2": 4}


def test_combine_is_plain_json_and_survives_a_round_trip():
    result = combined()
    assert json.loads(json.dumps(result)) == result
    round_tripped_cases = json.loads(json.dumps(hand_made_cases()))
    assert fp.combine(round_tripped_cases) == fp.combine(hand_made_cases())


@pytest.mark.parametrize(
    "modalities,expected",
    [
        (["MR", "CT", "MR"], "MR"),
        (["CT", "MR"], "CT"),
        (["MR", "CT"], "CT"),
        (["PT"], "PT"),
    ],
)
def test_combine_modality_is_the_most_common_ties_alphabetical(modalities, expected):
    cases = hand_made_cases()[: len(modalities)]
    for case, modality in zip(cases, modalities):
        case["modality"] = modality
    assert fp.combine(cases)["channels"][0]["modality"] == expected


def test_combine_integer_valued_needs_every_case():
    cases = hand_made_cases()
    cases[2]["integer_valued"] = False
    assert fp.combine(cases)["channels"][0]["integer_valued"] is False


@pytest.mark.parametrize(
    "cases,message",
    [
        ([], "zero cases"),
        ([hand_made_cases()[0], hand_made_cases()[0]], "more than once"),
        ([hand_made_cases()[3]], "no foreground intensity"),
    ],
)
def test_combine_refuses(cases, message):
    with pytest.raises(ValueError, match=message):
        fp.combine(iter(cases))


def test_combine_of_a_real_case_fingerprint():
    result = fp.combine([boxes_fingerprint()])
    stats = result["label_stats"]
    np.testing.assert_allclose(
        [stats["1"]["volume_mm3_median"], stats["2"]["volume_mm3_median"]], [30 * 2.56, 48 * 2.56]
    )
    np.testing.assert_allclose(stats["2"]["bbox_mm_median"], [3.2, 3.2, 12.0])
    np.testing.assert_allclose(result["extent_mm"]["max"], [8.0, 9.6, 24.0])


# --------------------------------------------------------------------------------------------
# Markdown and writing


@pytest.mark.parametrize(
    "spacing,anisotropic",
    [
        ((0.8, 0.8, 4.0), True),
        ((1.0, 1.0, 3.0), False),
        ((1.0, 1.0, 1.0), False),
        ((3.5, 1.0, 1.0), True),
    ],
)
def test_markdown_summary_flags_anisotropy(spacing, anisotropic):
    image, label = two_boxes()
    text = fp.to_markdown(fp.combine([fp.case_fingerprint(image, label, spacing, "MR", "c")]))
    assert ("Anisotropic" in text) is anisotropic
    assert "Cases: 1" in text and "MR (1)" in text
    assert "| 1 | 1 |" in text and "| 2 | 1 |" in text  # label rows: label, cases


def test_markdown_reports_volumes_in_ml():
    text = fp.to_markdown(fp.combine([boxes_fingerprint()]))
    assert "| 2 | 1 | 0.123 |" in text  # 48 voxels * 2.56 mm^3 = 122.88 mm^3


@pytest.mark.parametrize("directory_kind", ["local", "ram_uri"])
def test_write_round_trips(directory_kind, tmp_path):
    result = combined()
    if directory_kind == "local":
        directory = str(tmp_path / "new" / "dir")
        read = lambda p: open(p, encoding="utf-8").read()  # noqa: E731
    else:
        import tensorflow as tf

        directory = f"ram://fingerprint_test/{os.getpid()}/dir"
        read = lambda p: tf.io.gfile.GFile(p).read()  # noqa: E731
    paths = fp.write(result, directory)
    assert paths == {"json": directory + "/fingerprint.json", "markdown": directory + "/fingerprint.md"}
    assert json.loads(read(paths["json"])) == result
    assert read(paths["markdown"]) == fp.to_markdown(result)


def test_fingerprint_module_and_local_write_do_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from modules.plan import fingerprint as fp; "
        "from tests import test_fingerprint as t; "
        f"fp.write(fp.combine(t.hand_made_cases()), {str(tmp_path)!r}); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    # The test module imports numpy/pytest only at top level, so importing it keeps TF out too.
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --------------------------------------------------------------------------------------------
# decode_case on real tf.train.Example objects


def make_example(
    image,
    label=None,
    spacing=SPACING,
    modality="CT",
    case_id="case-9",
    dtype_name=None,
    image_raw=None,
    label_raw=None,
    drop=(),
):
    """A tf.train.Example built directly from the feature names (not through encode_case)."""
    import tensorflow as tf

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    dtype_name = dtype_name or np.dtype(image.dtype).name
    feature = {
        features.IMAGE_RAW: bytes_feature(
            image_raw if image_raw is not None else image.astype(image.dtype.newbyteorder("<")).tobytes()
        ),
        features.IMAGE_DTYPE: bytes_feature(dtype_name.encode()),
        features.IMAGE_SHAPE: tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
        features.SPACING: tf.train.Feature(float_list=tf.train.FloatList(value=list(spacing))),
        features.MODALITY: bytes_feature(modality.encode()),
        features.CASE_ID: bytes_feature(case_id.encode()),
    }
    if label_raw is not None:
        feature[features.LABEL_RAW] = bytes_feature(label_raw)
    elif label is not None:
        feature[features.LABEL_RAW] = bytes_feature(label.astype(np.uint8).tobytes())
    for name in drop:
        del feature[name]
    return tf.train.Example(features=tf.train.Features(feature=feature))


VOXEL_VALUES = {
    "uint8": np.array([0, 1, 7, 128, 255], np.uint8),
    "int16": np.array([-1024, -1, 0, 3071, 32767], np.int16),
    "float32": np.array([-1.5, 0.0, 0.25, 1e6, -3.4e38], np.float32),
}


def _volume_with(values):
    rng = np.random.default_rng(3)
    return rng.choice(values, size=(4, 5, 3)).astype(values.dtype)


@pytest.mark.parametrize("dtype_name", sorted(VOXEL_VALUES))
@pytest.mark.parametrize("with_label", [True, False])
def test_decode_case_restores_voxels_label_and_geometry(dtype_name, with_label):
    image = _volume_with(VOXEL_VALUES[dtype_name])
    label = (np.arange(image.size).reshape(image.shape) % 3).astype(np.uint8) if with_label else None
    decoded_image, decoded_label, spacing, modality, case_key = fp.decode_case(
        make_example(image, label, modality="MR", case_id="abc")
    )
    assert decoded_image.dtype == np.float32 and decoded_image.shape == image.shape
    np.testing.assert_array_equal(decoded_image, image.astype(np.float32))
    if with_label:
        assert decoded_label.dtype == np.uint8
        np.testing.assert_array_equal(decoded_label, label)
    else:
        assert decoded_label is None
    assert spacing.dtype == np.float64
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-6)
    assert (modality, case_key) == ("MR", "abc")


@pytest.mark.parametrize("dtype_name", sorted(VOXEL_VALUES))
def test_decode_case_reads_what_the_product_encoder_writes(dtype_name):
    image = _volume_with(VOXEL_VALUES[dtype_name])
    label = (image != image.flat[0]).astype(np.uint8)
    affine = np.diag(list(SPACING) + [1.0])
    example = features.encode_case(Volume(image, affine, "CT"), label, "enc-1", "hash", "nifti")
    decoded = fp.decode_case(example)
    np.testing.assert_array_equal(decoded[0], image.astype(np.float32))
    np.testing.assert_array_equal(decoded[1], label)
    assert decoded[3:] == ("CT", "enc-1")


def test_decode_case_treats_empty_label_bytes_as_no_label():
    image = _volume_with(VOXEL_VALUES["int16"])
    assert fp.decode_case(make_example(image, label_raw=b""))[1] is None


def _short_by_one_voxel(dtype_name):
    image = _volume_with(VOXEL_VALUES[dtype_name])
    return make_example(image, image_raw=image.tobytes()[: -image.itemsize], case_id="short-7")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: _short_by_one_voxel("uint8"), "image_raw has 59 bytes"),
        (lambda: _short_by_one_voxel("int16"), "image_raw has 118 bytes"),
        (lambda: _short_by_one_voxel("float32"), "image_raw has 236 bytes"),
        # int16 bytes declared as float32: twice too few bytes for the shape
        (
            lambda: make_example(_volume_with(VOXEL_VALUES["int16"]), dtype_name="float32", case_id="short-7"),
            "image_raw has 120 bytes",
        ),
        (
            lambda: make_example(_volume_with(VOXEL_VALUES["uint8"]), label_raw=b"\x00" * 61, case_id="short-7"),
            "label_raw has 61 bytes",
        ),
        (
            lambda: make_example(_volume_with(VOXEL_VALUES["uint8"]), dtype_name="float64", case_id="short-7"),
            "unsupported image_dtype",
        ),
        (lambda: make_example(_volume_with(VOXEL_VALUES["uint8"]), spacing=(1.0, 1.0), case_id="short-7"), "spacing"),
        (
            lambda: make_example(_volume_with(VOXEL_VALUES["uint8"]), case_id="short-7", drop=(features.MODALITY,)),
            "missing feature",
        ),
    ],
)
def test_decode_case_rejects_inconsistent_examples_naming_the_case(make, message):
    with pytest.raises(ValueError, match=message) as info:
        fp.decode_case(make())
    assert "short-7" in str(info.value)


def test_fingerprint_from_example_matches_fingerprint_from_arrays():
    image, label = two_boxes()
    example = make_example(image.astype(np.int16), label, modality="MR", case_id="boxes")
    # tf.Example stores spacing as float32, so the reference uses the float32-rounded spacing.
    spacing_float32 = np.asarray(SPACING, np.float32)
    assert fp.case_fingerprint_from_example(example) == fp.case_fingerprint(
        image, label, spacing_float32, "MR", "boxes"
    )


# --------------------------------------------------------------------------------------------
# Ten real hippocampus cases (Decathlon Task04 subset, MR, 1 mm isotropic)


def test_hippocampus_fingerprint_is_plausible():
    nib = pytest.importorskip("nibabel")
    root = shared_path("hippocampus")
    names = sorted(n for n in os.listdir(os.path.join(root, "imagesTr")) if n.endswith(".nii.gz"))[:10]
    assert len(names) == 10
    cases = []
    for name in names:
        image_nii = nib.as_closest_canonical(nib.load(os.path.join(root, "imagesTr", name)))
        label_nii = nib.as_closest_canonical(nib.load(os.path.join(root, "labelsTr", name)))
        image = np.asanyarray(image_nii.dataobj)
        label = np.asanyarray(label_nii.dataobj)
        case = fp.case_fingerprint(image, label, image_nii.header.get_zooms()[:3], "MR", name)
        # The same case through the ingestion encoder and decode_case gives the same fingerprint.
        example = features.encode_case(
            Volume(compact_dtype(image), image_nii.affine, "MR"), label.astype(np.uint8), name, "hash", "nifti"
        )
        assert fp.case_fingerprint_from_example(example) == case
        cases.append(case)
    result = fp.combine(cases)
    assert result["num_cases"] == 10 and result["labels"] == [0, 1, 2]
    assert result["channels"][0]["modality_counts"] == {"MR": 10}
    np.testing.assert_allclose(result["spacing"]["median"], [1.0, 1.0, 1.0], atol=0.1)
    assert all(25 <= n <= 70 for n in result["shape"]["median"])
    for key in ("1", "2"):  # anterior, posterior hippocampus: a few ml each, a few cm long
        stats = result["label_stats"][key]
        assert stats["cases"] == 10
        assert 500.0 <= stats["volume_mm3_min"] <= stats["volume_mm3_median"] <= 5000.0
        assert all(5.0 <= v <= 40.0 for v in stats["bbox_mm_median"])
    assert all(b <= e for b, e in zip(result["foreground_bbox_mm_max"], result["extent_mm"]["max"]))
    intensity = result["channels"][0]["foreground_intensity"]
    assert intensity["min"] <= intensity["p00_5"] < intensity["p50"] < intensity["p99_5"] <= intensity["max"]
    assert "Anisotropic" not in fp.to_markdown(result)
