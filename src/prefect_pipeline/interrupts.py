"""Whether this process was asked to stop: the one piece of global state that signal
handling needs, kept here.

SIGINT (a terminal's Ctrl-C) and SIGTERM (a supervisor's stop) take one path: the first
raises ``KeyboardInterrupt`` in the main thread and the clean-up runs (claims given back,
the cluster and the temporary Prefect server stopped, exit 130). The interrupt can land
inside a library that turns it into an error of its own (Prefect's engine, pydantic's
serializer), so the clean-up asks ``received()`` rather than trusting the exception's type.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_received: int | None = None


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread.

    Only the first signal interrupts. A terminal's Ctrl-C pressed twice, or a supervisor
    that repeats its SIGTERM, would otherwise break into the clean-up itself and leave
    claims behind; the clean-up is bounded, and a supervisor's last word is SIGKILL anyway.
    """

    def first(signum: int, frame: Any) -> None:
        global _received
        _received = signum
        for name in (signal.SIGINT, signal.SIGTERM):
            signal.signal(name, signal.SIG_IGN)
        raise KeyboardInterrupt

    # ValueError: not the main thread (e.g. called from a test runner thread).
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, first)
        signal.signal(signal.SIGTERM, first)
    if sys.unraisablehook is not _quiet_lost_interrupt:
        global _previous_unraisablehook
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_lost_interrupt


_previous_unraisablehook = sys.unraisablehook


def _quiet_lost_interrupt(unraisable: Any) -> None:
    """The handler's ``KeyboardInterrupt`` is lost when it lands in code whose errors Python
    cannot raise: a finalizer, or a garbage-collector callback (distributed's
    ``GCDiagnosis``). Python would print "Exception ignored in ..." with a traceback to a
    terminal that asked for quiet; the signal is recorded, and ``check()`` raises it in the
    loops that run long, so that report is dropped. Anything else goes to the previous
    hook."""
    if _received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    _previous_unraisablehook(unraisable)


def received() -> bool:
    """Whether a stop signal arrived since ``install()`` (or the last ``reset()``)."""
    return _received is not None


class Abandoned(BaseException):
    """Raised by ``check()`` in a job whose run has stopped (a Cancel, an error, a signal
    that Prefect's handler caught first): its result is not wanted. A ``BaseException``,
    like ``KeyboardInterrupt``, so that no job takes it for a failure of its input."""


#: Set once the run of this context stops. A context variable: a thread the run submits
#: work to copies the run's context (Prefect's thread-pool task runner does), and another
#: run in the same process keeps its own.
_stopping: ContextVar[threading.Event | None] = ContextVar("pipeline_stopping", default=None)


@contextlib.contextmanager
def run_scope() -> Iterator[threading.Event]:
    """An event that, once set, makes ``check()`` raise ``Abandoned`` in this context and
    in the threads that copied it."""
    event = threading.Event()
    token = _stopping.set(event)
    try:
        yield event
    finally:
        _stopping.reset(token)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a stop signal arrived, or ``Abandoned`` if this
    context's run has stopped. The handler's own exception is lost when it lands in a
    finalizer (an asyncio transport's ``__del__``: Python prints "Exception ignored in" and
    goes on), so loops that run for long look here as well; and a signal reaches the main
    thread only, so jobs on the run's other threads look here between their steps."""
    if _received is not None:
        raise KeyboardInterrupt
    stopping = _stopping.get()
    if stopping is not None and stopping.is_set():
        raise Abandoned


def reset() -> None:
    """Forget a signal received (tests)."""
    global _received
    _received = None


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or came of, an interrupt: a ``KeyboardInterrupt`` or Prefect's
    ``TerminationSignal`` in its chain, or any error raised after a stop signal arrived.

    While a flow runs, Prefect's engine puts a SIGTERM handler of its own in front of ours
    (``capture_sigterm``): it raises ``TerminationSignal`` and, once that reaches the
    engine, hands the signal on to ours. Landing in the middle of a task run's creation it
    comes out instead as another error ("Task run is not set") with the
    ``TerminationSignal`` in its context, and ours never runs: the signal is recorded here.
    """
    global _received
    if _received is not None:
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        if _is_termination_signal(current):
            _received = int(getattr(current, "signal", signal.SIGTERM))
            for name in (signal.SIGINT, signal.SIGTERM):  # as ``install``'s handler does
                with contextlib.suppress(ValueError):
                    signal.signal(name, signal.SIG_IGN)
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _is_termination_signal(exc: BaseException) -> bool:
    # Looked up, not imported: a process that never imported Prefect cannot have one, and
    # this module stays free of Prefect's import cost (errors come before start-up).
    exceptions = sys.modules.get("prefect.exceptions")
    termination = getattr(exceptions, "TerminationSignal", None)
    return termination is not None and isinstance(exc, termination)
