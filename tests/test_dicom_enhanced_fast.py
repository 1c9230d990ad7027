"""Enhanced multi-frame files through the fast header reader (header.parse's functional groups).

Every enhanced file must give the same FileInfo (frames, geometry, rescale, echo, order, meta)
whether its header is parsed by header.parse or by pydicom, must be parsed without pydicom when
its functional groups are plain, and must fall back to pydicom (same result or same refusal)
when they are not.
"""

import dataclasses
import gzip
import io
import os
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
import pytest

from modules.io import dicom
from modules.io.dicom import files, header
from modules.io.volume import CaseError
from tests.conftest import shared_path

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "nicom", "tests", "data")
PHILIPS = ("dicom", "dcm_qa_enh", "In", "Philips", "IM_0027_fMAP.dcm")


def _philips_fmap(tmp_path):
    return shared_path(*PHILIPS)


def _siemens_xa10(tmp_path):
    folder = shared_path("dicom", "dcm_qa_enh", "In", "Siemens", "XA10")
    return os.path.join(folder, sorted(n for n in os.listdir(folder) if n.endswith(".dcm"))[0])


def _philips_mprage(tmp_path):
    out = tmp_path / "mprage.dcm"
    with gzip.open(os.path.join(NIBABEL_DATA, "philips_mprage.dcm.gz")) as fh:
        out.write_bytes(fh.read())
    return str(out)


def _implicit_vr(tmp_path):
    """The Philips file re-encoded implicit VR little endian (no VRs to check in the groups)."""
    ds = pydicom.dcmread(shared_path(*PHILIPS))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    out = tmp_path / "implicit.dcm"
    ds.save_as(str(out), enforce_file_format=True, implicit_vr=True, little_endian=True)
    return str(out)


ENHANCED_FILES = {
    "philips_fmap": _philips_fmap,
    "siemens_xa10": _siemens_xa10,
    "philips_mprage": _philips_mprage,
    "philips_fmap_implicit_vr": _implicit_vr,
}


def _same_info(ours: files.FileInfo, theirs: files.FileInfo) -> None:
    assert (ours.meta, ours.identifiers, ours.patient_id, ours.n_frames) == (
        theirs.meta,
        theirs.identifiers,
        theirs.patient_id,
        theirs.n_frames,
    )
    assert len(ours.frames) == len(theirs.frames)
    for a, b in zip(ours.frames, theirs.frames):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=field.name)
            else:
                assert x == y, (field.name, x, y)


@pytest.mark.parametrize("case", sorted(ENHANCED_FILES))
def test_fast_reader_gives_pydicoms_frames(case, tmp_path):
    path = ENHANCED_FILES[case](tmp_path)
    with open(path, "rb") as fh:
        parsed = header.parse(fh.read())
    assert parsed is not None and not parsed.needs_pydicom, "plain enhanced file left to pydicom"
    assert parsed.get("PerFrameFunctionalGroupsSequence")
    files.clear_cache()
    ours = files.read_file_info(path)
    theirs = files.file_info_from_dataset(pydicom.dcmread(path), path)
    _same_info(ours, theirs)
    assert ours.pixel_offset == parsed.pixel_offset and ours.pixel_dtype


def test_enhanced_file_is_read_without_pydicom(tmp_path):
    """Listing and reading both stacks of the Philips file parses it once, by header.parse; the
    pixels are read straight from the file."""
    folder = os.path.dirname(shared_path(*PHILIPS))
    files.clear_cache()
    with (
        mock.patch.object(pydicom, "dcmread", wraps=pydicom.dcmread) as dcmread,
        mock.patch.object(header, "parse", wraps=header.parse) as parse,
    ):
        stacks, _ = dicom.list_stacks(folder)
        volumes = [dicom.read_series(paths, key) for key, paths in stacks]
    assert dcmread.call_count == 0
    full_parses = [c for c in parse.call_args_list if len(c.args[0]) == os.path.getsize(shared_path(*PHILIPS))]
    assert len(full_parses) == 1
    assert [v.array.shape for v in volumes] == [(64, 64, 32), (64, 64, 32)]


def _with_two_echo_times(ds):
    # FD with two values: VM 1 in the standard, so header.parse leaves the file to pydicom.
    ds.PerFrameFunctionalGroupsSequence[0].MREchoSequence[0].EffectiveEchoTime = [1.0, 2.0]


def _with_text_frame_number(ds):
    # FrameAcquisitionNumber (US) written as a string VR: a VR other than the standard's.
    content = ds.PerFrameFunctionalGroupsSequence[3].FrameContentSequence[0]
    content.add_new(0x00209156, "LO", "7")


def _without_plane_position(ds):
    # Same result either way: the frame is refused for want of geometry.
    del ds.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence


MUTATIONS = {
    "fd_two_values": (_with_two_echo_times, False),
    "us_as_text": (_with_text_frame_number, False),
    "no_plane_position": (_without_plane_position, True),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_odd_functional_groups_give_pydicoms_frames(case, tmp_path):
    mutate, fast = MUTATIONS[case]
    ds = pydicom.dcmread(shared_path(*PHILIPS))
    mutate(ds)
    path = str(tmp_path / "odd.dcm")
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as fh:
        parsed = header.parse(fh.read())
    assert (parsed is not None and not parsed.needs_pydicom) == fast
    files.clear_cache()
    _same_info(files.read_file_info(path), files.file_info_from_dataset(pydicom.dcmread(path), path))


@pytest.mark.parametrize("keep", [100_000, 145_000, 300_000, 600_000])
def test_truncated_enhanced_file_is_refused(keep, tmp_path):
    """Cut inside the functional groups (or the pixels): refused with one line naming the file."""
    with open(shared_path(*PHILIPS), "rb") as fh:
        data = fh.read()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:keep])
    assert header.parse(data[:keep]) is None or keep > 145_814
    files.clear_cache()
    with pytest.raises(CaseError, match="cut.dcm"):
        files.read_file_info(str(path))


def test_functional_groups_beyond_the_buffer_are_not_trusted():
    """A defined-length sequence claiming more bytes than the buffer holds: None, never a partial parse."""
    ds = pydicom.dcmread(shared_path(*PHILIPS))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert header.parse(data[:65536], len(data)) is None
