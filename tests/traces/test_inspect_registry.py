"""`traces validate|inspect` functions on shipped and user files; entry-point formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.traces import build_devices, registry
from fleetsim.traces.config import AvailabilityConfig, TracesConfig
from fleetsim.traces.formats.diurnal_model import DiurnalAvailability
from fleetsim.traces.inspect import inspect_trace_file, validate_trace_file
from fleetsim.traces.registry import TraceFormat
from fleetsim.traces.tables import DATA_DIR, load_catalogue


def test_shipped_catalogue_facts():
    cat = load_catalogue(DATA_DIR / "catalogue" / "phones.csv")
    real = cat[cat["phone_model"] != "FwdLLM paper profile"]
    assert len(real) >= 40
    recent = real[real["year"].astype(int) >= 2019]
    assert len(recent) >= 40
    assert set(recent["year"].astype(int)) >= set(range(2019, 2026))
    assert real["ram_gb"].min() <= 2 and real["ram_gb"].max() >= 12  # low end to flagship
    assert real["npu_ref_forward_s"].notna().sum() >= 20
    assert (real["source"].str.len() > 20).all()
    for folder in ("catalogue", "population", "network", "availability"):
        assert (DATA_DIR / folder / "PROVENANCE.md").exists()


@pytest.mark.parametrize(
    "rel,kind",
    [
        ("catalogue/phones.csv", "catalogue"),
        ("population/flash_1000.csv", "population"),
        ("population/market_share_2024.csv", "population"),
        ("network/hsdpa_3g.csv", "network_distribution"),
        ("network/5g_mmwave.csv", "network_distribution"),
        ("network/flash_wifi.csv", "network_profiles"),
    ],
)
def test_validate_shipped_tables(rel, kind):
    line = validate_trace_file(DATA_DIR / rel)
    assert line.startswith(f"{Path(rel).name}: valid {kind} trace; ")


def test_inspect_writes_png_for_each_kind(tmp_path):
    ivals = tmp_path / "w.csv"
    ivals.write_text("device_id,start_s,end_s\n0,0,3600\n1,7200,10800\n1,86400,90000\n")
    pkl = tmp_path / "behave.pkl"
    pkl.write_bytes(
        pickle.dumps({0: {"active": [0.0], "inactive": [43200.0], "finish_time": 86400.0}})
    )
    for path in (DATA_DIR / "catalogue/phones.csv", DATA_DIR / "network/hsdpa_3g.csv", ivals, pkl):
        table, png = inspect_trace_file(path, tmp_path / "out")
        assert png.exists() and png.stat().st_size > 10_000
        assert {"field", "value"} <= set(table.columns) and len(table) >= 3
    table, _ = inspect_trace_file(pkl, tmp_path / "out")
    share = float(table.set_index("field").loc["mean_online_share", "value"])
    assert share == pytest.approx(0.5, abs=0.02)


class _EveryoneAtNight(TraceFormat):
    """A toy-free plug-in: a night-only model with a parameter file of one number."""

    name = "night_only"
    suffixes = (".night",)

    def load(self, path, n_devices, seed, horizon_s):
        hours = float(Path(path).read_text().strip())
        return DiurnalAvailability(
            np.full(n_devices, 0.0),
            np.full(n_devices, hours * 3600.0),
            label=f"model: night only {hours:g} h",
        )


class _FakeEntryPoint:
    name = "night_only"
    value = "tests:_EveryoneAtNight"

    def load(self):
        return _EveryoneAtNight


def test_entry_point_format(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_entry_point_formats", lambda: {"night_only": _FakeEntryPoint()})
    assert "night_only" in registry.available_formats()
    f = tmp_path / "x.night"
    f.write_text("6\n")
    cfg = TracesConfig(availability=AvailabilityConfig(kind="night_only", path="x.night"))
    table, av = build_devices(cfg, 10, 0, 86400.0, tmp_path)
    assert av.is_available(np.arange(10), 3600.0).all()
    assert not av.is_available(np.arange(10), 7 * 3600.0).any()
    assert "night only 6 h" in table.source
    assert validate_trace_file(f).startswith("x.night: valid night_only trace")


def test_entry_point_that_fails_to_import(monkeypatch):
    class Broken:
        name = "broken"
        value = "nowhere:Thing"

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(registry, "_entry_point_formats", lambda: {"broken": Broken()})
    with pytest.raises(FleetsimInputError, match="entry point 'broken' .* failed to import"):
        registry.get_format("broken")
