import pytest

from orchestrator.cli import main
from orchestrator.config import Config, ConfigError, load_config


def test_shipped_config_equals_the_defaults():
    assert load_config("configs/mini.yaml") == Config()


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        "configs/mini.yaml", ["prune.ratio=0.25", "distill.weights.attention=0.5", "score.scorers=[wli, random]"]
    )
    assert cfg.prune.ratio == [0.25]  # one value is a one-element list
    assert cfg.distill.weights.attention == 0.5
    assert cfg.score.scorers == ["wli", "random"]


@pytest.mark.parametrize(
    "override,field,hint",
    [
        ("prune.scorer=magic", "prune.scorer", "'wli'"),
        ("prune.strategy=greedy", "prune.strategy", "'contiguous'"),
        ("distill.latent_loss=l1", "distill.latent_loss", "'cosine'"),
        ("prune.ratio=1.5", "prune.ratio", "between 0 and 1"),
        ("distill.lrate=0.1", "distill.lrate", "unknown field"),
        ("score.scorers=[wli, nope]", "score.scorers.1", "'angular'"),
        ("world.teacher.heads=3", "world.teacher", "divisible"),
    ],
)
def test_invalid_config_names_field_and_allowed_values(override, field, hint):
    with pytest.raises(ConfigError) as e:
        load_config("configs/mini.yaml", [override])
    assert field in str(e.value) and hint in str(e.value)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["prune.ratio"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_cli_refuses_bad_config_with_exit_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["demo", "--config", "configs/mini.yaml", "--set", "prune.scorer=magic", "--set", f"output_dir={out}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "prune.scorer" in err and "'wli'" in err
    assert not out.exists()
