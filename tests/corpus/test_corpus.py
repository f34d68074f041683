"""The bad-input corpus: every malformed scenario and trace file gives exit code 2 and one
line naming the problem, never a traceback.

Scenario files (``scenarios/*.yaml``) say what they expect on their first line,
``# expect: <part of the message>``, and optionally on the second which command shows the
problem, ``# command: run`` (default ``validate``): settings that contradict the built fleet
(no phone can hold the model, a deadline no phone can meet) and files that are only opened
when the fleet is built show up in ``fleetsim run``.  Trace files' expectations are in
``TRACE_EXPECTATIONS`` below.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from fleetsim.cli import main

CORPUS = Path(__file__).resolve().parent
SCENARIOS = sorted((CORPUS / "scenarios").glob("*.yaml"))
TRACES_DIR = CORPUS / "traces"

TRACE_EXPECTATIONS: dict[str, str] = {
    "binary_garbage.csv": "cannot be read as a table",
    # pandas would have taken the first column as an index and shifted the rest
    "intervals_extra_field.csv": "line 2: 4 fields but the header has 3",
    "catalogue_empty_name.csv": "column 'phone_model' row 1: name is empty",
    "catalogue_negative_ram.csv": "column 'ram_gb' row 1: -4 is not allowed",
    "empty_file.csv": "file is empty",
    "fedscale_foreign_class.pkl": "refers to collections.OrderedDict; refused",
    "fedscale_length_mismatch.pkl": "'active' has 2 entries but 'inactive' has 1",
    "fedscale_missing_finish_time.pkl": "missing key(s) finish_time",
    "fedscale_negative_finish_time.pkl": "field 'finish_time': -1 (allowed: number > 0)",
    "fedscale_not_a_dict.pkl": "expected a non-empty dict",
    "fedscale_not_a_pickle.pkl": "not a readable pickle",
    "flash_bad_timestamp.json": "does not start with a 'YYYY-mm-dd HH:MM:SS' timestamp",
    "flash_missing_messages.json": "missing string field 'messages'",
    "flash_never_available.json": "no user is ever available",
    "flash_not_an_object.json": "expected a non-empty JSON object",
    "flash_truncated.json": "not valid JSON",
    "intervals_end_before_start.csv": "end_s 5 <= start_s 10",
    # any device id is accepted (issue 22 kind 6: hashes, user names, 0.5, -1); a missing or
    # blank one is not
    "intervals_missing_device.csv": "column 'device_id' row 2: value is missing",
    "intervals_blank_device.csv": "column 'device_id' row 2: the id is blank",
    "intervals_header_only.csv": "header but no rows",
    "intervals_infinite_end.csv": "column 'end_s' row 1: value is infinite",
    "intervals_missing_value.csv": "column 'start_s' row 1: value is missing",
    "intervals_negative_start.csv": "column 'start_s' row 1: -5 is not allowed",
    "intervals_overlapping.csv": "overlapping intervals [0, 10) and [5, 15)",
    "intervals_text_in_number.csv": "column 'start_s' row 1: 'soon' is not a number",
    "intervals_wrong_delimiter.txt": "cannot tell the trace format from columns",
    "network_negative_bandwidth.csv": "column 'downlink_mbps' row 1: -1 is not allowed",
    "network_quantile_above_one.csv": "column 'quantile' must rise strictly within [0, 1]",
    "population_negative_weight.csv": "column 'weight' row 1: -1 is not allowed",
    "population_unknown_phone.csv": "unknown phone model 'Nokia 3310 Classic'",
    "population_zero_weights.csv": "weights sum to zero",
    "unknown_columns.csv": "cannot tell the trace format from columns when, who, what",
    "unknown_suffix.xyz": "cannot tell the trace format from the suffix '.xyz'",
}

_KEY_PATH = re.compile(
    r"\b(fleet|traces|model|peft|data|numerics|protocol|policy|run|output)\.[a-z_]+"
)
_HEADER = re.compile(r"#\s*(expect|command):\s*(.*\S)\s*$")


def header(path: Path) -> dict[str, str]:
    fields = {"command": "validate"}
    for line in path.read_text().splitlines()[:2]:
        match = _HEADER.match(line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def assert_one_clear_line(code: int, err: str, expected: str, path: Path) -> None:
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}; stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("fleetsim: error: ")
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    # Where the problem is: the file's name, or the scenario key at fault.
    assert path.name in lines[0] or _KEY_PATH.search(lines[0]), (
        f"message names neither the file nor a key path: {err!r}"
    )


def test_corpus_is_complete():
    assert len(SCENARIOS) >= 30
    trace_files = sorted(p.name for p in TRACES_DIR.iterdir() if p.is_file())
    assert len(trace_files) >= 15
    # Every trace file has an expectation and every expectation a file.
    assert trace_files == sorted(TRACE_EXPECTATIONS)
    for path in SCENARIOS:
        fields = header(path)
        assert "expect" in fields, f"{path.name}: first line must be '# expect: ...'"
        assert fields["command"] in ("validate", "run"), path.name


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_malformed_scenario(path, tmp_path, capsys, monkeypatch):
    fields = header(path)
    args = [fields["command"], str(path)]
    if fields["command"] == "run":
        # The run directory comes from the scenario's output.dir (relative to the working
        # directory): run in an empty folder so nothing lands in the checkout.
        monkeypatch.chdir(tmp_path)
        args.append("--no-progress")
    with time_limit(RUN_LIMIT_S if fields["command"] == "run" else None, path):
        code = main(args)
    assert_one_clear_line(code, capsys.readouterr().err, fields["expect"], path)
    assert not list(tmp_path.rglob("summary.json"))


#: A bad scenario must be refused before anything is simulated; a run command still going
#: after this long is a missing up-front check (and would otherwise hang the suite).
RUN_LIMIT_S = 45


@contextlib.contextmanager
def time_limit(seconds: Optional[int], path: Path) -> Iterator[None]:
    if seconds is None:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(
            f"{path.name}: still simulating after {seconds} s instead of exiting with code 2 "
            "(the runner does not check this before the run starts)"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", sorted(TRACE_EXPECTATIONS))
def test_malformed_trace(name, capsys):
    path = TRACES_DIR / name
    code = main(["traces", "validate", str(path)])
    assert_one_clear_line(code, capsys.readouterr().err, TRACE_EXPECTATIONS[name], path)


def test_missing_trace_file(tmp_path, capsys):
    path = tmp_path / "not_there.csv"
    code = main(["traces", "validate", str(path)])
    assert_one_clear_line(code, capsys.readouterr().err, "file not found", path)


def test_real_process_exit_code_and_one_line():
    """The same through a real ``python -m fleetsim`` process (the exit status the shell
    sees), for one scenario and one trace."""
    for args, expected in (
        (["validate", str(CORPUS / "scenarios" / "unknown_deep_key.yaml")],
         "fleet.thermal.onset: unknown key"),
        (["traces", "validate", str(TRACES_DIR / "intervals_overlapping.csv")],
         "overlapping intervals"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "fleetsim", *args], capture_output=True, text=True,
            cwd=CORPUS.parents[1], timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr
