"""Nothing fleetsim reads can run code, nothing it writes is ever a mix (issue 22 kind 8,
issue 24 point 1).  One test per shared case (``../shared/cases/<name>``) and per promise
beyond them; each asserts the right behaviour, not only the absence of a crash."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import fleetsim
from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.record import rundir
from fleetsim.record.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    decode,
    encode,
    read_checkpoint,
    write_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]

# Systems-only, a few hundred milliseconds of host time: 8 committed steps.
SMALL = """\
fleet: {{size: 20}}
traces:
  availability: {{kind: always_online}}
  network: {{type: fixed, uplink_mbps: 5}}
  catalogue: {catalogue}
numerics: {{engine: none}}
model: {{name_or_path: tiny-bert, max_seq_len: 16}}
protocol: {{devices_per_step: 4, rounds: {rounds}, batches_per_round: 1}}
run: {{name: {name}, seed: {seed}, progress: false}}
output: {{checkpoint_every_steps: {every}, convergence_png: false}}
"""


def scenario(tmp_path: Path, name: str = "small", rounds: int = 8, seed: int = 3,
             every: int = 2, catalogue: str = "default", file: str = "s.yaml") -> Path:
    path = tmp_path / file
    path.write_text(SMALL.format(name=name, rounds=rounds, seed=seed, every=every,
                                 catalogue=catalogue))
    return path


def run_cli(*args: str) -> int:
    return main([*args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fleetsim: error: "), err
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def simulate_kill(run_dir: Path, digest: str) -> None:
    """What SIGKILL between a checkpoint and the end leaves: the in-progress marker and
    the checkpoint, no tables (see fleetsim.record.rundir)."""
    for name in (*rundir.RUN_TABLES, rundir.COMPLETE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / rundir.IN_PROGRESS_FILE).write_text(json.dumps({"scenario_hash": digest}))


# ------------------------------------------------------- checkpoint_pickle_code_execution


class _Evil:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(marker: Path) -> _Evil:
    evil = _Evil()
    evil.marker = marker
    return evil


def test_legacy_pickle_checkpoint_is_never_unpickled(tmp_path, capsys):
    run_dir = tmp_path / "evil_run"
    run_dir.mkdir()
    marker = tmp_path / "PWNED"
    (run_dir / "checkpoint.pkl").write_bytes(pickle.dumps(_evil(marker)))
    assert run_cli("run", "--resume", str(run_dir)) == 2
    line = one_error_line(capsys)
    assert "checkpoint.pkl" in line and "never loaded" in line
    assert not marker.exists()


def test_crafted_checkpoint_with_a_pickled_array_never_runs_its_payload(tmp_path, capsys):
    """A checkpoint.npz with a valid checksum whose array member is a pickled object
    array: numpy's reader runs with allow_pickle=False, so the payload never runs."""
    from fleetsim.record import checkpoint as ck

    run_dir = tmp_path / "evil_run"
    run_dir.mkdir()
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_evil(marker)], dtype=object), allow_pickle=True)
    meta = {"format": "fleetsim-checkpoint", "version": 2, "scenario_raw": {"d": []},
            "journal": [], "engine_state": {"a": 0}}
    members = [("checkpoint.json", json.dumps(meta).encode()), ("a0.npy", buf.getvalue())]
    with zipfile.ZipFile(run_dir / CHECKPOINT_NAME, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        zf.writestr("checksum.sha256", ck._checksum(members))
    assert run_cli("run", "--resume", str(run_dir)) == 2
    assert "is not a fleetsim checkpoint" in one_error_line(capsys)
    assert not marker.exists()


def test_checkpoint_round_trip_is_exact_and_holds_only_data():
    from fleetsim.numerics_api import EvalResult, StepEstimate

    value = {
        "journal": [("forward_gradient", StepEstimate(3, 4, 2, loss=0.1 + 0.2,
                                                      variance=float("nan"),
                                                      extra={"k": [1, 2.5, "x"]})),
                    ("evaluate", EvalResult(0.75, 1e-300, 60)), ("apply", None)],
        0: (np.float32(0.1), np.int64(-7), True, float("-inf")),
        "arr": np.arange(6, dtype=np.float16).reshape(2, 3),
    }
    arrays: list[np.ndarray] = []
    text = json.dumps(encode(value, arrays), allow_nan=False)
    back = decode(json.loads(text), dict(enumerate(arrays)))
    assert back["journal"][0][1].loss == 0.1 + 0.2
    assert back["journal"][0][1].extra == {"k": [1, 2.5, "x"]}
    assert np.isnan(back["journal"][0][1].variance)
    evaluation = back["journal"][1][1]
    assert isinstance(evaluation, EvalResult)
    assert (evaluation.accuracy, evaluation.loss, evaluation.n_examples) == (0.75, 1e-300, 60)
    assert np.isnan(evaluation.val_accuracy) and np.isnan(evaluation.val_loss)  # no split
    f32, i64, flag, ninf = back[0]
    assert type(f32) is np.float32 and f32 == np.float32(0.1)
    assert type(i64) is np.int64 and i64 == -7 and flag is True and ninf == float("-inf")
    assert back["arr"].dtype == np.float16 and back["arr"].tolist() == value["arr"].tolist()
    with pytest.raises(TypeError):
        encode(object(), [])
    with pytest.raises(ValueError):
        decode({"os.system": ["touch x"]}, {})


def test_torch_state_round_trips_bit_for_bit():
    torch = pytest.importorskip("torch")
    from fleetsim.numerics.journal import portable_state, restore_state

    g = torch.Generator().manual_seed(0)
    state = {"params": {"w": torch.randn(3, 4, generator=g).to(torch.bfloat16),
                        "b": torch.randn(4, generator=g)},
             "optimizer": {"state": {0: {"step": torch.tensor(5.0)}},
                           "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}]},
             "previous_gradient": None}
    arrays: list[np.ndarray] = []
    stored = json.dumps(encode(portable_state(state), arrays), allow_nan=False)
    back = restore_state(decode(json.loads(stored), dict(enumerate(arrays))))
    assert back["params"]["w"].dtype == torch.bfloat16
    bits = back["params"]["w"].view(torch.int16)
    expected = state["params"]["w"].view(torch.int16)
    assert torch.equal(bits, expected)
    assert torch.equal(back["params"]["b"], state["params"]["b"])
    assert back["optimizer"]["state"][0]["step"].item() == 5.0
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


# ------------------------------------------------------- resume_foreign_checkpoint_accepted


def test_foreign_checkpoint_is_refused_and_the_run_left_as_it_was(tmp_path, capsys):
    a = scenario(tmp_path, name="run_a", rounds=10, seed=0, every=5, file="a.yaml")
    b = scenario(tmp_path, name="run_b", rounds=5, seed=7, every=1, file="b.yaml")
    assert run_cli("run", str(a), "--out", str(tmp_path / "out_a")) == 0
    assert run_cli("run", str(b), "--out", str(tmp_path / "out_b")) == 0
    capsys.readouterr()
    # run_b killed after a checkpoint (a finished run is refused before its checkpoint is read)
    digest = json.loads((tmp_path / "out_b" / rundir.COMPLETE_FILE).read_text())["scenario_hash"]
    simulate_kill(tmp_path / "out_b", digest)
    before = snapshot(tmp_path / "out_b")
    shutil.copy(tmp_path / "out_a" / CHECKPOINT_NAME, tmp_path / "out_b" / CHECKPOINT_NAME)
    assert run_cli("run", "--resume", str(tmp_path / "out_b")) == 2
    line = one_error_line(capsys)
    assert "belongs to the run directory" in line and str((tmp_path / "out_a").resolve()) in line
    after = snapshot(tmp_path / "out_b")
    after.pop(CHECKPOINT_NAME), before.pop(CHECKPOINT_NAME)
    assert after == before  # the rest of run_b's folder untouched
    assert json.loads(after[rundir.IN_PROGRESS_FILE])["scenario_hash"] == digest


def _killed_run(tmp_path: Path, **kw) -> tuple[Path, Path, dict[str, bytes]]:
    """A finished run, then the same directory as a kill after the last checkpoint
    leaves it; returns (scenario, run dir, the finished run's files)."""
    path = scenario(tmp_path, **kw)
    run_dir = tmp_path / "run"
    assert run_cli("run", str(path), "--out", str(run_dir)) == 0
    full = snapshot(run_dir)
    digest = json.loads(full[rundir.COMPLETE_FILE])["scenario_hash"]
    simulate_kill(run_dir, digest)
    return path, run_dir, full


def test_resume_after_a_kill_is_byte_identical(tmp_path):
    _, run_dir, full = _killed_run(tmp_path, rounds=9, every=4)
    assert read_checkpoint(run_dir).committed_steps == 8
    assert rundir.run_dir_state(run_dir).complete is False
    assert run_cli("run", "--resume", str(run_dir), "--no-progress") == 0
    for name in ("steps.parquet", "events.parquet", "devices.parquet"):
        assert (run_dir / name).read_bytes() == full[name], name
    assert rundir.run_dir_state(run_dir).complete


def _rewrite_checkpoint(run_dir: Path, edit) -> None:
    """Edit a checkpoint the way a careful forger would: through fleetsim's own writer,
    so the checksum matches the edited contents."""
    ckpt = read_checkpoint(run_dir)
    edit(ckpt)
    write_checkpoint(run_dir, ckpt)


@pytest.mark.parametrize("how", ["byte", "cut_short", "journal_cut", "scenario_edit",
                                 "scenario_forged", "run_dir"])
def test_tampered_checkpoint_is_refused(tmp_path, capsys, how):
    _, run_dir, _ = _killed_run(tmp_path, rounds=8, every=4)
    path = run_dir / CHECKPOINT_NAME
    if how == "byte":  # a changed loss in the journal, checksum left as it was
        with zipfile.ZipFile(path) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        meta = json.loads(members["checkpoint.json"])
        meta["sim_time_s"] = meta["sim_time_s"] + 1.0
        members["checkpoint.json"] = json.dumps(meta, sort_keys=True).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for n, d in members.items():
                zf.writestr(n, d)
        expected = "does not match its checksum"
    elif how == "cut_short":  # the file ends early
        path.write_bytes(path.read_bytes()[:-100])
        expected = "not a fleetsim checkpoint"
    elif how == "journal_cut":  # two steps fewer in the journal, engine state unchanged
        def cut(c):
            applies = [i for i, (kind, _) in enumerate(c.journal) if kind == "apply"]
            del c.journal[applies[-3] + 1:]
        _rewrite_checkpoint(run_dir, cut)
        expected = "journal ends at step 6, its engine state is of step 8"
    elif how == "scenario_edit":
        _rewrite_checkpoint(run_dir, lambda c: c.scenario_raw["protocol"].update(lr=0.5))
        expected = "records scenario"
    elif how == "scenario_forged":  # scenario edited and its hash recomputed to match
        from fleetsim.scenario.loader import validate_raw

        def forge(c):
            c.scenario_raw["protocol"]["lr"] = 0.5
            loaded = validate_raw(c.scenario_raw, Path(c.scenario_path), Path(c.base_dir))
            c.scenario_hash = rundir.scenario_hash(loaded.scenario.model_dump(mode="json"))
        _rewrite_checkpoint(run_dir, forge)
        expected = "the run being written there is scenario"
    else:
        _rewrite_checkpoint(run_dir, lambda c: setattr(c, "run_dir", str(tmp_path / "other")))
        expected = "belongs to the run directory"
    assert run_cli("run", "--resume", str(run_dir)) == 2
    assert expected in one_error_line(capsys)
    assert not (run_dir / "summary.json").exists()


def test_resume_refuses_an_input_file_changed_since_the_checkpoint(tmp_path, capsys):
    catalogue = tmp_path / "phones.csv"
    shutil.copy(ROOT / "device_traces" / "catalogue" / "phones.csv", catalogue)
    _, run_dir, _ = _killed_run(tmp_path, rounds=8, every=4, catalogue=str(catalogue))
    assert str(catalogue.resolve()) in read_checkpoint(run_dir).inputs
    with open(catalogue, "a", encoding="utf-8") as fh:
        fh.write("\n")
    assert run_cli("run", "--resume", str(run_dir)) == 2
    line = one_error_line(capsys)
    assert f"input file {catalogue.resolve()} changed since the checkpoint" in line


@pytest.mark.parametrize("every", [2, 0], ids=["checkpoint_kept", "no_checkpoint"])
def test_resume_of_a_finished_run_is_refused(tmp_path, capsys, every):
    """Whether or not the finished run kept a checkpoint, --resume says it has finished
    (without one it asked for checkpoint options, as if the run had been cut short)."""
    path = scenario(tmp_path, every=every)
    assert run_cli("run", str(path), "--out", str(tmp_path / "r")) == 0
    assert (tmp_path / "r" / CHECKPOINT_NAME).exists() == bool(every)
    capsys.readouterr()
    assert run_cli("run", "--resume", str(tmp_path / "r")) == 2
    assert one_error_line(capsys) == (
        f"fleetsim: error: --resume {tmp_path / 'r'}: the run in {tmp_path / 'r'} has "
        "finished (status completed); there is nothing to resume")


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_resume_of_a_folder_no_run_wrote_says_so(tmp_path, capsys, kind):
    """--resume on a missing or empty folder says no run is there (it asked for
    checkpoint options, as if a run had been cut short)."""
    target = tmp_path / "r"
    if kind == "empty":
        target.mkdir()
    assert run_cli("run", "--resume", str(target)) == 2
    what = "no such folder" if kind == "missing" else "an empty folder"
    assert one_error_line(capsys) == (
        f"fleetsim: error: --resume {target}: {what}, not a run directory; --resume "
        "continues a run that wrote checkpoints there (fleetsim run SCENARIO first)")
    assert target.exists() == (kind == "empty")  # nothing created


# ------------------------------------------------------- overwrite_kill_mixed_run_dir


def _die_after(monkeypatch, name: str) -> None:
    """Make the process 'die' (an exception no code of fleetsim catches, as SIGKILL
    runs none) right after ``name`` is renamed into place."""
    import fleetsim.record.recorder as recorder

    real = recorder.write_parquet

    class Killed(BaseException):
        pass

    def write_then_die(path, frame):
        real(path, frame)
        if Path(path).name == name:
            raise Killed

    monkeypatch.setattr(recorder, "write_parquet", write_then_die)
    return Killed


def test_run_killed_while_replacing_a_run_reads_incomplete(tmp_path, monkeypatch, capsys):
    small = scenario(tmp_path, name="small", rounds=5, file="small.yaml")
    big = scenario(tmp_path, name="big", rounds=12, file="big.yaml")
    run_dir = tmp_path / "run"
    assert run_cli("run", str(small), "--out", str(run_dir)) == 0
    report = run_dir / "report"
    report.mkdir()
    (report / "report.html").write_text("old run's report")
    killed = _die_after(monkeypatch, "steps.parquet")
    with pytest.raises(killed):
        run_cli("run", str(big), "--out", str(run_dir), "--replace")
    monkeypatch.undo()
    capsys.readouterr()
    # Only the new run's first files, and the marker saying it did not finish.
    assert sorted(p.name for p in run_dir.iterdir()) == [
        CHECKPOINT_NAME, rundir.IN_PROGRESS_FILE, "scenario.yaml", "steps.parquet"]
    assert yaml.safe_load((run_dir / "scenario.yaml").read_text())["run"]["name"] == "big"
    state = rundir.run_dir_state(run_dir)
    assert (state.complete, state.status) == (False, None)
    assert state.scenario_hash == read_checkpoint(run_dir).scenario_hash
    assert run_cli("report", str(run_dir)) == 2
    assert "not a finished run directory" in one_error_line(capsys)
    assert run_cli("compare", str(run_dir), "--out", str(tmp_path / "cmp")) == 2
    assert "not a finished run directory" in one_error_line(capsys)
    from fleetsim.analysis import load_runs

    with pytest.raises(FleetsimInputError, match="not a finished run directory"):
        load_runs([run_dir])


def test_legacy_directory_with_files_of_two_runs_is_refused(tmp_path, capsys):
    """Run directories written before the markers: the case's mix (summary of one run,
    steps of another) is still recognised."""
    small = scenario(tmp_path, name="small", rounds=5, file="small.yaml")
    big = scenario(tmp_path, name="big", rounds=12, file="big.yaml")
    assert run_cli("run", str(small), "--out", str(tmp_path / "s")) == 0
    assert run_cli("run", str(big), "--out", str(tmp_path / "b")) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "s", mixed)
    (mixed / rundir.COMPLETE_FILE).unlink()
    for name in ("scenario.yaml", "steps.parquet"):
        shutil.copy(tmp_path / "b" / name, mixed / name)
    state = rundir.run_dir_state(mixed)
    assert not state.complete and "files of two runs" in state.reason
    capsys.readouterr()
    assert run_cli("report", str(mixed)) == 2
    assert "files of two runs" in one_error_line(capsys)
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "s", legacy)
    (legacy / rundir.COMPLETE_FILE).unlink()
    assert rundir.run_dir_state(legacy) == rundir.RunDirState(
        True, "completed", "", rundir.run_dir_state(tmp_path / "s").scenario_hash, legacy=True)


def test_run_dir_state_reports_the_final_status(tmp_path):
    path = scenario(tmp_path, rounds=3)
    assert run_cli("run", str(path), "--out", str(tmp_path / "r")) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    state = rundir.run_dir_state(tmp_path / "r")
    assert state == rundir.RunDirState(True, summary["status"], "", summary["scenario_hash"])
    assert summary["status"] == "completed"
    assert rundir.run_dir_state(tmp_path / "nothing").complete is False


KILL_SCRIPT = """
import sys
from fleetsim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_at_random_moments_never_leaves_a_mix(tmp_path):
    """Replace a finished run and SIGKILL the process at several moments: afterwards the
    directory is the old run (killed before it was touched), the new run complete, or
    marked incomplete; never a complete-looking mix, never a half-written final file."""
    old = scenario(tmp_path, name="old", rounds=4, file="old.yaml")
    new = scenario(tmp_path, name="new", rounds=30, every=3, file="new.yaml")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FLEETSIM_TEST_STEP_DELAY_S="0.01")
    rng = np.random.default_rng(0)
    outcomes = set()
    for delay in sorted(rng.uniform(0.5, 6.0, size=4)):
        run_dir = tmp_path / f"run{delay:.2f}"
        assert run_cli("run", str(old), "--out", str(run_dir)) == 0
        old_summary = (run_dir / "summary.json").read_bytes()
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, "run", str(new), "--out",
                                 str(run_dir), "--replace"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = rundir.run_dir_state(run_dir)
        if state.complete:
            summary = json.loads((run_dir / "summary.json").read_text())
            name = yaml.safe_load((run_dir / "scenario.yaml").read_text())["run"]["name"]
            assert summary["scenario_name"] == name
            outcomes.add("old" if (run_dir / "summary.json").read_bytes() == old_summary
                         else "new")
        else:
            outcomes.add("incomplete")
            assert not (run_dir / "summary.json").exists() or \
                json.loads((run_dir / "summary.json").read_text())["scenario_name"] == "new"
        for p in run_dir.glob("*.parquet"):  # every final name holds a whole file
            import pyarrow.parquet as pq

            pq.read_table(p)
    assert outcomes  # at least one kill landed


# ------------------------------------------------------- output_unwritable_fails_after_run


def test_output_below_a_file_fails_before_the_clock(tmp_path, capsys, monkeypatch):
    import fleetsim.runner as runner

    (tmp_path / "afile").write_text("not a folder")
    built = []
    monkeypatch.setattr(runner, "build_run", lambda *a, **k: built.append(1))
    assert run_cli("run", str(scenario(tmp_path)), "--out", str(tmp_path / "afile" / "sub")) == 2
    line = one_error_line(capsys)
    assert "output.dir: cannot write the run directory" in line and "afile/sub" in line
    assert built == []  # refused before the run was even built


def test_write_failure_after_the_run_is_one_line_and_keeps_the_checkpoint(
        tmp_path, capsys, monkeypatch):
    import errno

    import fleetsim.record.recorder as recorder

    path = scenario(tmp_path, rounds=8, every=4)
    assert run_cli("run", str(path), "--out", str(tmp_path / "full")) == 0
    real = recorder.write_parquet

    def disk_full(p, frame):
        if Path(p).name == "events.parquet":
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        real(p, frame)

    monkeypatch.setattr(recorder, "write_parquet", disk_full)
    run_dir = tmp_path / "run"
    assert run_cli("run", str(path), "--out", str(run_dir)) == 2
    line = one_error_line(capsys)
    assert "output.dir: writing the run directory" in line and "No space left" in line
    assert "the last checkpoint is kept" in line
    assert read_checkpoint(run_dir).committed_steps == 8
    assert rundir.run_dir_state(run_dir).complete is False
    monkeypatch.undo()
    assert run_cli("run", "--resume", str(run_dir)) == 0  # the checkpoint is usable
    for name in ("steps.parquet", "events.parquet"):
        assert (run_dir / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


# ------------------------------------------------------- yaml_alias_bomb

LAUGHS = "extends: base.yaml\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10 if i else ['lol'] * 10)}]\n" for i in range(9))


def test_alias_bomb_scenario_is_refused_at_once(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(SMALL.format(name="u", rounds=3, seed=0, every=0,
                                                     catalogue="default"))
    (tmp_path / "laughs9.yaml").write_text(LAUGHS)
    start = time.perf_counter()
    assert run_cli("validate", str(tmp_path / "laughs9.yaml")) == 2
    assert time.perf_counter() - start < 10
    line = one_error_line(capsys)
    # l_i expands to 1 + 10 + ... + 10^(i+1) nodes: l4 to 111,111, l5 (line 7) to 1,111,111
    assert "laughs9.yaml:7: YAML refused: it expands to more than 200,000 nodes" in line


def test_alias_bomb_sweep_file_is_refused(tmp_path, capsys):
    sweep = "base: base.yaml\ngrid:\n  description:\n" + "".join(
        f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 10 if i else ['lol'] * 10)}]\n"
        for i in range(8)) + "out: sweep_out\n"
    (tmp_path / "sweep.yaml").write_text(sweep)
    assert run_cli("sweep", str(tmp_path / "sweep.yaml"), "--dry-run") == 2
    assert "YAML refused" in one_error_line(capsys)


def test_oversized_scenario_is_refused_unread(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    with open(big, "w") as fh:
        fh.write("description: ")
        fh.truncate((1 << 20) + 100)  # sparse: nothing to parse, 1 MiB + 100 bytes
    assert run_cli("validate", str(big)) == 2
    assert "at most 1,048,576 bytes (1 MiB)" in one_error_line(capsys)


def test_bounds_leave_real_files_alone():
    from fleetsim.scenario.loader import load_scenario

    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        load_scenario(path)  # every shipped scenario is far inside the bounds


# ------------------------------------------------------- paths that escape, special files


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "x\\y"])
def test_run_name_never_escapes_output_dir(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    path = scenario(tmp_path / "work", name=json.dumps(name))
    assert run_cli("run", str(path)) == 2
    line = one_error_line(capsys)
    assert "run.name" in line and "not a folder name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_trace_path_is_refused_not_read(tmp_path):
    fifo = tmp_path / "trace.csv"
    os.mkfifo(fifo)
    path = tmp_path / "s.yaml"
    path.write_text(SMALL.format(name="f", rounds=2, seed=0, every=0, catalogue="default")
                    .replace("{kind: always_online}", f"{{kind: intervals, path: {fifo}}}"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["validate", str(path)], ["traces", "validate", str(fifo)],
                 ["run", str(path), "--out", str(tmp_path / "r")]):
        done = subprocess.run([sys.executable, "-m", "fleetsim", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "is a FIFO (named pipe), not a regular file" in lines[0]
    cat = tmp_path / "c.yaml"
    cat.write_text(SMALL.format(name="f", rounds=2, seed=0, every=0, catalogue=str(fifo)))
    done = subprocess.run([sys.executable, "-m", "fleetsim", "validate", str(cat)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "FIFO" in done.stderr


def test_device_trace_path_is_refused():
    from fleetsim.traces.files import refuse_special_file

    with pytest.raises(FleetsimInputError, match="is a character device"):
        refuse_special_file("/dev/zero", "traces.availability.path")


# ------------------------------------------------------- issue 24.1: runs never mix


def test_overridden_scenario_does_not_replace_a_run_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = scenario(tmp_path, name="quick", rounds=3)
    assert run_cli("run", str(path)) == 0
    run_dir = tmp_path / "runs" / "quick-seed3"
    before = snapshot(run_dir)
    capsys.readouterr()
    assert run_cli("run", str(path), "--set", "protocol.rounds=4") == 2
    line = one_error_line(capsys)
    assert "holds scenario" in line and "--replace" in line
    assert snapshot(run_dir) == before
    # the same resolved scenario again (a progress bar changes no result) replaces it
    assert run_cli("run", str(path), "--set", "run.progress=true") == 0
    assert snapshot(run_dir)["steps.parquet"] == before["steps.parquet"]
    # --replace removes every output of the earlier run first
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.html").write_text("old")
    (run_dir / "convergence.png").write_bytes(b"old")
    (run_dir / "notes.txt").write_text("the user's own file")
    assert run_cli("run", str(path), "--set", "protocol.rounds=4", "--replace") == 0
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted([*rundir.RUN_TABLES, rundir.COMPLETE_FILE, CHECKPOINT_NAME,
                            "notes.txt"])
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 4


def test_overwrite_false_refuses_any_run(tmp_path, capsys):
    path = scenario(tmp_path)
    assert run_cli("run", str(path), "--out", str(tmp_path / "r")) == 0
    capsys.readouterr()
    assert run_cli("run", str(path), "--out", str(tmp_path / "r"),
                   "--set", "output.overwrite=false") == 2
    assert "output.overwrite is false" in one_error_line(capsys)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_honour_the_umask(tmp_path, umask):
    from fleetsim.record.atomic import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~umask


def test_run_outputs_are_group_readable_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli("run", str(scenario(tmp_path)), "--out", str(tmp_path / "r")) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_summary_records_version_commit_and_scenario_hash(tmp_path):
    assert run_cli("run", str(scenario(tmp_path)), "--out", str(tmp_path / "r")) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["fleetsim_version"] == fleetsim.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    expected = head.stdout.strip() if head.returncode == 0 else None
    assert summary["git_commit"] == expected
    scenario_yaml = yaml.safe_load((tmp_path / "r" / "scenario.yaml").read_text())
    assert summary["scenario_hash"] == rundir.scenario_hash(scenario_yaml)


# ------------------------------------------------------- time-based checkpoints by default


def test_time_based_checkpoints_are_on_by_default(tmp_path, monkeypatch):
    """Default output.checkpoint_every_minutes is 10: with a host clock that advances 4
    minutes per committed step, checkpoints land at steps 3 and 6 (12 and 24 minutes)."""
    import fleetsim.callbacks as callbacks
    from fleetsim.scenario.schema import OutputConfig

    assert OutputConfig().checkpoint_every_minutes == 10.0
    clock = iter(range(0, 10_000, 240))
    monkeypatch.setattr(callbacks, "_host_clock", lambda: float(next(clock)))
    written = []
    real = callbacks.write_checkpoint
    monkeypatch.setattr(callbacks, "write_checkpoint",
                        lambda d, c: (written.append(c.committed_steps), real(d, c)))
    path = scenario(tmp_path, rounds=7, every=0)
    assert run_cli("run", str(path), "--out", str(tmp_path / "r")) == 0
    assert written == [3, 6]
    assert read_checkpoint(tmp_path / "r").committed_steps == 6


def test_checkpoint_dataclass_fields_are_all_stored(tmp_path):
    ckpt = Checkpoint(scenario_raw={"a": {"b": [1, 2]}}, scenario_path="s.yaml",
                      base_dir=str(tmp_path), run_dir=str(tmp_path), committed_steps=2,
                      journal=[("apply", None)], engine_state={"steps": 2}, sim_time_s=1.5,
                      scenario_hash="ab", inputs={"/x": "cd"}, extra={"k": "v"})
    write_checkpoint(tmp_path, ckpt)
    first = (tmp_path / CHECKPOINT_NAME).read_bytes()
    assert read_checkpoint(tmp_path) == ckpt
    write_checkpoint(tmp_path, ckpt)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == first  # deterministic bytes


def test_alias_bombs_elsewhere_are_refused_too(tmp_path, capsys):
    """Every YAML fleetsim reads is bounded: a run directory's scenario.yaml (report,
    compare, load_runs) and the power table a scenario names."""
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10 if i else ['lol'] * 10)}]\n"
                   for i in range(9))
    path = scenario(tmp_path)
    assert run_cli("run", str(path), "--out", str(tmp_path / "r")) == 0
    capsys.readouterr()
    scenario_yaml = tmp_path / "r" / "scenario.yaml"
    scenario_yaml.write_text(scenario_yaml.read_text() + bomb)
    assert run_cli("report", str(tmp_path / "r")) == 2
    assert "YAML refused" in one_error_line(capsys)
    power = tmp_path / "power.yaml"
    power.write_text(bomb)
    assert run_cli("validate", str(path), "--set", f"fleet.energy.power_file={power}") == 2
    assert "YAML refused" in one_error_line(capsys)


def test_checkpoint_write_failure_mid_run_is_one_line_and_keeps_the_previous(
        tmp_path, capsys, monkeypatch):
    import errno

    import fleetsim.callbacks as callbacks

    real = callbacks.write_checkpoint
    calls = []

    def full_on_second(run_dir, ckpt):
        calls.append(ckpt.committed_steps)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(run_dir, ckpt)

    monkeypatch.setattr(callbacks, "write_checkpoint", full_on_second)
    run_dir = tmp_path / "r"
    assert run_cli("run", str(scenario(tmp_path, rounds=8, every=2)), "--out", str(run_dir)) == 2
    line = one_error_line(capsys)
    assert "output.dir: writing the run directory" in line and "No space left" in line
    assert calls == [2, 4]  # the run stopped at the failed write, not after the simulation
    assert read_checkpoint(run_dir).committed_steps == 2
    assert not (run_dir / "summary.json").exists()
    assert rundir.run_dir_state(run_dir).complete is False


@pytest.mark.parametrize("member", ["deflated", "deep_json"])
def test_hostile_checkpoint_archives_are_refused(tmp_path, capsys, member):
    """A compressed member (a zip bomb would expand without bound) and JSON nested beyond
    the parser's depth are refused as 'not a fleetsim checkpoint', with a valid checksum."""
    from fleetsim.record import checkpoint as ck

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    meta = (b"[" * 100_000 + b"]" * 100_000) if member == "deep_json" else b"{}"
    members = [("checkpoint.json", meta)]
    kind = zipfile.ZIP_DEFLATED if member == "deflated" else zipfile.ZIP_STORED
    with zipfile.ZipFile(run_dir / CHECKPOINT_NAME, "w", compression=kind) as zf:
        for name, data in members:
            zf.writestr(name, data)
        zf.writestr("checksum.sha256", ck._checksum(members))
    assert run_cli("run", "--resume", str(run_dir)) == 2
    assert "is not a fleetsim checkpoint" in one_error_line(capsys)
