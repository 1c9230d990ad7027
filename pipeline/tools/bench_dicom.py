"""`medtfx bench dicom`: our DICOM reader against dcm2niix on the same real series, in one run.

Both sides do the same job per series folder: find the DICOM files, group them into image
stacks, and write each stack as one uncompressed NIfTI (dcm2niix ``-z n -b n``, no JSON sidecar;
ours: dicom.list_stacks + read_series + nifti_reader.write_nifti). dcm2niix runs as a
subprocess (its time includes process start-up, a few ms); ours runs in-process with its header
cache cleared before every run, so neither side reuses a previous parse. Each side gets one
untimed warm-up run (file system cache), then `repeats` timed runs; the median is kept.
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
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def dcm2niix_binary() -> str:
    """The dcm2niix executable: beside this Python (the PyPI wheel's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "dcm2niix")
    found = beside if os.path.exists(beside) else shutil.which("dcm2niix")
    if not found:
        raise FileNotFoundError("dcm2niix not found (pip install dcm2niix)")
    return found


def run_dcm2niix(series_dir: str, out_dir: str) -> List[str]:
    """dcm2niix on one folder, uncompressed NIfTI without sidecar. Returns the files written."""
    proc = subprocess.run(
        [dcm2niix_binary(), "-z", "n", "-b", "n", "-f", "%s_%e_%t", "-o", out_dir, series_dir],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dcm2niix failed on {series_dir}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    return sorted(f for f in os.listdir(out_dir) if f.endswith(".nii"))


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


def _timed(fn, series_dir: str, repeats: int) -> tuple:
    """(median seconds over `repeats` runs after one warm-up, files written)."""
    times, written = [], []
    for i in range(repeats + 1):
        out_dir = tempfile.mkdtemp(prefix="medtfx-bench-")
        try:
            start = time.perf_counter()
            written = fn(series_dir, out_dir)
            elapsed = time.perf_counter() - start
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        if i:  # the first run warms the file system cache
            times.append(elapsed)
    return statistics.median(times), written


def benchmark(data_root: str, repeats: int = 3, series: Optional[List[str]] = None) -> Dict:
    """Times both converters on each series folder under `data_root`.

    Returns {"medtfx_s", "dcm2niix_s" (sums of per-series medians), "ratio" (medtfx/dcm2niix),
    "repeats", "series": [{"name", "files", "medtfx_s", "dcm2niix_s", "ratio", "outputs"}], "notes"}.
    """
    rows = []
    for name in series or SERIES:
        folder = os.path.join(data_root, name)
        if not os.path.isdir(folder):
            continue
        ours, ours_files = _timed(run_medtfx, folder, repeats)
        theirs, their_files = _timed(run_dcm2niix, folder, repeats)
        n_files = sum(len(files) for _, _, files in os.walk(folder))
        rows.append(
            {
                "name": name,
                "files": n_files,
                "medtfx_s": round(ours, 4),
                "dcm2niix_s": round(theirs, 4),
                "ratio": round(ours / theirs, 3),
                "outputs": {"medtfx": len(ours_files), "dcm2niix": len(their_files)},
            }
        )
    if not rows:
        raise FileNotFoundError(f"none of the benchmark series found under {data_root}")
    total_ours = sum(r["medtfx_s"] for r in rows)
    total_theirs = sum(r["dcm2niix_s"] for r in rows)
    return {
        "medtfx_s": round(total_ours, 4),
        "dcm2niix_s": round(total_theirs, 4),
        "ratio": round(total_ours / total_theirs, 3),
        "repeats": repeats,
        "series": rows,
        "notes": "median of timed runs per series after one warm-up; dcm2niix -z n -b n as a "
        "subprocess (includes its start-up), medtfx in-process with a cold header cache; "
        "both write one uncompressed NIfTI per image stack",
    }


def main(args) -> int:
    """CLI entry (`medtfx bench dicom --json FILE [--repeats N] [--data DIR]`)."""
    data_root = args.data or DEFAULT_DATA
    result = benchmark(data_root, repeats=max(1, args.repeats))
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    for row in result["series"]:
        print(
            f"{row['name']:<40s} {row['files']:4d} files  medtfx {row['medtfx_s']:.3f} s  "
            f"dcm2niix {row['dcm2niix_s']:.3f} s  ratio {row['ratio']:.2f}"
        )
    print(
        f"total: medtfx {result['medtfx_s']:.3f} s, dcm2niix {result['dcm2niix_s']:.3f} s, "
        f"ratio {result['ratio']:.2f} (goal <= 1.5); report: {args.json}"
    )
    return 0
