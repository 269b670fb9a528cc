"""Teardown of fleets however the process ends: normally, by an exception, Ctrl-C, SIGTERM, SIGHUP.

Owns: the registry of this process's live fleets, one atexit hook, and handlers for SIGTERM and
SIGHUP installed while a fleet lives (in the main thread only; the previous handlers come back
when the last fleet is closed). On such a signal every live fleet is torn down, then the signal
takes its previous course: the previous Python handler is called, or the default action (death by
that signal) happens. Ctrl-C is a KeyboardInterrupt, which unwinds the fleets' context managers;
the atexit hook catches whatever is still registered when the interpreter exits.
Trusts: each registered fleet's `close()` to be idempotent, to unregister it and to not raise
(what it returns is ignored).

SIGKILL cannot be caught: what a killed run leaves behind is swept by the next run
(`netns.sweep_dead_runs`, called when a fleet starts).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from types import FrameType
from typing import Protocol


class Closable(Protocol):
    def close(self) -> object: ...


_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_lock = threading.RLock()
_live: list[Closable] = []
_previous: dict[int, signal._HANDLER] = {}
_atexit_registered = False


def register(fleet: Closable) -> None:
    """Tear `fleet` down at exit or on SIGTERM/SIGHUP unless it is unregistered first."""
    global _atexit_registered
    with _lock:
        _live.append(fleet)
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True
        if not _previous and threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                _previous[signum] = signal.signal(signum, _on_signal)


def unregister(fleet: Closable) -> None:
    with _lock:
        if fleet in _live:
            _live.remove(fleet)
        if not _live:
            _restore_handlers()


def _restore_handlers() -> None:
    if not _previous or threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in _previous.items():
        signal.signal(signum, handler)
    _previous.clear()


def close_all() -> None:
    """Close every live fleet, newest first."""
    with _lock:
        fleets = list(reversed(_live))
    for fleet in fleets:
        fleet.close()  # unregisters itself


def _on_signal(signum: int, frame: FrameType | None) -> None:
    with _lock:
        previous = _previous.get(signum, signal.SIG_DFL)
    close_all()
    with _lock:
        _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
