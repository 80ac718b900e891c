"""Locate the repository's data folders (streams/, state/, config/).

In a source checkout (editable install) they sit at the top of the repository; an installed
wheel carries copies under ``engine/_data``.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ContractError

_PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository root when running from a checkout (src/engine/ -> repo).
REPO_ROOT = _PACKAGE_DIR.parent.parent
_CANDIDATES = (REPO_ROOT, _PACKAGE_DIR / "_data")


def data_dir(name: str) -> Path:
    """Return the folder ``name`` (``streams``, ``state`` or ``config``)."""
    for root in _CANDIDATES:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    raise ContractError(f"folder {name!r} not found under {', '.join(map(str, _CANDIDATES))}")
