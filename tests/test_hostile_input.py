"""Hostile and broken input: every mutation of tests/fuzz_corpus.py, one named test per class of
defect, plus the corpus run under a 3 GB address-space limit (and `make fuzz` for many seeds).

Invariants on every mutated dataset: nothing escapes or hangs, the report is written and lists
every file, no planted patient identity appears in case ids, inputs, reasons or output, reasons
are plain words, ingested/converted volumes equal the clean ones, memory stays bounded."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from components.image_example_gen import cases
from modules.io import limits
from modules.io.volume import CaseError
from tests import fuzz_corpus as corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVARIANTS = ("crash", "hang", "silent_wrong", "leak", "unclear", "memory", "report_missing", "files_lost")
# A fragment (or alternatives) of the reason some record must give (None: harmless or random).
# The gzip bomb is refused by the byte limit when MEDTFX_MAX_BYTES is below its 1.25 GB, else
# read and refused as not DICOM.
EXPECTED_REASON = {
    "rle_fragment_corrupt": None,
    "dcm_gz_corrupt": "corrupt gzip",
    "rescale_intercept_1e30": "plausible rescale",
    "pixel_spacing_zero": "not positive",
    "rows_columns_65535": "MEDTFX_MAX_VOXELS",
    "dataset_json_malformed": "not valid JSON",
    "dataset_json_empty": "dataset.json is empty",
    "dataset_json_not_utf8": "not UTF-8",
    "dataset_json_array": "JSON object",
    "dataset_json_directory": "directory",
    "dataset_json_labels_list": "'labels' must be an object",
    "dataset_json_modality_string": "'modality' must be an object",
    "dataset_json_missing": None,
    "manifest_not_utf8": "not UTF-8",
    "fifo_in_series": "named pipe",
    "symlink_to_dev_zero": "a device",
    "truncated_last_slice": "truncated",
    "slice_short_by_2000_bytes": "truncated",
    "wrong_transfer_syntax": "stored raw",
    "bits_allocated_8_on_16_bit": "BitsAllocated",
    "middle_slice_shifted_5mm": "not collinear",
    "negative_pixel_spacing": "not positive",
    "orientation_length_2": "not 1",
    "orientation_not_orthogonal": "not orthogonal",
    "columns_zero": "Columns=0",
    "duplicated_series": "duplicate SOPInstanceUID",
    "nifti_gzip_crc": "corrupt gzip",
    "nifti_float64_1e39": "32-bit floats",
    "nifti_two_channels_one_id": "image files for channels [0, 1]",
    "nifti_nii_and_nii_gz": "2 image files",
    "manifest_bom": None,
    "manifest_semicolon": None,
    "manifest_without_image_column": "no column image",
    "manifest_blank_row": None,
    "manifest_dicom_without_label": "has no label",
    "phi_in_folder_and_file_names": "truncated",
    "phi_convert_two_stacks": None,
    "nifti_complex": "complex",
    "nifti_declares_2048x2048x512": "truncated",
    "dcm_gz_bomb": ("limit", "not a DICOM file"),
    "random_header_bytes": None,
    "random_truncation": None,
    "random_nifti_truncation": None,
}
# Mutations after which every clean case must still be ingested (nothing was broken).
ALL_OK = {"manifest_bom": 2, "manifest_semicolon": 2, "dataset_json_missing": 2, "manifest_blank_row": 2}


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fuzz"))
    base = corpus.build_base(out)
    return {"out": out, "base": base, "refs": corpus.references(base), "phi": corpus.identities(base)}


def _run(fuzz_base, name, seed=0):
    mutation = corpus.BY_NAME[name]
    root = corpus.make_dataset(fuzz_base["base"], mutation, seed, os.path.join(fuzz_base["out"], "corpus"))
    work = os.path.join(fuzz_base["out"], "work")
    os.makedirs(work, exist_ok=True)
    from modules.io import dicom

    dicom.clear_cache()
    result = corpus.run_dataset(root, mutation, fuzz_base["refs"], fuzz_base["phi"], work)
    with open(os.path.join(work, os.path.basename(root) + ".json")) as fh:
        records = json.load(fh)["cases"]
    return result, records


def _check(fuzz_base, name):
    result, records = _run(fuzz_base, name)
    failed = {k: result[k] for k in INVARIANTS if result[k]}
    assert not failed, (failed, result["details"])
    fragment = EXPECTED_REASON[name]
    if fragment:
        reasons = [r["reason"] for r in records if r["status"] != "ok"]
        fragments = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(f in reason for reason in reasons for f in fragments), reasons
    if name in ALL_OK:
        assert sum(r["status"] == "ok" for r in records) == ALL_OK[name], records


def _names(cls):
    return [m.name for m in corpus.MUTATIONS if m.cls == cls]


@pytest.mark.parametrize("name", _names("crash"))
def test_crashes_become_quarantine_reasons_and_the_report_is_written(fuzz_base, name):
    _check(fuzz_base, name)


@pytest.mark.parametrize("name", _names("hang"))
def test_special_files_are_refused_without_hanging_or_reading_forever(fuzz_base, name):
    _check(fuzz_base, name)


@pytest.mark.parametrize("name", _names("silent"))
def test_silently_wrong_volumes_are_refused(fuzz_base, name):
    _check(fuzz_base, name)


@pytest.mark.parametrize("name", _names("phi"))
def test_patient_identity_in_paths_and_any_header_never_leaks(fuzz_base, name):
    _check(fuzz_base, name)


@pytest.mark.parametrize("name", _names("unclear"))
def test_reasons_name_the_file_and_the_problem(fuzz_base, name):
    _check(fuzz_base, name)


@pytest.mark.parametrize("name", _names("memory") + _names("random"))
def test_absurd_sizes_and_random_damage_are_refused_before_allocation(fuzz_base, name):
    _check(fuzz_base, name)


class PanicException(BaseException):
    """Stands in for pyo3_runtime.PanicException (a BaseException raised by Rust decoders)."""


@pytest.mark.parametrize(
    "raised, escapes",
    [
        (PanicException("index out of bounds"), False),
        (MemoryError(), False),
        (OverflowError("too big"), False),
        (KeyboardInterrupt(), True),
        (SystemExit(3), True),
    ],
)
def test_error_boundary_catches_native_panics_but_not_interrupts(fuzz_base, monkeypatch, raised, escapes):
    specs, _ = cases.find_cases(fuzz_base["base"]["decathlon"])

    def boom(spec):
        raise raised

    monkeypatch.setattr(cases, "read_volume", boom)
    if escapes:
        with pytest.raises(type(raised)):
            cases.process_case(specs[0], "salt", None)
        return
    _, record = cases.process_case(specs[0], "salt", None)
    assert record["status"] == "quarantined" and specs[0].image[0] in record["reason"]
    assert "unexpected" not in record["reason"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda blob: blob[:-4] + bytes([blob[-4] ^ 1]) + blob[-3:], "corrupt gzip"),  # size field
        (lambda blob: blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:], "CRC"),
        (lambda blob: blob[: len(blob) // 2], "truncated"),
        (lambda blob: blob + b"garbage", "trailing garbage"),
    ],
)
def test_gzip_is_read_with_its_checksum_and_length(damage, message):
    import gzip

    raw = np.arange(200000, dtype=np.int32).tobytes()
    blob = gzip.compress(raw)
    assert limits.gunzip(blob, "x.gz") == raw
    with pytest.raises(CaseError, match=message):
        limits.gunzip(damage(blob), "x.gz")


def test_gzip_and_declared_sizes_are_capped_before_allocation():
    import gzip

    with pytest.raises(CaseError, match="larger than"):
        limits.gunzip(gzip.compress(b"\0" * 5_000_000), "bomb.gz", limits.Limits(max_bytes=1_000_000))
    with pytest.raises(CaseError, match="MEDTFX_MAX_VOXELS"):
        limits.check_size("x", (65535, 65535, 1), 2)
    with pytest.raises(CaseError, match="empty dimension"):
        limits.check_size("x", (512, 0, 1), 2)
    limits.check_size("ct", (512, 512, 2048), 2)  # real CT passes


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(CaseError, match="named pipe"):
        limits.read_file(str(fifo))
    link = tmp_path / "zero.dcm"
    os.symlink("/dev/zero", link)
    with pytest.raises(CaseError, match="device"):
        limits.read_file(str(link))
    with pytest.raises(CaseError, match="directory"):
        limits.read_file(str(tmp_path))


def _corpus_subprocess(out, seeds, only=(), timeout=900):
    env = dict(os.environ, MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "tests.fuzz_corpus", "--out", str(out), "--seeds", str(seeds), "--rlimit-gb", "3"] + (
        ["--only", *only] if only else []
    )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_memory_stays_bounded_under_a_3_gb_address_space_limit(tmp_path):
    """The size-related mutations run in a process that cannot map more than 3 GB."""
    outcome = _corpus_subprocess(tmp_path, 1, _names("memory") + _names("hang") + ["rows_columns_65535"])
    summary = outcome["summary"]
    assert summary["datasets"] == len(_names("memory") + _names("hang")) + 1
    assert all(summary[k] == 0 for k in INVARIANTS), outcome


@pytest.mark.skipif(not os.environ.get("MEDTFX_FUZZ_SEEDS"), reason="long fuzzing: make fuzz (MEDTFX_FUZZ_SEEDS=N)")
def test_fuzz_many_seeds(tmp_path):
    seeds = int(os.environ["MEDTFX_FUZZ_SEEDS"])
    outcome = _corpus_subprocess(tmp_path, seeds, timeout=max(900, 120 * seeds))
    summary = outcome["summary"]
    print("fuzz summary:", json.dumps(summary))
    bad = [r for r in outcome["results"] if any(r.get(k) for k in INVARIANTS)]
    assert not bad, bad[:5]
