"""load_runs takes a run directory, a sweep folder, a glob pattern or a list of these; the
systems counterpart of time to accuracy (time to N committed steps)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.analysis import load_runs, time_to_steps_runs, time_to_steps_table
from fleetsim.errors import FleetsimInputError
from fleetsim.sweep.index import INDEX_FILE, SweepIndex


def make_sweep(root: Path, write_synthetic_run, statuses: dict[str, str]) -> Path:
    """A sweep folder as ``fleetsim sweep`` leaves it: one directory per run that got a
    summary, ``sweep_index.parquet`` with each run's status (in plan order)."""
    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    index = SweepIndex(sweep / INDEX_FILE)
    for i, (run_id, status) in enumerate(statuses.items()):
        index.add(run_id, {"run.seed": i}, Path("/elsewhere") / run_id)  # moved since
        index.update(run_id, status=status)
        if status == "done":
            write_synthetic_run(sweep, name=run_id, seed=i)
    index.write()
    return sweep


def test_a_string_path_is_one_run_not_its_characters(make_run) -> None:
    run = make_run(name="a")
    for source in (str(run), run, [str(run)], (run,), (p for p in [run]), pd.Series([run])):
        runs = load_runs(source)
        assert runs.runs == ["a"]
        assert set(runs.steps["run"]) == {"a"} and set(runs.events["run"]) == {"a"}
        assert set(runs.devices["run"]) == {"a"}


def test_a_glob_loads_the_matching_run_directories_sorted(make_run, tmp_path) -> None:
    for name in ("b", "a", "c"):
        make_run(name=name)
    (tmp_path / "runs" / "notes.txt").write_text("not a run")
    runs = load_runs(str(tmp_path / "runs" / "*"))
    assert runs.runs == ["a", "b", "c"]
    assert list(runs.steps.groupby("run", sort=False).size().index) == ["a", "b", "c"]
    # a glob and a path naming the same run load it once
    assert load_runs([str(tmp_path / "runs" / "[ab]"), tmp_path / "runs" / "a"]).runs == [
        "a", "b"]
    with pytest.raises(FleetsimInputError, match="no folder matches this pattern"):
        load_runs(str(tmp_path / "runs" / "z*"))


def test_a_sweep_folder_loads_its_runs_in_plan_order(tmp_path, write_synthetic_run) -> None:
    sweep = make_sweep(tmp_path, write_synthetic_run, {"seed=1": "done", "seed=0": "done"})
    runs = load_runs(sweep)
    assert runs.runs == ["seed=1", "seed=0"]
    assert list(runs.summary["run.seed"]) == [0, 1]
    for frame in (runs.steps, runs.events, runs.devices):
        assert set(frame["run"]) == {"seed=0", "seed=1"}
    # a glob over sweep folders loads every run of each
    assert load_runs(str(tmp_path / "swe*")).runs == ["seed=1", "seed=0"]


def test_a_sweep_with_unfinished_runs_is_refused_or_skipped_loudly(
        tmp_path, write_synthetic_run) -> None:
    sweep = make_sweep(tmp_path, write_synthetic_run,
                       {"s0": "done", "s1": "failed", "s2": "pending", "s3": "done"})
    with pytest.raises(FleetsimInputError) as err:
        load_runs(str(sweep))
    assert str(err.value) == (
        f"{sweep}: 2 of 4 runs of this sweep are not done: s1 (failed), s2 (pending); run the "
        "sweep again to finish them, or pass skip_unfinished=True to load the 2 done runs")
    with pytest.warns(UserWarning, match=r"2 of 4 runs .* s1 \(failed\), s2 \(pending\)"):
        runs = load_runs(str(sweep), skip_unfinished=True)
    assert runs.runs == ["s0", "s3"]


def test_a_folder_of_runs_without_an_index_asks_for_a_glob(make_run, tmp_path) -> None:
    make_run(name="a")
    make_run(name="b")
    with pytest.raises(FleetsimInputError, match=r"not a run directory but a folder of 2 of "
                       r"them .*give a glob pattern: '.*runs/\*'"):
        load_runs(tmp_path / "runs")


def test_other_arguments_are_refused(make_run) -> None:
    with pytest.raises(FleetsimInputError, match="got a int"):
        load_runs(3)
    with pytest.raises(FleetsimInputError, match="each entry must be a path"):
        load_runs([make_run(name="a"), 3])
    with pytest.raises(FleetsimInputError, match=r"got a mapping; pass its paths"):
        load_runs({"a": make_run(name="b")})
    with pytest.raises(FleetsimInputError, match="no run directories given"):
        load_runs([])


def test_time_to_committed_steps_by_hand(make_run) -> None:
    # a: steps of 2 s download + 10 s slowest compute + 1 s upload = 13 s each.
    # b: one phone computing 20 s: 23 s a step; step 1 is repeated once (its first attempt
    #    at 46 s commits nothing; the repeat's compute and upload commit it at 67 s).
    a = make_run(name="a")
    b = make_run(name="b", devices=(("pixel7", "npu", 20.0),), repeat_steps=(1,))
    runs = load_runs([a, b])
    per_run = time_to_steps_runs(runs, [2, 4, 5])
    assert per_run["seconds"].tolist()[:2] == [26.0, 52.0]
    assert per_run["seconds"].tolist()[3:5] == [67.0, 113.0]
    assert per_run["seconds"].isna().tolist() == [False, False, True] * 2  # 4 steps only
    table = time_to_steps_table(runs, [2, 5], by=None)
    assert table["median_s"].tolist() == [26.0, math.inf, 67.0, math.inf]
    assert table["reached"].tolist() == [1, 0, 1, 0]
    for bad in (0, 2.5, "3", True):
        with pytest.raises(FleetsimInputError, match="whole number of committed steps"):
            time_to_steps_table(runs, [bad])
    assert isinstance(table, pd.DataFrame)
