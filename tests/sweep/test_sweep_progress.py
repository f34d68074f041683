"""A sweep shows one bar over its runs with an ETA (tqdm: runs done / runs to run,
[elapsed<remaining]).  Checked with the sequential backend; the Ray backend advances the
same bar through the same on_done as each run's task returns (sweep/ray_backend.run_ray)."""

from __future__ import annotations

import re

from sweep_fakes import fake_run

from fleetsim.sweep import run_sweep


def test_sweep_bar_counts_runs_and_shows_an_eta(tmp_path, base_scenario, capsys) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0, 1, 2]\n")
    result = run_sweep(sweep, backend="sequential", progress=True, run_fn=fake_run)
    assert result.counts["done"] == 3
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]", err) if f.startswith("sweep sweep:")]
    # 0/3 when drawn, then as runs end (tqdm may skip redraws within 0.1 s); each frame:
    # n/total [elapsed<remaining, rate]
    counts = [int(re.search(r"\| (\d)/3 \[\d\d:\d\d<[\d:?]+", f).group(1)) for f in frames]
    assert counts[0] == 0 and counts[-1] == 3 and counts == sorted(counts)
    assert "run/s" in frames[-1] or "s/run" in frames[-1]
    assert "done 3" in frames[-1]  # the status counts ride along


def test_rerun_bar_counts_only_runs_still_to_run(tmp_path, base_scenario, capsys) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0, 1]\n")
    run_sweep(sweep, backend="sequential", progress=False, run_fn=fake_run)
    sweep.write_text(f"base: base.yaml\nout: {tmp_path / 'out'}\nseeds: [0, 1, 2]\n")
    capsys.readouterr()
    run_sweep(sweep, backend="sequential", progress=True, run_fn=fake_run)
    err = capsys.readouterr().err
    assert "sweep sweep: 2 of 3 runs already finished" in err
    assert re.search(r"\| 1/1 \[\d\d:\d\d<", err)
