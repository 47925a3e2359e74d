"""Where mera-serve builds its dev checkpoints: a per-user cache, never the installed package's folder.

`$XDG_CACHE_HOME/mera-multi`, else `~/.cache/mera-multi` (the XDG default; mera-serve runs on Linux).
`MERA_SERVE_CACHE_DIR` / `--cache-dir` override it (the tests keep theirs inside the work tree).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mera-multi"
