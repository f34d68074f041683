"""The README's scenario reference is the one generated from the schema."""

from pathlib import Path

from fleetsim.scenario.reference import render_readme, scenario_reference
from fleetsim.scenario.schema import Scenario

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_in_sync():
    text = README.read_text()
    assert render_readme(text) == text, (
        "README scenario reference is stale: run `python -m fleetsim.scenario.reference README.md`"
    )


def test_reference_lists_every_section_and_documents_every_key():
    ref = scenario_reference()
    for name in Scenario.model_fields:
        assert f"| `{name}` |" in ref
    # every row has a description
    rows = [r for r in ref.splitlines()[2:]]
    undocumented = [r for r in rows if r.rstrip().endswith("|  |")]
    assert not undocumented, undocumented[:5]
    assert "`protocol.commit.late_work`" in ref and "`policy.budget.growth`" in ref
