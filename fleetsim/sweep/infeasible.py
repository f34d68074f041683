"""What an ``infeasible`` run (no phone of its fleet can hold its job:
:class:`fleetsim.errors.InfeasibleRunError`) leaves behind, and when that still holds.

Such a run writes no outputs, so the sweep index alone would keep its status forever, even
after its scenario changed or its directory was deleted.  It writes :data:`INFEASIBLE_FILE`
instead; a later sweep keeps the status only while that record is there for the planned
resolved scenario (:func:`infeasible_record_holds`), and a study reads the refusing commit
from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.record.atomic import write_text
from fleetsim.sweep.plan import PlannedRun

#: What an ``infeasible`` run leaves in its directory (it writes no outputs): the hash of the
#: resolved scenario it was refused for, the refusal and the code that refused it.  A later
#: sweep keeps the status only while the record is there for the same scenario.
INFEASIBLE_FILE = "infeasible.json"


def resolved_sha256(resolved_yaml: str) -> str:
    """SHA-256 (hex) of a resolved scenario's text, as ``scenario.yaml`` holds it."""
    return hashlib.sha256(resolved_yaml.encode("utf-8")).hexdigest()


def record_infeasible(run_dir: Path, scenario_path: Path, overrides: Sequence[str],
                       error: str) -> None:
    """Write :data:`INFEASIBLE_FILE` for a run refused as infeasible (best effort: without
    it a later sweep runs it again, which refuses it again)."""
    from fleetsim.record.provenance import code_provenance
    from fleetsim.scenario.loader import load_scenario

    with contextlib.suppress(OSError, FleetsimInputError):
        resolved = load_scenario(scenario_path, list(overrides)).resolved_yaml()
        write_text(run_dir / INFEASIBLE_FILE, json.dumps(
            {"scenario_sha256": resolved_sha256(resolved), "error": error,
             **code_provenance()}, indent=1))


def infeasible_record(run: PlannedRun) -> Optional[dict[str, Any]]:
    """The record an ``infeasible`` run left (:data:`INFEASIBLE_FILE`), or None when its
    directory holds none or one for another resolved scenario than the planned one."""
    try:
        record = json.loads((run.run_dir / INFEASIBLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if run.resolved_yaml and record.get("scenario_sha256") != resolved_sha256(
            run.resolved_yaml):
        return None
    return record


def infeasible_record_holds(run: PlannedRun) -> bool:
    """Whether the run's ``infeasible`` status is still its planned scenario's."""
    return infeasible_record(run) is not None
