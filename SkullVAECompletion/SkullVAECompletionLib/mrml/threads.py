"""Running the engine: progress and cancellation, optionally in a worker thread while the calling (GUI) thread keeps
processing events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import CancelledError

ProgressCallback = Callable[[float, str], None]


CANCELLED_MESSAGE = "Cancelled by the user; the scene was not changed."


def runBlocking(
    work: Callable[[ProgressCallback], Any],
    progress: ProgressCallback | None = None,
    isCancelled: Callable[[], bool] = lambda: False,
    processEvents: Callable[[], None] | None = None,
    useThread: bool = False,
    pollSeconds: float = 0.05,
) -> Any:
    """Run ``work(engineProgress)`` and return its value; blocking either way.

    Without a thread, ``engineProgress`` forwards to ``progress`` (which may raise CancelledError) and calls
    ``processEvents``. With ``useThread`` (the GUI case), ``work`` runs in a worker thread -- it must not touch
    MRML or Qt -- while this thread forwards progress messages and calls ``processEvents`` every
    ``pollSeconds``, so the GUI stays responsive even during one long network call. Cancellation is checked
    by the engine's progress calls, so it takes effect at the next step.
    """
    cancelled = threading.Event()

    def checkCancel() -> None:
        if cancelled.is_set() or isCancelled():
            cancelled.set()
            raise CancelledError(CANCELLED_MESSAGE)

    if not useThread:
        def direct(fraction: float, message: str) -> None:
            checkCancel()
            if progress is not None:
                progress(fraction, message)
            if processEvents is not None:
                processEvents()
            checkCancel()

        return work(direct)

    messages: list[tuple[float, str]] = []
    lock = threading.Lock()
    outcome: dict[str, Any] = {}

    def queued(fraction: float, message: str) -> None:
        checkCancel()
        with lock:
            messages.append((fraction, message))

    def target() -> None:
        try:
            outcome["value"] = work(queued)
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name="SkullVAECompletion", daemon=True)
    worker.start()
    while True:
        worker.join(pollSeconds)
        with lock:
            pending, messages[:] = list(messages), []
        for fraction, message in pending:
            try:
                if progress is not None:
                    progress(fraction, message)
            except CancelledError:
                cancelled.set()
        if isCancelled():
            cancelled.set()
        if processEvents is not None:
            processEvents()
        if not worker.is_alive():
            break
    if "error" in outcome:
        raise outcome["error"]
    if cancelled.is_set():
        raise CancelledError(CANCELLED_MESSAGE)
    return outcome.get("value")


class StageProgress:
    """Maps an engine step's 0..1 progress onto a slice of the overall 0..1 progress."""

    def __init__(self, callback: ProgressCallback, start: float, end: float) -> None:
        self.callback, self.start, self.end = callback, start, end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.callback(self.start + (self.end - self.start) * fraction, message)


def elapsed(start: float) -> float:
    return time.perf_counter() - start
