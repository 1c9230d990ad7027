"""Finding cases in a dataset folder and turning each into a tf.Example or a quarantine record.

Three layouts are recognised (first match wins):
  * Decathlon / nnU-Net: ``dataset.json``, ``imagesTr/<case>[_0000].nii.gz``, ``labelsTr/<case>.nii.gz``.
  * Manifest: ``manifest.csv`` with columns ``image,label[,modality,site]``; paths relative to the
    CSV; ``image`` is a NIfTI file or a folder holding one DICOM series.
  * DICOM tree: every series below the root; a series' mask is ``label.nii.gz`` (or
    ``mask.nii.gz``) in the folder holding only that series.
Every input file ends up in exactly one case; a case is either ingested or quarantined with a
reason (nothing is lost, nothing crashes the run).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from modules import features as example_schema
from modules.io import dicom
from modules.io.nifti_reader import read_nifti
from modules.io.volume import (CaseError, Volume, affines_match, compact_dtype,
                                                 label_values_ok, salted_hash)

LABEL_NAMES = ("label.nii.gz", "mask.nii.gz", "label.nii", "mask.nii")
# Image and label grids agree when every corner maps within this distance (mm).
AFFINE_TOLERANCE_MM = 0.01
_MODALITY_ALIASES = {"MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR", "ADC": "MR", "CT": "CT"}


@dataclasses.dataclass
class CaseSpec:
    """One case as found on disk, before reading.

    name: readable case name when it does not derive from patient data (file stem), else ''.
    kind: 'nifti' | 'dicom' | 'none' (files that cannot form a case).
    image: image files (one NIfTI, or all files of one DICOM series).
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
    # DICOM: which stack of the files (dicom.SeriesKey), needed when a file holds several.
    series_key: Optional[tuple] = None

    @property
    def inputs(self) -> List[str]:
        return list(self.image) + ([self.label] if self.label else [])


@dataclasses.dataclass
class DatasetInfo:
    layout: str  # 'decathlon' | 'manifest' | 'dicom'
    labels: Optional[Dict[int, str]]  # declared label set, if any
    modality: str = ""


def normalise_modality(name: str) -> str:
    """'MRI'/'T1'/... -> 'MR'; 'CT' -> 'CT'; anything else upper-cased."""
    key = (name or "").strip().upper()
    return _MODALITY_ALIASES.get(key, key)


def _nifti_stem(filename: str) -> str:
    stem = filename[:-7] if filename.endswith(".nii.gz") else filename[:-4]
    # nnU-Net names channels <case>_0000; the case is the part before.
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        stem = stem[:-5]
    return stem


def _is_nifti(name: str) -> bool:
    return name.endswith((".nii.gz", ".nii")) and not name.startswith(".")


def _decathlon_cases(root: str, require_labels: bool) -> Tuple[List[CaseSpec], DatasetInfo]:
    with open(os.path.join(root, "dataset.json")) as fh:
        meta = json.load(fh)
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items()} or None
    modality = normalise_modality((meta.get("modality") or {}).get("0", ""))
    images_dir, labels_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    images = sorted(os.listdir(images_dir)) if os.path.isdir(images_dir) else []
    label_files = sorted(os.listdir(labels_dir)) if os.path.isdir(labels_dir) else []
    labels_by_case = {_nifti_stem(f): os.path.join(labels_dir, f) for f in label_files if _is_nifti(f)}
    cases, used_labels = [], set()
    for fname in images:
        path = os.path.join(images_dir, fname)
        if not _is_nifti(fname):
            cases.append(CaseSpec(fname, "none", [path], problem="not a NIfTI file (.nii/.nii.gz)"))
            continue
        stem = _nifti_stem(fname)
        label = labels_by_case.get(stem)
        if label:
            used_labels.add(label)
        problem = None
        if label is None and require_labels:
            problem = f"image has no label: labelsTr/{stem}.nii.gz is missing"
        cases.append(CaseSpec(stem, "nifti", [path], label, modality=modality, problem=problem))
    for fname in label_files:
        path = os.path.join(labels_dir, fname)
        if path in used_labels:
            continue
        reason = (f"label without image: no imagesTr/{_nifti_stem(fname)}.nii.gz" if _is_nifti(fname)
                  else "not a NIfTI file (.nii/.nii.gz)")
        cases.append(CaseSpec(_nifti_stem(fname) if _is_nifti(fname) else fname, "none", [path],
                              problem=reason))
    return cases, DatasetInfo("decathlon", labels, modality)


def _dicom_cases(root: str, require_labels: bool) -> Tuple[List[CaseSpec], DatasetInfo]:
    series, rejected = dicom.scan_tree(root)
    dirs_to_series: Dict[str, List[tuple]] = {}
    for key, paths in series.items():
        for d in {os.path.dirname(p) for p in paths}:
            dirs_to_series.setdefault(d, []).append(key)
    cases, used_labels = [], set()
    for key, paths in sorted(series.items(), key=lambda kv: (sorted(kv[1])[0], kv[0])):
        folder = os.path.dirname(sorted(paths)[0])
        label = None
        if len(dirs_to_series.get(folder, [])) == 1:
            label = next((os.path.join(folder, n) for n in LABEL_NAMES
                          if os.path.exists(os.path.join(folder, n))), None)
        problem = None
        if label is None and require_labels:
            problem = f"DICOM series in {folder} has no label.nii.gz beside it"
            if len(dirs_to_series.get(folder, [])) > 1:
                problem += (f" that can be paired (the folder holds {len(dirs_to_series[folder])} "
                            "image stacks; put each series in its own folder)")
        if label:
            used_labels.add(label)
        cases.append(CaseSpec("", "dicom", sorted(paths), label, problem=problem, series_key=key))
    for path, reason in rejected:
        cases.append(CaseSpec(os.path.basename(path), "none", [path], problem=reason))
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if _is_nifti(name) and path not in used_labels:
                cases.append(CaseSpec(_nifti_stem(name), "none", [path],
                                      problem="NIfTI file not paired with a DICOM series"))
    return cases, DatasetInfo("dicom", None)


def _manifest_cases(csv_path: str, require_labels: bool) -> Tuple[List[CaseSpec], DatasetInfo]:
    base = os.path.dirname(os.path.abspath(csv_path))
    cases = []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            image = os.path.join(base, (row.get("image") or "").strip())
            label = (row.get("label") or "").strip()
            label = os.path.join(base, label) if label else None
            modality = normalise_modality(row.get("modality", ""))
            site = (row.get("site") or "").strip()
            if os.path.isdir(image):
                series, rejected = dicom.scan_tree(image)
                if len(series) != 1:
                    found = "; ".join(dicom.describe(k) for k in series)
                    cases.append(CaseSpec("", "none", [image], label, problem=(
                        f"manifest image folder holds {len(series)} DICOM image stacks, expected one"
                        + (f" ({found})" if found else ""))))
                    continue
                key, paths = next(iter(series.items()))
                cases.append(CaseSpec("", "dicom", sorted(paths), label, modality, site, series_key=key))
                continue
            problem = None
            if not os.path.exists(image):
                problem = f"manifest names a missing image file {image}"
            elif label is None and require_labels:
                problem = "manifest row has no label"
            elif label is not None and not os.path.exists(label):
                problem = f"manifest names a missing label file {label}"
            cases.append(CaseSpec(_nifti_stem(os.path.basename(image)), "nifti", [image], label,
                                  modality, site, problem))
    return cases, DatasetInfo("manifest", None)


def find_cases(root: str, require_labels: bool = True) -> Tuple[List[CaseSpec], DatasetInfo]:
    """All cases below `root` (a folder, or a manifest CSV), in a stable order.

    Every file below the dataset folder appears in the inputs of some case: files that belong to
    no case (stray files, sidecars, test images) become cases of kind 'none' with a reason.
    """
    if os.path.isfile(root) and root.endswith(".csv"):
        return _manifest_cases(root, require_labels)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset path {root} does not exist")
    if os.path.exists(os.path.join(root, "dataset.json")):
        cases, info = _decathlon_cases(root, require_labels)
    elif os.path.exists(os.path.join(root, "manifest.csv")):
        cases, info = _manifest_cases(os.path.join(root, "manifest.csv"), require_labels)
    else:
        cases, info = _dicom_cases(root, require_labels)
    return cases + _unclaimed_files(root, cases), info


# Dataset-level files that describe the dataset rather than belong to a case.
_DATASET_FILES = ("dataset.json", "manifest.csv")


def _unclaimed_files(root: str, cases: List[CaseSpec]) -> List[CaseSpec]:
    """'none' cases for files below `root` that no case lists (so nothing goes unreported)."""
    claimed = set()
    for spec in cases:
        for path in spec.inputs:
            claimed.add(os.path.normpath(path))
            if os.path.isdir(path):  # a manifest row naming a DICOM folder claims its files
                claimed.update(os.path.normpath(os.path.join(d, n)) for d, _, names in os.walk(path)
                               for n in names)
    extra = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.normpath(path) in claimed or (dirpath == root and name in _DATASET_FILES):
                continue
            extra.append(CaseSpec(name, "none", [path], problem=_unclaimed_reason(root, path)))
    return extra


def _unclaimed_reason(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)
    if rel.split(os.sep)[0] == "imagesTs":
        return "test image (imagesTs) without label: not used for training"
    if path.lower().endswith(dicom.SKIPPED_SUFFIXES):
        return "sidecar or text file, not an image of any case"
    return "file belongs to no case"


def read_volume(spec: CaseSpec) -> Volume:
    """The case's image as a canonical Volume (modality/site from the spec where given)."""
    if spec.kind == "nifti":
        volume = read_nifti(spec.image[0])
    elif spec.kind == "dicom":
        # The ExampleGen ingests 3D volumes: 4D series are refused before decoding their pixels.
        volume = dicom.read_series(spec.image, spec.series_key, allow_4d=False)
    else:
        raise CaseError(spec.problem or "no image")
    if spec.modality:
        volume.modality = spec.modality
    if spec.site:
        volume.meta["site"] = spec.site
    return volume


def read_label(path: str, image: Volume, label_set: Optional[set]) -> np.ndarray:
    """The label map for `image` from NIfTI `path`, checked: same grid, values in `label_set`."""
    label = read_nifti(path)
    if label.array.shape != image.array.shape:
        raise CaseError(f"{path}: label shape {label.array.shape} differs from image shape "
                        f"{image.array.shape}")
    if not affines_match(label.affine, image.affine, AFFINE_TOLERANCE_MM, image.array.shape):
        raise CaseError(f"{path}: label geometry (affine) differs from the image's by more than "
                        f"{AFFINE_TOLERANCE_MM} mm")
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
    """Patient names/IDs/birth dates in the case's DICOM headers, to scrub from reasons."""
    found = set()
    for path in spec.image[:1] if spec.kind in ("dicom", "none") else []:
        try:
            found.update(dicom.read_file_info(path).identifiers)
        except Exception:  # not DICOM / not an image: nothing to scrub beyond the path
            continue
    return found


def process_case(spec: CaseSpec, salt: str, label_set: Optional[set]):
    """Reads one case. Returns (tf.Example or None, report record).

    The record is {"case_id", "inputs", "status": "ok"|"quarantined", "reason"}; every failure
    (CaseError or an unexpected exception) becomes a quarantine record, never a crash. Reasons
    and input paths never contain patient names, IDs or birth dates (folders are often named
    after the patient): those are replaced by '<redacted>'.
    """
    identifiers = _patient_identifiers(spec)
    if spec.kind == "dicom":
        fallback_id = _dicom_stack_id(spec, salt)
    else:
        fallback_id = spec.name or ("files-" + salted_hash(",".join(spec.inputs), salt, 12))
    record = {"case_id": fallback_id, "inputs": [dicom.scrub(path, identifiers) for path in spec.inputs],
              "status": "quarantined", "reason": ""}
    try:
        if spec.problem:
            raise CaseError(spec.problem)
        volume = read_volume(spec)
        record["case_id"], patient_hash = case_identity(spec, volume, salt)
        volume.array = compact_dtype(volume.array)
        label = read_label(spec.label, volume, label_set) if spec.label else None
        example = example_schema.encode_case(volume, label, record["case_id"], patient_hash, spec.kind)
    except CaseError as exc:
        record["reason"] = dicom.scrub(str(exc), identifiers)
        return None, record
    except Exception as exc:  # a reader bug must not take the run down with it
        record["reason"] = dicom.scrub(f"unexpected {type(exc).__name__} while reading: {exc}",
                                              identifiers)
        return None, record
    record.update(status="ok", reason="")
    return example, record


def summarise(records: List[dict]) -> str:
    """One line for logs: counts by status."""
    ok = sum(r["status"] == "ok" for r in records)
    return f"{len(records)} cases: {ok} ingested, {len(records) - ok} quarantined"
