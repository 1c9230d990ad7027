"""Per-run values the Kubeflow run form sets: where the Pusher publishes, and which names
create_pipeline accepts."""

import pytest

from components.atomic_pusher.executor import push_base


@pytest.mark.parametrize(
    "destination,serving_base,model_name,serving_root,expected",
    [
        ("/compiled/medtfx-seg", "", "", "", "/compiled/medtfx-seg"),
        ("/compiled/medtfx-seg", "s3://models/lungs", "liver", "/root/serving", "s3://models/lungs"),
        ("/compiled/medtfx-seg", "", "liver", "s3://b/root/serving/", "s3://b/root/serving/liver"),
        ("/compiled/medtfx-seg", "", "liver", "", "/compiled/medtfx-seg"),
        ("/compiled/medtfx-seg", "", "", "/root/serving", "/compiled/medtfx-seg"),
    ],
)
def test_push_base(destination, serving_base, model_name, serving_root, expected):
    assert push_base(destination, serving_base, model_name, serving_root) == expected


def test_push_base_needs_a_path():
    with pytest.raises(ValueError, match="no serving base path"):
        push_base("", "", "liver", "")


def test_create_pipeline_refuses_unknown_run_parameters():
    from pipeline.config import make_config
    from pipeline.pipeline import create_pipeline

    with pytest.raises(ValueError, match="unknown run parameters \\['budget'\\]"):
        create_pipeline(make_config(), pipeline_root="r", data_root="d", run_parameters={"budget": 1.0})
