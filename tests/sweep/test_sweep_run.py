"""Running sweeps: statuses, isolation of failing and killed runs, skip-finished /
retry-failed, the index, and Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_fakes import FLAKY_MARKER, attempts, fake_run

from fleetsim.sweep import INDEX_FILE, read_index, run_sweep
from fleetsim.sweep.execute import ERROR_FILE


def write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\n" + body)
    return path


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["run_id"]: row for row in frame.to_dict("records")}


def test_sequential_sweep_writes_runs_and_index(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "grid:\n  fleet.size: [8, 9]\nseeds: [0, 3]\n")
    result = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert result.ok and result.executed == 4 and result.skipped == 0
    assert result.counts["done"] == 4
    index = read_index(tmp_path / "out")
    assert list(index["run_id"]) == [
        "fleet.size=8__run.seed=0", "fleet.size=8__run.seed=3",
        "fleet.size=9__run.seed=0", "fleet.size=9__run.seed=3",
    ]
    assert set(index["status"]) == {"done"}
    # A column per swept key, with native types, and the params as JSON.
    assert list(index["fleet.size"]) == [8, 8, 9, 9]
    assert list(index["run.seed"]) == [0, 3, 0, 3]
    assert json.loads(index["params"][3]) == {"fleet.size": 9, "run.seed": 3}
    # Metrics come from each run's summary.json: the fake encodes size and seed in them.
    assert list(index["simulated_seconds"]) == [8000.0, 8003.0, 9000.0, 9003.0]
    assert list(index["final_accuracy"]) == [0.5, 0.53, 0.5, 0.53]
    assert list(index["attempts"]) == [1, 1, 1, 1]
    for row in index.to_dict("records"):
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == (tmp_path / "out").resolve()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert f"fleet.size={row['fleet.size']}" in summary["overrides"]
        assert "run.progress=false" in summary["overrides"]
    assert (tmp_path / "out" / "sweep.yaml").read_text() == path.read_text()


def test_failure_is_isolated_and_rerun_retries_only_unfinished(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "grid:\n  description: [ok, fail, also_ok]\n")
    first = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert not first.ok
    assert first.counts == {"pending": 0, "running": 0, "done": 2, "diverged": 0,
                            "no_progress": 0, "stopped": 0, "infeasible": 0,
                            "failed_to_start": 0, "failed": 1, "timed_out": 0, "killed": 0}
    rows = by_id(read_index(tmp_path / "out"))
    failed = rows["description=fail"]
    assert failed["status"] == "failed"
    # One line, with the exception type and both lines of its message.
    assert failed["error"] == "RuntimeError: injected failure | second line of the message"
    traceback_text = (Path(failed["run_dir"]) / ERROR_FILE).read_text()
    assert "Traceback" in traceback_text and "injected failure" in traceback_text
    assert rows["description=ok"]["status"] == "done"
    assert first.failures == [("description=fail", failed["error"])]

    # Re-run: finished runs are skipped, the failed one is tried again (and fails again).
    second = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert second.executed == 1 and second.skipped == 2
    out = tmp_path / "out"
    assert attempts(out / "description=ok") == 1
    assert attempts(out / "description=fail") == 2
    assert by_id(read_index(out))["description=fail"]["attempts"] == 2

    # A transient fault: the retry gets past it, and only the run that failed is run again.
    path = write_sweep(tmp_path, "grid:\n  description: [ok, flaky, also_ok]\n")
    out.joinpath(FLAKY_MARKER).touch()
    fourth = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert fourth.executed == 1 and fourth.counts["failed"] == 1
    out.joinpath(FLAKY_MARKER).unlink()
    fifth = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert fifth.executed == 1 and fifth.ok
    assert attempts(out / "description=flaky") == 2
    assert attempts(out / "description=ok") == 1


def test_finished_run_of_other_scenario_is_never_replaced(tmp_path, base_scenario):
    """A sweep whose base scenario changed refuses the folder that holds the old runs (they
    stay as they were) and runs into another one."""
    from fleetsim.errors import FleetsimInputError

    path = write_sweep(tmp_path, "seeds: [1]\n")
    run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    again = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert again.executed == 0 and again.skipped == 1 and again.ok
    run_dir = tmp_path / "out" / "run.seed=1"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    index_before = (tmp_path / "out" / INDEX_FILE).read_bytes()
    base_scenario.write_text(base_scenario.read_text().replace("size: 8", "size: 10"))
    with pytest.raises(FleetsimInputError, match=r"out/run.seed=1 holds a run of a different "
                       r"scenario \(fleet.size: 8 there, 10 in this sweep\)"):
        run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert (tmp_path / "out" / INDEX_FILE).read_bytes() == index_before
    # The changed configuration runs in a folder of its own.
    from fleetsim.sweep import load_sweep

    other = load_sweep(path, out=str(tmp_path / "other"))
    changed = run_sweep(other, backend="sequential", progress=False, run_fn=fake_run)
    assert changed.executed == 1 and changed.ok
    assert read_index(tmp_path / "other")["simulated_seconds"][0] == 10001.0


def test_interrupted_sweep_marks_run_killed_and_resumes(tmp_path, base_scenario):
    path = write_sweep(tmp_path, "grid:\n  description: [a, interrupt, b]\n")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    rows = by_id(read_index(tmp_path / "out"))
    assert rows["description=a"]["status"] == "done"
    assert rows["description=interrupt"]["status"] == "killed"
    assert rows["description=b"]["status"] == "pending"
    # A sweep process that died outright leaves its run "running" in the index: the next
    # invocation reports it as killed and runs it again.
    index_path = tmp_path / "out" / INDEX_FILE
    frame = pd.read_parquet(index_path)
    frame.loc[frame["run_id"] == "description=b", "status"] = "running"
    frame.to_parquet(index_path)
    path = write_sweep(tmp_path, "grid:\n  description: [a, c, b]\n")
    resumed = run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert resumed.skipped == 1 and resumed.executed == 2 and resumed.ok
    assert attempts(tmp_path / "out" / "description=a") == 1


def test_second_sweep_on_the_same_folder_is_refused(tmp_path, base_scenario):
    from fleetsim.errors import FleetsimInputError
    from fleetsim.sweep.execute import _sweep_lock

    path = write_sweep(tmp_path, "seeds: [0]\n")
    (tmp_path / "out").mkdir()
    with _sweep_lock(tmp_path / "out", path):
        with pytest.raises(FleetsimInputError, match="another fleetsim sweep is running"):
            run_sweep(path, backend="sequential", progress=False, run_fn=fake_run)
    assert run_sweep(path, backend="sequential", progress=False, run_fn=fake_run).ok


def test_cli_exit_codes_and_summary(tmp_path, base_scenario, sweep_main, capsys, monkeypatch):
    import fleetsim.sweep.backend as backend

    monkeypatch.setattr(backend, "_default_run_fn", fake_run)
    path = write_sweep(tmp_path, "grid:\n  description: [ok, fail]\n")
    code = sweep_main(["sweep", str(path), "--backend", "sequential", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 done, 1 failed (2 run now, 0 already ended, --retry failed)" in out
    assert "description=fail (failed): RuntimeError" in out
    assert out.splitlines()[-1] == (
        "re-run the same command to retry the 1 failed run(s) (--retry failed, the default)"
    )
    path = write_sweep(tmp_path, "grid:\n  description: [ok, fine]\n")
    assert sweep_main(["sweep", str(path), "--backend", "sequential", "--no-progress"]) == 0
    assert "1 already ended" in capsys.readouterr().out


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the Ray tests of this module (startup takes seconds)."""
    ray = pytest.importorskip("ray")
    import sweep_fakes
    from ray import cloudpickle

    from fleetsim.sweep.ray_backend import start_ray

    # The fake run functions live in a test folder that workers cannot import: send them
    # by value.
    cloudpickle.register_pickle_by_value(sweep_fakes)
    started = start_ray(None, 2)
    yield ray
    if started:
        ray.shutdown()


def test_ray_sweep_survives_failed_and_killed_runs(tmp_path, base_scenario, local_ray):
    path = write_sweep(tmp_path, "grid:\n  description: [ok, flaky, flaky_kill]\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / FLAKY_MARKER).touch()
    result = run_sweep(path, backend="ray", progress=False, run_fn=fake_run, max_parallel=2)
    assert result.counts["done"] == 1
    assert result.counts["failed"] == 1
    assert result.counts["killed"] == 1
    rows = by_id(read_index(tmp_path / "out"))
    killed = rows["description=flaky_kill"]
    assert killed["status"] == "killed" and killed["error"].startswith("worker died: ")
    assert rows["description=flaky"]["error"].startswith("RuntimeError: injected failure")
    assert rows["description=ok"]["final_accuracy"] == 0.5
    # Runs ran in Ray worker processes, not here.
    import os

    assert all(
        not row["worker"].endswith(f":{os.getpid()}") for row in rows.values() if row["worker"]
    )
    # Re-run after the transient faults are gone: only the two unfinished runs go again.
    (tmp_path / "out" / FLAKY_MARKER).unlink()
    again = run_sweep(path, backend="ray", progress=False, run_fn=fake_run, max_parallel=2)
    assert again.ok and again.skipped == 1 and again.executed == 2
    assert attempts(tmp_path / "out" / "description=ok") == 1
    assert attempts(tmp_path / "out" / "description=flaky_kill") == 2


def test_ray_run_timeout_kills_only_the_hung_run(tmp_path, base_scenario, local_ray):
    # The limit counts from the run's start on its worker (not from its submission: starting
    # a fresh worker process can take seconds on a busy machine).
    path = write_sweep(tmp_path, "grid:\n  description: [hang, ok]\nrun_timeout_s: 3\n")
    start = time.monotonic()
    result = run_sweep(path, backend="ray", progress=False, run_fn=fake_run, max_parallel=2)
    assert time.monotonic() - start < 60
    rows = by_id(read_index(tmp_path / "out"))
    assert rows["description=ok"]["status"] == "done"
    assert rows["description=hang"]["status"] == "timed_out"
    assert rows["description=hang"]["error"] == "killed after the run timeout of 3 s"
    assert result.counts["timed_out"] == 1 and result.counts["killed"] == 0
    assert result.advice() == [
        "re-run the same command to retry the 1 timed_out run(s) (--retry failed, the "
        "default) (timed-out runs need a larger --run-timeout)"
    ]


def test_real_runs_same_results_sequential_and_ray(tmp_path, base_scenario, local_ray):
    """A real systems-only run through the runner: each backend writes a complete run
    directory, and the same scenario and seed give byte-identical tables on both (the Ray
    one in a worker process with its own imports and thread settings)."""
    out = {}
    for backend in ("sequential", "ray"):
        path = tmp_path / f"{backend}.yaml"
        path.write_text(f"base: base.yaml\nout: {tmp_path / backend}\nseeds: [3]\n"
                        "grid:\n  fleet.interruption: [lose]\n")
        result = run_sweep(path, backend=backend, progress=False, max_parallel=2)
        assert result.ok, result.failures
        out[backend] = read_index(tmp_path / backend)
    seq, ray_index = out["sequential"], out["ray"]
    assert list(seq["run_id"]) == list(ray_index["run_id"]) == [
        "fleet.interruption=lose__run.seed=3"
    ]
    assert list(seq["simulated_seconds"]) == list(ray_index["simulated_seconds"])
    assert (seq["simulated_seconds"] > 0).all()
    for run_id in seq["run_id"]:
        a, b = tmp_path / "sequential" / run_id, tmp_path / "ray" / run_id
        for name in ("steps.parquet", "events.parquet", "devices.parquet", "scenario.yaml"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        summary = json.loads((b / "summary.json").read_text())
        assert summary["seed"] == int(run_id[-1])
        assert summary["systems_only"] is True
    # The runner's scenario.yaml matches the plan's: a re-run skips the finished run.
    again = run_sweep(tmp_path / "ray.yaml", backend="ray", progress=False)
    assert again.executed == 0 and again.skipped == 1 and again.ok


def test_local_ray_instance_has_laptop_sized_defaults(local_ray):
    """A local instance: one CPU slot per asked-for run, a small object store (issue 25: a
    sweep moves only KB-sized outcomes; Ray's default takes 30 % of memory), no dashboard."""
    from fleetsim.sweep.ray_backend import LOCAL_OBJECT_STORE_BYTES

    resources = local_ray.cluster_resources()
    assert resources["CPU"] == 2
    assert resources["object_store_memory"] == pytest.approx(LOCAL_OBJECT_STORE_BYTES, rel=0.01)
