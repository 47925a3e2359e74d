"""The chat templates mera-serve hands to vLLM, shipped as package data of this package.

The folder stays at the repository's top level (the leaderboard's template, byte-identical); being a
package puts it into every wheel and sdist, and `template_path` finds it the same way in a checkout,
an editable install and a wheel install.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

GEMMA4_MERA = "gemma4_mera.jinja"  # the MERA Multi leaderboard's Gemma-4 template


def template_path(name: str = GEMMA4_MERA) -> Path:
    """The template's file path (vLLM's --chat-template takes a path; installs unpack packages to disk)."""
    return Path(str(files(__name__) / name))
