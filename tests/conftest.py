"""Shared fixtures: small synthetic phantoms written once per session."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


# The smallest pipeline run that still plans, trains, evaluates and pushes: one timed calibration
# step, 60 training steps whatever the 1-minute budget would allow (it allows none after export).
TINY_RUN_SETTINGS = [
    "train_steps=60",
    "epochs=1",
    "eval_steps=2",
    "planning.budget_minutes=1",
    "planning.calibration_steps=1",
    "val_dice_cases=2",
]


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


# marker -> (environment variable that runs it, why it is skipped otherwise)
OPT_IN_MARKERS = {
    "bench": ("MEDTFX_BENCH", "long benchmark: set MEDTFX_BENCH=1 (make bench-*)"),
    "distributed": (
        "MEDTFX_DISTRIBUTED",
        "pipeline through Beam's portable runner or from an object store (tens of minutes on two "
        "cores): set MEDTFX_DISTRIBUTED=1 (make test-distributed)",
    ),
}


def pytest_collection_modifyitems(config, items):
    """`bench` tests (long real-data runs) only run with MEDTFX_BENCH=1 (make bench-*),
    `distributed` ones with MEDTFX_DISTRIBUTED=1 (make test-distributed)."""
    for marker, (variable, reason) in OPT_IN_MARKERS.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker) is not None:  # markers only, not node names
                item.add_marker(skip)
