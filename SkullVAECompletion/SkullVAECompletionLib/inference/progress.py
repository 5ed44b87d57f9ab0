"""Progress of a completion: the callback type, the report of one step, and a callback that cancels."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import CancelledError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]  # (fraction done, what runs now); may raise CancelledError


def report_progress(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Log the step and tell ``progress`` about it."""
    logger.debug("%3.0f%% %s", 100 * fraction, message)
    if progress is not None:
        progress(fraction, message)  # may raise CancelledError: nothing has been written yet


def check_cancel(cancelled: Callable[[], bool]) -> ProgressCallback:
    """A progress callback that raises :class:`CancelledError` once ``cancelled()`` is true."""

    def callback(fraction: float, message: str) -> None:
        if cancelled():
            raise CancelledError("cancelled by the user; nothing was changed")

    return callback
