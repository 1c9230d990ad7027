"""The tf.Example schema of an ingested case: the one place that defines it.

One tf.Example per case. Voxels are raw bytes in their native dtype (not float_list: a float
per voxel costs 4-5 bytes plus parsing); everything else is small metadata that
StatisticsGen/SchemaGen/ExampleValidator look at. Geometry is after canonicalisation (RAS+).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from modules.io.volume import Volume


@dataclasses.dataclass(frozen=True)
class FeatureDef:
    name: str
    kind: str  # 'bytes' | 'int' | 'float'
    shape: tuple  # () for a scalar
    voxels: bool = False  # raw voxel payloads: excluded from statistics
    doc: str = ""


IMAGE_RAW = "image_raw"
LABEL_RAW = "label_raw"
IMAGE_DTYPE = "image_dtype"
IMAGE_SHAPE = "image_shape"
IMAGE_CHANNELS = "image_channels"
SPACING = "spacing"
ORIGIN = "origin"
DIRECTION = "direction"
MODALITY = "modality"
CASE_ID = "case_id"
PATIENT_HASH = "patient_hash"
SITE = "site"
SOURCE_FORMAT = "source_format"
SPACING_BIN = "spacing_bin"

FEATURES = (
    FeatureDef(
        IMAGE_RAW,
        "bytes",
        (),
        True,
        "voxels, C order over (X, Y, Z) or (X, Y, Z, C) channels last, dtype image_dtype, little endian",
    ),
    FeatureDef(LABEL_RAW, "bytes", (), True, "uint8 label map, same grid as the image"),
    FeatureDef(IMAGE_DTYPE, "bytes", (), False, "'uint8' | 'int16' | 'float32'"),
    FeatureDef(IMAGE_SHAPE, "int", (3,), False, "(X, Y, Z) voxels"),
    FeatureDef(IMAGE_CHANNELS, "int", (), False, "image channels C (1 for a single image; T2 + ADC = 2)"),
    FeatureDef(SPACING, "float", (3,), False, "voxel size in mm per axis"),
    FeatureDef(ORIGIN, "float", (3,), False, "RAS+ mm of voxel (0,0,0)"),
    FeatureDef(DIRECTION, "float", (9,), False, "3x3 row-major direction cosines, columns = axes"),
    FeatureDef(MODALITY, "bytes", (), False, "'CT', 'MR', ...; one per channel joined by ',' ('MR,MR')"),
    FeatureDef(CASE_ID, "bytes", (), False, "case identifier (salted hash if derived from patient data)"),
    FeatureDef(PATIENT_HASH, "bytes", (), False, "salted hash of the patient ID; the split key"),
    FeatureDef(SITE, "bytes", (), False, "scanner manufacturer/site, for slicing"),
    FeatureDef(SOURCE_FORMAT, "bytes", (), False, "'nifti' | 'dicom'"),
    FeatureDef(SPACING_BIN, "bytes", (), False, "coarsest voxel size bin, e.g. '1.5-2.5mm' (slicing)"),
    FeatureDef("intensity_mean", "float", (), False, "mean voxel value (HU for CT)"),
    FeatureDef("intensity_std", "float", (), False, "voxel value standard deviation"),
    FeatureDef("intensity_p01", "float", (), False, "1st percentile voxel value"),
    FeatureDef("intensity_p99", "float", (), False, "99th percentile voxel value"),
    FeatureDef("foreground_fraction", "float", (), False, "share of voxels with label > 0"),
)
FEATURES_BY_NAME = {f.name: f for f in FEATURES}
VOXEL_FEATURES = tuple(f.name for f in FEATURES if f.voxels)
METADATA_FEATURES = tuple(f.name for f in FEATURES if not f.voxels)
# What a serving request carries: the image and its geometry, no label.
SERVING_FEATURES = (IMAGE_RAW, IMAGE_DTYPE, IMAGE_SHAPE, SPACING, DIRECTION, MODALITY)

_DTYPES = {"uint8": np.uint8, "int16": np.int16, "float32": np.float32}
# Edges (mm) of the spacing bins evaluation results are sliced by: thick slices and coarse
# grids are where segmentations usually degrade first.
SPACING_BIN_EDGES_MM = (1.0, 1.5, 2.5, 5.0)


def spacing_bin(spacing) -> str:
    """Bin name of the largest voxel size (mm) in `spacing` (3,): 'le1.0mm', '1.0-1.5mm', ...,
    'gt5.0mm'. Bins are closed above: 1.5 mm falls in '1.0-1.5mm'."""
    coarsest = float(np.max(np.asarray(spacing, dtype=np.float64)))
    edges = SPACING_BIN_EDGES_MM
    if coarsest <= edges[0] + 1e-6:
        return f"le{edges[0]:.1f}mm"
    for lo, hi in zip(edges[:-1], edges[1:]):
        if coarsest <= hi + 1e-6:
            return f"{lo:.1f}-{hi:.1f}mm"
    return f"gt{edges[-1]:.1f}mm"


CHANNEL_SEPARATOR = ","


def join_modalities(modalities) -> str:
    """The MODALITY feature of a case from its channels' modalities: 'CT', or 'MR,MR' for two channels."""
    return CHANNEL_SEPARATOR.join(str(m) for m in modalities)


def channel_modalities(modality: str, channels: int) -> list:
    """Each channel's modality from a case's MODALITY feature: 'MR,CT' -> ['MR', 'CT']; a single
    name applies to every channel ('MR', 2 -> ['MR', 'MR']).

    Raises:
      ValueError: several names but not one per channel.
    """
    names = str(modality).split(CHANNEL_SEPARATOR) if modality else [""]
    if len(names) == 1:
        return names * int(channels)
    if len(names) != int(channels):
        raise ValueError(f"modality {modality!r} names {len(names)} channels, the image has {channels}")
    return names


def _feature(kind: str, values):
    import tensorflow as tf

    if kind == "bytes":
        values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def intensity_summary(array: np.ndarray) -> dict:
    """Scalar intensity statistics (float) of a volume, for the metadata statistics."""
    sample = array.reshape(-1)
    if sample.size > 1_000_000:  # a strided sample is plenty for percentiles
        sample = sample[:: sample.size // 1_000_000]
    sample = sample.astype(np.float64)
    p01, p99 = np.percentile(sample, [1.0, 99.0])
    return {
        "intensity_mean": float(sample.mean()),
        "intensity_std": float(sample.std()),
        "intensity_p01": float(p01),
        "intensity_p99": float(p99),
    }


def encode_case(volume: Volume, label: Optional[np.ndarray], case_id: str, patient_hash: str, source_format: str):
    """Builds the tf.Example of one case.

    Args:
      volume: canonical image; volume.array (X, Y, Z) or (X, Y, Z, C) channels last, in
        uint8/int16/float32; volume.modality one name, or one per channel joined by ','.
      label: (X, Y, Z) integer label map on the same grid, or None (image-only case).
      case_id, patient_hash: pseudonymous identifiers (never raw patient data).
    """
    import tensorflow as tf

    array = volume.array
    dtype_name = np.dtype(array.dtype).name
    if dtype_name not in _DTYPES:
        raise ValueError(f"unsupported voxel dtype {dtype_name}; use compact_dtype() first")
    if array.ndim not in (3, 4):
        raise ValueError(f"image shape {array.shape}: (X, Y, Z) or (X, Y, Z, C) expected")
    values = {
        IMAGE_RAW: [np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()],
        IMAGE_DTYPE: [dtype_name],
        IMAGE_SHAPE: list(array.shape[:3]),
        IMAGE_CHANNELS: [array.shape[3] if array.ndim == 4 else 1],
        SPACING: volume.spacing.tolist(),
        ORIGIN: volume.origin.tolist(),
        DIRECTION: volume.direction.reshape(-1).tolist(),
        MODALITY: [volume.modality or "OT"],
        CASE_ID: [case_id],
        PATIENT_HASH: [patient_hash],
        SITE: [volume.meta.get("site", "unknown")],
        SOURCE_FORMAT: [source_format],
        SPACING_BIN: [spacing_bin(volume.spacing)],
    }
    values.update({k: [v] for k, v in intensity_summary(array).items()})
    if label is not None:
        if label.shape != array.shape[:3]:
            raise ValueError(f"label shape {label.shape} != image shape {array.shape[:3]}")
        label_u8 = np.ascontiguousarray(label).astype(np.uint8)
        values[LABEL_RAW] = [label_u8.tobytes()]
        values["foreground_fraction"] = [float(np.count_nonzero(label_u8)) / label_u8.size]
    feature = {name: _feature(FEATURES_BY_NAME[name].kind, v) for name, v in values.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_case(example) -> dict:
    """Inverse of encode_case (numpy): {'image': (X,Y,Z) or (X,Y,Z,C), 'label': (X,Y,Z) or None,
    'affine', ...}."""
    f = example.features.feature
    shape = tuple(f[IMAGE_SHAPE].int64_list.value)
    channels = int(f[IMAGE_CHANNELS].int64_list.value[0]) if IMAGE_CHANNELS in f else 1
    dtype = _DTYPES[f[IMAGE_DTYPE].bytes_list.value[0].decode()]
    image = np.frombuffer(f[IMAGE_RAW].bytes_list.value[0], dtype=np.dtype(dtype).newbyteorder("<"))
    label = None
    if LABEL_RAW in f and f[LABEL_RAW].bytes_list.value:
        label = np.frombuffer(f[LABEL_RAW].bytes_list.value[0], dtype=np.uint8).reshape(shape)
    spacing = np.array(f[SPACING].float_list.value, dtype=np.float64)
    direction = np.array(f[DIRECTION].float_list.value, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[np.newaxis, :]
    affine[:3, 3] = np.array(f[ORIGIN].float_list.value, dtype=np.float64)
    return {
        "image": image.reshape(shape + ((channels,) if channels > 1 else ())).astype(dtype),
        "label": label,
        "affine": affine,
        "modality": f[MODALITY].bytes_list.value[0].decode(),
        "case_id": f[CASE_ID].bytes_list.value[0].decode(),
        "patient_hash": f[PATIENT_HASH].bytes_list.value[0].decode(),
    }


def tfmd_schema(include_voxels: bool = True, require_label: bool = True):
    """The tensorflow_metadata Schema of the examples (what Transform parses).

    Scalars get an empty shape (FixedLenFeature([])) so they parse to (batch,) tensors.
    """
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    kinds = {"bytes": schema_pb2.BYTES, "int": schema_pb2.INT, "float": schema_pb2.FLOAT}
    for fd in FEATURES:
        if fd.voxels and not include_voxels:
            continue
        if fd.name in ("foreground_fraction", LABEL_RAW) and not require_label:
            continue
        feature = schema.feature.add(name=fd.name, type=kinds[fd.kind])
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.SetInParent()
        for dim in fd.shape:
            feature.shape.dim.add(size=dim)
    return schema


def raw_feature_spec(include_label: bool = True) -> dict:
    """tf.io parsing spec for the raw examples."""
    import tensorflow as tf

    tf_types = {"bytes": tf.string, "int": tf.int64, "float": tf.float32}
    spec = {}
    for fd in FEATURES:
        if not include_label and fd.name in (LABEL_RAW, "foreground_fraction"):
            continue
        spec[fd.name] = tf.io.FixedLenFeature(list(fd.shape), tf_types[fd.kind])
    return spec
