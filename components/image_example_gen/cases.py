"""Finding cases in a dataset folder and turning each into a tf.Example or a quarantine record.

Three layouts are recognised (first match wins):
  * Decathlon / nnU-Net: ``dataset.json``, ``imagesTr/<case>[_0000].nii.gz``, ``labelsTr/<case>.nii.gz``.
    Multi-channel cases: nnU-Net v2's one file per channel (``<case>_0000``, ``<case>_0001``, ...,
    channels named by ``channel_names``) or Decathlon's 4D images (channels on the 4th axis, named
    by ``modality``); a case's channels must share one grid.
  * Manifest: ``manifest.csv`` with columns ``image,label[,modality,site]``; paths relative to the
    CSV; ``image`` is a NIfTI file or a folder holding one DICOM series.
  * DICOM tree: every series below the root; a series' mask is ``label.nii.gz`` (or
    ``mask.nii.gz``) in the folder holding only that series.
Every input file ends up in exactly one case; a case is either ingested or quarantined with a
reason (nothing is lost, nothing crashes the run). Broken dataset descriptions (dataset.json,
manifests) quarantine the cases they would describe with one reason naming the problem; a
Decathlon folder without dataset.json is paired by file name, with a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from components.image_example_gen import inventory
from modules import features as example_schema
from modules.io import dicom, limits, storage
from modules.io.nifti_reader import read_nifti
from modules.io.volume import (
    CaseError,
    Volume,
    affines_match,
    compact_dtype,
    label_values_ok,
    salted_hash,
    split_channel_suffix,
    stack_channels,
)

LABEL_NAMES = ("label.nii.gz", "mask.nii.gz", "label.nii", "mask.nii")
# Image and label grids agree when every corner maps within this distance (mm).
AFFINE_TOLERANCE_MM = 0.01
_MODALITY_ALIASES = {"MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR", "ADC": "MR", "CT": "CT"}
# dataset.json and manifests are small; anything bigger is not one.
_DESCRIPTION_MAX_BYTES = 64 * 1024 * 1024
_MANIFEST_DELIMITERS = ",;\t|"
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class CaseSpec:
    """One case as found on disk, before reading.

    name: readable case name when it does not derive from patient data (file stem), else ''.
    kind: 'nifti' | 'dicom' | 'none' (files that cannot form a case).
    image: image files (one NIfTI, one NIfTI per channel in channel order, or all files of one
      DICOM series).
    channels: image channels the case must have (several files: one each; one 4D NIfTI: its 4th axis).
    series_key: for DICOM, the stack (series, orientation, echo, type, size) within the files.
    problem: set when discovery already knows the case cannot be ingested.
    """

    name: str
    kind: str
    image: List[str]
    label: Optional[str] = None
    modality: str = ""
    site: str = ""
    problem: Optional[str] = None
    channels: int = 1
    # DICOM: which stack of the files (dicom.SeriesKey), needed when a file holds several.
    series_key: Optional[tuple] = None
    # Patient names/IDs/birth dates found in any DICOM header near the case: scrubbed from reports.
    identifiers: tuple = ()

    @property
    def inputs(self) -> List[str]:
        return list(self.image) + ([self.label] if self.label else [])


@dataclasses.dataclass
class DatasetInfo:
    """layout: 'decathlon' | 'manifest' | 'dicom'; labels: declared label set, if any;
    warnings: things a person should know that do not stop ingestion (printed and logged);
    problem: why the dataset description is unusable (every case then carries it), or ''."""

    layout: str
    labels: Optional[Dict[int, str]]
    modality: str = ""  # one name per channel joined by ',' (modules.features.join_modalities)
    warnings: List[str] = dataclasses.field(default_factory=list)
    problem: str = ""


def normalise_modality(name: str) -> str:
    """'MRI'/'T1'/... -> 'MR'; 'CT' -> 'CT'; anything else upper-cased."""
    key = (name or "").strip().upper()
    return _MODALITY_ALIASES.get(key, key)


def _nifti_stem(filename: str) -> str:
    """The case a NIfTI file belongs to: its name without extension or channel suffix."""
    return split_channel_suffix(filename[:-7] if filename.endswith(".nii.gz") else filename[:-4])[0]


def _is_nifti(name: str) -> bool:
    return name.endswith((".nii.gz", ".nii")) and not name.startswith(".")


def _read_text(path: str, what: str) -> str:
    """The UTF-8 text of a small dataset description (a BOM is dropped). Raises CaseError."""
    if storage.isdir(path):
        raise CaseError(f"{what} is a directory, not a file")
    size = limits.check_regular_file(path, limits.Limits(max_bytes=_DESCRIPTION_MAX_BYTES))
    raw = storage.read_bytes(path, 0, size + 1)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaseError(f"{what} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def parse_dataset_json(path: str) -> Tuple[Optional[Dict[int, str]], List[str]]:
    """(labels {value: name} or None, each input channel's modality) from a Decathlon or nnU-Net
    v2 dataset.json.

    Decathlon: {"labels": {"0": "background", ...}, "modality": {"0": "T2", "1": "ADC"}}; nnU-Net
    v2: {"labels": {"background": 0, ...}, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}.
    Channel names are normalised (normalise_modality: 'T2' -> 'MR'); [] when none is declared.
    Raises:
      CaseError: one reason naming the first problem: unreadable, not UTF-8, not JSON, not an
        object, labels not an object of integer values, region-based labels, channel keys that
        are not 0..C-1, a file ending other than NIfTI.
    """
    text = _read_text(path, "dataset.json")
    if not text.strip():
        raise CaseError("dataset.json is empty")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaseError(f"dataset.json is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError):
        raise CaseError("dataset.json is not valid JSON (nested too deeply or not text)") from None
    if not isinstance(meta, dict):
        raise CaseError(f"dataset.json must hold a JSON object, found a {type(meta).__name__}")
    raw_labels = meta.get("labels")
    if raw_labels is not None and not isinstance(raw_labels, dict):
        raise CaseError(
            f"dataset.json: 'labels' must be an object mapping label values to names "
            f"(Decathlon) or names to values (nnU-Net v2), found a {type(raw_labels).__name__}"
        )
    labels: Dict[int, str] = {}
    for key, value in (raw_labels or {}).items():
        if isinstance(value, list):
            raise CaseError(
                f"dataset.json: label '{key}' is a region (list of values); region-based labels are not supported"
            )
        if isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: name -> value
            labels[value] = str(key)
            continue
        try:
            labels[int(key)] = str(value)  # Decathlon: "value" -> name
        except (TypeError, ValueError):
            raise CaseError(f"dataset.json: label {key!r}: {value!r} has no integer label value") from None
    channels = meta.get("channel_names", meta.get("modality"))
    field = "channel_names" if "channel_names" in meta else "modality"
    if channels is not None and not isinstance(channels, dict):
        raise CaseError(
            f'dataset.json: \'{field}\' must be an object like {{"0": "CT"}}, found a {type(channels).__name__}'
        )
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise CaseError(f"dataset.json: file_ending {ending!r} is not supported (NIfTI only)")
    by_index: Dict[int, str] = {}
    for key, name in (channels or {}).items():
        try:
            by_index[int(key)] = normalise_modality(str(name))
        except (TypeError, ValueError):
            raise CaseError(f"dataset.json: '{field}' key {key!r} is not a channel number (0, 1, ...)") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CaseError(f"dataset.json: '{field}' numbers channels {sorted(by_index)}; expected 0..{len(by_index) - 1}")
    return labels or None, [by_index[i] for i in range(len(by_index))]


def _listdir(path: str) -> List[str]:
    return sorted(storage.listdir(path)) if storage.isdir(path) else []


def _channel_index(filename: str) -> Optional[int]:
    """nnU-Net's channel number of an image file name (<case>_0001.nii.gz -> 1), None without one."""
    return split_channel_suffix(filename[:-7] if filename.endswith(".nii.gz") else filename[:-4])[1]


def _case_channels_problem(stem: str, paths: List[str], channels: int) -> Optional[str]:
    """Why a case's image files do not form its `channels` channels (None when they do): one
    file (3D, or 4D holding the channels), or exactly <case>_0000 .. <case>_{C-1}."""
    if len(paths) == 1:
        index = _channel_index(storage.basename(paths[0]))
        if channels > 1 and index is not None:
            missing = ", ".join(f"{stem}_{i:04d}" for i in range(channels) if i != index)
            return (
                f"case {stem} has channel {index} only; dataset.json declares {channels} channels (missing {missing})"
            )
        return None
    names = ", ".join(storage.basename(p) for p in paths)
    indices = sorted(i for i in (_channel_index(storage.basename(p)) for p in paths) if i is not None)
    if len(indices) != len(paths) or len(set(indices)) != len(indices):
        return (
            f"case {stem} has {len(paths)} image files ({names}): one file per channel, named "
            f"{stem}_0000, {stem}_0001, ... (.nii/.nii.gz copies of one image are not supported)"
        )
    if indices != list(range(channels)):
        return (
            f"case {stem} has image files for channels {indices} ({names}) "
            f"but the dataset declares {channels} channel{'s' if channels != 1 else ''} (0..{channels - 1})"
        )
    return None


def _decathlon_cases(root: str, require_labels: bool, has_json: bool = True) -> Tuple[List[CaseSpec], DatasetInfo]:
    labels, problem, warnings = None, "", []
    modalities: List[str] = []
    if has_json:
        try:
            labels, modalities = parse_dataset_json(storage.join(root, "dataset.json"))
        except CaseError as exc:
            problem = str(exc)
    else:
        warnings.append(
            "no dataset.json: images and labels paired by file name; label values and modality are not checked"
        )
    images_dir, labels_dir = storage.join(root, "imagesTr"), storage.join(root, "labelsTr")
    images, label_files = _listdir(images_dir), _listdir(labels_dir)
    labels_by_case: Dict[str, List[str]] = {}
    for f in label_files:
        if _is_nifti(f):
            labels_by_case.setdefault(_nifti_stem(f), []).append(storage.join(labels_dir, f))
    images_by_case: Dict[str, List[str]] = {}
    cases, used_labels = [], set()
    for fname in images:
        path = storage.join(images_dir, fname)
        if not _is_nifti(fname):
            cases.append(CaseSpec(fname, "none", [path], problem="not a NIfTI file (.nii/.nii.gz)"))
            continue
        images_by_case.setdefault(_nifti_stem(fname), []).append(path)
    if not has_json:  # channels from the file names: the most channel-numbered files any case has
        numbered = [
            [p for p in paths if _channel_index(storage.basename(p)) is not None] for paths in images_by_case.values()
        ]
        modalities = [""] * max([len(p) for p in numbered] + [1])
    channels = max(len(modalities), 1)
    modality = example_schema.join_modalities(modalities) if any(modalities) else ""
    for stem, paths in images_by_case.items():
        found = labels_by_case.get(stem, [])
        label = found[0] if len(found) == 1 else None
        used_labels.update(found)
        paths = sorted(paths, key=lambda p: (_channel_index(storage.basename(p)) or 0, p))
        case_problem = _case_channels_problem(stem, paths, channels)
        if case_problem is None and len(found) > 1:
            case_problem = (
                f"case {stem} has {len(found)} label files ({', '.join(storage.basename(p) for p in found)}): keep one"
            )
        elif case_problem is None and label is None and require_labels:
            case_problem = f"image has no label: labelsTr/{stem}.nii.gz is missing"
        if problem:
            case_problem = f"not ingested: {problem}"
        if case_problem and (len(paths) > 1 or len(found) > 1):  # quarantined: every file listed as an input
            paths, label = paths + found, None
        cases.append(CaseSpec(stem, "nifti", paths, label, modality=modality, problem=case_problem, channels=channels))
    for fname in label_files:
        path = storage.join(labels_dir, fname)
        if path in used_labels:
            continue
        stem = _nifti_stem(fname) if _is_nifti(fname) else fname
        reason = (
            f"label without image: imagesTr holds no {stem}.nii.gz or {stem}_0000.nii.gz"
            if _is_nifti(fname)
            else "not a NIfTI file (.nii/.nii.gz)"
        )
        cases.append(CaseSpec(stem, "none", [path], problem=reason))
    if problem:
        cases.append(CaseSpec("dataset.json", "none", [storage.join(root, "dataset.json")], problem=problem))
    return cases, DatasetInfo("decathlon", labels, modality, warnings=warnings, problem=problem)


def _dicom_cases(root: str, require_labels: bool) -> Tuple[List[CaseSpec], DatasetInfo]:
    series, rejected = dicom.scan_tree(root)
    dirs_to_series: Dict[str, List[tuple]] = {}
    for key, paths in series.items():
        for d in {storage.dirname(p) for p in paths}:
            dirs_to_series.setdefault(d, []).append(key)
    cases, used_labels = [], set()
    for key, paths in sorted(series.items(), key=lambda kv: (sorted(kv[1])[0], kv[0])):
        folder = storage.dirname(sorted(paths)[0])
        label = None
        if len(dirs_to_series.get(folder, [])) == 1:
            label = next(
                (storage.join(folder, n) for n in LABEL_NAMES if storage.exists(storage.join(folder, n))), None
            )
        problem = dicom.broken_members(dicom.SeriesKey(*key), rejected, paths)
        if problem is None and label is None and require_labels:
            problem = f"DICOM series in {folder} has no label.nii.gz beside it"
            if len(dirs_to_series.get(folder, [])) > 1:
                problem += (
                    f" that can be paired (the folder holds {len(dirs_to_series[folder])} "
                    "image stacks; put each series in its own folder)"
                )
        if label:
            used_labels.add(label)
        cases.append(CaseSpec("", "dicom", sorted(paths), label, problem=problem, series_key=key))
    for path, reason in rejected:
        cases.append(CaseSpec(storage.basename(path), "none", [path], problem=reason))
    for dirpath, _, filenames in storage.walk(root):
        for name in filenames:
            path = storage.join(dirpath, name)
            if _is_nifti(name) and path not in used_labels:
                cases.append(
                    CaseSpec(_nifti_stem(name), "none", [path], problem="NIfTI file not paired with a DICOM series")
                )
    return cases, DatasetInfo("dicom", None)


def _manifest_rows(csv_path: str, require_labels: bool) -> List[dict]:
    """The non-blank rows of a manifest as dicts with stripped values.

    The dialect (',', ';', tab, '|') is sniffed, a UTF-8 BOM (Excel) dropped, column names
    compared case-insensitively. Raises CaseError naming the problem and the required columns.
    """
    text = _read_text(csv_path, f"manifest {storage.basename(csv_path)}")
    sample = text[:65536]
    try:
        dialect = csv.Sniffer().sniff(
            sample.splitlines()[0] if sample.strip() else ",", delimiters=_MANIFEST_DELIMITERS
        )
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        rows = [row for row in reader]
    except csv.Error as exc:
        raise CaseError(f"manifest {storage.basename(csv_path)} is not a readable CSV file ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    required = ["image"] + (["label"] if require_labels else [])
    if not rows:
        raise CaseError(
            f"manifest {storage.basename(csv_path)} is empty: it needs a header row with "
            f"the columns {', '.join(required)}"
        )
    columns = [c.strip().lower() for c in rows[0]]
    missing = [c for c in required if c not in columns]
    if missing:
        raise CaseError(
            f"manifest {storage.basename(csv_path)} has no column {', '.join(missing)} "
            f"(found: {', '.join(c for c in columns if c) or 'none'}); required columns: "
            f"{', '.join(required)}, optional: modality, site"
        )
    return [
        {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(columns) if name} for row in rows[1:]
    ]


def _manifest_cases(csv_path: str, require_labels: bool) -> Tuple[List[CaseSpec], DatasetInfo]:
    base = storage.dirname(storage.abspath(csv_path))
    try:
        rows = _manifest_rows(csv_path, require_labels)
    except CaseError as exc:
        return (
            [CaseSpec(storage.basename(csv_path), "none", [csv_path], problem=str(exc))],
            DatasetInfo("manifest", None, problem=str(exc)),
        )
    cases = []
    for number, row in enumerate(rows, start=2):
        image_name = row.get("image", "")
        image = storage.join(base, image_name)
        label = row.get("label", "")
        label = storage.join(base, label) if label else None
        modality = normalise_modality(row.get("modality", ""))
        site = row.get("site", "")
        where = f"manifest row {number}"
        if not image_name:
            cases.append(
                CaseSpec(
                    f"row-{number}",
                    "none",
                    [label] if label else [csv_path],
                    problem=f"{where} has an empty image column",
                )
            )
            continue
        label_problem = None
        if label is None and require_labels:
            label_problem = f"{where} has no label"
        elif label is not None and not storage.isfile(label):
            label_problem = f"{where} names a missing label file {label}"
        if storage.isdir(image):
            series, rejected = dicom.scan_tree(image)
            if len(series) != 1:
                found = "; ".join(dicom.describe(k) for k in series)
                cases.append(
                    CaseSpec(
                        "",
                        "none",
                        [image],
                        label,
                        problem=(
                            f"{where}: image folder {image} holds {len(series)} DICOM image stacks, expected one"
                            + (f" ({found})" if found else "")
                        ),
                    )
                )
                continue
            key, paths = next(iter(series.items()))
            cases.append(
                CaseSpec("", "dicom", sorted(paths), label, modality, site, series_key=key, problem=label_problem)
            )
            continue
        problem = label_problem
        if not storage.lexists(image):
            problem = f"{where} names a missing image file {image}"
        cases.append(CaseSpec(_nifti_stem(storage.basename(image)), "nifti", [image], label, modality, site, problem))
    return cases, DatasetInfo("manifest", None)


def find_cases(root: str, require_labels: bool = True) -> Tuple[List[CaseSpec], DatasetInfo]:
    """All cases below `root` (a folder, or a manifest CSV), in a stable order.

    Every file below the dataset folder appears in the inputs of some case: files that belong to
    no case (stray files, sidecars, test images) become cases of kind 'none' with a reason. A
    broken dataset description becomes a reason on the cases, never an exception; each case
    carries the patient identifiers found in any DICOM header of the dataset so that reports
    can scrub them.
    Raises:
      FileNotFoundError: `root` does not exist.
    """
    if storage.isfile(root) and root.lower().endswith(".csv"):
        cases, info = _manifest_cases(root, require_labels)
        _attach_identifiers(storage.dirname(storage.abspath(root)), cases)
        return cases, info
    if not storage.isdir(root):
        raise FileNotFoundError(f"dataset path {root} does not exist")
    if storage.lexists(storage.join(root, "dataset.json")):
        cases, info = _decathlon_cases(root, require_labels)
    elif storage.lexists(storage.join(root, "manifest.csv")):
        cases, info = _manifest_cases(storage.join(root, "manifest.csv"), require_labels)
    elif storage.isdir(storage.join(root, "imagesTr")):
        cases, info = _decathlon_cases(root, require_labels, has_json=False)
    else:
        cases, info = _dicom_cases(root, require_labels)
    cases = cases + _unclaimed_files(root, cases, info.problem)
    _attach_identifiers(root, cases)
    return cases, info


def _attach_identifiers(root: str, cases: List[CaseSpec]) -> None:
    """Sets every case's `identifiers` to those of every readable DICOM header below `root`
    (images, SR, truncated files, anything): a folder named after a patient may hold no DICOM
    file of its own (a label left beside a moved series), so the whole dataset's identities are
    scrubbed from every record."""
    found: set = set()
    for dirpath, dirnames, filenames in storage.walk(root):
        dirnames.sort()
        for name in filenames:
            if not name.lower().endswith((".nii", ".nii.gz", ".json", ".csv")):
                found.update(dicom.header_identifiers(storage.join(dirpath, name)))
    identifiers = tuple(sorted(found))
    for spec in cases:
        spec.identifiers = identifiers


# Dataset-level files that describe the dataset rather than belong to a case.
_DATASET_FILES = ("dataset.json", "manifest.csv")


def _unclaimed_files(root: str, cases: List[CaseSpec], dataset_problem: str = "") -> List[CaseSpec]:
    """'none' cases for files below `root` that no case lists (so nothing goes unreported)."""
    claimed = set()
    for spec in cases:
        for path in spec.inputs:
            claimed.add(storage.normpath(path))
            if storage.isdir(path):  # a manifest row naming a DICOM folder claims its files
                walked = storage.walk(path)
                claimed.update(storage.normpath(storage.join(d, n)) for d, _, names in walked for n in names)
    extra = []
    for dirpath, dirnames, filenames in storage.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = storage.join(dirpath, name)
            if storage.normpath(path) in claimed or (dirpath == root and name in _DATASET_FILES):
                continue
            reason = _unclaimed_reason(root, path)
            if dataset_problem:
                reason = f"{reason}; {dataset_problem}"
            extra.append(CaseSpec(name, "none", [path], problem=reason))
    return extra


def _unclaimed_reason(root: str, path: str) -> str:
    rel = storage.relpath(path, root)
    if rel.split(os.sep)[0] == "imagesTs":
        return "test image (imagesTs) without label: not used for training"
    if path.lower().endswith(dicom.SKIPPED_SUFFIXES):
        return "sidecar or text file, not an image of any case"
    return "file belongs to no case"


def read_volume(spec: CaseSpec) -> Volume:
    """The case's image as a canonical Volume (modality/site from the spec where given):
    array (X, Y, Z), or (X, Y, Z, C) for a case of C > 1 channels.

    Raises:
      CaseError: unreadable, or the channels are not spec.channels images on one grid.
    """
    if spec.kind == "nifti" and len(spec.image) > 1:
        volume = _stack_channels(spec.image)
    elif spec.kind == "nifti":
        volume = read_nifti(spec.image[0], allow_channels=spec.channels > 1)
    elif spec.kind == "dicom":
        # The ExampleGen ingests 3D volumes: 4D series are refused before decoding their pixels.
        volume = dicom.read_series(spec.image, spec.series_key, allow_4d=False)
    else:
        raise CaseError(spec.problem or "no image")
    found = volume.array.shape[3] if volume.array.ndim == 4 else 1
    if found != spec.channels:
        where = spec.image[0] if len(spec.image) == 1 else storage.dirname(spec.image[0])
        raise CaseError(
            f"{where}: the image has {found} channel{'s' if found != 1 else ''} "
            f"(shape {volume.array.shape}) but the dataset declares {spec.channels}"
        )
    if spec.modality:
        volume.modality = spec.modality
    if spec.site:
        volume.meta["site"] = spec.site
    return volume


def _stack_channels(paths: List[str]) -> Volume:
    """One (X, Y, Z, C) volume from one 3D NIfTI per channel, in `paths` order. Raises CaseError
    when a channel is not 3D or does not share channel 0's grid (shape and affine)."""
    channels = [read_nifti(path) for path in paths]
    stacked = stack_channels(channels, paths, AFFINE_TOLERANCE_MM)
    return Volume(array=stacked, affine=channels[0].affine, source=",".join(paths))


def read_label(path: str, image: Volume, label_set: Optional[set]) -> np.ndarray:
    """The label map for `image` from NIfTI `path`, checked: same grid, values in `label_set`."""
    label = read_nifti(path)
    grid = image.array.shape[:3]
    if label.array.shape != grid:
        raise CaseError(f"{path}: label shape {label.array.shape} differs from image shape {grid}")
    if not affines_match(label.affine, image.affine, AFFINE_TOLERANCE_MM, grid):
        raise CaseError(
            f"{path}: label geometry (affine) differs from the image's by more than {AFFINE_TOLERANCE_MM} mm"
        )
    problem = label_values_ok(label.array, label_set)
    if problem:
        raise CaseError(f"{path}: {problem}")
    return label.array.astype(np.uint8)


def _dicom_stack_id(spec: CaseSpec, salt: str) -> str:
    """'series-<hash>' from SeriesInstanceUID and the stack within it (echo, type, ...)."""
    if spec.series_key:
        key = dicom.SeriesKey(*spec.series_key)
        basis = "|".join([key.series_uid, repr(key.orientation), key.echo, key.image_type, repr(key.size)])
    else:
        basis = ",".join(spec.image)
    return "series-" + salted_hash(basis, salt, 12)


def case_identity(spec: CaseSpec, volume: Volume, salt: str) -> Tuple[str, str]:
    """(case_id, patient_hash): pseudonymous; readable file stems are kept only for NIfTI names."""
    if spec.kind == "dicom":
        case_id = _dicom_stack_id(spec, salt)
        patient = volume.patient_id or volume.meta.get("series_uid") or case_id
    else:
        case_id = spec.name
        patient = volume.patient_id or spec.name
    return case_id, salted_hash(patient, salt)


def _patient_identifiers(spec: CaseSpec) -> set:
    """Patient names/IDs/birth dates to scrub from the case's record: those found near the case
    by find_cases, plus those in the headers of the case's own files (any DICOM object)."""
    found = set(spec.identifiers)
    if spec.kind in ("dicom", "none"):
        found |= dicom.identifiers_in(spec.image)
    return found


def _error_reason(spec: CaseSpec, exc: BaseException) -> str:
    """A reason naming the case's file and the problem, for an error no reader turned into words."""
    where = spec.image[0] if len(spec.image) == 1 else (storage.dirname(spec.image[0]) if spec.image else "?")
    return f"{where}: cannot be read: {limits.describe_error(exc)}"


def process_case(spec: CaseSpec, salt: str, label_set: Optional[set]):
    """Reads one case. Returns (tf.Example or None, report record).

    The record is {"case_id", "inputs", "status": "ok"|"quarantined", "reason"}; every failure
    (CaseError, or anything a decoder raises, native panics included; never Ctrl-C or exit)
    becomes a quarantine record, never a crash. Case ids, reasons and input paths never contain
    patient names, IDs or birth dates found in any DICOM header of the case's folder (folders are
    often named after the patient): those are replaced by '<redacted>'.
    """
    identifiers: set = set()
    record: dict = {"case_id": "", "inputs": [], "status": "quarantined", "reason": ""}
    try:
        identifiers = _patient_identifiers(spec)
        if spec.kind == "dicom":
            fallback_id = _dicom_stack_id(spec, salt)
        else:
            fallback_id = spec.name or ("files-" + salted_hash(",".join(spec.inputs), salt, 12))
            if dicom.scrub(fallback_id, identifiers) != fallback_id:  # a file named after the patient
                fallback_id = "files-" + salted_hash(",".join(spec.inputs), salt, 12)
        record["case_id"] = fallback_id
        record["inputs"] = [dicom.scrub(path, identifiers) for path in spec.inputs]
        if spec.problem:
            raise CaseError(spec.problem)
        volume = read_volume(spec)
        record["case_id"], patient_hash = case_identity(spec, volume, salt)
        if len(volume.patient_id) >= 3:
            identifiers.add(volume.patient_id)
        volume.array = compact_dtype(volume.array)
        label = read_label(spec.label, volume, label_set) if spec.label else None
        example = example_schema.encode_case(volume, label, record["case_id"], patient_hash, spec.kind)
        record.update(inventory.facts(volume, label))  # spacing, shape, intensities, label ml
    except CaseError as exc:
        record["reason"] = dicom.scrub(str(exc), identifiers)
    except BaseException as exc:  # a reader bug or a native panic must not take the run down with it
        if limits.is_fatal(exc):
            raise
        record["reason"] = dicom.scrub(_error_reason(spec, exc), identifiers)
    else:
        record.update(status="ok", reason="")
        return example, _scrubbed(record, identifiers)
    if not record["case_id"]:
        record["case_id"] = "files-" + salted_hash(",".join(spec.inputs), salt, 12)
    if not record["inputs"]:
        record["inputs"] = [dicom.scrub(path, identifiers) for path in spec.inputs]
    return None, _scrubbed(record, identifiers)


def _scrubbed(record: dict, identifiers: set) -> dict:
    record["case_id"] = dicom.scrub(record["case_id"], identifiers)
    return record


def summarise(records: List[dict]) -> str:
    """One line for logs: counts by status."""
    ok = sum(r["status"] == "ok" for r in records)
    return f"{len(records)} cases: {ok} ingested, {len(records) - ok} quarantined"
