"""`medtfx bench dicom`: our DICOM reader against dcm2niix on the same series, in one run.

Series: the real ones in ../shared/data/dicom (GE and Siemens classic and mosaic MR, Philips and
Siemens enhanced; at most 151 files of 64^2..128^2), and clinical-size CT series the bench
generates into a temporary folder of its own (not timed): 400 axial slices of 512 x 512 at
0.7 x 0.7 mm, uncompressed (GE-style signed int16, 1.0 mm slices) and JPEG 2000 lossless
(Siemens-style unsigned 12-bit, 1.25 mm slices), with rescale intercept -1024 (HU), one
ImagePositionPatient per slice, a body phantom with CT-like noise (so JPEG 2000 compresses
about as much as on patients), and a private block as real headers carry.

Both sides do the same job per series folder: find the DICOM files, group them into image
stacks, and write each stack as one uncompressed NIfTI (dcm2niix ``-z n -b n``, no JSON sidecar;
ours: dicom.list_stacks + read_series + nifti_reader.write_nifti, what `medtfx convert` does).
dcm2niix runs as a subprocess (its time includes process start-up, a few ms); ours runs
in-process with its header cache cleared before every run, so neither side reuses a previous
parse. Runs alternate between the two sides (one untimed warm-up each for the file system
cache, then `repeats` timed pairs) so that load from other processes hits both alike; the median
is kept, and the load average is recorded. The PyPI dcm2niix wheel cannot decode JPEG 2000, so
that series is timed against a dcm2niix built with OpenJPEG (e.g. Debian's `apt-get install
dcm2niix`) when one is found, and reported without a ratio otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "dicom")
# Series folders timed: classic single-frame (GE, 150 files each), Siemens mosaic, enhanced.
SERIES = (
    "dcm_qa_nih/In/20180918GE/mr_0004",
    "dcm_qa_nih/In/20180918GE/mr_0005",
    "dcm_qa_nih/In/20180918GE/mr_0006",
    "dcm_qa_nih/In/20180918GE/mr_0007",
    "dcm_qa_nih/In/20180918Si/mr_0003",
    "dcm_qa_nih/In/20180918Si/mr_0004",
    "dcm_qa_enh/In/Philips",
    "dcm_qa_enh/In/Siemens/XA10",
)


def _dcm2niix_candidates() -> List[str]:
    """dcm2niix executables in order of preference: beside this Python (the PyPI wheel's), on
    PATH, Debian's."""
    found = [
        os.path.join(os.path.dirname(sys.executable), "dcm2niix"),
        shutil.which("dcm2niix") or "",
        "/usr/bin/dcm2niix",
    ]
    return list(dict.fromkeys(p for p in found if p and os.path.exists(p)))


def _decodes_jpeg2000(binary: str) -> bool:
    """True when `binary -v` says it was built with a JPEG 2000 decoder ('JP2:OpenJPEG')."""
    try:
        proc = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "JP2" in proc.stdout + proc.stderr


def dcm2niix_binary(jpeg2000: bool = False) -> str:
    """The dcm2niix executable: beside this Python (the PyPI wheel's), else on PATH; with
    `jpeg2000`, the first of those (or Debian's /usr/bin/dcm2niix) that decodes JPEG 2000.

    Raises:
      FileNotFoundError: none found (pip install dcm2niix; apt-get install dcm2niix for JPEG 2000).
    """
    for binary in _dcm2niix_candidates():
        if not jpeg2000 or _decodes_jpeg2000(binary):
            return binary
    raise FileNotFoundError(
        "no dcm2niix that decodes JPEG 2000 (the PyPI wheel does not; apt-get install dcm2niix)"
        if jpeg2000
        else "dcm2niix not found (pip install dcm2niix)"
    )


def run_dcm2niix(series_dir: str, out_dir: str, binary: Optional[str] = None) -> List[str]:
    """dcm2niix on one folder, uncompressed NIfTI without sidecar. Returns the files written."""
    proc = subprocess.run(
        [binary or dcm2niix_binary(), "-z", "n", "-b", "n", "-f", "%s_%e_%t", "-o", out_dir, series_dir],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dcm2niix failed on {series_dir}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return sorted(f for f in os.listdir(out_dir) if f.endswith(".nii"))


# ------------------------------------------------------------------ generated clinical-size CT

CT_SIZE = 512
CT_PIXEL_MM = 0.7
# name -> (slices, slice spacing mm, transfer syntax, signed storage): GE scanners store signed
# int16 (with -2000 outside the reconstruction circle), Siemens unsigned 12-bit.
CT_SERIES: Dict[str, Tuple[int, float, str, bool]] = {
    "generated/ct_512x512x400_uncompressed": (400, 1.0, "1.2.840.10008.1.2.1", True),
    "generated/ct_512x512x400_jpeg2000": (400, 1.25, "1.2.840.10008.1.2.4.90", False),
}
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
_CT_PADDING = -2000  # GE's stored value outside the field of view


def _ct_phantom_slice(k: int, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, cols) float32 HU of slice k: air, a body ellipse (fat rim, soft tissue) whose size
    changes along z, two lungs, a vertebra, and Gaussian noise of 12 HU as on a CT."""
    centre = (CT_SIZE - 1) / 2.0
    y, x = np.ogrid[0:CT_SIZE, 0:CT_SIZE]
    u, v = (x - centre) / CT_SIZE, (y - centre) / CT_SIZE
    scale = 1.0 + 0.1 * np.sin(2 * np.pi * k / n_slices)
    hu = np.full((CT_SIZE, CT_SIZE), -1000.0, np.float32)
    hu[(u / (0.45 * scale)) ** 2 + (v / (0.33 * scale)) ** 2 <= 1] = -100.0
    hu[(u / (0.42 * scale)) ** 2 + (v / (0.30 * scale)) ** 2 <= 1] = 40.0
    for lung in (-0.18, 0.18):
        hu[((u - lung) / 0.14) ** 2 + (v / 0.2) ** 2 <= 1] = -850.0
    hu[u**2 + (v - 0.2) ** 2 <= 0.04**2] = 700.0
    hu += rng.standard_normal((CT_SIZE, CT_SIZE), dtype=np.float32) * 12.0
    return hu


def write_ct_series(out_dir: str, n_slices: int, slice_mm: float, transfer_syntax: str, signed: bool) -> List[str]:
    """Writes one axial CT series of `n_slices` 512 x 512 files to `out_dir` (see CT_SERIES).

    Stored value = HU + 1024 (RescaleIntercept -1024, slope 1), int16 or unsigned 12-bit;
    ImagePositionPatient steps `slice_mm` along +z (LPS), IOP 1\\0\\0\\0\\1\\0, 0.7 mm
    pixels. JPEG 2000 series are lossless (openjpeg, as pydicom encodes). Returns the paths.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    study_uid, series_uid = generate_uid(), generate_uid()
    centre = (CT_SIZE - 1) / 2.0
    y, x = np.ogrid[0:CT_SIZE, 0:CT_SIZE]
    outside_fov = (x - centre) ** 2 + (y - centre) ** 2 > (CT_SIZE / 2.0) ** 2
    corner = -CT_PIXEL_MM * centre
    paths = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = transfer_syntax
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.Modality, ds.Manufacturer = "CT", "medtfx-bench"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Bench^Phantom", "BENCH-0001", "19700101"
        ds.SliceThickness, ds.KVP, ds.ConvolutionKernel = slice_mm, 120, "STANDARD"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, study_uid
        ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = 2, 1, k + 1
        ds.ImagePositionPatient = [corner, corner, round(-250.0 + k * slice_mm, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = round(-250.0 + k * slice_mm, 4)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = CT_SIZE
        ds.PixelSpacing = [CT_PIXEL_MM, CT_PIXEL_MM]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16 if signed else 12, 15 if signed else 11
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        block = ds.private_block(0x0043, "MEDTFX_BENCH", create=True)  # real headers carry kilobytes
        block.add_new(0x01, "OB", rng.bytes(2048))
        block.add_new(0x02, "LO", "scanner private data")
        stored = np.round(_ct_phantom_slice(k, n_slices, rng) + 1024.0)
        if signed:
            stored = np.clip(stored, -1024, 3071)
            stored[outside_fov] = _CT_PADDING
            pixels = stored.astype(np.int16)
        else:
            pixels = np.clip(stored, 0, 4095).astype(np.uint16)
        if transfer_syntax == JPEG2000_LOSSLESS:
            from openjpeg.utils import encode_array

            frame = encode_array(pixels, bits_stored=ds.BitsStored, photometric_interpretation=2, use_mct=False)
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = pixels.tobytes()
        path = os.path.join(out_dir, f"IM{k + 1:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def run_medtfx(series_dir: str, out_dir: str) -> List[str]:
    """Our reader on one folder: every image stack written as an uncompressed NIfTI."""
    from modules.io import dicom
    from modules.io.nifti_reader import write_nifti

    dicom.clear_cache()
    stacks, _ = dicom.list_stacks(series_dir)
    written = []
    for i, (key, paths) in enumerate(stacks):
        volume = dicom.read_series(paths, key)
        name = f"stack_{i + 1}.nii"
        write_nifti(os.path.join(out_dir, name), volume.array, volume.affine)
        written.append(name)
    return written


def _timed_pair(ours: Callable, theirs: Callable, series_dir: str, repeats: int) -> tuple:
    """(our median s, their median s, our files, their files): one untimed warm-up each (file
    system cache), then `repeats` runs of each side alternating, so that load from other
    processes falls on both alike."""
    times: Dict[str, List[float]] = {"ours": [], "theirs": []}
    written: Dict[str, List[str]] = {"ours": [], "theirs": []}
    for i in range(repeats + 1):
        for side, fn in (("ours", ours), ("theirs", theirs)) if i % 2 == 0 else (("theirs", theirs), ("ours", ours)):
            out_dir = tempfile.mkdtemp(prefix="medtfx-bench-")
            try:
                start = time.perf_counter()
                written[side] = fn(series_dir, out_dir)
                elapsed = time.perf_counter() - start
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            if i:
                times[side].append(elapsed)
    return statistics.median(times["ours"]), statistics.median(times["theirs"]), written["ours"], written["theirs"]


def _row(name: str, folder: str, repeats: int, binary: Optional[str], note: str = "") -> Dict:
    n_files = sum(len(files) for _, _, files in os.walk(folder))
    load_before = os.getloadavg()
    if binary is None:
        times, ours_files = _timed_side(run_medtfx, folder, repeats)
        ours, theirs, their_files = statistics.median(times), None, []
    else:
        ours, theirs, ours_files, their_files = _timed_pair(
            run_medtfx, lambda d, o: run_dcm2niix(d, o, binary), folder, repeats
        )
    row = {
        "name": name,
        "files": n_files,
        "medtfx_s": round(ours, 4),
        "dcm2niix_s": None if theirs is None else round(theirs, 4),
        "ratio": None if theirs is None else round(ours / theirs, 3),
        "outputs": {"medtfx": len(ours_files), "dcm2niix": len(their_files)},
        "loadavg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    if binary is not None:
        row["dcm2niix"] = binary
    if note:
        row["note"] = note
    return row


def _timed_side(fn: Callable, series_dir: str, repeats: int) -> Tuple[List[float], List[str]]:
    """(seconds of `repeats` runs of one side after one warm-up, files written)."""
    times, written = [], []
    for i in range(repeats + 1):
        out_dir = tempfile.mkdtemp(prefix="medtfx-bench-")
        try:
            start = time.perf_counter()
            written = fn(series_dir, out_dir)
            elapsed = time.perf_counter() - start
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        if i:
            times.append(elapsed)
    return times, written


def benchmark(
    data_root: str, repeats: int = 3, series: Optional[List[str]] = None, generated: Optional[List[str]] = None
) -> Dict:
    """Times both converters on each real series folder under `data_root` and on the generated
    clinical-size CT series (CT_SERIES; `generated` picks some of them, [] none).

    Returns {"medtfx_s", "dcm2niix_s" (sums of per-series medians over the series with a ratio),
    "ratio" (medtfx/dcm2niix), "worst_ratio", "repeats", "loadavg" (1/5/15 min before and after),
    "decode_helpers", "series": [{"name", "files", "medtfx_s", "dcm2niix_s", "ratio",
    "outputs", "loadavg_1min", "dcm2niix"}], "not_compared": [rows with a "note" and no ratio, e.g.
    JPEG 2000 without a dcm2niix that decodes it], "notes"}.

    Raises:
      FileNotFoundError: no real series found and no series generated.
    """
    from modules.io import dicom

    load_start = os.getloadavg()
    rows = []
    for name in series if series is not None else SERIES:
        folder = os.path.join(data_root, name)
        if os.path.isdir(folder):
            rows.append(_row(name, folder, repeats, dcm2niix_binary()))
    chosen = (
        list(CT_SERIES)
        if generated is None
        else [n for n in CT_SERIES if n in generated or n.split("/")[-1] in generated]
    )
    if chosen:
        with tempfile.TemporaryDirectory(prefix="medtfx-bench-ct-") as scratch:
            for name in chosen:
                n_slices, slice_mm, syntax, signed = CT_SERIES[name]
                folder = os.path.join(scratch, name.split("/")[-1])
                write_ct_series(folder, n_slices, slice_mm, syntax, signed)
                try:
                    binary: Optional[str] = dcm2niix_binary(jpeg2000=syntax == JPEG2000_LOSSLESS)
                    note = ""
                except FileNotFoundError as exc:
                    binary, note = None, str(exc)
                rows.append(_row(name, folder, repeats, binary, note))
                shutil.rmtree(folder, ignore_errors=True)
    compared = [r for r in rows if r["ratio"] is not None]
    if not compared:
        raise FileNotFoundError(f"none of the benchmark series found under {data_root}")
    total_ours = sum(r["medtfx_s"] for r in compared)
    total_theirs = sum(r["dcm2niix_s"] for r in compared)
    return {
        "medtfx_s": round(total_ours, 4),
        "dcm2niix_s": round(total_theirs, 4),
        "ratio": round(total_ours / total_theirs, 3) if total_theirs else None,
        "worst_ratio": max((r["ratio"] for r in compared), default=None),
        "repeats": repeats,
        "loadavg": {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]},
        "decode_helpers": dicom.decode_helpers(),
        "cpu_count": os.cpu_count(),
        "series": compared,
        # Timed on our side only: no dcm2niix here can convert them (see "note").
        "not_compared": [r for r in rows if r["ratio"] is None],
        "notes": "median of timed runs per series after one warm-up, the two sides alternating; "
        "dcm2niix -z n -b n as a subprocess (includes its start-up), medtfx in-process with a cold "
        "header cache; both write one uncompressed NIfTI per image stack; generated CT series "
        "are written before their timing starts",
    }


def main(args) -> int:
    """CLI entry (`medtfx bench dicom --json FILE [--repeats N] [--data DIR] [--ct WHICH]`)."""
    data_root = args.data or DEFAULT_DATA
    ct = getattr(args, "ct", "all")
    generated = None if ct == "all" else [] if ct == "none" else [n for n in CT_SERIES if n.endswith(ct)]
    result = benchmark(data_root, repeats=max(1, args.repeats), generated=generated)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    for row in result["series"] + result["not_compared"]:
        theirs = "n/a" if row["dcm2niix_s"] is None else f"{row['dcm2niix_s']:.3f} s"
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(
            f"{row['name']:<42s} {row['files']:4d} files  medtfx {row['medtfx_s']:.3f} s  "
            f"dcm2niix {theirs}  ratio {ratio}" + (f"  ({row['note']})" if row.get("note") else "")
        )
    print(
        f"total: medtfx {result['medtfx_s']:.3f} s, dcm2niix {result['dcm2niix_s']:.3f} s, "
        f"ratio {result['ratio']:.2f}, worst series {result['worst_ratio']:.2f} (goal <= 1.5); "
        f"load average {result['loadavg']['start'][0]:.1f} -> {result['loadavg']['end'][0]:.1f}; "
        f"report: {args.json}"
    )
    return 0
