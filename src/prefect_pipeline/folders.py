"""Where a path would be made: the nearest folder of it that exists.

Shared by the checks that run before anything starts (the database's location, the
output folder) and the one of a drain's first inputs; the standard library only, so that
a command's error path imports nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path


def nearest_folder(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing parent: where it would be made. A
    path this process may not look into (a parent it may not search) counts as missing, as
    for ``os.path.exists``: the search goes on up, to the folder whose check then fails,
    instead of raising (``Path.exists`` raises ``PermissionError`` there)."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path
