"""`medtfx predict`: segment NIfTI files or DICOM series with an exported model, in process or
through TF Serving's gRPC PredictionService, and write masks in each input's own geometry.

Per input:
  1. read it as ingestion does (modules.io readers): a canonical (RAS+) volume
     in its compact dtype (int16 for integral data: half the bytes of float32 on the wire);
  2. check it (3D, each axis >= 2 voxels, at most `max_voxels`, uint8/int16/float32, finite);
  3. query `serving_default` with raw voxels + geometry (modules/train/trainer.py); the mask comes back
     on the canonical grid it was sent on;
  4. undo the canonical reorientation (pure axis permutation/flip, no resampling) and write
     <output>/<name>.nii.gz with the input's own shape and affine, plus <output>/<name>.seg.dcm
     (DICOM SEG, highdicom) when the input was DICOM: classic series, enhanced multi-frame
     files and Siemens mosaics alike (a SEG the sources cannot support is a warning, not a
     failure: the NIfTI mask is still written).
Inputs fail independently: each gets an ok/failed record with the reason (predict_report.json);
the command exits non-zero if any failed. gRPC calls are retried on transient status codes
(UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) with exponential backoff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from modules import progress
from modules.io import dicom
from modules.io.nifti_reader import read_nifti, write_nifti
from modules.io.volume import (
    CaseError,
    Volume,
    affines_match,
    compact_dtype,
    from_canonical,
    split_channel_suffix,
    stack_channels,
    to_canonical,
)

SIGNATURE = "serving_default"
DEFAULT_MAX_VOXELS = 512 * 512 * 512  # int16: 256 MiB on the wire
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # gRPC send/receive limit (the gRPC default is 4 MiB)
RETRYABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
REPORT_FILE = "predict_report.json"
_DTYPES = ("uint8", "int16", "float32")


class PredictError(Exception):
    """One input cannot be segmented; the message names the input and the problem."""


# --------------------------------------------------------------------------------------------
# Geometry: canonical <-> the input's own voxel order
# --------------------------------------------------------------------------------------------


def dicom_native_grid(layout: dicom.Layout) -> Tuple[np.ndarray, List[dicom.Frame]]:
    """(affine (4, 4) voxel (column, row, slice) -> RAS mm, the frame at each slice) of a stack
    as the reader laid it out (dicom.read_stack), slices sorted along the normal.

    Works for every layout the reader accepts: classic one-file-per-slice series, enhanced
    multi-frame files (frames carry their index in the file) and Siemens mosaics (frames carry
    their tile number)."""
    return dicom.LPS_TO_RAS @ layout.affine_lps, [row[0] for row in layout.grid]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PredictInput:
    """One input, read. volume: canonical; native_affine/native_shape: the input's own grid;
    dicom_frames: for DICOM, the source frame at each slice of that grid (the SEG's sources)."""

    path: str
    name: str
    kind: str  # 'nifti' | 'dicom'
    volume: Volume
    native_affine: np.ndarray
    native_shape: Tuple[int, int, int]
    dicom_frames: List[dicom.Frame] = dataclasses.field(default_factory=list)


def input_name(path: str) -> str:
    """Output stem of an input: file name without .nii/.nii.gz, or the DICOM folder's name."""
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".nii"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def read_input(path: str, modality: str = "", series: Optional[int] = None) -> PredictInput:
    """Reads a NIfTI file or a folder holding one DICOM series. Raises PredictError/CaseError
    naming `path`.

    series: which image stack (1-based, in dicom.list_stacks order, as `medtfx convert`
    numbers them) of a folder holding several, e.g. Philips magnitude + field map in one file;
    None refuses such a folder with the stacks listed.
    The input's own grid: a NIfTI file's header affine and shape; for DICOM the stack's
    (column, row, slice) grid with slices in position order, whatever the file layout."""
    dicom_frames: List[dicom.Frame] = []
    if os.path.isdir(path):
        stacks, rejected = dicom.list_stacks(path)
        try:  # the same choice, and wording, as `medtfx convert`
            key, files = dicom.select_stack(stacks, series, path, rejected)
        except CaseError as exc:
            raise PredictError(str(exc)) from None
        volume, layout = dicom.read_stack(files, key=key)
        _check_3d(path, volume.array)
        affine, dicom_frames = dicom_native_grid(layout)
        shape = from_canonical(volume.array, affine).shape
        kind = "dicom"
    elif os.path.isfile(path) and path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        volume = read_nifti(path, allow_channels=True)
        header_img = nib.load(path)
        affine = np.asarray(header_img.affine, dtype=np.float64)
        shape = header_img.shape[:3]
        kind = "nifti"
    elif not os.path.exists(path):
        raise PredictError(f"{path}: no such file or directory")
    else:
        raise PredictError(f"{path}: not a NIfTI file (.nii/.nii.gz) or a DICOM series folder")
    if modality:
        volume.modality = modality
    # The canonical grid must be the native one re-ordered, or masks would not land on the input.
    canonical_affine = to_canonical(np.zeros(tuple(shape), np.uint8), affine)[1]
    if not affines_match(canonical_affine, volume.affine, 1e-3, volume.array.shape[:3]):
        raise PredictError(f"{path}: could not relate the canonical grid to the input's own grid")
    return PredictInput(path, input_name(path), kind, volume, affine, tuple(int(v) for v in shape), dicom_frames)


def channel_groups(inputs: Sequence[str], channels: int) -> List[List[str]]:
    """The inputs of a model of `channels` channels, one list per case: for channels > 1, files
    named as nnU-Net names channels (CASE_0000.nii.gz, CASE_0001.nii.gz, ...) are one case, in
    channel order; any other input (a 4D NIfTI, a DICOM folder) is a case of its own. For one
    channel every input is its own case (scan_0001, scan_0002 are two scans)."""
    if channels <= 1:
        return [[p] for p in inputs]
    groups: Dict[str, List[Tuple[int, str]]] = {}
    order: List[str] = []
    for path in inputs:
        stem, index = split_channel_suffix(input_name(path))
        if os.path.isdir(path):  # a DICOM folder's name is not a channel file's
            index = None
        key = os.path.join(os.path.dirname(path), stem) if index is not None else path
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append((index if index is not None else 0, path))
    return [[p for _, p in sorted(groups[key])] for key in order]


def read_case_input(paths: Sequence[str], channels: int, modality: str = "", series: Optional[int] = None):
    """read_input for a case of `channels` channels: one input holding them all (a 4D NIfTI), or
    one 3D input per channel on one grid (stacked channels last). Raises PredictError naming the
    files when the channel count is not the model's, CaseError when the channels' grids differ."""
    items = [read_input(p, "", series) for p in paths]
    first = items[0]
    if len(items) > 1:
        first.volume.array = stack_channels([item.volume for item in items], paths, 1e-3)
        first.name = split_channel_suffix(input_name(paths[0]))[0]
    found = first.volume.array.shape[3] if first.volume.array.ndim == 4 else 1
    if found != channels:
        names = ", ".join(paths)
        raise PredictError(
            f"{names}: {found} image channel{'s' if found != 1 else ''} but the model takes {channels} "
            "(give one file per channel named CASE_0000.nii.gz, CASE_0001.nii.gz, ... or one 4D NIfTI)"
        )
    if modality:
        first.volume.modality = modality
    return first


def _check_3d(path: str, array: np.ndarray) -> None:
    if array.ndim != 3:
        raise PredictError(f"{path}: expected a 3D volume, got {array.ndim} dimensions {array.shape}")


def validate_volume(path: str, array: np.ndarray, max_voxels: int) -> np.ndarray:
    """The (X, Y, Z[, C]) array in its compact wire dtype, or PredictError naming `path` and the problem."""
    if array.ndim not in (3, 4):
        raise PredictError(f"{path}: expected a 3D volume, got {array.ndim} dimensions {array.shape}")
    if min(array.shape[:3]) < 2:
        raise PredictError(f"{path}: every axis needs at least 2 voxels, got shape {array.shape}")
    if array.size > max_voxels:
        raise PredictError(
            f"{path}: {array.size} voxels {array.shape} exceed the limit of {max_voxels} "
            "(raise --max-voxels if the server accepts such messages)"
        )
    if not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_
    ):
        raise PredictError(f"{path}: unsupported voxel dtype {array.dtype}")
    try:
        compact = compact_dtype(array.astype(np.float32) if array.dtype == np.bool_ else array)
    except CaseError as exc:
        raise PredictError(f"{path}: {exc}") from exc
    if compact.dtype.name not in _DTYPES:  # e.g. uint16 beyond int16's range
        compact = compact.astype(np.float32)
    return compact


def request_arrays(volume: Volume, array: np.ndarray) -> Dict[str, np.ndarray]:
    """serving_default inputs (batch of one) for a canonical volume; `array` is its voxels in
    the wire dtype (uint8/int16/float32, C order over (X, Y, Z[, C]), little endian)."""
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return {
        "image_raw": np.array([raw], dtype=object),
        "image_dtype": np.array([array.dtype.name.encode()], dtype=object),
        "image_shape": np.array([array.shape[:3]], dtype=np.int64),
        "spacing": np.array([volume.spacing], dtype=np.float32),
        "direction": np.array([volume.direction.reshape(-1)], dtype=np.float32),
        # Empty = "the model's own": a model knows what it was trained on (modules/train/trainer.py).
        "modality": np.array([(volume.modality or "").encode()], dtype=object),
    }


def crop_mask(mask: np.ndarray, mask_shape: np.ndarray) -> np.ndarray:
    """(X, Y, Z) mask of one volume from the batch output (B, Xmax, Ymax, Zmax), (B, 3)."""
    x, y, z = (int(v) for v in np.asarray(mask_shape).reshape(-1, 3)[0])
    return np.asarray(mask)[0, :x, :y, :z]


# --------------------------------------------------------------------------------------------
# Models: in process or over gRPC
# --------------------------------------------------------------------------------------------


def resolve_model_dir(path: str) -> str:
    """The SavedModel directory `path` names: `path` itself when it holds saved_model.pb, else the
    newest version of a model base path as TF Serving picks it (the largest integer-named
    subfolder holding saved_model.pb: <base>/1, <base>/1700000000, ...), else a Trainer Model
    artifact's Format-Serving/ folder. Local or any tf.io.gfile path.

    Raises:
      PredictError: `path` does not exist, is not a folder, or holds no SavedModel in any of
        these places (the message names `path` and what was looked for).
    """
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not tf.io.gfile.exists(path):
        raise PredictError(f"--model {path}: no such directory")
    if not tf.io.gfile.isdir(path):
        raise PredictError(f"--model {path}: not a directory (give a SavedModel folder or a model base path)")
    versions = sorted(
        (int(name.rstrip("/")), name.rstrip("/"))
        for name in tf.io.gfile.listdir(path)
        if name.rstrip("/").isdigit() and tf.io.gfile.exists(os.path.join(path, name.rstrip("/"), "saved_model.pb"))
    )
    if versions:
        return os.path.join(path, versions[-1][1])
    serving = os.path.join(path, "Format-Serving")
    if tf.io.gfile.exists(os.path.join(serving, "saved_model.pb")):
        return serving
    raise PredictError(
        f"--model {path}: no saved_model.pb there nor in an integer version subfolder "
        "(give an exported model folder or a TF Serving model base path)"
    )


def refusal_reason(message: str) -> str:
    """The line of a TensorFlow InvalidArgumentError that says why (the graph's Assert text,
    e.g. the modality check), without TF's node and call-stack lines."""
    import re

    found = re.search(r"assertion failed: (.*)", message)
    if found:  # TF prints each Assert datum in brackets: [text] ["MR"] [text]
        text = found.group(1).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return text.replace("] [", " ").replace("\\'", "'")
    return next(
        (line.strip() for line in message.splitlines() if line.strip() and "Graph execution" not in line),
        message.strip(),
    )


class InProcessModel:
    """The exported SavedModel loaded with tf.saved_model.load. `saved_model_dir` may also be a
    model base path (newest version) or a Model artifact folder: see resolve_model_dir;
    `model_dir` is the folder loaded."""

    def __init__(self, saved_model_dir: str, signature: str = SIGNATURE):
        import tensorflow as tf

        self.model_dir = resolve_model_dir(saved_model_dir)
        self._loaded = tf.saved_model.load(self.model_dir)
        if signature not in self._loaded.signatures:
            raise PredictError(
                f"--model {self.model_dir}: the SavedModel has no {signature!r} signature "
                f"(it has {sorted(self._loaded.signatures)}); is it a medtfx export?"
            )
        self._fn = self._loaded.signatures[signature]

    def predict(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import tensorflow as tf

        try:
            out = self._fn(**{k: tf.constant(v) for k, v in arrays.items()})
        except tf.errors.InvalidArgumentError as exc:  # the graph's own checks (e.g. modality)
            raise PredictError(f"the model refused the input: {refusal_reason(exc.message)}") from None
        return {k: v.numpy() for k, v in out.items()}

    def channels(self) -> int:
        """Image channels the model takes (assets.extra/model_inputs.json; 1 when absent)."""
        import tensorflow as tf

        path = os.path.join(self.model_dir, "assets.extra", "model_inputs.json")
        if not tf.io.gfile.exists(path):
            return 1
        with tf.io.gfile.GFile(path) as fh:
            return int(json.loads(fh.read()).get("channels", 1))

    def num_classes(self) -> Optional[int]:
        """Classes incl. background, from the `evaluate` signature's output shape."""
        fn = self._loaded.signatures.get("evaluate") if hasattr(self._loaded.signatures, "get") else None
        if fn is None:
            return None
        dim = fn.structured_outputs["probabilities"].shape[-1]
        return int(dim) if dim is not None else None


def status_name(error) -> str:
    """'UNAVAILABLE', ... of a grpc.RpcError ('' for other errors)."""
    code = getattr(error, "code", None)
    try:
        return code().name if callable(code) else ""
    except Exception:  # not a real RPC error
        return ""


def call_with_retries(
    call: Callable[[], object],
    attempts: int = 4,
    initial_backoff: float = 0.5,
    max_backoff: float = 8.0,
    retryable: Sequence[str] = RETRYABLE_CODES,
    sleep: Callable[[float], None] = time.sleep,
    on_retry=None,
):
    """call() with up to `attempts` tries; retries only gRPC errors whose status is in
    `retryable`, sleeping initial_backoff * 2**i (capped at max_backoff) between tries."""
    import grpc

    for attempt in range(attempts):
        try:
            return call()
        except grpc.RpcError as exc:
            if status_name(exc) not in retryable or attempt == attempts - 1:
                raise
            delay = min(max_backoff, initial_backoff * (2**attempt))
            if on_retry:
                on_retry(attempt + 1, status_name(exc), delay)
            sleep(delay)
    raise AssertionError("unreachable")


class GrpcModel:
    """TF Serving's PredictionService over gRPC (insecure channel; put TLS in a sidecar or
    pass `credentials`)."""

    def __init__(
        self,
        target: str,
        model_name: str,
        signature: str = SIGNATURE,
        timeout_s: float = 120.0,
        attempts: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials=None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        options = [
            ("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes)),
        ]
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.model_name, self.signature, self.timeout_s = model_name, signature, timeout_s
        self._retry = dict(attempts=attempts, initial_backoff=initial_backoff, max_backoff=max_backoff, sleep=sleep)
        self.retries = 0  # transient failures retried so far (for reports and tests)

    def _count(self, *_):
        self.retries += 1

    def predict(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature
        for key, value in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = call_with_retries(
            lambda: self._stub.Predict(request, timeout=self.timeout_s), on_retry=self._count, **self._retry
        )
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def num_classes(self) -> Optional[int]:
        """From the `evaluate` signature in GetModelMetadata, or None if unavailable."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append("signature_def")
        try:
            response = call_with_retries(
                lambda: self._stub.GetModelMetadata(request, timeout=self.timeout_s),
                on_retry=self._count,
                **self._retry,
            )
        except grpc.RpcError:
            return None
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        evaluate = signatures.signature_def.get("evaluate")
        if evaluate is None or "probabilities" not in evaluate.outputs:
            return None
        dims = evaluate.outputs["probabilities"].tensor_shape.dim
        return int(dims[-1].size) if dims and dims[-1].size > 0 else None

    def close(self) -> None:
        self._channel.close()


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

# Type 2 patient/study attributes a SEG copies from its sources: must exist, may be empty.
_TYPE2_SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _with_type2_defaults(ds):
    """The in-memory source dataset with absent Type 2 attributes set empty (files untouched):
    many archives omit them, and highdicom copies them into the SEG."""
    for keyword in _TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


# Geometry highdicom reads from a multi-frame source's shared functional groups only.
_SHARED_GEOMETRY = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def _with_shared_geometry(ds):
    """The in-memory multi-frame source with pixel measures and orientation in its shared
    functional groups (files untouched). Some scanners (Siemens XA) put them per frame, which
    the standard allows; the reader has checked they are the same on every frame of the stack."""
    import copy

    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or "SharedFunctionalGroupsSequence" not in ds:
        return ds
    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in _SHARED_GEOMETRY:
        if keyword not in shared and keyword in per_frame[0]:
            setattr(shared, keyword, copy.deepcopy(per_frame[0][keyword].value))
    return ds


def _frame_aligned_pixels(mask: np.ndarray, frames: Sequence[dicom.Frame], sources) -> Optional[np.ndarray]:
    """(source frames, rows, columns) uint8: `mask` (columns, rows, slices) laid out frame by
    frame like the source, so every SEG frame references the source frame it segments; None
    when the stack is not the whole of its source (mosaic tiles, several stacks in one file).

    Classic series: one source file per slice, in `frames` (slice) order. One multi-frame file
    whose frames are exactly the stack: slice z goes to the file's frame frames[z].index."""
    planes = np.transpose(mask, (2, 1, 0)).astype(np.uint8)  # (slices, rows, columns)
    if any(f.tile >= 0 for f in frames):
        return None
    frame_counts = [int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in sources]
    if len(sources) == len(frames) and all(n == 1 for n in frame_counts):
        return np.ascontiguousarray(planes)
    if len(sources) == 1 and sorted(f.index for f in frames) == list(range(frame_counts[0])):
        aligned = np.empty_like(planes)
        aligned[[f.index for f in frames]] = planes
        return aligned
    return None


def _seg_volume(mask: np.ndarray, affine_ras: np.ndarray, frame_of_reference_uid: str):
    """`mask` (columns, rows, slices) on the grid `affine_ras` as a highdicom Volume, whose
    axes are (slice, row, column) and whose affine maps them to LPS mm."""
    import highdicom as hd

    affine_lps = dicom.LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)  # the flip is its own inverse
    return hd.Volume(
        np.ascontiguousarray(np.transpose(mask, (2, 1, 0)).astype(np.uint8)),
        affine_lps[:, [2, 1, 0, 3]],
        coordinate_system="PATIENT",
        frame_of_reference_uid=frame_of_reference_uid,
    )


def write_dicom_seg(
    path: str,
    mask: np.ndarray,
    frames: Sequence[dicom.Frame],
    affine_ras: np.ndarray,
    num_classes: int,
    label_names: Optional[Dict[int, str]] = None,
) -> int:
    """DICOM SEG (binary, one segment per foreground class) referencing the source images.

    mask: (columns, rows, slices) uint8 on the stack's own grid (`affine_ras`, voxel -> RAS mm);
    frames: the source frame of each slice (:func:`dicom_native_grid`). When the stack is the
    whole of its source (classic series, or one enhanced multi-frame file) the SEG's frames
    reference their source frames one to one; otherwise (Siemens mosaic tiles, one stack of a
    multi-stack file) the SEG carries its own plane geometry, the same grid, and references the
    source instance. Returns the number of frames written (empty frames are omitted).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    paths = list(dict.fromkeys(f.path for f in frames))
    # Headers only (gzip allowed, as the reader reads them): a SEG needs no source pixels.
    sources = [_with_shared_geometry(_with_type2_defaults(dicom.read_header(p))) for p in paths]
    pixel_array = _frame_aligned_pixels(mask, frames, sources)
    if pixel_array is None:
        pixel_array = _seg_volume(mask, affine_ras, sources[0].FrameOfReferenceUID)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medtfx", version="0.1.0", family=codes.cid7162.ArtificialIntelligence
    )
    names = label_names or {}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=names.get(k, f"label_{k}"),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k in range(1, max(2, int(num_classes)))
    ]
    with warnings.catch_warnings():
        # highdicom warns about odd person names by quoting them: a patient name in the log.
        warnings.filterwarnings("ignore", message=".*person name.*")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medtfx",
            manufacturer_model_name="medtfx-seg",
            software_versions="0.1.0",
            device_serial_number="0",
            series_description="medtfx segmentation",
            omit_empty_frames=bool(mask.any()),
        )  # all-empty: keep frames so the SEG is valid
    seg.save_as(path)
    return int(seg.NumberOfFrames)


def _unique_name(name: str, taken: set) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def predict_one(
    model,
    path: str,
    output_dir: str,
    name: str,
    modality: str = "",
    max_voxels: int = DEFAULT_MAX_VOXELS,
    num_classes: Optional[int] = None,
    series: Optional[int] = None,
    channel_paths: Sequence[str] = (),
    channels: int = 1,
) -> dict:
    """Segments one input (or one case of `channels` channels: `channel_paths`, one file each, or
    `path` a 4D NIfTI); returns its ok record. Raises PredictError/CaseError/gRPC errors."""
    start = time.time()
    item = (
        read_case_input(list(channel_paths) or [path], channels, modality, series)
        if channels > 1
        else read_input(path, modality, series)
    )
    _check_3d(path, item.volume.array[..., 0] if channels > 1 else item.volume.array)
    array = validate_volume(path, item.volume.array, max_voxels)
    out = model.predict(request_arrays(item.volume, array))
    if "mask" not in out or "mask_shape" not in out:
        raise PredictError(f"{path}: the model returned {sorted(out)}, expected mask and mask_shape")
    mask = crop_mask(out["mask"], out["mask_shape"])
    if mask.shape != array.shape[:3]:
        raise PredictError(
            f"{path}: the model returned a mask of shape {mask.shape} for a volume of shape {array.shape}"
        )
    native = np.ascontiguousarray(from_canonical(mask, item.native_affine)).astype(np.uint8)
    outputs = {"nifti": os.path.join(output_dir, f"{name}.nii.gz")}
    write_nifti(outputs["nifti"], native, item.native_affine)
    record = {
        "input": path,
        "status": "ok",
        "reason": "",
        "kind": item.kind,
        "shape": list(native.shape),
        "wire_dtype": array.dtype.name,
        "labels_present": sorted(int(v) for v in np.unique(native) if v),
    }
    if item.kind == "dicom":
        record["stack"] = item.volume.meta.get("stack", "")
    if item.dicom_frames:
        seg_path = os.path.join(output_dir, f"{name}.seg.dcm")
        classes = num_classes or int(native.max()) + 1
        try:
            record["seg_frames"] = write_dicom_seg(seg_path, native, item.dicom_frames, item.native_affine, classes)
            outputs["dicom_seg"] = seg_path
        except Exception as exc:  # the mask is written; a SEG the sources cannot support is a warning
            record["warnings"] = [f"{path}: DICOM SEG not written: {type(exc).__name__}: {exc}"]
    record["outputs"] = outputs
    record["seconds"] = round(time.time() - start, 3)
    return record


def predict_inputs(
    model,
    inputs: Sequence[str],
    output_dir: str,
    modality: str = "",
    max_voxels: int = DEFAULT_MAX_VOXELS,
    num_classes: Optional[int] = None,
    log: Callable[[str], None] = progress.echo,
    series: Optional[int] = None,
    channels: Optional[int] = None,
) -> List[dict]:
    """Segments every input independently; returns one record per input (ok or failed with the
    reason) and writes them to <output_dir>/predict_report.json. channels: the model's image
    channels (None: the model says, else 1); for several, inputs are grouped by channel_groups.
    Progress over the inputs (rate, ETA) on stderr beside the per-input lines `log` gets
    (modules/progress.py)."""
    import grpc

    os.makedirs(output_dir, exist_ok=True)
    if num_classes is None and hasattr(model, "num_classes"):
        try:
            num_classes = model.num_classes()
        except Exception:  # metadata is a convenience: fall back to the masks' labels
            num_classes = None
    if channels is None:
        channels = model.channels() if hasattr(model, "channels") else 1
    taken: set = set()
    records = []
    for group in progress.track(channel_groups(inputs, channels), "predict", unit="input"):
        path = group[0] if len(group) == 1 else ", ".join(group)
        stem = input_name(group[0])
        name = _unique_name(split_channel_suffix(stem)[0] if len(group) > 1 else stem, taken)
        try:
            record = predict_one(
                model, group[0], output_dir, name, modality, max_voxels, num_classes, series, group, channels
            )
            record["input"] = path
        except (PredictError, CaseError) as exc:
            reason = str(exc) if path in str(exc) else f"{path}: {exc}"
            record = {"input": path, "status": "failed", "reason": reason}
        except grpc.RpcError as exc:
            record = {
                "input": path,
                "status": "failed",
                "reason": f"{path}: server error {status_name(exc) or 'UNKNOWN'}: "
                f"{exc.details() if hasattr(exc, 'details') else exc}",
            }
        except Exception as exc:  # one bad input must not stop the others
            record = {"input": path, "status": "failed", "reason": f"{path}: unexpected {type(exc).__name__}: {exc}"}
        records.append(record)
        if record["status"] == "ok":
            log(f"ok      {path} -> {', '.join(record['outputs'].values())}")
            for warning in record.get("warnings", []):
                log(f"WARNING {warning}")
        else:
            log(f"FAILED  {record['reason']}")
    with open(os.path.join(output_dir, REPORT_FILE), "w") as fh:
        json.dump({"results": records}, fh, indent=1)
    return records


# --------------------------------------------------------------------------------------------
# A study in a PACS (DICOMweb)
# --------------------------------------------------------------------------------------------


def _series_locator(study_uid: str, series_uid: str) -> str:
    return f"studies/{study_uid}/series/{series_uid}"


def predict_study(
    model,
    client,
    study_uid: str,
    output_dir: str,
    store: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    num_classes: Optional[int] = None,
    log: Callable[[str], None] = progress.echo,
) -> List[dict]:
    """Segments every image series of a PACS study, as `predict` does a DICOM folder.

    Finds the study's series with QIDO-RS (`client`: modules.io.dicomweb.DicomWebClient),
    retrieves each image series with WADO-RS in its stored transfer syntax into a temporary
    folder, and runs :func:`predict_one` on that folder: <output_dir>/<SeriesInstanceUID>.nii.gz
    on the series' own grid plus <SeriesInstanceUID>.seg.dcm. With `store`, each SEG is stored
    into the same study with STOW-RS; without it nothing is written to the PACS.

    Returns one record per series, also written to <output_dir>/predict_report.json: status
    'ok'; 'skipped' for series the model cannot take (non-image objects such as SEG or SR, a
    modality the model refuses, not a 3D volume) with the reason; 'failed' for transfer or
    unexpected errors. Records name series by UID only (no patient attributes). A failure in
    one series never stops the others. Raises DicomWebError only when the study cannot be
    searched at all.
    """
    import tempfile

    import grpc

    from modules.io.dicomweb import DicomWebError

    os.makedirs(output_dir, exist_ok=True)
    if num_classes is None and hasattr(model, "num_classes"):
        try:
            num_classes = model.num_classes()
        except Exception:  # metadata is a convenience: fall back to the masks' labels
            num_classes = None
    series = client.search_series(study_uid)
    if not series:
        log(f"study {study_uid}: no series found")
    records = []
    with tempfile.TemporaryDirectory(prefix="medtfx-study-") as scratch:
        for info in progress.track(series, "predict", unit="series"):
            locator = _series_locator(study_uid, info.series_uid)
            record = {"input": locator, "series_uid": info.series_uid, "modality": info.modality}
            if not info.is_image:
                record.update(status="skipped", reason=f"{locator}: not an image series (modality {info.modality})")
                records.append(record)
                log(f"skipped {record['reason']}")
                continue
            folder = os.path.join(scratch, info.series_uid)
            try:
                client.retrieve_series_to_folder(study_uid, info.series_uid, folder)
                result = predict_one(
                    model, folder, output_dir, info.series_uid, max_voxels=max_voxels, num_classes=num_classes
                )
                result["input"] = locator  # the scratch folder is gone: name the series
                if result.get("warnings"):
                    result["warnings"] = [w.replace(folder, locator) for w in result["warnings"]]
                record.update(result)
                if store and "dicom_seg" in record["outputs"]:
                    import pydicom

                    seg = pydicom.dcmread(record["outputs"]["dicom_seg"])
                    record["stored"] = client.store([seg], study_uid=study_uid)
            except (PredictError, CaseError) as exc:
                # The model cannot take this series (modality, dimensions, geometry): skip it.
                record.update(status="skipped", reason=f"{locator}: {str(exc).replace(folder, locator)}")
            except DicomWebError as exc:
                record.update(status="failed", reason=f"{locator}: {exc}")
            except grpc.RpcError as exc:
                record.update(status="failed", reason=f"{locator}: server error {status_name(exc) or 'UNKNOWN'}")
            except Exception as exc:  # one bad series must not stop the others
                record.update(
                    status="failed",
                    reason=f"{locator}: unexpected {type(exc).__name__}: {str(exc).replace(folder, locator)}",
                )
            finally:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)  # the study's pixels do not linger
            records.append(record)
            if record["status"] == "ok":
                stored = f"; stored SEG {', '.join(record['stored'])}" if record.get("stored") else ""
                log(f"ok      {locator} -> {', '.join(record['outputs'].values())}{stored}")
                for warning in record.get("warnings", []):
                    log(f"WARNING {warning}")
            else:
                log(f"{record['status'].upper():7s} {record['reason']}")
    with open(os.path.join(output_dir, REPORT_FILE), "w") as fh:
        json.dump({"study": study_uid, "results": records}, fh, indent=1)
    return records
