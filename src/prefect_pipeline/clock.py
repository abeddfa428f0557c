"""Time as a parameter.

Leases, retry delays and run timings read the time through a ``Clock`` handed to them, so
that tests move time forward instead of sleeping, and a run's timestamps all come from one
place. ``SYSTEM_CLOCK`` is the real one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the pipeline reads the time and waits."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a test clock moves its time forward instead)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))


SYSTEM_CLOCK: Clock = SystemClock()


def iso(moment: datetime) -> str:
    """UTC ISO-8601 text with microseconds: what every timestamp column holds.

    Text of this one shape sorts like the times it names, so SQL compares it directly.
    """
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def iso_in(clock: Clock, seconds: float) -> str:
    """``iso()`` of ``seconds`` from now on ``clock``."""
    return iso(clock.now() + timedelta(seconds=seconds))


def local_time(iso_text: str, now: datetime | None = None) -> str:
    """A stored timestamp (``iso()``) as a reader at a terminal wants it: the local time to
    the second with its zone, and the date too when it is not ``now``'s local date
    (default: the machine's time). A timestamp without a zone is UTC, as every stored one
    is; text that is no timestamp is given back as it is."""
    try:
        moment = datetime.fromisoformat(iso_text)
    except (TypeError, ValueError):
        return str(iso_text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone()
    # Today by today's offset, not the moment's: they differ across a DST change.
    today = (now or datetime.now(UTC)).astimezone().date()
    shape = "%H:%M:%S %Z" if moment.date() == today else "%Y-%m-%d %H:%M:%S %Z"
    return moment.strftime(shape)
