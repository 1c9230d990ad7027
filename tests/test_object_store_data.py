"""Datasets in object storage: modules/io/storage.py, `medtfx inventory s3://...` / `gs://...` and
a pipeline run on an s3:// dataset, against moto's S3 server and gcp-storage-emulator on
127.0.0.1 (tests/object_stores.py). Every result must equal the same dataset read from disk."""

import csv
import json
import os

import pytest

from modules.io import storage
from tests.object_stores import gcs_emulator, moto_s3

STORES = {"s3": moto_s3, "gs": gcs_emulator}


@pytest.fixture(scope="module", params=sorted(STORES))
def store(request):
    with STORES[request.param]() as running:
        yield running


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small local folder tree: nested folders, an empty-named-looking sibling, bytes to read."""
    root = tmp_path_factory.mktemp("tree")
    files = {
        "top.json": b"{}",
        "a/x.txt": b"hello",
        "a/b/y.bin": bytes(range(10)),
        "a/b/c/z.dcm": b"DICM" * 3,
        "ab/w.txt": b"prefix sibling of a/",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


@pytest.fixture(scope="module")
def remote_tree(store, tree):
    url = store.upload(tree, "tree")
    if url.startswith("s3"):  # a console-made folder marker (the GCS emulator fails on empty uploads)
        store.put("tree/a/empty-folder-marker/", b"")
    return url


CHECKS = [
    ("isdir", "", True),
    ("isdir", "a", True),
    ("isdir", "a/x.txt", False),
    ("isdir", "missing", False),
    ("isfile", "a/x.txt", True),
    ("isfile", "a", False),
    ("isfile", "a/x", False),  # a key prefix of a file is no file
    ("exists", "a/b/c", True),
    ("exists", "a/b/c/z.dcm", True),
    ("exists", "nothing/here", False),
    ("size", "a/b/y.bin", 10),
    ("read_bytes", "a/x.txt", b"hello"),
]


@pytest.mark.parametrize("function, rel, expected", CHECKS)
def test_object_store_answers_like_the_local_folder(tree, remote_tree, function, rel, expected):
    local = os.path.join(tree, rel) if rel else tree
    remote = storage.join(remote_tree, rel) if rel else remote_tree
    assert getattr(storage, function)(local) == expected
    assert getattr(storage, function)(remote) == expected


def test_listdir_and_walk_match_os(tree, remote_tree):
    assert sorted(storage.listdir(remote_tree)) == sorted(os.listdir(tree))
    assert sorted(storage.listdir(storage.join(remote_tree, "a"))) == sorted(
        os.listdir(os.path.join(tree, "a")) + (["empty-folder-marker"] if remote_tree.startswith("s3") else [])
    )

    def relative(walk, root):
        return sorted((storage.relpath(d, root), sorted(dirs), sorted(files)) for d, dirs, files in walk if d)

    local = relative(os.walk(tree), tree)
    remote = [row for row in relative(storage.walk(remote_tree), remote_tree) if "empty-folder-marker" not in row[0]]
    remote = [(d, [n for n in dirs if n != "empty-folder-marker"], files) for d, dirs, files in remote]
    assert remote == local
    # Pruning dirnames in place skips those folders, as with os.walk.
    pruned = []
    for dirpath, dirnames, _ in storage.walk(remote_tree):
        pruned.append(storage.relpath(dirpath, remote_tree))
        dirnames[:] = [d for d in dirnames if d != "a"]
    assert sorted(pruned) == [".", "ab"]


@pytest.mark.parametrize(
    "start, length, expected",
    [(0, None, bytes(range(10))), (3, 4, b"\x03\x04\x05\x06"), (8, 5, b"\x08\x09"), (10, 1, b""), (0, 0, b"")],
)
def test_ranged_reads(tree, remote_tree, start, length, expected):
    for root in (tree, remote_tree):
        assert storage.read_bytes(storage.join(root, "a/b/y.bin"), start, length) == expected


def test_missing_objects_raise_file_not_found(remote_tree):
    with pytest.raises(FileNotFoundError, match="no such object"):
        storage.read_bytes(storage.join(remote_tree, "a/none.bin"))
    with pytest.raises(FileNotFoundError):
        storage.size(storage.join(remote_tree, "a"))  # a folder has no size
    with pytest.raises(FileNotFoundError):
        storage.listdir(storage.join(remote_tree, "nothing"))
    assert list(storage.walk(storage.join(remote_tree, "nothing"))) == []


@pytest.mark.parametrize(
    "function, args, expected",
    [
        ("normpath", ("s3://b/a//b/./c/",), "s3://b/a/b/c"),
        ("normpath", ("gs://b",), "gs://b"),
        ("dirname", ("s3://b/a/x.nii.gz",), "s3://b/a"),
        ("dirname", ("s3://b/x.nii.gz",), "s3://b"),
        ("basename", ("gs://b/a/x.nii.gz",), "x.nii.gz"),
        ("join", ("s3://b/a", "imagesTr", "x.nii"), "s3://b/a/imagesTr/x.nii"),
        ("relpath", ("s3://b/a/imagesTs/x.nii", "s3://b/a"), "imagesTs/x.nii"),
        ("abspath", ("s3://b/a/../c",), "s3://b/c"),
        ("is_remote", ("S3://b/a",), True),
        ("is_remote", ("dicomweb+http://pacs/dicom-web",), False),
        ("is_remote", ("/data/s3:/x",), False),
    ],
)
def test_url_path_arithmetic(function, args, expected):
    assert getattr(storage, function)(*args) == expected


# --- datasets -------------------------------------------------------------------------


def _manifest_dataset(phantom_dir, out):
    """A manifest.csv dataset: the Decathlon phantoms' NIfTI files plus one DICOM series folder."""
    import shutil

    os.makedirs(out)
    rows = []
    for name in sorted(os.listdir(os.path.join(phantom_dir, "decathlon", "imagesTr")))[:2]:
        stem = name.replace("_0000", "")
        shutil.copy(os.path.join(phantom_dir, "decathlon", "imagesTr", name), os.path.join(out, stem))
        shutil.copy(os.path.join(phantom_dir, "decathlon", "labelsTr", stem), os.path.join(out, "label_" + stem))
        rows.append({"image": stem, "label": "label_" + stem, "modality": "MR"})
    series = sorted(os.listdir(os.path.join(phantom_dir, "dicom")))[-1]
    shutil.copytree(os.path.join(phantom_dir, "dicom", series), os.path.join(out, "series"))
    label = os.path.join(out, "series", "label.nii.gz")
    os.rename(label, os.path.join(out, "series_label.nii.gz"))
    rows.append({"image": "series", "label": "series_label.nii.gz", "modality": ""})
    with open(os.path.join(out, "manifest.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "modality"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def _inventory(path, report):
    """`medtfx inventory PATH --report REPORT` -> (exit code, report dict)."""
    from pipeline import cli

    code = cli.main(["inventory", path, "--report", report])
    with open(report) as fh:
        return code, json.load(fh)


def _comparable(report, root):
    """Records with the dataset root removed from every string (local path vs URL)."""
    text = json.dumps(report["cases"], sort_keys=True).replace(root.rstrip("/"), "<root>")
    return sorted(json.loads(text), key=lambda r: json.dumps(r, sort_keys=True))


@pytest.mark.parametrize("layout", ["decathlon", "dicom", "manifest"])
def test_inventory_of_a_bucket_equals_the_local_one(store, phantom_dir, tmp_path, layout):
    local = (
        _manifest_dataset(phantom_dir, str(tmp_path / "manifest"))
        if layout == "manifest"
        else os.path.join(phantom_dir, layout)
    )
    url = store.upload(local, f"datasets/{layout}")
    local_code, local_report = _inventory(local, str(tmp_path / "local.json"))
    code, report = _inventory(url, str(tmp_path / "remote.json"))
    assert code == local_code == 0
    assert "error" not in report, report["error"]
    assert _comparable(report, url) == _comparable(local_report, local)
    assert sum(r["status"] == "ok" for r in report["cases"]) >= 3


def test_inventory_of_a_missing_prefix_says_so_in_one_line(store, tmp_path, capsys):
    code, report = _inventory(f"{store.url}/no/such/dataset", str(tmp_path / "r.json"))
    assert code == 1 and report["cases"] == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "no/such/dataset" in err[0], err


@pytest.mark.distributed
def test_pipeline_ingests_and_plans_an_s3_dataset(phantom_dir, tmp_path):
    """`medtfx plan` (ImageExampleGen, fingerprint, plan; DirectRunner) on s3://: the same
    examples, inventory and fingerprint as from the local folder."""
    from pipeline.config import make_config
    from pipeline.pipeline import PLANNER_ID
    from pipeline.runners import local as local_runner

    def run(data_root, workdir):
        cfg = make_config(["planning.calibration_steps=1"], data_root=data_root, workdir=workdir)
        local_runner.run_local(cfg, until=PLANNER_ID)
        return local_runner.latest_artifacts(os.path.abspath(cfg.metadata_path))

    data = os.path.join(phantom_dir, "decathlon")
    with moto_s3() as s3:
        url = s3.upload(data, "datasets/decathlon")
        remote = run(url, str(tmp_path / "remote"))
    local = run(data, str(tmp_path / "local"))

    def read(artifact, name):
        with open(os.path.join(artifact.uri, name)) as fh:
            return json.load(fh)

    assert _comparable(read(remote["Examples"], "inventory.json"), url) == _comparable(
        read(local["Examples"], "inventory.json"), data
    )
    assert read(remote["medtfx.DatasetFingerprint"], "fingerprint.json") == read(
        local["medtfx.DatasetFingerprint"], "fingerprint.json"
    )
    fingerprint = remote["Examples"].custom_properties["input_fingerprint"].string_value
    assert fingerprint.startswith("split:all,files:") and "sha256:" in fingerprint
