"""Hermes interop: find, recognise and count Hermes ``state.db`` stores.

Opening rules (docs: README "Coming from Hermes"): stores are found like Hermes
finds them, recognised by their tables and columns, and read through
``mode=ro`` connections in short transactions. Nothing here migrates, vacuums,
checkpoints or changes a pragma of a user's ``state.db``.
"""

from .census import census, census_stores, sum_census
from .store import NotAHermesStoreError, discover, open_readonly, recognise

__all__ = [
    "NotAHermesStoreError",
    "census",
    "census_stores",
    "discover",
    "open_readonly",
    "recognise",
    "sum_census",
]
