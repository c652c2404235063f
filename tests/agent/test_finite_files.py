"""Numbers that enter the agent from files and the environment are finite: a config file's
`inf`/`nan` (TOML has them), an environment value's `NaN`, a kept model manifest's
`Infinity` are refused with the field and the file, never served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.errors import ConfigError
from agent.model.files import load_kept
from agent.model.scoring import default_model_paths


def settings(tmp_path: Path, **kwargs: object) -> None:
    load_settings(
        "tv",
        "tv-0001",
        "mqtt://127.0.0.1:1883",
        tmp_path / "data",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("literal", ["inf", "nan", "-inf"])
def test_a_config_file_with_a_non_finite_number_names_the_field_and_the_file(
    tmp_path: Path, literal: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"[budgets]\nscoring_cpu_ms = {literal}\n")
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, config_file=config, environ={})
    assert caught.value.field == "budgets.scoring_cpu_ms"
    assert str(config) in str(caught.value)


def test_an_environment_value_with_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, environ={"EDGEMART_BUDGETS": '{"scoring_cpu_ms": NaN}'})
    assert caught.value.field == "EDGEMART_BUDGETS" and "NaN" in str(caught.value)


def test_a_kept_manifest_with_a_non_finite_number_is_not_served(tmp_path: Path) -> None:
    onnx, manifest_path = default_model_paths()
    manifest = json.loads(manifest_path.read_text())
    models = tmp_path / "models"
    models.mkdir()
    (models / "v7.onnx").write_bytes(onnx.read_bytes())
    text = json.dumps({**manifest, "version": 7})
    (models / "v7.json").write_text(text)
    (models / "current").write_text('{"version": 7}')
    current, _ = load_kept(models)
    assert current is not None and current.version == 7  # served as it was
    # a value an older writer or a bad disk left: Infinity where a number was
    (models / "v7.json").write_text(text.replace('"version": 7', '"version": 7, "x": Infinity'))
    assert load_kept(models) == (None, None)
