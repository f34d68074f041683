"""The one check every input file passes before fleetsim opens it.

A trace path that names a FIFO, a character or block device or a socket would block
forever (a FIFO nobody writes) or stream without end (``/dev/zero``, ``/dev/urandom``)
into a parser; such a path is refused with one line, never opened.  Folders and
missing files are left to the caller, which names what it expected.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from fleetsim.errors import FleetsimInputError

_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def refuse_special_file(path: Path | str, key: Optional[str] = None) -> Path:
    """``path`` when it is a regular file, a folder or absent; FleetsimInputError (one
    line, naming ``key`` when given, e.g. ``traces.availability.path``) when it is a FIFO,
    device or socket.  Follows symbolic links (what ``open`` would read)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    for test, what in _SPECIAL:
        if test(mode):
            where = f"{key}: " if key else ""
            raise FleetsimInputError(
                f"{where}{path} is {what}, not a regular file; give a trace file"
            )
    return path
