"""DICOM SEG from real scanners' multi-frame layouts: enhanced MR (Philips, Siemens XA) and
Siemens mosaics. The SEG is read back by highdicom as a volume and must label the same world
points as the mask; `medtfx predict` must give each input a mask on its own grid and a SEG.

Inputs: nibabel's bundled files (always present) and ../shared/data/dicom (dcm_qa family).
"""

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from modules.io import dicom
from pipeline.client import predict
from tests.conftest import shared_path
from tests.seg_checks import assert_seg_matches_mask_in_world
from tests.serving_double import exported_test_model

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "nicom", "tests", "data")


def _gunzipped(name, folder):
    """nibabel's `name` (.dcm.gz) decompressed into `folder`."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, name[:-3])
    with gzip.open(os.path.join(NIBABEL_DATA, name)) as fh, open(target, "wb") as out:
        out.write(fh.read())
    return folder


def _copied(src, folder):
    os.makedirs(folder, exist_ok=True)
    shutil.copy(src, folder)
    return folder


def _test_mask(shape):
    """(X, Y, Z) uint8 with two labels, asymmetric on every axis so any flip or transpose shows."""
    mask = np.zeros(shape, np.uint8)
    x, y, z = shape
    mask[x // 8 : x // 2, y // 5 : y // 3, 1 : max(2, z // 3)] = 1
    mask[x // 2 : x - 2, y // 2 : y - 3, z // 2 : z - 1] = 2
    return mask


# (id, folder maker, expected native grid shape, SEG frames reference source frames one to one)
CASES = {
    # One enhanced file whose frames are exactly one stack: SEG frames reference source frames.
    "philips_mprage_enhanced": (lambda tmp: _gunzipped("philips_mprage.dcm.gz", tmp), True),
    # One mosaic: the SEG carries its own plane geometry (tiles are not source frames).
    "siemens_dwi_mosaic": (lambda tmp: _gunzipped("siemens_dwi_0.dcm.gz", tmp), False),
    # Siemens XA enhanced, one volume of the 4D series: pixel measures live per frame.
    "siemens_xa10_enhanced": (
        lambda tmp: _copied(shared_path("dicom", "dcm_qa_enh", "In", "Siemens", "XA10", "6_1.dcm"), tmp),
        True,
    ),
    "siemens_epi_mosaic": (
        lambda tmp: _copied(
            shared_path("dicom", "dcm_qa_nih", "In", "20180918Si", "mr_0003", "epi_pe_ap-00001.dcm"), tmp
        ),
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_seg_labels_the_same_world_points_as_the_mask(case, tmp_path):
    import highdicom as hd

    make, frame_aligned = CASES[case]
    folder = make(str(tmp_path / "in"))
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    affine, frames = predict.dicom_native_grid(dicom.read_stack(files)[1])
    mask = _test_mask((frames[0].cols, frames[0].rows, len(frames)))
    n_frames = predict.write_dicom_seg(str(tmp_path / "mask.seg.dcm"), mask, frames, affine, num_classes=3)
    seg = hd.seg.segread(str(tmp_path / "mask.seg.dcm"))
    assert (
        n_frames
        == int(seg.NumberOfFrames)
        == sum(int(np.any(mask[:, :, k] == label)) for k in range(mask.shape[2]) for label in (1, 2))
    )
    assert_seg_matches_mask_in_world(seg, mask, affine)
    references = seg.PerFrameFunctionalGroupsSequence[0].get("DerivationImageSequence") or []
    assert bool(references) == frame_aligned
    if frame_aligned:  # read back through the source's own frame numbers, in slice order
        (source,) = {f.path for f in frames}
        rebuilt = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=dicom.read_header(source).SOPInstanceUID,
            source_frame_numbers=[f.index + 1 for f in frames],
            combine_segments=True,
            skip_overlap_checks=True,
            assert_missing_frames_are_empty=True,
        )  # empty frames are omitted
        np.testing.assert_array_equal(rebuilt, np.transpose(mask, (2, 1, 0)))


def test_each_stack_of_a_two_stack_philips_file_gets_its_own_seg(tmp_path):
    """Philips' field-map file holds a magnitude and a field-map stack at the same positions.
    A SEG of either must land on its stack's grid; predict refuses the folder and names both."""
    import highdicom as hd

    folder = shared_path("dicom", "dcm_qa_enh", "In", "Philips")
    found, _ = dicom.scan_tree(folder)
    assert len(found) == 2
    for n, (key, files) in enumerate(sorted(found.items())):
        stacks, _, infos = dicom.scan_files(files)
        layout = dicom.stack_layout(stacks[key], folder)
        frames = [row[0] for row in layout.grid]
        affine = dicom.LPS_TO_RAS @ layout.affine_lps
        mask = _test_mask((frames[0].cols, frames[0].rows, len(frames)))
        path = str(tmp_path / f"stack{n}.seg.dcm")
        predict.write_dicom_seg(path, mask, frames, affine, num_classes=3)
        assert_seg_matches_mask_in_world(hd.seg.segread(path), mask, affine)
    with pytest.raises(
        predict.PredictError,
        match=r"holds 2 image stacks; choose one with --series N: "
        r"1: .*FIELD_MAP.*; 2: .*MAGNITUDE",
    ):
        predict.read_input(folder)
    with pytest.raises(predict.PredictError, match="--series 3 is out of range: the folder holds 2"):
        predict.read_input(folder, series=3)


def test_predict_series_picks_one_stack_of_a_multi_stack_file(tmp_path):
    """`medtfx predict --series N` on the Philips two-stack file: each run segments the stack it
    names (same grid for both here), and its SEG lands on that grid."""
    import highdicom as hd

    folder = shared_path("dicom", "dcm_qa_enh", "In", "Philips")
    model = predict.InProcessModel(exported_test_model()["model_dir"])
    stacks, _ = dicom.list_stacks(folder)
    for n, (key, files) in enumerate(stacks, 1):
        (record,) = predict.predict_inputs(model, [folder], str(tmp_path / f"out{n}"), log=lambda m: None, series=n)
        assert record["status"] == "ok" and not record.get("warnings"), record
        assert record["stack"] == dicom.describe(key)
        img = nib.load(record["outputs"]["nifti"])
        affine, frames = predict.dicom_native_grid(dicom.read_stack(files, key)[1])
        assert {f.index for f in frames} <= set(range(64)) and len(frames) == 32
        np.testing.assert_allclose(img.affine, affine, atol=1e-4)
        assert_seg_matches_mask_in_world(
            hd.seg.segread(record["outputs"]["dicom_seg"]), np.asarray(img.dataobj), img.affine
        )
    # The CLI: without --series the folder fails (exit 1, reason in the report); with it, ok.
    from pipeline import cli

    argv = ["predict", "--model", exported_test_model()["model_dir"], "--output", str(tmp_path / "cli"), folder]
    assert cli.main(argv) == 1
    assert cli.main(argv[:-1] + ["--series", "2", folder]) == 0


@pytest.mark.parametrize("case", ["philips_mprage_enhanced", "siemens_dwi_mosaic"])
def test_predict_writes_mask_and_seg_on_the_inputs_own_grid(case, tmp_path):
    """End to end through the exported test model (trained on phantoms, so the mask's content
    is not the point): the NIfTI is on the stack's own grid and the SEG agrees with it."""
    import highdicom as hd

    model = exported_test_model()
    folder = CASES[case][0](str(tmp_path / case))
    (record,) = predict.predict_inputs(
        predict.InProcessModel(model["model_dir"]), [folder], str(tmp_path / "out"), log=lambda m: None
    )
    assert record["status"] == "ok" and not record.get("warnings"), record
    img = nib.load(record["outputs"]["nifti"])
    affine, frames = predict.dicom_native_grid(
        dicom.read_stack([os.path.join(folder, f) for f in os.listdir(folder)])[1]
    )
    assert img.shape == (frames[0].cols, frames[0].rows, len(frames))
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert_seg_matches_mask_in_world(
        hd.seg.segread(record["outputs"]["dicom_seg"]), np.asarray(img.dataobj), img.affine
    )
