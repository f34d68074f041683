"""The README's results table, written from the committed per-run tables (issue 23, rule 5).

Each row's answer is the study page's own answer function applied to the committed
``docs/results/<study>/runs.csv``, and its host time is that table's ``host_s`` summed, so
the README can never disagree with the pages.  ``tests/analysis/test_results_pages.py``
renders the block again and compares.

    .venv/bin/python analysis/results_readme.py README.md     # rewrite the block in place
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleetsim.analysis.pages import read_runs_table
from fleetsim.analysis.study import load_study_script

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
BEGIN = "<!-- results table: written by analysis/results_readme.py; do not edit -->"
END = "<!-- end of results table -->"

#: (page, what the study is, study folder, answer function, per-run table)
STUDIES = [
    ("perturbations_per_batch.md",
     "(a) perturbations per batch: FwdLLM Fig. 8 with real forward gradients (MiniLM + LoRA "
     "on AG News; phones charged for DistilBERT on the paper's closed-form profile), every v "
     "to one 120 s budget at its own validation-tuned learning rate",
     "perturbations_per_batch", "answer", "perturbations_per_batch/runs.csv"),
    ("policies_under_churn.md",
     "(c) load allocation under churn, systems side: 10,000 phones, one simulated day, "
     "charged for TinyLlama-1.1B INT8, five arms in their deployed forms",
     "policies_under_churn", "answer_systems", "policies_under_churn/runs.csv"),
    ("allocation_under_churn.md",
     "(c) load allocation under churn, time to accuracy: the same fleet with real forward "
     "gradients of MiniLM on AG News, variance_paced beside its equal-budget control",
     "policies_under_churn", "answer_accuracy", "allocation_under_churn/runs.csv"),
    ("end_to_end.md",
     "(b) end to end: FwdLLM against Adapter-BP, BitFit-BP, Full-BP and FedAdapter (Fig. 10) "
     "at the paper's layouts on its closed-form profile, each arm's SGD rate tuned on "
     "validation, ten seeds; then the same arms on a realistic 200-phone fleet with churn, "
     "the phones charged for DistilBERT and for LLaMA-2-7B INT4; MiniLM on AG News learns",
     "end_to_end", "answer", "end_to_end/runs.csv"),
]

#: Studies withdrawn until they are redone under the discipline (no numbers are shown):
#: (page, what the study is, why).
WITHDRAWN: list[tuple[str, str, str]] = []


def _module(study: str):
    return load_study_script(REPO / "analysis" / study / "run.py", f"readme_{study}")


def render_block() -> str:
    """The results table (Markdown, between :data:`BEGIN` and :data:`END`)."""
    lines = [BEGIN, "", "| study | answer | runs, host time |", "|---|---|---|"]
    for page, what, study, function, table_path in STUDIES:
        table = read_runs_table(RESULTS / table_path)
        text = getattr(_module(study), function)(table).replace("|", "\\|")
        lines.append(f"| [{what}](docs/results/{page}) | {text} | {len(table)} runs, "
                     f"{table['host_s'].sum() / 60.0:.0f} min summed |")
    for page, what, text in WITHDRAWN:
        lines.append(f"| [{what}](docs/results/{page}) | {text} | — |")
    lines += ["", END]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text from :data:`BEGIN` to :data:`END` replaced by ``block``."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + block + readme[end:]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else REPO / "README.md"
    path.write_text(replace_block(path.read_text(), render_block()))
    print(f"results table written into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
