"""Config: YAML + overrides, strict keys with 'did you mean', resolved copy written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dinotune.config import load_config, parse_override, read_yaml, save_resolved, validate
from dinotune.errors import ConfigError
from dinotune.verbs.embed import EmbedConfig
from dinotune.verbs.probe import ProbeConfig


def test_yaml_then_cli_values_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: imgs\nout: e.safetensors\nbatch_size: 8\nbackbone:\n  source: random:vit_test16\n")
    cfg = load_config(EmbedConfig, path, ["batch_size=16", "backbone.in_chans=1"], base={"image_size": 64})
    assert cfg.batch_size == 16 and cfg.image_size == 64
    assert cfg.backbone.source == "random:vit_test16" and cfg.backbone.in_chans == 1


def test_unset_cli_options_do_not_override_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data_dir: a\nout: b\nbackbone: {source: x.pth}\n")
    cfg = load_config(EmbedConfig, path, [], base={"batch_size": None, "backbone": {"source": None}})
    assert cfg.backbone.source == "x.pth" and cfg.batch_size == 32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_sise=3", "unknown key 'batch_sise'; did you mean 'batch_size'"),
        ("backbone.sorce=a", "unknown key 'backbone.sorce'; did you mean 'backbone.source'"),
        ("image_size=abc", "'image_size': Input should be a valid integer"),
        ("batch_size=0", "'batch_size'"),
    ],
)
def test_bad_keys_and_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(EmbedConfig, None, [override], base={"data_dir": "a", "out": "b"})


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("batch_size")
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=null") == (["a"], None)


def test_broken_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data_dir: a\nout: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml' is not valid YAML at line"):
        load_config(EmbedConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EmbedConfig, tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(EmbedConfig, None, ["image_size=96"], base={"data_dir": "a", "out": "b"})
    written = save_resolved(cfg, tmp_path / "run")
    data = yaml.safe_load(written.read_text())
    assert data["image_size"] == 96 and "num_workers" in data and "backbone" in data
    assert load_config(EmbedConfig, written) == cfg


def test_example_configs_are_valid() -> None:
    """Every shipped YAML validates against the config model of the command it is for."""
    from dinotune.config import read_yaml
    from dinotune.verbs.train import TRAIN_TASKS, train_job

    configs = Path(__file__).resolve().parents[1] / "configs"
    found = sorted(configs.rglob("*.yaml"))
    assert len(found) >= 8, found
    for path in found:
        task = read_yaml(path).get("task")
        if task is not None:
            assert task in TRAIN_TASKS, path
            load_config(train_job(task)[0], path, ["data.root=/data/images"])
        elif path.name == "embed.yaml":
            load_config(EmbedConfig, path, ["data_dir=imgs", "out=e.safetensors"])
        else:
            raise AssertionError(f"{path.name}: no test knows which command it is for")


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(10))}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")  # ~500 bytes that expand to 10^9 strings
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than") as err:
        read_yaml(path)
    assert time.perf_counter() - start < 2 and "\n" not in str(err.value) and len(str(err.value)) < 300


def test_validation_errors_stay_short_for_huge_values() -> None:
    with pytest.raises(ConfigError) as err:
        validate(ProbeConfig, {"data": {"root": "x", "image_size": ["y" * 100_000]}})
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)
