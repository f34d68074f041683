"""Build ``model_aliases.csv``: Android ``Build.MODEL`` codes -> catalogue phone names.

Source: FLASH's ``real2benchmark.json`` (PKU-Chengxu/FLASH@55cbede0, BSD-2-Clause,
``../shared/device_data/flash_pku_device_util/``; read, never copied), the map the
catalogue's FLASH phones were named with (``build_tables.py``).  Only codes whose
AI-Benchmark name is a catalogue phone are kept.  Used to map the ``model`` field of
FedScale's ``client_behave_trace`` (Build.MODEL codes such as ``CPH1801``) onto catalogue
phones (:mod:`fleetsim.traces.phone_names`).

Regenerate: ``PYTHONPATH=. .venv/bin/python device_traces/catalogue/build_model_aliases.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / ".." / "shared" / "device_data" / "flash_pku_device_util"
URL = ("https://github.com/PKU-Chengxu/FLASH/blob/55cbede0131877b583ed55333e980985a1925afd/"
       "models/utils/device_util/real2benchmark.json")


def main() -> None:
    r2b = json.loads((SRC / "real2benchmark.json").read_text(encoding="utf-8"))
    with open(HERE / "phones.csv", newline="", encoding="utf-8") as fh:
        phones = {row["phone_model"] for row in csv.DictReader(fh)}
    rows = sorted((code.strip(), name) for code, name in r2b.items() if name in phones)
    with open(HERE / "model_aliases.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["build_model", "phone_model", "source"])
        for code, name in rows:
            out.writerow([code, name, f"FLASH real2benchmark.json ({URL})"])


if __name__ == "__main__":
    main()
