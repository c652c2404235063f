"""Scenario files for `edgemart fleet --scenario`: every field maps onto the run's options,
anything wrong is refused naming the file and the field, and flags win over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators import scenario
from simulators.options import FleetOptions
from simulators.scenario import SCENARIOS, ScenarioError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_standard_scenario_is_the_default_run() -> None:
    assert scenario.options(SCENARIOS / "standard.toml") == FleetOptions()


def test_the_world_pace_example_maps_onto_the_options() -> None:
    options = scenario.options(SCENARIOS / "world-day.toml")
    assert options.pace == "world"
    assert options.compress == 1440
    assert options.devices == 200  # 50 households of 4
    assert options.profiles == ("hub", "tv", "phone", "speaker")
    assert dict(options.consent_shares) == {"personalization": 0.7, "marketing": 0.8}
    assert options.fault_times == (("partition", 45.0, 5.0),)
    assert options.faults == ("partition",)
    assert options.campaigns == ((20.0, 3),)


@pytest.mark.parametrize(
    ("text", "field", "why"),
    [
        ("sed = 3\n", "sed", "Extra inputs are not permitted"),
        ("[usage]\nrounds = 'many'\n", "usage.rounds", "valid integer"),
        ("[usage]\npace = 'world'\nsignals_per_round = 5\n", "usage", "signals_per_round"),
        ("[usage]\ncompress = 60\n", "usage", "compress is for pace 'world'"),
        ("[mix]\nprofiles = ['fridge']\n", "mix.profiles.0", "'hub'"),
        ("[mix.consent]\nmarketing = 1.5\n", "mix", "consent.marketing"),
        ("[[faults]]\nfault = 'flood'\nat_s = 1\nfor_s = 1\n", "faults.0.fault", "partition"),
        ("[[faults]]\nfault = 'partition'\nat_s = 1\n", "faults.0.for_s", "Field required"),
        ("[[campaigns]]\nat_s = -1\n", "campaigns.0.at_s", "greater than or equal"),
        ("households = 2\ndevices = 8\n", "(top level)", "not both"),
        ("[mix]\nworld_households = 1\n", "mix.world_households", "greater than or equal"),
    ],
)
def test_a_bad_field_is_refused_naming_the_file_and_the_field(
    tmp_path: Path, text: str, field: str, why: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        scenario.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert f"{field}: " in message
    assert why in message


def test_a_file_that_is_not_toml_or_absent_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"run\.toml: not TOML"):
        scenario.load(write(tmp_path, "seed = = 1\n"))
    with pytest.raises(ScenarioError, match=r"absent\.toml: cannot read"):
        scenario.load(tmp_path / "absent.toml")


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "seed = 4\nhouseholds = 2\n[mix]\nprofiles = ['tv', 'phone']\n"
        "[[faults]]\nfault = 'partition'\nat_s = 1\nfor_s = 2\n",
    )
    options = scenario.options(path, seed=9, devices=5, faults=None, pace=None)
    assert options.seed == 9
    assert options.households == 3  # 5 devices in households of 2, rounded up
    assert options.fault_times == (("partition", 1.0, 2.0),)
    # a fault list on the command line replaces the file's: on the round plan
    moved = scenario.options(path, faults=("gateway-restart",))
    assert moved.faults == ("gateway-restart",)
    assert moved.fault_times == ()


def test_a_combination_the_run_cannot_take_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "households = 4\n[mix]\nworld_households = 4\n")
    with pytest.raises(
        ScenarioError, match=r"run\.toml \(with the flags given\): world_households"
    ):
        scenario.options(path)
