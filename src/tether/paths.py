"""Where tether keeps its files by default."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "tether"
ENV_DB = "TETHER_DB"


def data_dir() -> Path:
    """The per-user data directory (``~/.local/share/tether`` on Linux)."""
    import platformdirs  # here: a few ms of start-up that a named database never needs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_db_path() -> Path:
    return data_dir() / "tether.db"


def default_db() -> str:
    """The database to use when none is given: ``$TETHER_DB`` or the data directory's."""
    return os.environ.get(ENV_DB) or str(default_db_path())
