"""Settings: one validated model per stage; `--set` and `--config` give one clear line per
mistake (exit code 2, no traceback); the keys a user set are remembered for the planner."""

import json

import pytest

from modules.settings import STAGES, TrainingSettings
from pipeline import cli
from pipeline.config import ConfigError, PipelineConfig, describe_settings, make_config, resolve_key


@pytest.mark.parametrize(
    "override,expected",
    [
        ("augment=False", ("training", "augment", False)),
        ("augment=false", ("training", "augment", False)),
        ("training.augment=0", ("training", "augment", False)),
        ("mixed_precision=False", ("training", "mixed_precision", False)),
        ("mixed_precision=true", ("training", "mixed_precision", True)),
        ("target_spacing=[1.5,1.5,3]", ("transform", "target_spacing", (1.5, 1.5, 3.0))),
        ("target_spacing=null", ("transform", "target_spacing", None)),
        ("loss=gdice", ("training", "loss", "gdice")),
        ("filters=[16,32,64]", ("training", "filters", (16, 32, 64))),
        ("lr_schedule=constant", ("training", "lr_schedule", "constant")),
        ("cache=false", ("training", "cache", False)),
        ("sliding_window_overlap=0.25", ("training", "sliding_window_overlap", 0.25)),
        ("budget_minutes=12", ("planning", "budget_minutes", 12.0)),
        ("beam_profile=flink", ("runner", "beam_profile", "flink")),
        ('augmentation={"p_rotation": 0}', ("training", "augmentation", None)),
    ],
)
def test_set_parses_and_types_values(override, expected):
    stage, field, value = expected
    cfg = make_config([override])
    got = getattr(getattr(cfg, stage), field)
    if field == "augmentation":
        assert got.p_rotation == 0.0 and got.p_scale == 0.2  # the rest keep their defaults
    else:
        assert got == value and type(got) is type(value)
    assert f"{stage}.{field}" in cfg.user_keys


@pytest.mark.parametrize(
    "override,message",
    [
        ("augment=maybe", "training.augment: Input should be a valid boolean"),
        ("target_spacing=[1.5,1.5]", "transform.target_spacing: wrong number of values"),
        ("num_classes=2.7", "training.num_classes: Input should be a valid integer"),
        ("loss=dicee", "training.loss: must be one of 'dice', 'dice_ce', 'gdice' or 'ce' (did you mean 'dice'?)"),
        ("filters=16", "training.filters: Input should be a valid tuple"),
        ("agument=true", "unknown setting 'agument' (did you mean 'augment'"),
        ("tta_mirror_axes=[3]", "training.tta_mirror_axes[0]: must be one of 0, 1 or 2"),
        ("kernel_sizes=[[3,3,3]]", "kernel_sizes has 1 entries: expected len(filters) = 3"),
        ("seed", "--set 'seed': expected key=value"),
        ("intensity_window=[5,5]", "intensity_window (5.0, 5.0): expected lo < hi"),
    ],
)
def test_bad_set_is_one_line_and_exit_code_2(override, message, capsys):
    with pytest.raises(ConfigError) as err:
        make_config([override])
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--data", "nowhere", "--workdir", "nowhere", "--set", override])
    assert exit_info.value.code == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith("error: ") and "Traceback" not in err_text


def test_ambiguous_and_dotted_keys():
    # Every flat key resolves to exactly one stage, or names the stages to choose from.
    for stage, model in STAGES.items():
        for field in model.model_fields:
            assert resolve_key(f"{stage}.{field}") == f"{stage}.{field}"
    with pytest.raises(ConfigError, match="training.nonsense"):
        resolve_key("training.nonsense")


def test_config_file_then_set(tmp_path):
    path = tmp_path / "medtfx.yaml"
    path.write_text("training:\n  filters: [8, 16]\n  loss: dice\nbudget_minutes: 5\n")
    cfg = make_config(["loss=ce"], str(path))
    assert cfg.training.filters == (8, 16) and cfg.training.loss == "ce"
    assert cfg.planning.budget_minutes == 5.0
    assert set(cfg.user_keys) == {"training.filters", "training.loss", "planning.budget_minutes"}
    assert cfg.user_overrides() == {"training.filters": [8, 16], "training.loss": "ce", "planning.budget_minutes": 5.0}
    path.write_text("training: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'training' must be a mapping"):
        make_config([], str(path))
    path.write_text("training:\n  filterz: [8]\n")
    with pytest.raises(ConfigError, match="did you mean 'training.filters'"):
        make_config([], str(path))


def test_every_setting_is_documented_and_serialises():
    text = describe_settings()
    for stage, model in STAGES.items():
        for name, field in model.model_fields.items():
            assert field.description, f"{stage}.{name} has no description"
            assert f"{stage}.{name} = " in text
    cfg = PipelineConfig()
    # A component's custom_config is its stage's JSON; it parses back to the same settings.
    dumped = json.loads(json.dumps(cfg.training.model_dump(mode="json")))
    assert TrainingSettings.model_validate(dumped) == cfg.training
