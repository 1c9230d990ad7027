"""Training/serving skew: what tf.Transform computed for a case (tft_beam, the same code path as
the Transform component) equals what the exported serving model computes for the same raw input,
through the `transform_features` signature (serialized examples) and through the raw-voxel path
(`transform_raw`, the network input `serving_default` uses internally): max abs difference
<= 1e-5. The raw path also gets each case in its original acquisition orientation (not
canonical): the serving graph's reorientation must give the same network input, and the mask
must come back in that orientation.
"""

import numpy as np
import pytest
import tensorflow as tf

from modules import features as es
from modules.transform import preprocessing
from tests.test_preprocessing import ct_run, decoded, phantom_case

SKEW_TOL = 1e-5


@pytest.fixture(scope="module")
def network_and_transform():
    """(rows, serialized examples, Transform graph dir, untrained tiny network) for CT 0, MR 1, CT 2."""
    rows, graph_dir, serialized = ct_run()
    shape = rows[0][preprocessing.IMAGE].shape
    tf.keras.utils.set_random_seed(0)
    # Untrained and tiny: any fixed voxelwise-softmax function of the network input will do.
    inputs = tf.keras.Input(shape=tuple(shape) + (1,))
    logits = tf.keras.layers.Conv3D(3, 3, padding="same")(inputs)
    return rows, serialized, graph_dir, tf.keras.Model(inputs, tf.keras.layers.Softmax()(logits))


@pytest.fixture(scope="module")
def exported(network_and_transform, tmp_path_factory):
    """(transformed rows, serialized examples, loaded SavedModel) for CT 0, MR 1, CT 2."""
    import tensorflow_transform as tft

    from modules.train import trainer

    rows, serialized, graph_dir, model = network_and_transform
    export_dir = str(tmp_path_factory.mktemp("model") / "serving")
    trainer.export(model, tft.TFTransformOutput(graph_dir), export_dir)
    return rows, serialized, tf.saved_model.load(export_dir)


def _raw_inputs(cases):
    """serving_default / transform_raw inputs for a list of (image, spacing (3,), direction (9,),
    modality) in any orientation."""
    return {
        es.IMAGE_RAW: tf.constant([np.ascontiguousarray(c[0]).astype("<i2").tobytes() for c in cases]),
        es.IMAGE_DTYPE: tf.constant(["int16"] * len(cases)),
        es.IMAGE_SHAPE: tf.constant([c[0].shape for c in cases], tf.int64),
        es.SPACING: tf.constant([c[1] for c in cases], tf.float32),
        es.DIRECTION: tf.constant([c[2] for c in cases], tf.float32),
        es.MODALITY: tf.constant([c[3] for c in cases]),
    }


def _canonical_inputs(serialized):
    cases = [decoded(r) for r in serialized]
    return _raw_inputs([(c["image"], c["spacing"], c["direction"], c["modality"]) for c in cases])


def _acquisition_inputs(indices):
    """The same phantoms as scanned (non-canonical voxel order, oblique directions)."""
    cases = []
    for i in indices:
        p = phantom_case(i)[1]
        spacing = np.linalg.norm(p.affine[:3, :3], axis=0)
        cases.append((p.image, spacing, (p.affine[:3, :3] / spacing).reshape(-1), p.modality))
    return _raw_inputs(cases)


def test_transform_features_signature_matches_tft(exported):
    rows, serialized, model = exported
    out = model.signatures["transform_features"](examples=tf.constant(serialized))
    for i, row in enumerate(rows):
        diff = np.abs(out[preprocessing.IMAGE][i].numpy() - row[preprocessing.IMAGE]).max()
        assert diff <= SKEW_TOL, (i, diff)
        np.testing.assert_array_equal(out[preprocessing.LABEL][i].numpy(), row[preprocessing.LABEL])
        np.testing.assert_array_equal(out[preprocessing.GRID_SHAPE][i].numpy(), row[preprocessing.GRID_SHAPE])


def test_raw_voxel_path_matches_tft_in_any_orientation(exported):
    rows, serialized, model = exported
    expected = np.stack([row[preprocessing.IMAGE] for row in rows])
    canonical = model.signatures["transform_raw"](**_canonical_inputs(serialized))[preprocessing.IMAGE].numpy()
    assert np.abs(canonical - expected).max() <= SKEW_TOL
    scanned = model.signatures["transform_raw"](**_acquisition_inputs([0, 1, 2]))[preprocessing.IMAGE].numpy()
    assert np.abs(scanned - expected).max() <= SKEW_TOL


def test_serving_mask_comes_back_in_the_input_geometry(exported):
    from modules.io.volume import to_canonical

    rows, serialized, model = exported
    canonical = model.signatures["serving_default"](**_canonical_inputs(serialized))
    scanned = model.signatures["serving_default"](**_acquisition_inputs([0, 1, 2]))
    for i in range(3):
        p = phantom_case(i)[1]
        shape = scanned["mask_shape"][i].numpy()
        np.testing.assert_array_equal(shape, p.image.shape)
        mask = scanned["mask"][i].numpy()[: shape[0], : shape[1], : shape[2]]
        reoriented, _ = to_canonical(mask, p.affine)
        cshape = canonical["mask_shape"][i].numpy()
        expected = canonical["mask"][i].numpy()[: cshape[0], : cshape[1], : cshape[2]]
        np.testing.assert_array_equal(reoriented, expected)
        # On its own grid (the CT run's network grid equals case 0's) the mask is the model's argmax.
        if i == 0:
            probabilities = model.signatures["evaluate"](examples=tf.constant(serialized[:1]))["probabilities"]
            np.testing.assert_array_equal(expected, np.argmax(probabilities[0].numpy(), axis=-1))


def test_exported_test_time_mirroring_is_the_mean_over_flips(network_and_transform, exported, tmp_path):
    """trainer.export(mirror_axes=...) puts sliding_window.mirrored into every segmentation
    signature: `evaluate` then returns the mean of the network over all flips of the grid."""
    import tensorflow_transform as tft

    from modules.train import trainer

    rows, serialized, graph_dir, network = network_and_transform
    plain = exported[2]
    # Same network and Transform graph, exported again with mirroring over all three axes.
    mirrored_dir = str(tmp_path / "mirrored")
    trainer.export(network, tft.TFTransformOutput(graph_dir), mirrored_dir, mirror_axes=(0, 1, 2))
    mirrored = tf.saved_model.load(mirrored_dir)
    examples = tf.constant(serialized)
    got = mirrored.signatures["evaluate"](examples=examples)["probabilities"].numpy()
    image = tf.constant(np.stack([row[preprocessing.IMAGE] for row in rows]))[..., None]
    flips = [[], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]]
    expected = np.mean(
        [
            tf.reverse(network(tf.reverse(image, d) if d else image, training=False), d).numpy()
            if d
            else network(image, training=False).numpy()
            for d in flips
        ],
        axis=0,
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unmirrored = plain.signatures["evaluate"](examples=examples)["probabilities"].numpy()
    assert np.abs(got - unmirrored).max() > 1e-3  # an untrained conv is not flip-equivariant


def test_exported_model_knows_its_modality(network_and_transform, tmp_path):
    """A model exported with modalities=('CT',) normalises an unnamed ('') input as CT, so the
    mask equals the one for modality 'CT', and refuses an input that says 'MR' (its normalisation
    would be MR's: a silently wrong mask). model_inputs.json records what it was trained on."""
    import tensorflow_transform as tft

    from modules.train import trainer

    rows, serialized, graph_dir, network = network_and_transform
    export_dir = str(tmp_path / "ct_model")
    trainer.export(
        network,
        tft.TFTransformOutput(graph_dir),
        export_dir,
        modalities=("CT",),
        plan={"settings": {"training": {"num_classes": 3}}},
    )
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    case = decoded(serialized[0])  # a CT case
    as_named = _raw_inputs([(case["image"], case["spacing"], case["direction"], "CT")])
    unnamed = _raw_inputs([(case["image"], case["spacing"], case["direction"], "")])
    np.testing.assert_array_equal(serve(**as_named)["mask"].numpy(), serve(**unnamed)["mask"].numpy())
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="modality refused: this model was trained on CT; the request says"
    ):
        serve(**_raw_inputs([(case["image"], case["spacing"], case["direction"], "MR")]))
    inputs = trainer.read_model_inputs(export_dir)
    assert inputs["modalities"] == ["CT"] and inputs["num_classes"] == 3
    assert (tmp_path / "ct_model" / "assets.extra" / "plan.json").exists()
