"""The HTML report as a browser draws it (issue 24: "check each in a real browser").

Headless Chromium renders a real run's report at a laptop width; the screenshot must show
every section with nothing cut at the right edge.  Skipped where no Chromium is installed
(Debian: ``apt-get install chromium``); marked slow (a real run and a browser start).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fleetsim.analysis import write_report

runner = pytest.importorskip("fleetsim.runner")
Image = pytest.importorskip("PIL.Image")

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280

SCENARIO = """
description: browser check
fleet:
  size: 30
traces:
  population: flash_1000
  availability:
    kind: diurnal_model
model:
  name_or_path: all-minilm-l6-v2
  max_seq_len: 64
peft:
  method: lora
  rank: 4
data:
  name: bbc_news
  batch_size: 8
numerics:
  engine: none
protocol:
  name: fwdllm
  devices_per_step: 6
  perturbations_per_device: 2
  rounds: 3
  batches_per_round: 2
run:
  name: browser
  max_sim_hours: 48
"""


def screenshot(page: Path, out: Path, height: int = 9000) -> np.ndarray:
    subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={WIDTH},{height}", f"--screenshot={out}", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    return np.asarray(Image.open(out).convert("L"))


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine")
def test_report_renders_whole_in_a_browser(tmp_path: Path) -> None:
    scenario = tmp_path / "browser.yaml"
    scenario.write_text(SCENARIO)
    run = runner.run_scenario(scenario, run_dir=tmp_path / "run")
    page = write_report(run)
    pixels = screenshot(page, tmp_path / "shot.png")
    ink = pixels < 200
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.size and rows[-1] < pixels.shape[0] - 50, "the page is longer than the shot"
    # nothing reaches the right edge: the page's widest table or figure fits the width
    assert not ink[:, WIDTH - 12:].any()
    # every embedded figure was decoded and drawn (a broken image draws a small icon):
    # the page has tall runs of ink rows, one per figure
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4  # progress, timeline, utilisation, steps
    tall = np.diff(np.flatnonzero(np.diff(ink.any(axis=1).astype(int)))).max()
    assert tall > 250
