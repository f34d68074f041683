"""Power figures and the energy model of the fleet engine.

Compute energy is backend power × compute seconds; radio energy follows the data-transfer
power model of Huang et al. (MobiSys 2012): a per-bit term by direction plus the radio's
active base power for the duration of the transfer.  Figures live in
``device_traces/power/power.yaml`` (sources in its PROVENANCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from fleetsim.errors import FleetsimInputError
from fleetsim.fleet.config import EnergyConfig
from fleetsim.safe_yaml import MAX_FILE_BYTES, load_bounded
from fleetsim.traces.files import refuse_special_file
from fleetsim.workload import BACKENDS

RADIO_FIELDS = ("up_mw_per_mbps", "down_mw_per_mbps", "base_mw")


def default_power_file() -> Path:
    """The shipped power figures: ``device_traces/power/power.yaml`` at the repository root."""
    return Path(__file__).resolve().parents[2] / "device_traces" / "power" / "power.yaml"


@dataclass(frozen=True)
class RadioPower:
    up_mw_per_mbps: float
    down_mw_per_mbps: float
    base_mw: float


@dataclass
class PowerTable:
    """Power figures resolved for one fleet: compute watts per backend, radio per network type."""

    compute_w: dict[str, float]
    radio: dict[str, RadioPower]
    aliases: dict[str, str]
    include_radio_base: bool = True
    source: str = ""

    @classmethod
    def load(cls, config: Optional[EnergyConfig] = None, base_dir: Optional[Path] = None
             ) -> PowerTable:
        """The power figures; a relative ``power_file`` is resolved against ``base_dir``
        (the scenario file's folder), like every other path in a scenario."""
        config = config or EnergyConfig()
        path = Path(config.power_file).expanduser() if config.power_file else (
            default_power_file()
        )
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        refuse_special_file(path, "fleet.energy.power_file")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE_BYTES + 1)
            if len(text) > MAX_FILE_BYTES:
                raise FleetsimInputError(
                    f"fleet.energy.power_file: {path} is larger than 1 MiB; a power table "
                    "is a few kB"
                )
            raw = load_bounded(text, path)  # alias bombs refused (fleetsim.safe_yaml)
        except OSError as exc:
            raise FleetsimInputError(
                f"fleet.energy.power_file: cannot read power figures from {path} "
                f"({exc.strerror or exc}); give a YAML file in the format of "
                f"{default_power_file()}"
            ) from exc
        except yaml.YAMLError as exc:
            raise FleetsimInputError(
                f"fleet.energy.power_file: {path} is not valid YAML ({exc})"
            ) from exc
        if not isinstance(raw, dict):
            raise FleetsimInputError(
                f"fleet.energy.power_file: {path}: expected a mapping with keys compute_w, "
                "radio (and optionally aliases)"
            )
        compute = raw.get("compute_w")
        if not isinstance(compute, dict) or set(compute) != set(BACKENDS):
            raise FleetsimInputError(
                f"{path}: compute_w must map exactly the backends {', '.join(BACKENDS)} to watts"
            )
        compute_w = {}
        for name, value in compute.items():
            compute_w[name] = _non_negative(path, f"compute_w.{name}", value)
        compute_w.update(config.compute_w)
        radio_raw = raw.get("radio")
        if not isinstance(radio_raw, dict) or not radio_raw:
            raise FleetsimInputError(f"{path}: radio must map network types to power figures")
        radio = {}
        for net, fields in radio_raw.items():
            if not isinstance(fields, dict) or set(fields) != set(RADIO_FIELDS):
                raise FleetsimInputError(
                    f"{path}: radio.{net} must have exactly the fields {', '.join(RADIO_FIELDS)}"
                )
            radio[str(net).lower()] = RadioPower(
                **{f: _non_negative(path, f"radio.{net}.{f}", fields[f]) for f in RADIO_FIELDS}
            )
        aliases = {str(k).lower(): str(v).lower() for k, v in (raw.get("aliases") or {}).items()}
        for alias, target in aliases.items():
            if target not in radio:
                raise FleetsimInputError(
                    f"{path}: aliases.{alias} points to {target!r}; allowed: {', '.join(radio)}"
                )
        return cls(compute_w, radio, aliases, config.include_radio_base, str(path))

    def radio_for(self, network_type: str) -> RadioPower:
        key = network_type.lower()
        key = self.aliases.get(key, key)
        if key not in self.radio:
            allowed = sorted(set(self.radio) | set(self.aliases))
            raise FleetsimInputError(
                f"{self.source}: no radio power figures for network type {network_type!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        return self.radio[key]

    def radio_arrays(self, network_types: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per network-type index: (uplink J per byte, downlink J per byte, base W)."""
        rows = [self.radio_for(name) for name in network_types]
        # mW per Mbit/s × Mbit = mJ; per byte: 8e-6 Mbit, then /1000 to joules.
        up = np.array([r.up_mw_per_mbps * 8e-9 for r in rows])
        down = np.array([r.down_mw_per_mbps * 8e-9 for r in rows])
        base = np.array([r.base_mw / 1000.0 if self.include_radio_base else 0.0 for r in rows])
        return up, down, base

    def compute_watts(self, backend: str) -> float:
        if backend not in self.compute_w:
            raise FleetsimInputError(
                f"{self.source}: no compute power for backend {backend!r}; "
                f"allowed: {', '.join(self.compute_w)}"
            )
        return self.compute_w[backend]


def _non_negative(path: Path, key: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0:
        raise FleetsimInputError(f"{path}: {key} must be a finite number >= 0, got {value!r}")
    return number
