"""Which code produced a run: the fleetsim version and the git commit of its source.

``summary.json`` records ``fleetsim_version`` (``fleetsim.__version__``), ``git_commit``
(``git rev-parse HEAD`` of the checkout fleetsim was imported from; None when it is not
a git checkout, e.g. an installed wheel, or git is missing) and ``git_dirty`` (whether
tracked files differ from that commit; None when unknown), so a figure in a paper can be
traced to the code that computed it.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Optional

import fleetsim


def _git(args: list[str], cwd: Path) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict[str, object]:
    """``{"fleetsim_version", "git_commit", "git_dirty"}`` of the running code (cached:
    the code does not change within a process)."""
    source = Path(fleetsim.__file__).resolve().parent.parent
    commit = None
    dirty: Optional[bool] = None
    top = _git(["rev-parse", "--show-toplevel"], source)
    if top is not None and Path(top).resolve() == source:
        commit = _git(["rev-parse", "HEAD"], source)
        status = _git(["status", "--porcelain", "--untracked-files=no"], source)
        dirty = None if status is None else bool(status)
    return {"fleetsim_version": fleetsim.__version__, "git_commit": commit,
            "git_dirty": dirty}
