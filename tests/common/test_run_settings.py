"""One table of run settings: every default comes from it, and a wrong key or value is named."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedmeta.common import (
    DATA_EVAL_SHOTS,
    DATASET_LR,
    RUN_SETTINGS,
    EvaluationSettings,
    FamilyConfig,
    RoundSettings,
    UnknownSettingError,
    app_config_defaults,
    check_run_config,
    parse_shots,
    resolve_run_config,
)
from fedmeta.server import ServerSettings

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_pyproject_app_config_is_the_tables_app_settings():
    declared = PYPROJECT["tool"]["flwr"]["app"]["config"]
    expected = app_config_defaults()
    assert declared == expected, "\n".join(
        f"{key}: pyproject {declared.get(key, '<missing>')!r}, table {expected.get(key, '<missing>')!r}"
        for key in sorted(set(declared) | set(expected))
        if declared.get(key) != expected.get(key)
    )


def test_simulation_only_settings_are_not_in_the_app_config():
    simulation_only = {name for name, setting in RUN_SETTINGS.items() if setting.readers == ("simulation",)}
    assert simulation_only == {"inject-faults", "tables", "held-out-tables"}
    assert not simulation_only & set(PYPROJECT["tool"]["flwr"]["app"]["config"])


def test_round_and_evaluation_defaults_are_the_tables():
    defaults = resolve_run_config({})
    round_settings, evaluation = RoundSettings(), EvaluationSettings()
    per_round = {"server_round", "tree_factories", "recipe_shots"}  # the server sets these round by round
    for field in dataclasses.fields(RoundSettings):
        if field.name not in per_round:
            assert getattr(round_settings, field.name) == defaults[field.name.replace("_", "-")], field.name
    assert evaluation.shots == parse_shots(str(defaults["eval-shots"]))
    for field, key in [("steps", "eval-steps"), ("lr", "eval-lr"), ("recipe", "eval-recipe"), ("tasks", "eval-tasks"),
                       ("query_size", "eval-query-size"), ("local_only_steps", "local-only-steps"),
                       ("local_only_lr", "local-only-lr"), ("seed", "seed"), ("algorithm", "algorithm"),
                       ("tree_depth", "tree-depth"), ("tree_subsample", "tree-subsample")]:
        assert getattr(evaluation, field) == defaults[key], field


def test_synthetic_family_defaults_are_the_tables():
    family = {f.name: f.default for f in dataclasses.fields(FamilyConfig)}
    for key, field in [("num-factories", "num_factories"), ("num-held-out", "num_held_out"),
                       ("min-samples", "min_samples"), ("max-samples", "max_samples"), ("family-seed", "seed")]:
        assert RUN_SETTINGS[key].default == family[field], key


def test_server_settings_without_a_config_are_the_defaults(tmp_path):
    settings = ServerSettings.from_run_config({"run-dir": str(tmp_path)})
    assert settings.num_rounds == RUN_SETTINGS["num-server-rounds"].default
    assert settings.sampling.min_train_nodes == RUN_SETTINGS["min-train-nodes"].default
    assert settings.outer.kind == RUN_SETTINGS["outer-optimizer"].default
    assert settings.timeout == RUN_SETTINGS["timeout"].default


@pytest.mark.parametrize(("typo", "meant"), [("inner_lr", "inner-lr"), ("num-rounds", "num-server-rounds"),
                                             ("eval-shot", "eval-shots")])
def test_an_unknown_key_is_an_error_that_suggests_the_known_one(typo, meant):
    with pytest.raises(UnknownSettingError, match=f"unknown run setting '{typo}'; did you mean '{meant}'"):
        resolve_run_config({typo: 1})


def test_an_unknown_key_far_from_any_lists_the_known_ones():
    with pytest.raises(UnknownSettingError, match="known settings: algorithm, compare-with"):
        check_run_config({"zzz": 1})


def test_server_settings_refuse_an_unknown_key(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'local-lr'"):
        ServerSettings.from_run_config({"run-dir": str(tmp_path), "local_lr": 0.1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-server-rounds", "ten", "'num-server-rounds' must be an integer, got 'ten'"),
        ("num-server-rounds", 2.5, "'num-server-rounds' must be an integer, got 2.5"),
        ("num-server-rounds", True, "'num-server-rounds' must be an integer, got True"),
        ("inner-lr", "fast", "'inner-lr' must be a number, got 'fast'"),
        ("resume", 1, "'resume' must be true or false, got 1"),
        ("algorithm", 3, "'algorithm' must be a string, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_run_config({key: value})


def test_an_integer_is_accepted_where_a_number_is_expected():
    assert resolve_run_config({"outer-lr": 2})["outer-lr"] == 2.0


@pytest.mark.parametrize("dataset", sorted(DATASET_LR))
def test_automatic_step_sizes_follow_the_data_set(dataset):
    values = resolve_run_config({"dataset": dataset})
    assert values["inner-lr"] == values["eval-lr"] == values["local-only-lr"] == DATASET_LR[dataset]


def test_given_step_sizes_win_over_automatic_ones():
    values = resolve_run_config({"dataset": "cmapss", "inner-lr": 0.02, "eval-lr": 0.1})
    assert (values["inner-lr"], values["eval-lr"], values["local-only-lr"]) == (0.02, 0.1, 0.02)


def test_automatic_evaluation_shots_are_what_the_data_can_supply():
    assert resolve_run_config({})["eval-shots"] == "1,5,10,20"
    assert resolve_run_config({"family": "fault"})["eval-shots"] == DATA_EVAL_SHOTS["fault"]
    assert resolve_run_config({"dataset": "ai4i"})["eval-shots"] == DATA_EVAL_SHOTS["ai4i"]
    assert resolve_run_config({"family": "fault", "eval-shots": "5"})["eval-shots"] == "5"


def test_a_deployment_refuses_a_setting_only_the_simulation_reads():
    with pytest.raises(UnknownSettingError, match="'inject-faults' applies to `fedmeta simulate` only"):
        check_run_config({"inject-faults": "0:crash"}, app=True)
    assert check_run_config({"inject-faults": "0:crash"}) == {"inject-faults": "0:crash"}


def test_every_setting_says_what_it_does_and_who_reads_it():
    for name, setting in RUN_SETTINGS.items():
        assert setting.help.strip() and setting.readers, name
        assert set(setting.readers) <= {"server", "client", "simulation"}, name
        assert isinstance(setting.default, bool | int | float | str), name
