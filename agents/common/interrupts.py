"""Graceful stops: SIGINT / SIGTERM end training after the current update instead of mid-way.

:class:`GracefulStop` is the context manager every algorithm's ``learn``
(:meth:`agents.common.on_policy.OnPolicyAlgorithm.learn`) runs its loop in.  The first signal only records a request (the loop finishes the
update, saves a checkpoint when it has a run directory, and returns); a second
signal raises :class:`KeyboardInterrupt` at once, for a user who really means
it.  Handlers are installed only in the main thread (Python delivers signals
there) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """``with GracefulStop("TextPPO") as stop: ... if stop.requested: break`` (the name prefixes its message)."""

    def __init__(self, name: str = "training") -> None:
        self.name = name
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signal = signum
        print(f"{self.name}: {signal.Signals(signum).name} received; finishing the current update, then saving and "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)  # fmt: skip
