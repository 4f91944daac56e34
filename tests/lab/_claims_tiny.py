"""One tiny run of every registered claim, shared by the test modules of a session (seconds, not minutes)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def tiny_report():
    """(results, paths, out_dir, log lines) of ``run_claims(level="tiny")`` in a temporary folder."""
    from normlab.lab.report import run_claims

    out = Path(tempfile.mkdtemp(prefix="normlab-claims-tiny-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    lines: list[str] = []
    results, paths = run_claims(level="tiny", out_dir=str(out), jobs=1, command="pytest tiny", log=lines.append)
    return results, paths, out, lines
