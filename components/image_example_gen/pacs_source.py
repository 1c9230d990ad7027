"""Training cases from a PACS over DICOMweb, materialised as a manifest dataset on local disk.

A case is an image series with a DICOM SEG in the same study that references it. For a dataset
URL `dicomweb+http(s)://HOST/PATH[?QIDO matching keys]` (see modules.io.dicomweb):
  1. QIDO-RS finds the series matching the keys (e.g. StudyDate=20240101-20241231,
     SeriesDescription=*AX*); each study they belong to is then listed whole, so its SEG series
     are found whatever their own description;
  2. WADO-RS retrieves each SEG (stored transfer syntax); highdicom reads it and its source
     references say which series it segments;
  3. each referenced image series is retrieved into <cache>/dataset/series/<id>/ and the SEG is
     read as a label volume on that series' grid (its frames must lie on the series' voxel
     lattice, in the same frame of reference) and written as <cache>/dataset/labels/<id>.nii.gz
     on the series' own grid and affine, the way `predict` writes masks;
  4. <cache>/dataset/manifest.csv lists (image folder, label, modality) for the usual manifest
     ingestion (cases.py), which reads, checks and encodes each case as for any folder.
Series without a SEG, series with several SEGs, SEGs off their series' grid, unreadable objects
and non-image series are quarantined: they become CaseSpecs of kind 'none' whose problem is
the reason, so they appear in the inventory like a folder's defects. <id> is a hash of the
SeriesInstanceUID; no patient attribute is written to names, records or logs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

from components.image_example_gen import cases
from components.image_example_gen.cases import CaseSpec  # `cases` is also a field name of Materialised
from modules.io import dicom, dicomweb
from modules.io.nifti_reader import write_nifti

_log = logging.getLogger(__name__)

DATASET_DIR = "dataset"
MANIFEST = "manifest.csv"
# A SEG frame lies on the series' lattice when its voxel indices are integers within this.
LATTICE_TOLERANCE_VOXELS = 0.01


@dataclasses.dataclass
class Materialised:
    """manifest: path of the manifest CSV (None when no case could be built);
    quarantined: CaseSpecs of kind 'none' with the reason as `problem`."""

    manifest: Optional[str]
    cases: int
    quarantined: List[CaseSpec]


def series_id(series_uid: str) -> str:
    """Short stable name for a series' cache folder: 'series-' + 12 hex digits of its UID's hash."""
    return "series-" + hashlib.sha256(series_uid.encode()).hexdigest()[:12]


def _quarantine(study_uid: str, series_uid: str, reason: str) -> cases.CaseSpec:
    locator = f"studies/{study_uid}/series/{series_uid}"
    return cases.CaseSpec(series_id(series_uid), "none", [locator], problem=f"{locator}: {reason}")


def seg_label_on_grid(seg, shape: Tuple[int, int, int], affine_ras: np.ndarray) -> np.ndarray:
    """The label map (X, Y, Z) uint8 of a highdicom Segmentation on an image grid.

    Args:
      seg: highdicom.seg.Segmentation (binary or fractional); segment numbers become labels.
      shape: the grid's (columns, rows, slices).
      affine_ras: (4, 4) voxel -> RAS mm of that grid.
    Returns:
      uint8 array of `shape`, 0 where the SEG has no frame.
    Raises:
      cases.CaseError: the SEG's frames are not on the grid's lattice (other spacing,
        orientation or offset), or it labels voxels outside the grid.
    """
    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)  # (slice, row, col), LPS
    seg_labels = np.transpose(np.asarray(volume.array), (2, 1, 0))
    seg_affine = dicom.LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]
    to_seg = np.linalg.solve(seg_affine, np.asarray(affine_ras, dtype=np.float64))  # grid -> SEG index
    # Linear map: integral on the lattice iff the origin and each unit step map to integers.
    probe = np.abs(np.concatenate([to_seg[:3, 3], to_seg[:3, :3].ravel()]))
    if np.max(np.abs(probe - np.rint(probe))) > LATTICE_TOLERANCE_VOXELS:
        raise cases.CaseError(
            "the SEG's frames do not lie on the series' voxel grid (other spacing, orientation or position)"
        )
    index = np.indices(shape).reshape(3, -1)
    seg_index = np.rint(to_seg[:3, :3] @ index + to_seg[:3, 3:4]).astype(np.int64)
    inside = np.all((seg_index >= 0) & (seg_index < np.array(seg_labels.shape)[:, None]), axis=0)
    label = np.zeros(index.shape[1], np.uint8)
    label[inside] = seg_labels[tuple(seg_index[:, inside])]
    if int(np.count_nonzero(label)) != int(np.count_nonzero(seg_labels)):
        raise cases.CaseError("the SEG labels voxels outside the series' grid")
    return label.reshape(shape)


def _series_grid(paths: List[str], where: str) -> Tuple[Tuple[int, int, int], np.ndarray, str]:
    """((columns, rows, slices), affine voxel -> RAS, FrameOfReferenceUID) of the one stack in
    `paths`, from headers only. Raises CaseError."""
    stacks, rejected, _ = dicom.scan_files(paths)
    if len(stacks) != 1:
        reasons = "; ".join(reason for _, reason in rejected[:3])
        raise cases.CaseError(f"expected one image stack, found {len(stacks)}" + (f" ({reasons})" if reasons else ""))
    ((key, frames),) = stacks.items()
    layout = dicom.stack_layout(frames, where)
    if any(len(row) != 1 for row in layout.grid):
        raise cases.CaseError("a 4D series (several volumes) cannot be a training case")
    first = layout.grid[0][0]
    header = dicom.read_header(first.path)
    return (
        (first.cols, first.rows, len(layout.grid)),
        dicom.LPS_TO_RAS @ layout.affine_lps,
        str(getattr(header, "FrameOfReferenceUID", "")),
    )


def _read_segs(
    client, study_uid: str, seg_series: List[dicomweb.SeriesInfo], quarantined: List[cases.CaseSpec]
) -> Dict[str, list]:
    """{referenced image SeriesInstanceUID: [highdicom Segmentation, ...]} of a study's SEGs."""
    import highdicom as hd

    by_series: Dict[str, list] = {}
    for info in seg_series:
        try:
            datasets = client.retrieve_series(study_uid, info.series_uid)
        except dicomweb.DicomWebError as exc:
            quarantined.append(_quarantine(study_uid, info.series_uid, f"SEG series not retrievable: {exc}"))
            continue
        for ds in datasets:
            try:
                seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
                referenced = {series for study, series, _ in seg.get_source_image_uids() if study == study_uid}
            except Exception as exc:  # a malformed SEG is a quarantined object, not a crash
                quarantined.append(
                    _quarantine(study_uid, info.series_uid, f"unreadable SEG ({type(exc).__name__}: {exc})")
                )
                continue
            if not referenced:
                quarantined.append(
                    _quarantine(study_uid, info.series_uid, "SEG references no image series of its study")
                )
            for series in referenced:
                by_series.setdefault(series, []).append(seg)
    return by_series


def _materialise_series(client, info: dicomweb.SeriesInfo, segs: list, out_dir: str) -> Tuple[str, str]:
    """Retrieves one series and writes its label; returns (image folder, label file) relative
    to `out_dir`. Raises CaseError (the case's quarantine reason) or DicomWebError."""
    name = series_id(info.series_uid)
    folder = os.path.join(out_dir, "series", name)
    paths = client.retrieve_series_to_folder(info.study_uid, info.series_uid, folder)
    if not paths:
        raise cases.CaseError("the series holds no instance")
    if not segs:
        return os.path.relpath(folder, out_dir), ""
    if len(segs) > 1:
        raise cases.CaseError(f"{len(segs)} SEGs reference this series; keep one (the case's label would be ambiguous)")
    shape, affine, frame_of_reference = _series_grid(paths, folder)
    seg = segs[0]
    seg_frame_of_reference = str(getattr(seg, "FrameOfReferenceUID", ""))
    if frame_of_reference and seg_frame_of_reference and seg_frame_of_reference != frame_of_reference:
        raise cases.CaseError("the SEG is in another frame of reference than the series")
    label = seg_label_on_grid(seg, shape, affine)
    label_path = os.path.join(out_dir, "labels", f"{name}.nii.gz")
    os.makedirs(os.path.dirname(label_path), exist_ok=True)
    write_nifti(label_path, label, affine)
    return os.path.relpath(folder, out_dir), os.path.relpath(label_path, out_dir)


def materialise(url: str, cache_dir: str, require_labels: bool = True, client=None) -> Materialised:
    """Retrieves the cases of a PACS dataset URL into `cache_dir`/dataset (see the module doc).

    Args:
      url: dicomweb+http(s)://HOST/PATH[?KEY=VALUE...], the keys being QIDO-RS matching keys.
      cache_dir: local folder (created; an earlier materialisation there is replaced).
      require_labels: when False, image series without a SEG become unlabelled cases.
      client: a DicomWebClient (default: one for `url`, credentials from the environment).
    Returns:
      Materialised(manifest path or None, number of manifest rows, quarantined CaseSpecs).
    Raises:
      DicomWebError: the archive cannot be searched at all.
      ValueError: malformed URL or credentials.
    """
    _, filters = dicomweb.parse_dataset_url(url)
    client = client or dicomweb.DicomWebClient(url)
    out_dir = os.path.join(cache_dir, DATASET_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    quarantined: List[cases.CaseSpec] = []
    rows = []
    selected = client.search_series(filters=filters)
    for study_uid in sorted({s.study_uid for s in selected}):
        in_study = client.search_series(study_uid)
        segs = _read_segs(client, study_uid, [s for s in in_study if s.modality.upper() == "SEG"], quarantined)
        for info in (s for s in selected if s.study_uid == study_uid and s.modality.upper() != "SEG"):
            if not info.is_image:
                quarantined.append(
                    _quarantine(study_uid, info.series_uid, f"not an image series (modality {info.modality})")
                )
                continue
            series_segs = segs.get(info.series_uid, [])
            if not series_segs and require_labels:
                quarantined.append(
                    _quarantine(study_uid, info.series_uid, "no DICOM SEG in the study references this series")
                )
                continue
            try:
                image, label = _materialise_series(client, info, series_segs, out_dir)
            except (cases.CaseError, dicomweb.DicomWebError) as exc:
                reason = str(exc)
            except Exception as exc:  # unreadable objects are quarantined, never a crash
                reason = f"unreadable ({type(exc).__name__}: {exc})"
            else:
                rows.append({"image": image, "label": label, "modality": info.modality, "site": ""})
                continue
            shutil.rmtree(os.path.join(out_dir, "series", series_id(info.series_uid)), ignore_errors=True)
            quarantined.append(_quarantine(study_uid, info.series_uid, reason))
    manifest = None
    if rows:
        manifest = os.path.join(out_dir, MANIFEST)
        with open(manifest, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "label", "modality", "site"])
            writer.writeheader()
            writer.writerows(rows)
    _log.info("PACS %s: %d cases materialised, %d quarantined", client.url, len(rows), len(quarantined))
    return Materialised(manifest, len(rows), quarantined)


def listing_fingerprint(url: str, client=None) -> str:
    """What a PACS dataset URL selects, as a TFX input fingerprint: the series QIDO-RS finds for the
    URL's keys and every series of their studies (the SEGs), by study, series, modality and
    number of instances, hashed. It changes when a selected study gains, loses or grows a series
    (a new case, a new or replaced SEG), not when an instance is rewritten in place.

    Args:
      url: dicomweb+http(s)://HOST/PATH[?KEY=VALUE...].
      client: a DicomWebClient (default: one for `url`, credentials from the environment).
    Returns:
      'pacs:series:<count>,sha256:<64 hex digits>' (no UID or patient attribute in clear).
    Raises:
      DicomWebError: the archive cannot be searched.
      ValueError: malformed URL or credentials.
    """
    _, filters = dicomweb.parse_dataset_url(url)
    client = client or dicomweb.DicomWebClient(url)
    studies = sorted({s.study_uid for s in client.search_series(filters=filters)})
    listed = sorted(
        (s.study_uid, s.series_uid, s.modality, s.number_of_instances)
        for study_uid in studies
        for s in client.search_series(study_uid)
    )
    digest = hashlib.sha256("\n".join(" ".join(map(str, row)) for row in listed).encode()).hexdigest()
    return f"pacs:series:{len(listed)},sha256:{digest}"


def find_cases(
    url: str, cache_dir: str, require_labels: bool = True, client=None
) -> Tuple[List[cases.CaseSpec], cases.DatasetInfo]:
    """cases.find_cases for a PACS dataset URL: materialises into `cache_dir`, then the manifest
    ingestion's cases plus the quarantined series. The cache must outlive the returned specs
    (they name its files)."""
    result = materialise(url, cache_dir, require_labels, client)
    if result.manifest is None:
        return list(result.quarantined), cases.DatasetInfo("dicomweb", None)
    specs, info = cases.find_cases(os.path.dirname(result.manifest), require_labels)
    return specs + list(result.quarantined), cases.DatasetInfo("dicomweb", info.labels, info.modality)
