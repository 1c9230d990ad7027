"""Transform's preprocessing_fn run by tf.Transform (tft_beam) on a few phantoms: dataset-level
analyzers (CT foreground statistics, median spacing), the no-CT fallback, whole-volume outputs,
config plumbing and the preview PNG. Helpers here are shared with test_skew.py.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from modules import features as es
from modules.io.volume import Volume, to_canonical
from modules.transform import preprocessing, volume_ops
from pipeline.tools.phantoms import make_phantom

SEED = 7


def phantom_case(index: int, seed: int = SEED):
    """(serialized canonical tf.Example as ingestion writes it, phantom in acquisition geometry).
    Even indices are CT (int16 HU), odd MR."""
    p = make_phantom(index, seed)
    image, affine = to_canonical(p.image, p.affine)
    label, _ = to_canonical(p.label, p.affine)
    example = es.encode_case(Volume(image, affine, p.modality), label, p.name, f"hash{index}", "nifti")
    return example.SerializeToString(), p


def raw_rows(serialized):
    parsed = tf.io.parse_example(tf.constant(serialized), es.raw_feature_spec())
    return [{k: v[i].numpy() for k, v in parsed.items()} for i in range(len(serialized))]


@functools.lru_cache(maxsize=None)
def analyze_and_transform(indices: tuple, config_json: str):
    """Runs tft_beam.AnalyzeAndTransformDataset with preprocessing_fn over phantoms `indices`
    (cached per session). Returns (transformed rows, transform graph dir laid out as TFX's
    Transform writes it, serialized raw examples)."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    config = json.loads(config_json)
    serialized = [phantom_case(i)[0] for i in indices]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(es.raw_feature_spec()))
    work = tempfile.mkdtemp(prefix="medtfx_tft_")
    atexit.register(shutil.rmtree, work, True)
    graph_dir = os.path.join(work, "transform_graph")
    with tft_beam.Context(temp_dir=os.path.join(work, "tmp"), force_tf_compat_v1=False):
        (rows, _), transform_fn = (raw_rows(serialized), metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing.preprocessing_fn(x, config)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
    metadata_io.write_metadata(metadata, os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return rows, graph_dir, serialized


def decoded(record: bytes) -> dict:
    """decode_case plus spacing (3,) float32 and direction (9,) as the example stores them."""
    example = tf.train.Example.FromString(record)
    case = es.decode_case(example)
    case["spacing"] = np.array(example.features.feature[es.SPACING].float_list.value, np.float32)
    case["direction"] = np.array(example.features.feature[es.DIRECTION].float_list.value, np.float32)
    return case


def ct_run():
    """CT 0, MR 1, CT 2 on a grid equal to case 0's own grid (spacing and shape), so case 0's
    network input is its normalised voxels, unresampled. Shared with test_skew.py."""
    case = decoded(phantom_case(0)[0])
    config = {"target_spacing": [float(v) for v in case["spacing"]], "target_shape": list(case["image"].shape)}
    return analyze_and_transform((0, 1, 2), json.dumps(config))


def mr_run():
    """MR cases only (1, 3, 5), whole volumes at the median spacing."""
    return analyze_and_transform((1, 3, 5), json.dumps({"spatial_mode": "whole_volume"}))


def test_ct_statistics_come_from_ct_foreground_only():
    """Case 0's network input is (clip(x, lo, hi) - mean) / std of its raw voxels x: recover
    (lo, hi, mean, std) by regression and compare with numpy on the CT cases' foreground."""
    rows, _, serialized = ct_run()
    x = decoded(serialized[0])["image"].astype(np.float64)
    out = rows[0][preprocessing.IMAGE].astype(np.float64)
    assert out.shape == x.shape
    inside = (out > out.min() + 1e-6) & (out < out.max() - 1e-6)
    std, mean = np.polyfit(out[inside], x[inside], 1)
    lo, hi = out.min() * std + mean, out.max() * std + mean
    assert np.abs(out[inside] * std + mean - x[inside]).max() < 1e-2  # affine where unclipped
    # The analyzer's sample: every k-th foreground voxel (ingested voxel order) of CT cases only.
    sample = []
    for record in (serialized[0], serialized[2]):
        case = decoded(record)
        fg = case["image"].ravel().astype(np.float64)[case["label"].ravel() > 0]
        sample.append(fg[:: -(-fg.size // 10000)])
    sample = np.concatenate(sample)
    np.testing.assert_allclose([mean, std], [sample.mean(), sample.std()], rtol=1e-4)
    # Approximate quantiles (epsilon 5e-4): each bound lies within +-0.1 percentile of the exact one.
    assert np.percentile(sample, 0.4) <= lo <= np.percentile(sample, 0.6), (lo, np.percentile(sample, 0.5))
    assert np.percentile(sample, 99.4) <= hi <= np.percentile(sample, 99.6), (hi, np.percentile(sample, 99.5))
    assert (x < lo).any() and (x > hi).any()  # both bounds clip something
    np.testing.assert_array_equal(rows[0][preprocessing.LABEL], decoded(serialized[0])["label"])
    for row in rows:
        assert np.isfinite(row[preprocessing.IMAGE]).all()
        assert row[preprocessing.IMAGE].shape == x.shape == row[preprocessing.LABEL].shape


def test_no_ct_case_median_spacing_and_whole_volumes():
    """MR only: grid spacing = per-axis median spacing; whole_volume outputs each resampled
    volume flattened (length prod(grid_shape)) equal to the eager ops, and its centre crop/pad is
    the fixed-shape input; the CT statistics, fed no data, are finite neutral values: a CT case
    transformed by this graph keeps its HU, just resampled."""
    rows, graph_dir, serialized = mr_run()
    spacings = [decoded(r)["spacing"] for r in serialized]
    grid = rows[0][preprocessing.GRID_SPACING]
    np.testing.assert_allclose(grid, np.median(spacings, axis=0), rtol=1e-6)
    zscore_nonzero = volume_ops.INTENSITY_MODES.index("zscore_nonzero")
    for row, record in zip(rows, serialized):
        shape = row[preprocessing.GRID_SHAPE]
        image = row[preprocessing.IMAGE + "$ragged_values"]
        label = row[preprocessing.LABEL + "$ragged_values"]
        assert image.size == label.size == np.prod(shape)
        case = decoded(record)
        args = (
            tf.constant(case["image"], tf.float32),
            case["spacing"],
            case["direction"],
            zscore_nonzero,
            tf.constant(volume_ops.NEUTRAL_STATS),
            (-1000.0, 1000.0),
            tf.constant(grid),
        )
        whole = volume_ops.to_network(*args).numpy()
        np.testing.assert_allclose(image.reshape(shape), whole, atol=1e-5)
        size = (30, 34, 32)
        fixed = volume_ops.to_network(*args, size=list(size)).numpy()
        offset = [int(np.trunc((s - m) / 2)) for s, m in zip(size, shape)]
        dst = tuple(slice(max(0, o), max(0, o) + min(s, m)) for o, s, m in zip(offset, size, shape))
        src = tuple(slice(max(0, -o), max(0, -o) + min(s, m)) for o, s, m in zip(offset, size, shape))
        np.testing.assert_allclose(fixed[dst], whole[src], atol=1e-5)
        assert set(np.unique(label)) == {0, 1, 2}

    import tensorflow_transform as tft

    ct_record = phantom_case(0)[0]
    output = tft.TFTransformOutput(graph_dir)
    ct = output.transform_raw_features(tf.io.parse_example(tf.constant([ct_record]), output.raw_feature_spec()))
    case = decoded(ct_record)
    got = ct[preprocessing.IMAGE].values.numpy().reshape(ct[preprocessing.GRID_SHAPE][0].numpy())
    hu = volume_ops.to_network(
        tf.constant(case["image"], tf.float32),
        case["spacing"],
        case["direction"],
        volume_ops.INTENSITY_MODES.index("dataset"),
        tf.constant(volume_ops.NEUTRAL_STATS),
        (-1000.0, 1000.0),
        tf.constant(grid),
    ).numpy()
    assert np.isfinite(got).all() and got.min() < -900 and got.max() > 150  # air and structure HU
    np.testing.assert_allclose(got, hu, atol=1e-3)


def test_settings_validation_and_pipeline_config():
    import pydantic

    from modules.settings import TransformSettings
    from pipeline.config import make_config

    for bad, field in (
        ({"spatial_mode": "patches"}, "spatial_mode"),
        ({"intensity_mode": {"CT": "hu"}}, "intensity_mode"),
        ({"intensity_window": [5, 5]}, "intensity_window"),
    ):
        with pytest.raises(pydantic.ValidationError, match=field):
            TransformSettings.model_validate(bad)
    demo = make_config(["target_spacing=[2,2,2]"]).transform.model_dump(mode="json")
    assert demo["target_spacing"] == [2.0, 2.0, 2.0] and demo["spatial_mode"] == "fixed_shape"
    assert TransformSettings.model_validate(demo).intensity_mode == {"CT": "dataset", "*": "zscore_nonzero"}
    median = make_config(
        ["target_spacing=null", 'intensity_mode={"CT": "window", "*": "zscore"}', "intensity_window=[-160, 240]"]
    ).transform.model_dump(mode="json")
    settings = TransformSettings.model_validate(median)
    assert settings.target_spacing is None and settings.intensity_window == (-160.0, 240.0)
    modes = preprocessing.intensity_mode_index(tf.constant(["CT", "MR", "PT"]), settings.intensity_mode)
    assert [volume_ops.INTENSITY_MODES[i] for i in modes.numpy()] == ["window", "zscore", "zscore"]
    json.dumps(median)  # custom_config must serialise for the Transform component


def test_preview_png(tmp_path):
    """preview.write_preview: raw examples of a split + a transform graph -> preview.png there."""
    from components.transform import preview

    _, graph_dir, serialized = ct_run()
    split = tmp_path / "Split-train"
    split.mkdir()
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for record in serialized:
            writer.write(record)
    graph_copy = tmp_path / "transform_graph"
    shutil.copytree(graph_dir, graph_copy)
    path = preview.write_preview(str(split), str(graph_copy), count=2)
    assert path == os.path.join(str(graph_copy), "preview.png")
    cases = preview.pick_by_modality(serialized, 2)
    assert {tf.train.Example.FromString(r).features.feature[es.MODALITY].bytes_list.value[0] for r in cases} == {
        b"CT",
        b"MR",
    }
    with open(path, "rb") as fh:
        png = fh.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 800 and height > 400  # two rows of three panels
