"""Class-balanced patch sampling and augmentation: geometry, foreground share, determinism;
the input pipeline's record decoding (fixed grid, whole volume, raw int16 bytes)."""

import numpy as np
import pytest
import tensorflow as tf

from modules.train import augment, input_pipeline

PATCH = [8, 8, 6]


def _case(shape=(24, 20, 16)):
    label = np.zeros(shape, np.uint8)
    label[3:5, 4:6, 2:4] = 1  # tiny structures: random patches mostly miss them
    label[19:21, 15:17, 12:14] = 2
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / np.prod(shape)
    return image, label


NO_AUGMENTATION = augment.AugmentConfig.off()


def _case_voxels_at(image, patch):
    """The (3,) start of `patch` inside `image`, asserting the patch is the case's own voxels."""
    start = np.argwhere(np.isclose(image, patch[0, 0, 0]))[0]
    window = tuple(slice(a, a + p) for a, p in zip(start, patch.shape))
    np.testing.assert_array_equal(patch, image[window])
    return start


def test_forced_patches_are_centred_on_foreground():
    image, label = _case()
    for i in range(20):
        img, lab = augment.training_patch(image, label, PATCH, 3, 1.0, NO_AUGMENTATION, tf.constant([3, i]))
        assert lab.numpy().max() > 0
        start = _case_voxels_at(image, img.numpy())
        window = tuple(slice(a, a + p) for a, p in zip(start, PATCH))
        np.testing.assert_array_equal(lab.numpy(), label[window])


@pytest.mark.parametrize(
    "oversample, low, high",
    [
        (0.0, 0.0, 0.3),  # uniform placement mostly misses the tiny structures
        (0.33, 0.3, 0.7),  # a third forced onto foreground, plus the uniform hits
        (1.0, 1.0, 1.0),  # every patch forced onto foreground
    ],
)
def test_foreground_share_follows_oversampling(oversample, low, high):
    image, label = _case()
    hits = [
        augment.training_patch(image, label, PATCH, 3, oversample, NO_AUGMENTATION, tf.constant([1, i]))[1]
        .numpy()
        .max()
        > 0
        for i in range(60)
    ]
    assert low <= np.mean(hits) <= high


def test_small_volume_is_padded_and_case_without_foreground_samples_randomly():
    image = np.ones((5, 8, 3), np.float32)
    label = np.zeros((5, 8, 3), np.uint8)
    img, lab = augment.training_patch(image, label, PATCH, 3, 1.0, NO_AUGMENTATION, tf.constant([0, 0]))
    assert img.shape == tuple(PATCH) and lab.numpy().max() == 0
    assert img.numpy().sum() == 5 * 8 * 3  # every original voxel, zero padding around


def test_affine_patch_identity_and_rotation_geometry():
    image, label = _case()
    centre = tf.constant([11.5, 9.5, 7.5])
    img, lab = augment.affine_patch(image, label, centre, tf.eye(3), PATCH)
    np.testing.assert_allclose(img.numpy(), image[8:16, 6:14, 5:11], rtol=1e-6)
    # 90 degrees about axis 2 maps patch offset (a, b) to case offset (-b, a).
    rotation = augment.rotation_matrix(tf.constant([0.0, 0.0, np.pi / 2]))
    square = [8, 8, 6]
    img, lab = augment.affine_patch(image, label, centre, rotation, square)
    expected = np.rot90(image[8:16, 6:14, 5:11], k=-1, axes=(0, 1))
    np.testing.assert_allclose(img.numpy(), expected, atol=1e-4)
    # scale 2 about (7, 7, 5): patch voxel (i, j, k) reads case voxel (2i, 2j, 2k) (zoomed out)
    img, lab = augment.affine_patch(image, label, tf.constant([7.0, 7.0, 5.0]), 2.0 * tf.eye(3), PATCH)
    np.testing.assert_allclose(img.numpy(), image[0:16:2, 0:16:2, 0:12:2], rtol=1e-5)
    np.testing.assert_array_equal(lab.numpy(), label[0:16:2, 0:16:2, 0:12:2])
    # points outside the case take 0
    img, lab = augment.affine_patch(image + 1.0, label + 1, tf.constant([-1.0, -1.0, -1.0]), tf.eye(3), [3, 3, 3])
    assert img.numpy()[0, 0, 0] == 0.0 and lab.numpy()[0, 0, 0] == 0
    assert img.numpy()[2, 2, 2] == image[0, 0, 0] + 1.0 and lab.numpy()[2, 2, 2] == label[0, 0, 0] + 1


def test_mirror_flips_image_and_label_together():
    image, label = _case()
    flipped = 0
    for i in range(4):
        img, lab = augment.mirror(tf.constant(image), tf.constant(image), tf.constant([5, i]))
        np.testing.assert_array_equal(img.numpy(), lab.numpy())
        flipped += not np.array_equal(img.numpy(), image)
    assert flipped  # 4 draws of 3 fair coins: some axis flipped


def test_augmented_patch_keeps_label_aligned_with_image():
    # image = 10 on foreground: rotated / scaled / mirrored together, a voxel whose image is fully
    # inside the structure (10) must be labelled foreground, fully outside (0) background.
    _, label = _case()
    label[8:16, 6:14, 5:11] = 1  # a larger block, so interiors exist after zooming
    image = (label > 0).astype(np.float32) * 10.0
    cfg = augment.AugmentConfig(
        p_rotation=1.0, max_rotation_deg=15.0, p_scale=1.0, p_intensity_scale=0.0, p_intensity_shift=0.0, p_noise=0.0
    )
    for i in range(6):
        img, lab = augment.training_patch(image, label, PATCH, 3, 1.0, cfg, tf.constant([2, i]))
        img, lab = img.numpy(), lab.numpy()
        assert (lab > 0).any()
        assert np.all(lab[img > 10.0 - 1e-3] > 0) and np.all(lab[img < 1e-3] == 0)


def _batches(seed, n=3):
    image, label = _case()
    images = np.stack([image, image * 2])[..., None]  # (cases, X, Y, Z, 1): the decoder's channel axis
    cases = tf.data.Dataset.from_tensor_slices((images, np.stack([label, label])))
    ds = input_pipeline.training_patches(cases, PATCH, 2, 3, 0.33, augment.AugmentConfig(p_rotation=0.5), seed)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_same_seed_gives_identical_batches():
    first, again, other = _batches(7), _batches(7), _batches(8)
    assert first[0][0].shape == (2, 8, 8, 6, 1) and first[0][1].shape == (2, 8, 8, 6)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def _example(features):
    def feature(v):
        v = np.asarray(v)
        if v.dtype.kind == "f":
            return tf.train.Feature(float_list=tf.train.FloatList(value=v.ravel()))
        if v.dtype.kind in "iu":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=v.ravel()))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.item()]))

    return tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    ).SerializeToString()


def test_case_decoder_fixed_grid_and_whole_volume():
    image, label = _case((4, 3, 2))
    fixed = {"image": tf.io.FixedLenFeature([4, 3, 2], tf.float32), "label": tf.io.FixedLenFeature([4, 3, 2], tf.int64)}
    img, lab = input_pipeline.case_decoder(fixed)(_example({"image": image, "label": label.astype(np.int64)}))
    np.testing.assert_array_equal(img.numpy(), image[..., None])
    assert lab.dtype == tf.uint8 and np.array_equal(lab.numpy(), label)
    whole = {
        "image": tf.io.VarLenFeature(tf.float32),
        "label": tf.io.VarLenFeature(tf.int64),
        "grid_shape": tf.io.FixedLenFeature([3], tf.int64),
    }
    record = _example({"image": image, "label": label.astype(np.int64), "grid_shape": np.array([4, 3, 2])})
    img, lab = input_pipeline.case_decoder(whole)(record)
    np.testing.assert_array_equal(img.numpy(), image[..., None])
    np.testing.assert_array_equal(lab.numpy(), label)
    classification = {"image": fixed["image"], "label": tf.io.FixedLenFeature([], tf.int64)}
    _, cls = input_pipeline.case_decoder(classification)(_example({"image": image, "label": np.array(2)}))
    assert cls.dtype == tf.int32 and int(cls) == 2


def test_raw_int16_volumes_decode_exactly(tmp_path):
    from modules import features as es

    rng = np.random.default_rng(0)
    volumes = rng.integers(-1024, 3000, size=(3, 4, 5, 6)).astype(np.int16)
    path = str(tmp_path / "ct.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for v in volumes:
            writer.write(_example({es.IMAGE_RAW: np.array(v.astype("<i2").tobytes(), dtype=object)}))
    for cache in (False, True):
        ds = input_pipeline.raw_volume_batches([path], (4, 5, 6), 3, "int16", cache=cache, repeat=False)
        batch = next(iter(ds))
        assert batch.shape == (3, 4, 5, 6, 1) and batch.dtype == tf.int16
        np.testing.assert_array_equal(batch.numpy()[..., 0], volumes)
        ds = input_pipeline.raw_volume_batches(
            [path], (4, 5, 6), 3, "int16", cache=cache, repeat=False, normalisation=(100.0, 0.5)
        )
        batch = next(iter(ds)).numpy()
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch[..., 0], (volumes.astype(np.float32) - 100.0) * 0.5)


def test_two_channel_cases_decode_channels_last_and_patch_both_channels_alike():
    image, label = _case((6, 5, 4))
    two = np.stack([image, -image], axis=-1)  # channel 1 mirrors channel 0's values
    fixed = {
        "image": tf.io.FixedLenFeature([6, 5, 4, 2], tf.float32),
        "label": tf.io.FixedLenFeature([6, 5, 4], tf.int64),
    }
    img, lab = input_pipeline.case_decoder(fixed)(_example({"image": two, "label": label.astype(np.int64)}))
    np.testing.assert_array_equal(img.numpy(), two)
    whole = {
        "image": tf.io.VarLenFeature(tf.float32),
        "label": tf.io.VarLenFeature(tf.int64),
        "grid_shape": tf.io.FixedLenFeature([3], tf.int64),
    }
    record = _example({"image": two, "label": label.astype(np.int64), "grid_shape": np.array([6, 5, 4])})
    img, lab = input_pipeline.case_decoder(whole)(record)
    np.testing.assert_array_equal(img.numpy(), two)
    np.testing.assert_array_equal(lab.numpy(), label)
    big_image, big_label = _case()
    big = np.stack([big_image, -big_image], axis=-1)
    rotate = augment.AugmentConfig(p_rotation=1.0, p_intensity_shift=0.0, p_noise=0.0)
    for cfg in (NO_AUGMENTATION, rotate):
        patch, patch_label = augment.training_patch(big, big_label, PATCH, 3, 1.0, cfg, tf.constant([5, 1]))
        assert patch.shape == tuple(PATCH) + (2,) and patch_label.shape == tuple(PATCH)
        # Spatial transforms, mirroring and scaling move both channels alike, so channel 1 stays
        # the negative of channel 0 (additive shift and noise are off here).
        np.testing.assert_allclose(patch[..., 1].numpy(), -patch[..., 0].numpy(), atol=1e-4)
