"""Shared fixtures: small synthetic phantoms written once per session."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """4 phantoms (CT and MR, three orientations) as Decathlon NIfTI and DICOM series."""
    from pipeline.tools.phantoms import synthesize

    out = str(tmp_path_factory.mktemp("phantoms"))
    synthesize(out, n_cases=4, seed=7)
    return out


def shared_path(*parts):
    """Path under ../shared/data, or skip (locally) / fail (CI) when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"{path} not available")
    return path


def pytest_collection_modifyitems(config, items):
    """`bench` tests (long real-data runs) only run with MEDTFX_BENCH=1 (make bench-*)."""
    if os.environ.get("MEDTFX_BENCH") == "1":
        return
    skip = pytest.mark.skip(reason="long benchmark: set MEDTFX_BENCH=1 (make bench-*)")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)
