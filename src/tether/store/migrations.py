"""The upgrade rule both backends follow (pure logic; the I/O lives in each backend).

A store records two numbers: its **schema version** (the newest migration
applied) and its **compatible-with** version (the oldest schema version whose
code can still read and write it). Each migration declares the
compatible-with version that holds once it has run: an additive step (a new
nullable or defaulted column, a new index, a new table) keeps the previous
one, since older code never names what it adds; a step that changes or drops
something older code relies on raises it to its own version.

A tether that knows schema versions up to ``known``:

* migrates a store whose schema version is below ``known`` (each missing step
  once, under the backend's lock);
* opens a newer store when its compatible-with version is ``known`` or lower,
  and leaves it as it is (it runs no step it does not know);
* refuses a newer store whose compatible-with version is above ``known``
  (:class:`~tether.errors.SchemaTooNewError`).

Both numbers live in the ``tether_migrations`` table (one row per applied
step: its version and the compatible-with version after it). Tethers from
before this rule read only a legacy record (SQLite's ``PRAGMA user_version``,
PostgreSQL's ``max(version)`` of ``tether_schema``) as "the schema version",
open it when it equals theirs and refuse it when it is greater; so that record
holds the compatible-with version: such a tether opens exactly the stores that
are compatible with it and refuses the others with its own "newer tether"
message.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import SchemaTooNewError

# The table of applied steps, the same on both backends.
MIGRATIONS_TABLE = "tether_migrations"


class Migration(NamedTuple):
    """One schema step: its version, its statements, and who can still use the store after it."""

    version: int
    statements: list[str]
    # The oldest schema version whose code still works once this step ran.
    compatible_with: int


class SchemaState(NamedTuple):
    """What a store records: its schema version and the oldest version that can use it."""

    version: int
    compatible_with: int


def check_steps(migrations: list[Migration]) -> None:
    """Raise ValueError unless the steps are numbered 1, 2, 3... and compatible-with never drops.

    Compatible-with only rises (a later step cannot make the store usable again by
    code that an earlier step broke) and never exceeds its own step.
    """
    floor = 0
    for n, m in enumerate(migrations, start=1):
        if m.version != n:
            raise ValueError(f"migration {m.version} is out of order (expected {n})")
        if not floor <= m.compatible_with <= m.version:
            raise ValueError(
                f"migration {m.version} declares compatible-with {m.compatible_with}; "
                f"it must be between {floor} and {m.version}"
            )
        floor = m.compatible_with


def known_version(migrations: list[Migration]) -> int:
    """The newest schema version this code knows."""
    return migrations[-1].version if migrations else 0


def state_after(migrations: list[Migration], version: int) -> SchemaState:
    """The state a store is in once every known step up to ``version`` ran (0: empty)."""
    compat = 0
    for m in migrations:
        if m.version <= version:
            compat = m.compatible_with
    return SchemaState(version, compat)


def too_new(where: str, state: SchemaState, known: int) -> SchemaTooNewError | None:
    """The error to raise if code knowing up to ``known`` cannot use a store in ``state``."""
    if state.compatible_with <= known:
        return None
    return SchemaTooNewError(
        f"{where} was written by a newer tether (schema version {state.version}, usable "
        f"from schema version {state.compatible_with} on; this tether knows up to {known}); "
        "upgrade tether to open it"
    )


def pending(migrations: list[Migration], state: SchemaState) -> list[Migration]:
    """The known steps a store in ``state`` has not run yet, in order."""
    return [m for m in migrations if m.version > state.version]


def record_rows(
    migrations: list[Migration], state: SchemaState, now: float
) -> list[tuple[int, int, float]]:
    """The record rows (version, compatible_with, applied_at) of the steps a store in
    ``state`` already has: what a store from before the record gets when first recorded."""
    return [(m.version, m.compatible_with, now) for m in migrations if m.version <= state.version]
