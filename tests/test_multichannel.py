"""A team's own layouts with real cases: nnU-Net v2 raw folders (one and two channels) and a
Decathlon 4D folder, built from Decathlon hippocampus cases with a synthetic second channel;
then a two-channel dataset trained and predicted end to end.

The second channel is the first one inverted (max - value): another contrast of the same
anatomy on the same grid, as T2 and ADC are.
"""

import json
import os

import numpy as np
import pytest

HIPPOCAMPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hippocampus")
CASES = [f"hippocampus_{n:03d}" for n in (1, 3, 4, 8, 11, 14, 15, 17, 19)]
LABELS_V2 = {"background": 0, "Anterior": 1, "Posterior": 2}


def _require_data():
    if not os.path.isdir(HIPPOCAMPUS):
        pytest.skip(f"real hippocampus cases not found at {os.path.abspath(HIPPOCAMPUS)}")


def _load(case):
    import nibabel as nib

    image = nib.load(os.path.join(HIPPOCAMPUS, "imagesTr", case + ".nii.gz"))
    label = nib.load(os.path.join(HIPPOCAMPUS, "labelsTr", case + ".nii.gz"))
    return image, label


def _second_channel(data: np.ndarray) -> np.ndarray:
    return (data.max() - data).astype(np.float32)


def _save(array, affine, path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), path)


def build(root, layout: str, cases=CASES, test_cases=1) -> str:
    """layout: 'nnunet1' | 'nnunet2' (nnU-Net v2, one or two channels) | 'decathlon4d'."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    two = layout != "nnunet1"
    for i, case in enumerate(cases):
        image, label = _load(case)
        data = np.asarray(image.dataobj, dtype=np.float32)
        folder = "imagesTs" if i >= len(cases) - test_cases else "imagesTr"
        if layout == "decathlon4d":
            _save(np.stack([data, _second_channel(data)], axis=-1), image.affine, f"{root}/{folder}/{case}.nii.gz")
        else:
            _save(data, image.affine, f"{root}/{folder}/{case}_0000.nii.gz")
            if two:
                _save(_second_channel(data), image.affine, f"{root}/{folder}/{case}_0001.nii.gz")
        if folder == "imagesTr":
            _save(np.asarray(label.dataobj).astype(np.uint8), label.affine, f"{root}/labelsTr/{case}.nii.gz")
    n_train = len(cases) - test_cases
    if layout == "decathlon4d":
        meta = {
            "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": n_train,
            "tensorImageSize": "4D",
        }
    else:
        names = {"0": "T2", "1": "ADC"} if two else {"0": "MRI"}
        meta = {"channel_names": names, "labels": LABELS_V2, "numTraining": n_train, "file_ending": ".nii.gz"}
    with open(os.path.join(root, "dataset.json"), "w") as fh:
        json.dump(meta, fh)
    return root


@pytest.mark.parametrize("layout,channels", [("nnunet1", 1), ("nnunet2", 2), ("decathlon4d", 2)])
def test_layouts_give_one_ok_case_per_case_with_every_file_listed(tmp_path, layout, channels):
    import tensorflow as tf

    from components.image_example_gen import cases as case_lib
    from modules import features as es

    _require_data()
    root = build(str(tmp_path / layout), layout, CASES[:4])
    specs, info = case_lib.find_cases(root)
    assert info.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert info.modality == ("MR" if channels == 1 else "MR,MR")
    records, examples = [], []
    for spec in specs:
        example, record = case_lib.process_case(spec, "salt", set(info.labels))
        records.append(record)
        if example is not None:
            examples.append(example)
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted(r["case_id"] for r in ok) == CASES[:3], records
    listed = sorted(os.path.relpath(p, root) for r in records for p in r["inputs"])
    on_disk = sorted(
        os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names if n != "dataset.json"
    )
    assert listed == on_disk  # every file in exactly one record, imagesTs' with its reason
    test_records = [r for r in records if r["status"] != "ok"]
    assert test_records and all("imagesTs" in r["reason"] for r in test_records)
    decoded = es.decode_case(tf.train.Example.FromString(examples[0].SerializeToString()))
    image, _ = _load(CASES[0])
    data = np.asarray(image.dataobj, dtype=np.float32)
    assert decoded["image"].shape == (data.shape if channels == 1 else data.shape + (2,))
    if channels == 2:  # channel order kept, voxels exact (the files are axis-aligned RAS)
        np.testing.assert_allclose(decoded["image"][..., 1].astype(np.float32), _second_channel(data)[...], atol=1e-3)
        assert decoded["modality"] == "MR,MR"


@pytest.mark.parametrize(
    "defect,reason",
    [
        ("missing_channel", "has channel 0 only; dataset.json declares 2 channels (missing hippocampus_001_0001)"),
        ("other_grid", "a case's channels must share one grid"),
        ("three_channels", "image files for channels [0, 1, 2]"),
        ("3d_in_4d_dataset", "the image has 1 channel"),
    ],
)
def test_channel_defects_quarantine_the_case_with_a_reason(tmp_path, defect, reason):
    import nibabel as nib

    from components.image_example_gen import cases as case_lib

    _require_data()
    layout = "decathlon4d" if defect == "3d_in_4d_dataset" else "nnunet2"
    root = build(str(tmp_path / defect), layout, CASES[:3])
    first = os.path.join(root, "imagesTr", CASES[0])
    if defect == "missing_channel":
        os.remove(first + "_0001.nii.gz")
    elif defect == "other_grid":
        img = nib.load(first + "_0001.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), first + "_0001.nii.gz")
    elif defect == "three_channels":
        img = nib.load(first + "_0001.nii.gz")
        nib.save(img, first + "_0002.nii.gz")
    else:
        img = nib.load(first + ".nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), first + ".nii.gz")
    specs, info = case_lib.find_cases(root)
    records = {r["case_id"]: r for r in (case_lib.process_case(s, "salt", set(info.labels))[1] for s in specs)}
    assert records[CASES[0]]["status"] == "quarantined"
    assert reason in records[CASES[0]]["reason"], records[CASES[0]]["reason"]
    assert records[CASES[1]]["status"] == "ok"


def test_fingerprint_and_plan_describe_each_channel(tmp_path):
    import tensorflow as tf

    from components.image_example_gen import cases as case_lib
    from modules.plan import fingerprint as fp
    from modules.plan import planner

    _require_data()
    root = build(str(tmp_path / "fp"), "nnunet2", CASES[:4])
    specs, info = case_lib.find_cases(root)
    examples = [case_lib.process_case(s, "salt", set(info.labels))[0] for s in specs]
    cases = [
        fp.case_fingerprint_from_example(tf.train.Example.FromString(e.SerializeToString())) for e in examples if e
    ]
    combined = fp.combine(cases)
    assert [c["modality"] for c in combined["channels"]] == ["MR", "MR"]
    first, second = (c["foreground_intensity"] for c in combined["channels"])
    assert first["mean"] != pytest.approx(second["mean"])  # each channel's own statistics
    plan = planner.make_plan(combined, 5, planner.Machine(cpu_count=2, memory_gb=8.0), lambda s: 0.2)
    assert plan["settings"]["transform"]["channels"] == 2
    assert plan["settings"]["training"]["in_channels"] == 2
    decisions = {d["key"]: d for d in plan["decisions"]}
    assert "2 channels" in decisions["transform.channels"]["reason"]


@pytest.mark.slow
def test_two_channel_dataset_trains_and_predicts_end_to_end(tmp_path):
    import nibabel as nib

    from pipeline import cli
    from pipeline.config import make_config
    from pipeline.runners import local

    _require_data()
    data = build(str(tmp_path / "data"), "nnunet2", CASES, test_cases=1)
    from tests.conftest import TINY_RUN_SETTINGS

    cfg = make_config(
        TINY_RUN_SETTINGS,
        data_root=data,
        workdir=str(tmp_path / "work"),
    )
    local.run_local(cfg)
    latest = local.latest_artifacts(os.path.abspath(cfg.metadata_path))
    model_dir = latest["Model"].uri
    with open(os.path.join(model_dir, "Format-Serving", "assets.extra", "model_inputs.json")) as fh:
        assert json.load(fh)["channels"] == 2
    test_case = CASES[-1]
    inputs = [os.path.join(data, "imagesTs", f"{test_case}_000{c}.nii.gz") for c in (0, 1)]
    out = tmp_path / "pred"
    assert cli.main(["predict", "--model", model_dir, *inputs, "--output", str(out)]) == 0
    mask = nib.load(str(out / f"{test_case}.nii.gz"))
    assert mask.shape == nib.load(inputs[0]).shape
    # One channel of a two-channel model is refused with one line naming the file.
    assert cli.main(["predict", "--model", model_dir, inputs[0], "--output", str(tmp_path / "one")]) == 1
    report = json.loads((tmp_path / "one" / "predict_report.json").read_text())
    assert "1 image channel but the model takes 2" in report["results"][0]["reason"]
