"""Scenario section ``traces``: where device facts come from.

Every field names either a built-in table shipped in ``device_traces/`` or a file
path; paths are resolved relative to the scenario file's folder (``base_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_AVAILABILITY = ("always_online", "diurnal_model", "auto", "intervals", "fedscale",
                        "flash", "flash_windows", "empirical", "diurnal_windows")
FILE_AVAILABILITY = ("auto", "intervals", "fedscale", "flash", "flash_windows", "empirical")
NETWORK_TYPES = ("hsdpa_3g", "5g_mmwave", "flash_wifi", "fixed")


class AvailabilityConfig(BaseModel):
    """When devices may work: a documented model, a trace file, or always online."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        "diurnal_model",
        description="always_online | diurnal_model (documented model calibrated on the FLASH "
        "1000 users) | intervals (CSV/Parquet device_id,start_s,end_s) | fedscale "
        "(client_behave_trace pickle) | flash (state_traces.json) | a format registered in "
        "the `fleetsim.traces` entry-point group | auto (the file's format detected by its "
        "content, as `fleetsim traces validate` does) | flash_windows (measured windows "
        "{user: [[start_s, end_s], ...]}, users as they are) | empirical (devices resample "
        "the users of a flash_windows file, whole-day shifts) | diurnal_windows (model "
        "fitted on the measured FLASH windows; path: optional fit file).",
    )
    path: Optional[str] = Field(
        None, description="Trace file for file kinds; relative to the scenario file's folder."
    )
    period_s: Optional[float] = Field(
        None,
        gt=0,
        description="intervals: repeat the file's windows with this period (None = a device is "
        "offline after its last window); a window ending after the period wraps around "
        "(0,82800,90000 with 86400 is online 23:00-01:00 every day).",
    )
    replay: Literal["repeat", "resample_days"] = Field(
        "repeat",
        description="intervals, fedscale, flash, flash_windows: a fleet larger than the "
        "trace's m devices replays them; repeat: fleet device i = trace device i mod m "
        "(copies churn together: correlated churn); resample_days: devices 0..m-1 are the "
        "trace devices, each further device replays a random trace device shifted by a "
        "random whole number of days (streams availability/replay/*).",
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone in which trace timestamps without a zone (FLASH "
        "state_traces messages) are read; never the host's zone.",
    )
    trace_span_days: float = Field(
        7.0,
        gt=0,
        description="diurnal_model: days the FLASH per-user totals were summed over (the "
        "totals file does not state it; FLASH describes a one-week trace).",
    )
    night_share: float = Field(
        0.7,
        ge=0,
        le=1,
        description="diurnal_model: share of devices whose daily window starts around "
        "night_start_hour (overnight charging); the rest start at a uniform hour.",
    )
    night_start_hour: float = Field(
        23.0, ge=0, lt=24, description="diurnal_model: mean local hour of the overnight window."
    )
    night_start_sd_hours: float = Field(
        1.5, ge=0, description="diurnal_model: spread (sd, hours) of the overnight start hour."
    )
    wifi_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="diurnal_model: share of idle-charging time that is also on Wi-Fi; "
        "flash_windows, empirical, diurnal_windows: probability that a charging window is "
        "on an unmetered network (each window kept with it; 1 = assumed, not measured).",
    )
    merge_gap_s: float = Field(
        60.0,
        ge=0,
        description="flash_windows, empirical: merge a user's windows separated by at most "
        "this many seconds (repeated charge events of one session).",
    )
    clock_tolerance_days: float = Field(
        1.0,
        ge=0,
        description="flash_windows, empirical: a user with an interval more than this many "
        "empty days away from the trace's span is skipped (wrong clock).",
    )
    observed_day_min_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="flash_windows, empirical: the observed span (the period replayed) runs "
        "from the first to the last local day whose online seconds are at least this share "
        "of the busiest day's; windows starting outside it (edge tails) are dropped and "
        "counted; 0 keeps every day of the file.",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value in BUILTIN_AVAILABILITY:
            return value
        from fleetsim.traces.registry import available_formats

        names = available_formats()
        if value not in names:
            raise ValueError(
                f"traces.availability.kind: {value!r} is not one of {', '.join(sorted(names))}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from fleetsim.errors import FleetsimInputError
        from fleetsim.traces.formats.common import zone

        try:
            zone(value)
        except FleetsimInputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> AvailabilityConfig:
        if self.kind in FILE_AVAILABILITY and not self.path:
            raise ValueError(
                f"traces.availability.path: kind {self.kind!r} needs a trace file path"
            )
        return self


#: the radio technology each trace network type implies (``DeviceTable.network_types`` holds
#: these names, which the energy model keys its radio power figures on)
RADIO_OF_TRACE_TYPE = {"hsdpa_3g": "hsdpa", "5g_mmwave": "5g", "flash_wifi": "wifi"}


class NetworkConfig(BaseModel):
    """Per-device uplink/downlink bandwidth."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hsdpa_3g", "5g_mmwave", "flash_wifi", "fixed"] = Field(
        "flash_wifi",
        description="hsdpa_3g (Norway 3G commute traces) | 5g_mmwave (5Gophers) | flash_wifi "
        "(FLASH per-user up/down profiles) | fixed (uplink_mbps/downlink_mbps for everyone).",
    )
    path: Optional[str] = Field(
        None,
        description="Optional distribution table (CSV quantile,downlink_mbps,uplink_mbps) "
        "replacing the built-in one for hsdpa_3g/5g_mmwave.",
    )
    uplink_mbps: Optional[float] = Field(
        None, gt=0, description="fixed: uplink in Mbit/s (or Mibit/s with mebibit: true)."
    )
    downlink_mbps: Optional[float] = Field(
        None, gt=0, description="fixed: downlink in Mbit/s (default: equal to uplink_mbps)."
    )
    mebibit: bool = Field(
        False,
        description="fixed: read the rates as 2^20 bit/s per unit (the FwdLLM paper's "
        "'10 Mbit/s' is 10 x 2^20 bit/s).",
    )
    radio: Literal["wifi", "hsdpa", "lte", "5g"] = Field(
        "wifi",
        description="fixed: radio technology of the link (energy model); the trace types "
        "imply theirs (hsdpa_3g: hsdpa, 5g_mmwave: 5g, flash_wifi: wifi).",
    )
    uplink_only: bool = Field(
        False, description="Downloads take zero time (downlink = infinite), as in the paper."
    )

    @model_validator(mode="after")
    def _fixed_rates(self) -> NetworkConfig:
        if self.type == "fixed" and self.uplink_mbps is None:
            raise ValueError("traces.network.uplink_mbps: type 'fixed' needs uplink_mbps")
        for key in ("uplink_mbps", "downlink_mbps"):
            # the trace types draw each phone's rates from their tables: a rate set beside
            # one would be ignored without a word
            if self.type != "fixed" and getattr(self, key) is not None:
                raise ValueError(
                    f"traces.network.{key}: applies only to type: fixed (here type is "
                    f"{self.type!r}, which draws each phone's rates from its table); "
                    f"remove {key} or set type: fixed"
                )
        if self.type != "fixed" and self.mebibit:
            raise ValueError(
                f"traces.network.mebibit: applies only to type: fixed (here type is "
                f"{self.type!r}, whose tables are in Mbit/s); remove mebibit or set type: fixed"
            )
        implied = RADIO_OF_TRACE_TYPE.get(self.type)
        if implied is not None and "radio" in self.model_fields_set and self.radio != implied:
            raise ValueError(
                f"traces.network.radio: type {self.type!r} implies radio {implied!r} (got "
                f"{self.radio!r}); remove radio or set type: fixed"
            )
        if self.type == "fixed" and self.path is not None:
            raise ValueError(
                "traces.network.path: a distribution table applies only to the trace types "
                "(hsdpa_3g, 5g_mmwave, flash_wifi); type fixed uses uplink_mbps/downlink_mbps; "
                "remove path or set one of those types"
            )
        return self


class TracesConfig(BaseModel):
    """Device catalogue, population, availability and network of the fleet."""

    model_config = ConfigDict(extra="forbid")

    catalogue: str = Field(
        "default",
        description="'default' (device_traces/catalogue/phones.csv) or a path to a catalogue "
        "CSV (phone_model, ram_gb, cpu_ref_forward_s[, gpu_ref_forward_s, npu_ref_forward_s]).",
    )
    population: str = Field(
        "flash_1000",
        description="flash_1000 | market_share_2024 | uniform | paper_fwdllm | trace_models "
        "(kind fedscale: each device is the catalogue phone its client_behave_trace client's "
        "'model' names; unknown models drawn uniformly from the catalogue), or a path to a CSV "
        "phone_model,weight.",
    )
    device_capacity: Optional[str] = Field(
        None,
        description="FedScale client_device_capacity pickle (client -> {computation: ms per "
        "sample, communication: kbit/s}): replaces each device's CPU latency (GPU/NPU "
        "absent) and its uplink and downlink; device i = client i mod m.",
    )
    device_capacity_flops_per_sample: Optional[float] = Field(
        None,
        gt=0,
        description="device_capacity: forward FLOPs of one sample of the model FedScale's "
        "computation was measured on (converts ms/sample by the latency model's scaling); "
        "None: keep the clients' speed ratios, the median client as fast as the "
        "population's median CPU.",
    )
    availability: AvailabilityConfig = Field(
        default_factory=AvailabilityConfig, description="When devices may work."
    )
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="Bandwidth.")
    usable_ram_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a phone's RAM one app may use (Android keeps the OS and "
        "background apps resident); a job larger than this cannot run. The default 0.5 is "
        "an assumption, not a measurement: Android sets no per-app share of native memory "
        "(its low-memory killer, lmkd, kills by priority under pressure: "
        "source.android.com/docs/core/perf/lmkd), and on-device LLM apps budget about 0.6 "
        "(README, Job memory). Vary it when RAM admission decides a result.",
    )

    def resolve(self, value: Optional[str], base_dir: Path) -> Optional[Path]:
        """A path field resolved against the scenario folder."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(base_dir) / p)


def paper_profile_config() -> TracesConfig:
    """The closed-form reproduction of FwdLLM: paper phone, always online, 10 Mibit/s up."""
    return TracesConfig(
        population="paper_fwdllm",
        availability=AvailabilityConfig(kind="always_online"),
        network=NetworkConfig(type="fixed", uplink_mbps=10.0, mebibit=True, uplink_only=True),
    )
