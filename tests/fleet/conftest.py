"""Make ``fleet_helpers`` (next to this file) importable under ``--import-mode=importlib``,
which does not put test directories on ``sys.path``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
