import base64
import math
import re

import pandas as pd
import pytest

from fleetsim.analysis.report import compare_runs, markdown_table, write_report
from fleetsim.errors import FleetsimInputError

PNG = b"\x89PNG\r\n\x1a\n"


def _embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_sections_files_and_tables(make_run) -> None:
    # every protocol's real run is reported in test_real_runs.py; this one checks by hand
    protocol = "kseed"
    run = make_run(name=protocol, protocol=protocol, repeat_steps=(1,), offline_device=0)
    page_path = write_report(run)
    assert page_path == run / "report" / "report.html"
    page = page_path.read_text()
    images = _embedded_images(page)
    assert len(images) == 5 and all(image.startswith(PNG) for image in images)
    for name in (
        "convergence_time.png",
        "convergence_perturbations.png",
        "timeline.png",
        "utilisation.png",
        "step_breakdown.png",
    ):
        assert (run / "report" / name).read_bytes().startswith(PNG)
    assert "Time to accuracy" in page and f"<td>{protocol}</td>" in page
    tta = pd.read_csv(run / "report" / "time_to_accuracy.csv")
    # targets come from the summary's time_to_target keys; 0.6 first reached at 0.7 (step 3)
    assert tta["target accuracy"].tolist() == [0.6]
    assert tta["simulated seconds"].tolist() == [63.0]


def test_systems_only_report_has_no_accuracy_panels(make_run, tmp_path) -> None:
    run = make_run(name="s", accuracies=None)
    page = write_report(run, tmp_path / "out").read_text()
    assert "Time to accuracy" not in page and "Convergence" not in page
    assert "Progress over simulated time" in page
    assert len(_embedded_images(page)) == 4
    assert not (tmp_path / "out" / "time_to_accuracy.csv").exists()


def test_compare_runs_table_markdown_and_curves(make_run, tmp_path) -> None:
    dirs = [
        make_run(name="v2-s0", seed=0, units_per_device=2, accuracies=(0.3, 0.5, 0.7)),
        make_run(name="v2-s1", seed=1, units_per_device=2, accuracies=(0.3, 0.5, 0.55)),
        make_run(name="v5-s0", seed=0, units_per_device=5, accuracies=(0.6, 0.7, 0.8)),
        make_run(name="sys", seed=0, units_per_device=9, accuracies=None),
    ]
    written = compare_runs(
        dirs, "protocol.perturbations_per_device", tmp_path / "cmp", targets=[0.5, 0.7]
    )
    table = pd.read_csv(written["csv"])
    assert table["protocol.perturbations_per_device"].tolist() == [2, 5, 9]
    assert table["runs"].tolist() == [2, 1, 1]
    # both v=2 seeds reach 0.5 at step 1 (26 s): median 26 s
    assert table["tta_0.5_median_h"].tolist()[:2] == pytest.approx([26 / 3600, 13 / 3600])
    assert table["tta_0.7_reached"].tolist() == ["1/2", "1/1", "0/1"]
    # the systems-only run never reached 0.7: not reached (∞), not a missing value
    assert table.loc[2, "tta_0.7_median_h"] == math.inf
    assert pd.isna(table.loc[2, "final_accuracy"])
    assert table["final_accuracy"].tolist()[:2] == pytest.approx([0.625, 0.8])
    # the note claims intervals only where the table has them (a new-user trial found it
    # promising intervals for every mean)
    note = written["markdown"].read_text()
    assert "other quantities are means over runs without an interval" in note
    assert "final_accuracy_ci_low" in table.columns and "energy_kj_ci_low" not in table.columns
    markdown = written["markdown"].read_text()
    assert "| protocol.perturbations_per_device | runs |" in markdown
    assert "| 9 | 1 |" in markdown
    for key in ("curves", "curves_perturbations"):
        assert written[key].read_bytes().startswith(PNG)
    with pytest.raises(FleetsimInputError, match="differ between runs"):
        compare_runs(dirs, "protocol.nope", tmp_path / "cmp")


def test_compare_systems_only_runs_per_run(make_run, tmp_path) -> None:
    dirs = [make_run(name=f"s{i}", seed=i, accuracies=None) for i in range(2)]
    written = compare_runs(dirs, None, tmp_path / "cmp")
    table = pd.read_csv(written["csv"])
    assert table["run"].tolist() == ["s0", "s1"]
    assert not any(c.startswith("tta_") for c in table.columns)
    assert "curves_perturbations" not in written


def test_markdown_table_formats_missing_values() -> None:
    text = markdown_table(pd.DataFrame({"a": [1.5, float("nan")], "b": ["x|y", None]}))
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1.5 | x\\|y |", "| — | — |"]


def test_table_values_read_at_a_glance() -> None:
    # issue 24 (seen in a browser): 80,290 simulated seconds printed as 8.029e+04
    from fleetsim.analysis.tables import format_value

    assert format_value(80290.4) == "80,290"
    assert format_value(1234567.0) == "1,234,567"
    assert format_value(9999.0) == "9999"
    assert format_value(0.1031) == "0.1031"
    assert format_value(2.5e-5) == "2.500e-05"
    assert format_value(3e13) == "3.000e+13"


def test_runs_without_committed_steps_still_report(make_run, tmp_path) -> None:
    empty = make_run(name="empty", accuracies=())
    page = write_report(empty).read_text()
    assert "Step time breakdown" not in page and "Progress over simulated time" in page
    written = compare_runs([empty, make_run(name="s", accuracies=None)], None, tmp_path / "c")
    table = pd.read_csv(written["csv"])
    assert table["steps"].tolist() == [0, 4]
    assert pd.isna(table.loc[0, "straggler_wait_share"])


def test_report_is_reproducible(make_run, tmp_path) -> None:
    run = make_run(name="a", offline_device=1)
    first = write_report(run, tmp_path / "one").read_bytes()
    second = write_report(run, tmp_path / "two").read_bytes()
    assert first == second


def _html_frame(page: str, heading: str) -> pd.DataFrame:
    """The first table under ``heading`` (cells as text; no lxml needed)."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    section = page.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    parser = Cells()
    parser.feed(section)
    header, *rows = parser.rows
    return pd.DataFrame(rows, columns=header)


def test_report_tables_give_shares_in_percent(make_run) -> None:
    # issue 24 (seen in a browser): the utilisation and step tables printed shares as
    # fractions with float residues (2.296e-15) where the figures show percent
    run = make_run(name="pct", repeat_steps=(1,), offline_device=0)
    page = write_report(run).read_text()
    util = _html_frame(page, "Utilisation table")
    shares = ["used (%)", "wasted (%)", "idle (%)", "offline (%)"]
    assert set(shares) <= set(util.columns)
    fleet = util[util["level"] == "fleet"].iloc[0]
    assert sum(float(fleet[c]) for c in shares) == pytest.approx(100.0, abs=0.2)
    assert all(0.0 <= float(v) <= 100.0 for c in shares for v in util[c])
    steps = _html_frame(page, "Step time breakdown")
    assert list(steps.columns) == ["part", "share of step time (%)", "mean seconds per step"]
    assert sum(float(v) for v in steps["share of step time (%)"]) == pytest.approx(100.0, abs=0.5)
    assert "e-1" not in page.split("<h2>Utilisation table</h2>", 1)[1].split("<h2>Scenario")[0]


def test_report_on_an_unfinished_folder_writes_nothing(tmp_path) -> None:
    # a refused `fleetsim report` used to leave report/ behind, and `fleetsim run` then
    # refused that directory as holding an unidentified run
    folder = tmp_path / "sys"
    folder.mkdir()
    with pytest.raises(FleetsimInputError, match="not a finished run directory"):
        write_report(folder)
    assert list(folder.iterdir()) == []


def test_report_on_a_folder_of_runs_is_refused(make_run) -> None:
    # found by a new-user trial: a sweep folder gave a page titled with one run that drew all
    first = make_run(name="a")
    make_run(name="b")
    folder = first.parent
    pd.DataFrame({"run_id": ["a", "b"], "status": ["done", "done"]}).to_parquet(
        folder / "sweep_index.parquet")
    with pytest.raises(FleetsimInputError, match="holds 2 runs .*fleetsim compare"):
        write_report(folder)
    assert not (folder / "report").exists()


def test_report_on_an_empty_folder_says_it_is_not_a_run(tmp_path) -> None:
    # found by a new-user trial: an empty folder "did not finish"
    with pytest.raises(FleetsimInputError, match="an empty folder, not a run directory"):
        write_report(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)


def test_the_final_line_gives_simulated_time_in_a_unit_that_reads() -> None:
    from fleetsim.cli import _sim_time

    assert _sim_time(40.0) == "40.0 s"
    assert _sim_time(600.0) == "10.0 min"
    assert _sim_time(24 * 3600.0) == "24.000 h"
