from pathlib import Path

import pandas as pd
import pytest

from fleetsim.analysis.load import load_runs
from fleetsim.analysis.metrics import time_to_accuracy_table
from fleetsim.errors import FleetsimInputError


def test_tables_carry_run_and_flattened_scenario(make_run) -> None:
    a = make_run(name="a", seed=0, units_per_device=2)
    b = make_run(name="b", seed=1, units_per_device=5, accuracies=None)
    runs = load_runs([a, b])
    assert runs.runs == ["a", "b"]
    assert list(runs.summary["protocol.perturbations_per_device"]) == [2, 5]
    assert list(runs.summary["run.seed"]) == [0, 1]
    assert list(runs.summary["systems_only"]) == [False, True]
    # JSON null (systems-only final accuracy) is a missing value, not a number
    assert pd.isna(runs.summary.loc[1, "final_accuracy"])
    assert set(runs.steps["run"]) == {"a", "b"}
    assert "policy.name" in runs.steps.columns and "policy.name" in runs.devices.columns
    assert set(runs.events["run"]) == {"a", "b"}
    assert runs.varying_params() == [
        "numerics.engine",
        "protocol.perturbations_per_device",
        "run.seed",
    ]
    assert len(runs.with_params(runs.events, ["run.seed"])) == len(runs.events)
    assert runs.subset(["b"]).runs == ["b"]


def test_same_directory_names_get_distinct_ids(tmp_path: Path, make_run) -> None:
    first = make_run(name="run")
    second = tmp_path / "other" / "run"
    second.parent.mkdir()
    first.rename(second)
    third = make_run(name="run")
    runs = load_runs([second, third])
    assert runs.runs == ["other/run", "runs/run"]


@pytest.mark.parametrize(
    "missing",
    ["steps.parquet", "summary.json", "scenario.yaml", "devices.parquet", "events.parquet"],
)
def test_missing_file_is_named(make_run, missing: str) -> None:
    run = make_run(name="a")
    (run / missing).unlink()
    with pytest.raises(FleetsimInputError, match=missing):
        load_runs([run])


def test_corrupt_and_incomplete_files_are_named(make_run) -> None:
    run = make_run(name="a")
    (run / "steps.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FleetsimInputError, match="steps.parquet: cannot read"):
        load_runs([run])

    run = make_run(name="b")
    pd.read_parquet(run / "devices.parquet").drop(columns=["wasted_s"]).to_parquet(
        run / "devices.parquet"
    )
    with pytest.raises(FleetsimInputError, match="devices.parquet: missing column.*wasted_s"):
        load_runs([run])

    run = make_run(name="c")
    (run / "summary.json").write_text('{"steps": 3}')
    with pytest.raises(FleetsimInputError, match="summary.json: missing summary key"):
        load_runs([run])

    run = make_run(name="d")
    (run / "scenario.yaml").write_text("- just\n- a list\n")
    with pytest.raises(FleetsimInputError, match="scenario.yaml.*mapping"):
        load_runs([run])

    with pytest.raises(FleetsimInputError, match="not a run directory"):
        load_runs([run / "nowhere"])
    with pytest.raises(FleetsimInputError, match="no run directories"):
        load_runs([])


def test_unknown_group_key_lists_the_keys_that_vary(make_run) -> None:
    runs = load_runs([make_run(name="a", seed=0), make_run(name="b", seed=1)])
    with pytest.raises(FleetsimInputError, match="protocol.v.*differ between runs: run.seed"):
        time_to_accuracy_table(runs, [0.5], by="protocol.v")
