"""Re-running a sweep never rewrites history (issue 22, kind 5): every run's own final
status in the index, whatever the number of invocations; ``--retry`` runs again only what it
names; errors and attempts kept; a folder holding runs of other settings refused."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from sweep_fakes import ENDINGS, attempts, fake_run

from fleetsim.errors import FleetsimInputError
from fleetsim.sweep import INDEX_FILE, load_sweep, read_index, run_sweep
from fleetsim.sweep.index import RETRY_CHOICES, RunStatus


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["run_id"]: row for row in frame.to_dict("records")}


# ------------------------------------------------------------------ the shared case, for real

# ../shared/cases/sweep_rerun_turns_diverged_into_done: tiny-bert with lr 1e30, every run
# stops at its first step with a numerical fault (exit 3, summary status "diverged").
CASE_SCENARIO = """\
fleet: {size: 4}
traces:
  availability: {kind: always_online}
  network: {type: fixed, uplink_mbps: 10}
numerics: {engine: torch, threads: 1, server_optimizer: {name: sgd}}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64, max_eval_examples: 40}
protocol: {lr: 1.0e+30, devices_per_step: 4, perturbations_per_device: 2, rounds: 1,
           batches_per_round: 3, eval_every_steps: 1}
run: {name: nan, progress: false}
"""
CASE_SWEEP = "base: scenario.yaml\nseeds: [0, 1]\nout: sweep_out\n"
KEPT = ["run_id", "status", "run_status", "attempts", "error", "final_accuracy",
        "simulated_seconds", "host_seconds", "worker", "started_at", "finished_at"]


def test_case_sweep_rerun_turns_diverged_into_done(tmp_path, sweep_main, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("scenario.yaml").write_text(CASE_SCENARIO)
    Path("sweep.yaml").write_text(CASE_SWEEP)
    command = ["sweep", "sweep.yaml", "--backend", "sequential", "--no-progress"]

    assert sweep_main(command) == 1  # a run that did not end done fails the sweep
    out = capsys.readouterr().out
    first = read_index("sweep_out")
    for row in first.to_dict("records"):
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "diverged"
        assert row["status"] == "diverged" and row["run_status"] == "diverged"
        assert row["attempts"] == 1
        # The error is the run's own account of how it ended (its summary's status_detail).
        assert row["error"] == summary["status_detail"]
        assert row["error"].startswith("the model after step 0 evaluated to a non-finite loss")
        assert math.isnan(row["final_accuracy"])  # a diverged run's accuracy is not counted
    assert "0 done, 2 diverged (2 run now, 0 already ended, --retry failed)" in out
    # The last line says what a re-run does: it does not retry diverged runs by default.
    assert out.splitlines()[-1].startswith(
        "2 diverged run(s) are kept as they ended: a re-run of the same command does not "
        "retry them (the same scenario and seed diverge again;"
    )
    assert out.splitlines()[-1].endswith("or run them again with --retry diverged)")
    assert "re-run the same command to retry" not in out

    # Re-run as the last line describes: nothing runs, the index is unchanged.
    assert sweep_main(command) == 1
    out = capsys.readouterr().out
    assert "0 done, 2 diverged (0 run now, 2 already ended, --retry failed)" in out
    second = read_index("sweep_out")
    pd.testing.assert_frame_equal(first[KEPT], second[KEPT])

    # Asked for, the diverged runs run again (attempt 2) and diverge again.
    assert sweep_main(command + ["--retry", "diverged"]) == 1
    third = read_index("sweep_out")
    assert list(third["status"]) == ["diverged", "diverged"]
    assert list(third["attempts"]) == [2, 2]
    assert list(third["error"]) == list(first["error"])


# ------------------------------------------------------------------ every status, every retry

ENDS = ["ok", "horizon", "diverge", "noprog", "stop", "infeasible", "refuse", "fail"]
STATUS_OF = {"ok": "done", "horizon": "done", "diverge": "diverged", "noprog": "no_progress",
             "stop": "stopped", "infeasible": "infeasible", "refuse": "failed_to_start",
             "fail": "failed"}
RUN_STATUS_OF = {"ok": "completed", "horizon": "horizon_reached", "diverge": "diverged",
                 "noprog": "no_progress", "stop": "stop_requested", "infeasible": "",
                 "refuse": "", "fail": ""}


def _sweep(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n"
                    f"grid:\n  description: [{', '.join(ENDS)}]\n")
    return path


def test_index_records_each_runs_own_final_status(tmp_path, base_scenario):
    result = run_sweep(_sweep(tmp_path), backend="sequential", progress=False, run_fn=fake_run)
    rows = by_id(read_index(tmp_path / "out"))
    for end in ENDS:
        row = rows[f"description={end}"]
        assert row["status"] == STATUS_OF[end], end
        assert row["run_status"] == RUN_STATUS_OF[end], end
        if end in ENDINGS and STATUS_OF[end] != "done":
            assert row["error"] == ENDINGS[end][1]
        elif end == "fail":
            assert row["error"] == "RuntimeError: injected failure | second line of the message"
        elif end == "refuse":  # the runner's own one line, as `fleetsim run` would print it
            assert row["error"] == "data.path: data/missing.csv not found on this worker"
        elif end == "infeasible":
            assert row["error"].startswith("traces: no device can hold the job: ")
        else:
            assert row["error"] == ""
    assert result.counts == {"pending": 0, "running": 0, "done": 2, "diverged": 1,
                             "no_progress": 1, "stopped": 1, "infeasible": 1,
                             "failed_to_start": 1, "failed": 1, "timed_out": 0, "killed": 0}
    assert not result.ok
    assert [r for r, _ in result.failures] == [
        "description=diverge", "description=noprog", "description=stop",
        "description=infeasible", "description=refuse", "description=fail"]
    assert result.advice() == [
        "re-run the same command to retry the 3 stopped/failed_to_start/failed run(s) "
        "(--retry failed, the default)",
        "1 diverged run(s) are kept as they ended: a re-run of the same command does not retry "
        "them (the same scenario and seed diverge again; fix the scenario (e.g. protocol.lr) "
        "and sweep into another --out, or run them again with --retry diverged)",
        "1 no_progress run(s) are kept as they ended: a re-run of the same command does not "
        "retry them (no step committed (see each run's error); change the scenario and sweep "
        "into another --out, or run them again with --retry all)",
        "1 infeasible run(s) are kept as they ended: a re-run of the same command does not "
        "retry them (no device of the fleet can hold the job (see each run's error); change "
        "the model, PEFT, batch or population and sweep into another --out, or run them again "
        "with --retry all)",
    ]


# which runs each --retry choice runs again (by hand from its documented meaning)
RERUN = {
    "failed": {"stop", "refuse", "fail"},
    "diverged": {"diverge"},
    "all": {"diverge", "noprog", "stop", "infeasible", "refuse", "fail"},
    "none": set(),
}


@pytest.mark.parametrize("retry", sorted(RETRY_CHOICES))
def test_rerun_retries_only_what_is_asked(tmp_path, base_scenario, retry):
    path = _sweep(tmp_path)
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    first = read_index(tmp_path / "out")
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run, retry=retry)
    assert again.executed == len(RERUN[retry]) and again.skipped == len(ENDS) - len(RERUN[retry])
    second = read_index(tmp_path / "out")
    for end in ENDS:
        n = 2 if end in RERUN[retry] else 1
        assert attempts(tmp_path / "out" / f"description={end}") == n, end
    assert list(second["attempts"]) == [2 if e in RERUN[retry] else 1 for e in ENDS]
    # Each run ends as before (the fake is deterministic), so status and error are the same
    # whether it was run again or not, and rows not run again are untouched.
    assert list(second["status"]) == list(first["status"])
    assert list(second["error"]) == list(first["error"])
    kept = [i for i, e in enumerate(ENDS) if e not in RERUN[retry]]
    pd.testing.assert_frame_equal(first.loc[kept, KEPT], second.loc[kept, KEPT])


def test_killed_and_timed_out_runs_keep_their_error_unless_retried(tmp_path, base_scenario):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n"
                    "grid:\n  description: [a, b, c]\n")
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    # As a sweep leaves them when a worker dies, the run timeout fires, or the sweep process
    # itself dies mid-run: no summary in the run directory.
    index_path = tmp_path / "out" / INDEX_FILE
    frame = pd.read_parquet(index_path)
    for run_id, status, error in (("description=a", "killed", "worker died: OOM"),
                                  ("description=b", "timed_out", "killed after the run "
                                   "timeout of 3 s"),
                                  ("description=c", "running", "")):
        (tmp_path / "out" / run_id / "summary.json").unlink()
        frame.loc[frame["run_id"] == run_id, ["status", "error"]] = [status, error]
    frame.to_parquet(index_path)
    kept = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run,
                     retry="diverged")
    assert kept.executed == 0
    rows = by_id(read_index(tmp_path / "out"))
    assert (rows["description=a"]["status"], rows["description=a"]["error"]) == (
        "killed", "worker died: OOM")
    assert (rows["description=b"]["status"], rows["description=b"]["error"]) == (
        "timed_out", "killed after the run timeout of 3 s")
    assert (rows["description=c"]["status"], rows["description=c"]["error"]) == (
        "killed", "the sweep process ended while this run was going")
    assert all(row["attempts"] == 1 for row in rows.values())
    assert kept.advice() == [
        "re-run the same command to retry the 3 killed/timed_out run(s) (--retry failed, "
        "the default) (timed-out runs need a larger --run-timeout)"
    ]
    retried = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert retried.executed == 3 and retried.ok
    assert list(read_index(tmp_path / "out")["attempts"]) == [2, 2, 2]


def test_lost_index_is_rebuilt_with_the_same_statuses(tmp_path, base_scenario):
    path = _sweep(tmp_path)
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    first = by_id(read_index(tmp_path / "out"))
    (tmp_path / "out" / INDEX_FILE).unlink()
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run,
                      retry="none")
    rows = by_id(read_index(tmp_path / "out"))
    for end in ENDS:
        run_id = f"description={end}"
        if end in ("fail", "refuse", "infeasible"):
            # No summary, no index: nothing says it ever ran, so it runs (and fails again).
            assert rows[run_id]["status"] == STATUS_OF[end] and rows[run_id]["attempts"] == 1
            continue
        for key in ("status", "run_status", "error", "attempts"):
            assert rows[run_id][key] == first[run_id][key], (end, key)
    assert again.executed == 3


def test_deleted_run_directory_is_run_again(tmp_path, base_scenario):
    import shutil

    path = _sweep(tmp_path)
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    shutil.rmtree(tmp_path / "out" / "description=diverge")
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run,
                      retry="none")
    assert again.executed == 1
    row = by_id(read_index(tmp_path / "out"))["description=diverge"]
    assert (row["status"], row["attempts"]) == ("diverged", 2)


# ------------------------------------------------------------------ other settings, same folder


def test_other_settings_into_the_same_folder_are_refused(tmp_path, base_scenario, sweep_main,
                                                         capsys):
    path = tmp_path / "sweep.yaml"
    out = tmp_path / "out"
    path.write_text(f"base: base.yaml\nout: {out}\nseeds: [0, 1]\nset:\n  protocol.rounds: 1\n")
    assert run_sweep(path, backend="sequential", progress=False, run_fn=fake_run).ok

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = snapshot()
    cases = [
        # (sweep file text, extra CLI arguments, the difference the message names)
        (path.read_text().replace("protocol.rounds: 1", "protocol.rounds: 2"), [],
         "protocol.rounds: 1 there, 2 in this sweep"),
        (path.read_text(), ["--set", "fleet.size=9"], "fleet.size: 8 there, 9 in this sweep"),
    ]
    for text, extra, diff in cases:
        path.write_text(text)
        for dry in ([], ["--dry-run"]):
            code = sweep_main(["sweep", str(path), "--backend", "sequential", "--no-progress",
                               *extra, *dry])
            err = capsys.readouterr().err
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
            assert f"sweep.yaml:2: out: {out}/run.seed=0 holds a run of a different scenario " \
                   f"({diff}); nothing was run" in err
        assert snapshot() == before  # nothing of the earlier runs touched, index included
    # The same settings with one more seed extend the sweep: the earlier runs are kept.
    path.write_text(path.read_text().replace("protocol.rounds: 2", "protocol.rounds: 1")
                    .replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    grown = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert grown.executed == 1 and grown.skipped == 2 and grown.ok
    after = snapshot()
    for name, data in before.items():
        if name.startswith("run.seed="):
            assert after[name] == data, name


def test_runs_of_different_scenarios_never_share_a_directory(tmp_path, base_scenario):
    """Issue 24: a sweep's runs with different resolved scenarios never share a directory —
    within one sweep every run has its own directory, and an arm or grid value always
    changes the run id."""
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0]\n"
                    "arms:\n  a: {protocol.rounds: 2}\n  b: {protocol.rounds: 3}\n"
                    "grid:\n  protocol.lr: [0.1, 0.2]\n")
    result = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert result.ok and result.executed == 4
    seen: dict[str, str] = {}
    for row in read_index(tmp_path / "out").to_dict("records"):
        text = (Path(row["run_dir"]) / "scenario.yaml").read_text()
        assert row["run_dir"] not in seen
        assert text not in seen.values()
        seen[row["run_dir"]] = text
    assert len(seen) == 4
    assert load_sweep(path).out_dir == tmp_path / "out"
    # Changing one arm's settings: that arm's directories hold the old arm's runs.
    path.write_text(path.read_text().replace("protocol.rounds: 3", "protocol.rounds: 4"))
    with pytest.raises(FleetsimInputError, match=r"arm=b__protocol.lr=0.1__run.seed=0 holds "
                       r"a run of a different scenario \(protocol.rounds: 3 there, 4 in"):
        run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)


def test_statuses_cover_the_runners_statuses():
    from fleetsim.record.status import STATUSES
    from fleetsim.sweep.index import OUTCOME_OF_RUN_STATUS

    assert set(STATUSES) <= set(OUTCOME_OF_RUN_STATUS)
    assert {s.value for s in OUTCOME_OF_RUN_STATUS.values()} <= {s.value for s in RunStatus}
    assert RunStatus.DONE not in set().union(*RETRY_CHOICES.values())


def test_run_killed_while_writing_its_directory_is_not_ended(tmp_path, base_scenario):
    """With the run-directory completion marker (fleetsim.record.rundir), a directory a run
    was still writing (run_in_progress.json) is not an ended run, even with a summary.json:
    the default retry runs it again."""
    rundir = pytest.importorskip("fleetsim.record.rundir")
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0]\n")
    # The real runner writes the markers (the fake would not).
    assert run_sweep(path, backend="sequential", progress=False).ok
    run_dir = tmp_path / "out" / "run.seed=0"
    assert rundir.run_dir_state(run_dir).complete
    # As a retry killed while writing leaves it: its start marker, no completion marker.
    marker = json.loads((run_dir / rundir.COMPLETE_FILE).read_text())
    (run_dir / rundir.COMPLETE_FILE).unlink()
    (run_dir / rundir.IN_PROGRESS_FILE).write_text(
        json.dumps({"scenario_hash": marker["scenario_hash"]}))
    assert not rundir.run_dir_state(run_dir).complete
    index_path = tmp_path / "out" / INDEX_FILE
    frame = pd.read_parquet(index_path)
    frame.loc[0, "status"] = "running"  # as a sweep process killed mid-write leaves it
    frame.to_parquet(index_path)
    again = run_sweep(path, backend="sequential", progress=False)
    assert again.executed == 1 and again.ok
    assert read_index(tmp_path / "out")["attempts"][0] == 2


def test_index_of_unknown_statuses_starts_those_runs_afresh(tmp_path, base_scenario):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n"
                    "grid:\n  description: [a, fail]\n")
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    index_path = tmp_path / "out" / INDEX_FILE
    frame = pd.read_parquet(index_path).drop(columns=["run_status"])  # an older index
    frame.loc[frame["run_id"] == "description=fail", "status"] = "exploded"
    frame.to_parquet(index_path)
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert again.executed == 1 and again.skipped == 1
    rows = by_id(read_index(tmp_path / "out"))
    assert (rows["description=a"]["status"], rows["description=a"]["run_status"]) == (
        "done", "completed")
    assert rows["description=fail"]["status"] == "failed"
    assert rows["description=fail"]["attempts"] == 2


def test_study_keeps_infeasible_runs_as_outcomes_with_their_scenario(tmp_path, base_scenario):
    """A study (run_study) counts a run no phone can hold as an outcome, not a failure: it
    returns it apart from the run directories, with its refusal and the hash of the
    scenario it would have written (the hash a started run's scenario.yaml gets)."""
    from fleetsim.analysis.pages import scenario_hash
    from fleetsim.analysis.study import run_study

    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n"
                    "grid:\n  description: [ok, infeasible]\nseeds: [0, 1]\n")
    with pytest.raises(FleetsimInputError, match="no phone of the fleet can hold"):
        run_study(path, tmp_path / "out", run_fn=fake_run)  # a study that does not table them
    runs = run_study(path, tmp_path / "out", run_fn=fake_run, allow_infeasible=True)
    assert [d.name for d in runs.run_dirs] == ["description=ok__run.seed=0",
                                               "description=ok__run.seed=1"]
    assert [r.run_id for r in runs.infeasible] == ["description=infeasible__run.seed=0",
                                                   "description=infeasible__run.seed=1"]
    for run in runs.infeasible:
        assert run.error.startswith("traces: no device can hold the job: backprop of m")
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", run.commit)
        assert run.scenario["description"] == "infeasible"
        assert run.scenario["run"]["seed"] == run.params["run.seed"]
        # the same scenario with the ok description hashes as the started run's file does
        ok = tmp_path / "out" / run.run_id.replace("infeasible", "ok")
        twin = tmp_path / "twin" / run.run_id
        twin.mkdir(parents=True)
        (twin / "scenario.yaml").write_text(
            (ok / "scenario.yaml").read_text().replace("description: ok",
                                                       "description: infeasible"))
        assert scenario_hash(twin) == run.scenario_hash
    # kept as an outcome: a second study invocation runs nothing again
    again = run_study(path, tmp_path / "out", run_fn=fake_run, allow_infeasible=True)
    assert attempts(tmp_path / "out" / "description=infeasible__run.seed=0") == 1
    assert len(again.infeasible) == 2


def test_infeasible_status_lasts_only_while_its_scenario_does(tmp_path, base_scenario):
    """An infeasible run leaves a record of the scenario it was refused for; a later sweep
    keeps its status only while that record is there for the planned scenario.  A changed
    base or a deleted run directory runs it again (it is refused again, for the new one)."""
    import shutil

    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n"
                    "grid:\n  description: [ok, infeasible]\n")
    run_dir = tmp_path / "out" / "description=infeasible"
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    record = json.loads((run_dir / "infeasible.json").read_text())
    assert record["error"].startswith("traces: no device can hold the job")
    kept = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert kept.executed == 0 and attempts(run_dir) == 1
    # the base changes (every run's resolved scenario with it): the ok run's directory now
    # holds another scenario, so that folder is refused; the infeasible one alone would rerun
    shutil.rmtree(tmp_path / "out" / "description=ok")
    base_scenario.write_text(base_scenario.read_text().replace("size: 8", "size: 9"))
    rerun = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert rerun.executed == 2 and attempts(run_dir) == 2
    assert json.loads((run_dir / "infeasible.json").read_text())["scenario_sha256"] != \
        record["scenario_sha256"]
    assert by_id(read_index(tmp_path / "out"))["description=infeasible"]["status"] == \
        "infeasible"
    shutil.rmtree(run_dir)  # deleted to redo it: runs again
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert again.executed == 1 and attempts(run_dir) == 1
