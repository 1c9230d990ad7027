"""A seeded mutation corpus of hostile and broken datasets, built from the project's phantoms, and
the worker that runs `medtfx inventory` / `medtfx convert` on each and checks the invariants.

Each mutation copies a clean phantom dataset (DICOM series with labels, Decathlon NIfTI, or a
manifest) and breaks it one way: truncations, header and fragment corruption, absurd values,
special files, malformed JSON/CSV, patient identity in paths. The worker checks, per dataset:
  * no exception escapes inventory or convert, and none hangs (an alarm per dataset);
  * the report is written and lists every file of the dataset;
  * no planted patient identity (name parts, ID, birth date) appears in case ids, inputs,
    reasons or stdout/stderr;
  * no reason is an unexplained exception ("unexpected ...", "NoneType", "ufunc ...");
  * a case that is ingested ("ok") or converted has exactly the volume of the clean dataset,
    unless the mutation changes voxel bytes in a way no reader can detect;
  * memory stays bounded: run as a script, the worker sets RLIMIT_AS first, and any "not
    enough memory" reason counts as a failure.

Run directly: python -m tests.fuzz_corpus --seeds N --rlimit-gb 3 (prints one JSON summary line).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import sys
import time
from typing import Callable, Dict, List, NamedTuple

import numpy as np

# The identity planted in every DICOM header of the PHI mutations (fake, but shaped like real).
FAKE_NAME, FAKE_GIVEN, FAKE_ID, FAKE_BIRTH = "Kowalczyk", "Marianne", "PID4471923", "19630415"
FAKE_PATIENT_DIR = f"{FAKE_NAME}^{FAKE_GIVEN}_{FAKE_ID}_{FAKE_BIRTH}"
PATIENTS = [(FAKE_NAME, FAKE_GIVEN, FAKE_ID, FAKE_BIRTH), ("Brzezinski", "Teodor", "PID5550917", "19711203")]
SALT = "fuzz-salt"
DATASET_TIMEOUT_S = 60
UNCLEAR_MARKERS = ("unexpected Error", "unexpected Exception", "NoneType", "ufunc", "Traceback", "()")


class Mutation(NamedTuple):
    name: str
    cls: str  # crash | hang | silent | phi | unclear | memory | random
    base: str  # dicom | decathlon | manifest
    apply: Callable  # (rng, dataset_dir) -> None
    exact: bool = True  # an ingested volume must equal the clean one


class Hang(KeyboardInterrupt):
    """Raised by the alarm: derives from KeyboardInterrupt so no error boundary swallows it."""


# ---------------------------------------------------------------- helpers on a copied dataset


def _series_files(root: str, index: int = 0) -> List[str]:
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    folder = os.path.join(root, folders[index])
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".dcm"))


def _edit(path: str, **changes) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=False)


def _pick(rng, files: List[str], middle: bool = False) -> str:
    if middle:
        return files[int(rng.integers(1, len(files) - 1))]
    return files[int(rng.integers(0, len(files)))]


def _truncate(path: str, n_bytes: int) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(max(size - n_bytes, 0))


def _write_nifti_header_only(path: str, shape, dtype=np.int16) -> None:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    with open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * 4 + b"\0" * 1500)


def _json(root: str, text) -> None:
    path = os.path.join(root, "dataset.json")
    with open(path, "wb") as fh:
        fh.write(text if isinstance(text, bytes) else text.encode())


def _manifest(root: str, text: str, encoding: str = "utf-8") -> None:
    with open(os.path.join(root, "manifest.csv"), "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def _rle(path: str) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)


# ---------------------------------------------------------------- the mutations


def m_rle_fragment(rng, root):
    import pydicom

    path = _pick(rng, _series_files(root), middle=True)
    _rle(path)
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    # The RLE header (segment count and offsets) follows the item tags; corrupt it.
    start = 16 if data[4:8] == b"\0\0\0\0" else 8 + int.from_bytes(data[4:8], "little") + 8
    for _ in range(4):
        data[start + int(rng.integers(0, 64))] ^= 0xFF
    ds.PixelData = bytes(data)
    ds.save_as(path)


def m_dcm_gz_corrupt(rng, root):
    path = _pick(rng, _series_files(root))
    with open(path, "rb") as fh:
        blob = bytearray(gzip.compress(fh.read()))
    os.remove(path)
    blob[len(blob) // 2 + int(rng.integers(-20, 20))] ^= 0x5A
    with open(path + ".gz", "wb") as fh:
        fh.write(bytes(blob))


def m_rescale_huge(rng, root):
    _edit(_pick(rng, _series_files(root)), RescaleIntercept="1e30", RescaleSlope="1")


def m_spacing_zero(rng, root):
    for path in _series_files(root):
        _edit(path, PixelSpacing=["3.75", "0"])


def m_rows_cols_65535(rng, root):
    _edit(_pick(rng, _series_files(root)), Rows=65535, Columns=65535)


def m_json_malformed(rng, root):
    _json(root, '{"labels": {"0": "background", "1": ')


def m_json_empty(rng, root):
    _json(root, "")


def m_json_not_utf8(rng, root):
    _json(root, '{"labels": {"0": "b\xe4ckground"}}'.encode("latin-1"))


def m_json_array(rng, root):
    _json(root, "[1, 2, 3]")


def m_json_directory(rng, root):
    os.remove(os.path.join(root, "dataset.json"))
    os.makedirs(os.path.join(root, "dataset.json"))


def m_json_labels_list(rng, root):
    _json(root, '{"labels": ["background", "a", "b"], "modality": {"0": "MR"}}')


def m_json_modality_string(rng, root):
    _json(root, '{"labels": {"0": "background", "1": "a", "2": "b"}, "modality": "MR"}')


def m_json_missing(rng, root):
    os.remove(os.path.join(root, "dataset.json"))


def m_manifest_not_utf8(rng, root):
    os.remove(os.path.join(root, "dataset.json"))
    _manifest(root, "image,label\nimagesTr/ph\xe4ntom.nii.gz,labelsTr/x.nii.gz\n", "latin-1")


def m_fifo(rng, root):
    folder = os.path.dirname(_series_files(root)[0])
    os.mkfifo(os.path.join(folder, "slice_9999.dcm"))


def m_dev_zero(rng, root):
    folder = os.path.dirname(_series_files(root)[0])
    os.symlink("/dev/zero", os.path.join(folder, "slice_9998.dcm"))


def m_truncated_last(rng, root):
    _truncate(_series_files(root)[-1], int(rng.integers(100, 3000)))


def m_short_slice(rng, root):
    _truncate(_pick(rng, _series_files(root), middle=True), 2000)


def m_wrong_transfer_syntax(rng, root):
    """Raw pixels labelled RLE (same UID length, so the file meta group stays consistent)."""
    path = _pick(rng, _series_files(root))
    with open(path, "rb") as fh:
        blob = fh.read()
    with open(path, "wb") as fh:
        fh.write(blob.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00", 1))


def m_bits_allocated_8(rng, root):
    _edit(_pick(rng, _series_files(root)), BitsAllocated=8, BitsStored=8, HighBit=7)


def m_shift_middle_slice(rng, root):
    import pydicom

    path = _pick(rng, _series_files(root), middle=True)
    ds = pydicom.dcmread(path)
    row_dir = np.asarray(ds.ImageOrientationPatient[:3], float)
    _edit(path, ImagePositionPatient=[f"{v:.4f}" for v in np.asarray(ds.ImagePositionPatient, float) + 5 * row_dir])


def m_negative_spacing(rng, root):
    import pydicom

    for path in _series_files(root):
        spacing = [float(v) for v in pydicom.dcmread(path).PixelSpacing]
        _edit(path, PixelSpacing=[f"{-spacing[0]:.6f}", f"{spacing[1]:.6f}"])


def m_orientation_length_2(rng, root):
    import pydicom

    for path in _series_files(root):
        iop = [2 * float(v) for v in pydicom.dcmread(path).ImageOrientationPatient]
        _edit(path, ImageOrientationPatient=[f"{v:.6f}" for v in iop])


def m_orientation_sheared(rng, root):
    import pydicom

    for path in _series_files(root):
        iop = np.asarray(pydicom.dcmread(path).ImageOrientationPatient, float)
        col = iop[3:] + 0.3 * iop[:3]
        iop[3:] = col / np.linalg.norm(col)
        _edit(path, ImageOrientationPatient=[f"{v:.6f}" for v in iop])


def m_columns_zero(rng, root):
    for path in _series_files(root):
        _edit(path, Columns=0)


def m_duplicate_series(rng, root):
    for path in _series_files(root):
        shutil.copy(path, path[:-4] + "_copy.dcm")


def m_nifti_crc(rng, root):
    path = os.path.join(root, "imagesTr", sorted(os.listdir(os.path.join(root, "imagesTr")))[0])
    with open(path, "rb") as fh:
        raw = gzip.decompress(fh.read())
    blob = bytearray(gzip.compress(raw, compresslevel=0))  # stored blocks: a flipped byte stays inflatable
    blob[len(blob) // 2 + int(rng.integers(-100, 100))] ^= 0x01
    with open(path, "wb") as fh:
        fh.write(bytes(blob))


def m_nifti_float_1e39(rng, root):
    import nibabel as nib

    path = os.path.join(root, "imagesTr", sorted(os.listdir(os.path.join(root, "imagesTr")))[0])
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    data.flat[int(rng.integers(0, data.size))] = 1e39
    out = nib.Nifti1Image(data, img.affine)
    out.set_data_dtype(np.float64)
    out.set_sform(img.affine, code=1)
    nib.save(out, path)


def m_nifti_complex(rng, root):
    import nibabel as nib

    path = os.path.join(root, "imagesTr", sorted(os.listdir(os.path.join(root, "imagesTr")))[0])
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, img.affine), path)


def m_nifti_two_channels(rng, root):
    folder = os.path.join(root, "imagesTr")
    name = sorted(os.listdir(folder))[0]
    stem = name[:-7]
    os.rename(os.path.join(folder, name), os.path.join(folder, f"{stem}_0000.nii.gz"))
    shutil.copy(os.path.join(folder, f"{stem}_0000.nii.gz"), os.path.join(folder, f"{stem}_0001.nii.gz"))


def m_nifti_nii_and_gz(rng, root):
    folder = os.path.join(root, "imagesTr")
    name = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, name), "rb") as fh:
        raw = gzip.decompress(fh.read())
    with open(os.path.join(folder, name[:-3]), "wb") as fh:
        fh.write(raw)


def m_nifti_declares_huge(rng, root):
    path = os.path.join(root, "imagesTr", sorted(os.listdir(os.path.join(root, "imagesTr")))[0])
    os.remove(path)
    _write_nifti_header_only(path[:-3], (2048, 2048, 512))


def m_dcm_gzip_bomb(rng, root):
    folder = os.path.dirname(_series_files(root)[0])
    with gzip.open(os.path.join(folder, "bomb.dcm.gz"), "wb", compresslevel=1) as fh:
        block = b"\0" * (1 << 24)
        for _ in range(80):  # 1.25 GB of zeros, about 1.2 MB compressed
            fh.write(block)


def m_manifest_bom(rng, root):
    _manifest_from_decathlon(root, "\ufeffimage,label\n{rows}", ",")


def m_manifest_semicolon(rng, root):
    _manifest_from_decathlon(root, "image;label\n{rows}", ";")


def m_manifest_no_image_column(rng, root):
    _manifest_from_decathlon(root, "picture,label\n{rows}", ",")


def m_manifest_blank_row(rng, root):
    _manifest_from_decathlon(root, "image,label\n{rows}\n,\n", ",")


def _manifest_from_decathlon(root, template, sep):
    os.remove(os.path.join(root, "dataset.json"))
    names = sorted(os.listdir(os.path.join(root, "imagesTr")))
    rows = "\n".join(f"imagesTr/{n}{sep}labelsTr/{n}" for n in names)
    _manifest(root, template.format(rows=rows))
    # A DICOM series under the folder must not be paired with any row.
    os.makedirs(os.path.join(root, "stray_series"), exist_ok=True)


def m_manifest_dicom_without_label(rng, root):
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for d in folders:
        os.remove(os.path.join(root, d, "label.nii.gz"))
    _manifest(root, "image,label\n" + "\n".join(f"{d}," for d in folders) + "\n")


def m_phi_in_paths(rng, root):
    """Patient identity in headers, folder and file names; plus a truncated slice, an SR object
    and a notes.txt in the same folder."""
    import pydicom
    from pydicom.data import get_testdata_file

    target = os.path.join(root, FAKE_PATIENT_DIR)
    files = sorted(os.path.join(target, f) for f in os.listdir(target) if f.endswith(".dcm"))
    for k, src in enumerate(files):
        os.rename(src, os.path.join(target, f"{FAKE_ID}_{k:04d}.dcm"))
    _truncate(os.path.join(target, f"{FAKE_ID}_{int(rng.integers(0, len(files))):04d}.dcm"), 1500)
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.PatientName, sr.PatientID, sr.PatientBirthDate = f"{FAKE_NAME}^{FAKE_GIVEN}", FAKE_ID, FAKE_BIRTH
    sr.save_as(os.path.join(target, f"{FAKE_ID}_report.dcm"))
    with open(os.path.join(target, f"notes_{FAKE_NAME}.txt"), "w") as fh:
        fh.write(f"{FAKE_NAME} {FAKE_GIVEN} {FAKE_ID}\n")


def m_phi_convert_two_stacks(rng, root):
    """Two series in a folder named after the patient: convert must not print the name."""
    m_phi_in_paths(rng, root)
    target = os.path.join(root, FAKE_PATIENT_DIR)
    other = next(d for d in sorted(os.listdir(root)) if d != FAKE_PATIENT_DIR)
    for path in sorted(
        os.path.join(root, other, f) for f in os.listdir(os.path.join(root, other)) if f.endswith(".dcm")
    ):
        shutil.move(path, os.path.join(target, "b_" + os.path.basename(path)))


def m_random_header_bytes(rng, root):
    path = _pick(rng, _series_files(root))
    with open(path, "r+b") as fh:
        size = os.path.getsize(path)
        for _ in range(int(rng.integers(1, 6))):
            fh.seek(int(rng.integers(128, min(size, 1200))))
            fh.write(bytes([int(rng.integers(0, 256))]))


def m_random_truncation(rng, root):
    path = _pick(rng, _series_files(root))
    _truncate(path, int(rng.integers(1, os.path.getsize(path))))


def m_random_nifti_truncation(rng, root):
    folder = os.path.join(root, "imagesTr")
    path = os.path.join(folder, sorted(os.listdir(folder))[int(rng.integers(0, len(os.listdir(folder))))])
    _truncate(path, int(rng.integers(1, os.path.getsize(path))))


MUTATIONS = [
    Mutation("rle_fragment_corrupt", "crash", "dicom", m_rle_fragment, exact=False),
    Mutation("dcm_gz_corrupt", "crash", "dicom", m_dcm_gz_corrupt),
    Mutation("rescale_intercept_1e30", "crash", "dicom", m_rescale_huge),
    Mutation("pixel_spacing_zero", "crash", "dicom", m_spacing_zero),
    Mutation("rows_columns_65535", "crash", "dicom", m_rows_cols_65535),
    Mutation("dataset_json_malformed", "crash", "decathlon", m_json_malformed),
    Mutation("dataset_json_empty", "crash", "decathlon", m_json_empty),
    Mutation("dataset_json_not_utf8", "crash", "decathlon", m_json_not_utf8),
    Mutation("dataset_json_array", "crash", "decathlon", m_json_array),
    Mutation("dataset_json_directory", "crash", "decathlon", m_json_directory),
    Mutation("dataset_json_labels_list", "crash", "decathlon", m_json_labels_list),
    Mutation("dataset_json_modality_string", "crash", "decathlon", m_json_modality_string),
    Mutation("dataset_json_missing", "unclear", "decathlon", m_json_missing),
    Mutation("manifest_not_utf8", "crash", "decathlon", m_manifest_not_utf8),
    Mutation("fifo_in_series", "hang", "dicom", m_fifo),
    Mutation("symlink_to_dev_zero", "hang", "dicom", m_dev_zero),
    Mutation("truncated_last_slice", "silent", "dicom", m_truncated_last),
    Mutation("slice_short_by_2000_bytes", "silent", "dicom", m_short_slice),
    Mutation("wrong_transfer_syntax", "silent", "dicom", m_wrong_transfer_syntax),
    Mutation("bits_allocated_8_on_16_bit", "silent", "dicom", m_bits_allocated_8),
    Mutation("middle_slice_shifted_5mm", "silent", "dicom", m_shift_middle_slice),
    Mutation("negative_pixel_spacing", "silent", "dicom", m_negative_spacing),
    Mutation("orientation_length_2", "silent", "dicom", m_orientation_length_2),
    Mutation("orientation_not_orthogonal", "silent", "dicom", m_orientation_sheared),
    Mutation("columns_zero", "silent", "dicom", m_columns_zero),
    Mutation("duplicated_series", "silent", "dicom", m_duplicate_series),
    Mutation("nifti_gzip_crc", "silent", "decathlon", m_nifti_crc),
    Mutation("nifti_float64_1e39", "silent", "decathlon", m_nifti_float_1e39),
    Mutation("nifti_two_channels_one_id", "silent", "decathlon", m_nifti_two_channels),
    Mutation("nifti_nii_and_nii_gz", "silent", "decathlon", m_nifti_nii_and_gz),
    Mutation("manifest_bom", "silent", "decathlon", m_manifest_bom),
    Mutation("manifest_semicolon", "silent", "decathlon", m_manifest_semicolon),
    Mutation("manifest_without_image_column", "silent", "decathlon", m_manifest_no_image_column),
    Mutation("manifest_blank_row", "silent", "decathlon", m_manifest_blank_row),
    Mutation("manifest_dicom_without_label", "silent", "dicom", m_manifest_dicom_without_label),
    Mutation("phi_in_folder_and_file_names", "phi", "dicom", m_phi_in_paths),
    Mutation("phi_convert_two_stacks", "phi", "dicom", m_phi_convert_two_stacks),
    Mutation("nifti_complex", "unclear", "decathlon", m_nifti_complex),
    Mutation("nifti_declares_2048x2048x512", "memory", "decathlon", m_nifti_declares_huge),
    Mutation("dcm_gz_bomb", "memory", "dicom", m_dcm_gzip_bomb),
    Mutation("random_header_bytes", "random", "dicom", m_random_header_bytes, exact=False),
    Mutation("random_truncation", "random", "dicom", m_random_truncation),
    Mutation("random_nifti_truncation", "random", "decathlon", m_random_nifti_truncation),
]
BY_NAME = {m.name: m for m in MUTATIONS}


# ---------------------------------------------------------------- clean data and references


def build_base(out_dir: str) -> Dict[str, str]:
    """Clean phantom datasets: {'dicom': folder, 'decathlon': folder}."""
    from pipeline.tools.phantoms import synthesize

    paths = synthesize(os.path.join(out_dir, "clean"), n_cases=2, seed=11)
    # Every DICOM dataset carries patient identity in its headers and folder names.
    root = paths["dicom"]
    for folder, (name, given, pid, birth) in zip(sorted(os.listdir(root)), PATIENTS):
        target = os.path.join(root, f"{name}^{given}_{pid}_{birth}")
        os.rename(os.path.join(root, folder), target)
        for f in sorted(os.listdir(target)):
            if f.endswith(".dcm"):
                _edit(os.path.join(target, f), PatientName=f"{name}^{given}", PatientID=pid, PatientBirthDate=birth)
    return {"dicom": paths["dicom"], "decathlon": paths["decathlon"]}


def references(base: Dict[str, str]) -> Dict[str, tuple]:
    """case_id or series folder name -> (array, affine) read from the clean datasets."""
    from components.image_example_gen import cases
    from modules.io.volume import compact_dtype

    refs = {}
    for layout in ("dicom", "decathlon"):
        specs, _ = cases.find_cases(base[layout])
        for spec in specs:
            _, record = cases.process_case(spec, SALT, None)
            assert record["status"] == "ok", record
            volume = cases.read_volume(spec)
            refs[record["case_id"]] = (compact_dtype(volume.array), volume.affine)
            if layout == "dicom":
                refs["folder:" + os.path.basename(os.path.dirname(spec.image[0]))] = (volume.array, volume.affine)
    return refs


def identities(base: Dict[str, str]) -> List[str]:
    """Every patient identity string of the clean DICOM data plus the planted fake one."""
    from modules.io import dicom

    found = dicom.identifiers_in(os.path.join(d, n) for d, _, names in os.walk(base["dicom"]) for n in names)
    return sorted(found | {v for patient in PATIENTS for v in patient})


def make_dataset(base: Dict[str, str], mutation: Mutation, seed: int, out_dir: str) -> str:
    root = os.path.join(out_dir, f"{mutation.name}-{seed}")
    shutil.copytree(base["decathlon" if mutation.base in ("decathlon", "manifest") else "dicom"], root)
    mutation.apply(np.random.default_rng([seed, sum(map(ord, mutation.name))]), root)
    return root


# ---------------------------------------------------------------- running one dataset


def _alarm(signum, frame):
    raise Hang()


def _same(got, ref) -> bool:
    array, affine = got
    return (
        ref is not None
        and array.shape == ref[0].shape
        and np.array_equal(array, ref[0])
        and np.allclose(affine, ref[1], atol=1e-4)
    )


def _dataset_files(root: str) -> List[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if dirpath == root and name in ("dataset.json", "manifest.csv"):
                continue
            out.append(os.path.join(dirpath, name))
    return out


def run_dataset(root: str, mutation: Mutation, refs: Dict[str, tuple], phi: List[str], workdir: str) -> dict:
    """Runs inventory (and convert on each DICOM folder) on one mutated dataset; returns
    {"name", "crash", "hang", "silent_wrong", "leak", "unclear", "memory", "report_missing",
    "files_lost", "seconds", "details"}."""
    from components.image_example_gen import cases
    from modules.io import dicom
    from modules.io.nifti_reader import read_nifti
    from modules.io.volume import compact_dtype
    from pipeline import cli

    result = {
        k: 0
        for k in ("crash", "hang", "silent_wrong", "leak", "unclear", "memory", "report_missing", "files_lost", "runs")
    }
    result["name"], result["details"] = os.path.basename(root), []
    started = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(DATASET_TIMEOUT_S)
    texts: List[str] = []
    try:
        report = os.path.join(workdir, os.path.basename(root) + ".json")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main(["--debug", "inventory", root, "--report", report, "--salt", SALT])
        except SystemExit:
            pass
        result["runs"] += 1
        texts += [out.getvalue(), err.getvalue()]
        if not os.path.exists(report):
            result["report_missing"] += 1
            result["details"].append("inventory wrote no report")
        else:
            with open(report) as fh:
                records = json.load(fh)["cases"]
            texts.append(json.dumps(records))
            listed = {dicom.scrub(p, phi) for r in records for p in r["inputs"]}
            for path in _dataset_files(root):
                if dicom.scrub(path, phi) not in listed and not any(
                    dicom.scrub(path, phi).startswith(p.rstrip("/") + "/") for p in listed
                ):
                    result["files_lost"] += 1
                    result["details"].append(f"file not in report: {dicom.scrub(path, phi)}")
            for r in records:
                if r["status"] != "ok" and (not r["reason"] or any(m in r["reason"] for m in UNCLEAR_MARKERS)):
                    result["unclear"] += 1
                    result["details"].append(f"unclear reason: {r['reason']}")
                if "not enough memory" in r["reason"]:
                    result["memory"] += 1
                    result["details"].append(f"memory: {r['reason']}")
            # Ingested volumes must be the clean ones.
            specs, _ = cases.find_cases(root)
            for spec in specs:
                _, record = cases.process_case(spec, SALT, None)
                if record["status"] != "ok" or not mutation.exact:
                    continue
                volume = cases.read_volume(spec)
                if not _same((compact_dtype(volume.array), volume.affine), refs.get(record["case_id"])):
                    result["silent_wrong"] += 1
                    result["details"].append(f"ingested a volume that differs from the clean one: {record['case_id']}")
        for number, folder in enumerate(sorted(os.listdir(root))):
            path = os.path.join(root, folder)
            if mutation.base != "dicom" or not os.path.isdir(path) or os.path.islink(path):
                continue
            output = os.path.join(workdir, os.path.basename(root) + f"-{number}.nii")
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["--debug", "convert", path, output])
            result["runs"] += 1
            texts += [out.getvalue(), err.getvalue()]
            if code == 0 and mutation.exact:
                written = read_nifti(output)
                ref = refs.get("folder:" + folder)
                if not _same((written.array, written.affine), ref):
                    result["silent_wrong"] += 1
                    result["details"].append(f"convert wrote a volume that differs from the clean one: {folder}")
            if "not enough memory" in err.getvalue():
                result["memory"] += 1
    except Hang:
        result["hang"] += 1
        result["details"].append(f"no answer within {DATASET_TIMEOUT_S} s")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # what the product code let escape
        result["crash"] += 1
        result["details"].append(f"escaped: {type(exc).__name__}: {exc}"[:300])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = "\n".join(texts)
    leaked = sorted({v for v in phi if v in text})
    if leaked:
        result["leak"] += 1
        where = [line[:200] for line in text.splitlines() if any(v in line for v in leaked)][:3]
        result["details"].append(f"identity in output: {leaked} in {where}")
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def run_corpus(out_dir: str, seeds: List[int], names: List[str] = ()) -> dict:
    """Builds and runs every mutation for every seed; returns the summary and per-dataset results."""
    from modules.io import dicom

    base = build_base(out_dir)
    refs = references(base)
    phi = identities(base)
    work = os.path.join(out_dir, "work")
    os.makedirs(work, exist_ok=True)
    results = []
    for seed in seeds:
        for mutation in MUTATIONS:
            if names and mutation.name not in names:
                continue
            try:
                root = make_dataset(base, mutation, seed, os.path.join(out_dir, "corpus"))
            except Exception as exc:  # a mutation that does not apply to this seed's data
                results.append({"name": f"{mutation.name}-{seed}", "skipped": f"{type(exc).__name__}: {exc}"})
                continue
            dicom.clear_cache()
            results.append(run_dataset(root, mutation, refs, phi, work))
            shutil.rmtree(root, ignore_errors=True)
    ran = [r for r in results if "skipped" not in r]
    summary = {"datasets": len(ran), "skipped": len(results) - len(ran), "runs": sum(r["runs"] for r in ran)}
    for key in ("crash", "hang", "silent_wrong", "leak", "unclear", "memory", "report_missing", "files_lost"):
        summary[key] = sum(r[key] > 0 for r in ran)
    summary["peak_rss_mb"] = _peak_rss_mb()
    return {"summary": summary, "results": results}


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--rlimit-gb", type=float, default=3.0)
    args = parser.parse_args(argv)
    # The default byte limit (4 GB) is above the address-space limit the fuzzing runs under.
    os.environ.setdefault("MEDTFX_MAX_BYTES", str(512 * 1024**2))
    if args.rlimit_gb > 0:
        import resource

        limit = int(args.rlimit_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    outcome = run_corpus(args.out, list(range(args.first_seed, args.first_seed + args.seeds)), args.only)
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
