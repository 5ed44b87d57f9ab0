"""Exceptions raised by the engine. Every message says what is wrong and what to do about it."""

from typing import Any


class SkullVAEError(Exception):
    """Base class of all errors the engine raises on purpose."""


class InputError(SkullVAEError, ValueError):
    """The input skull (array, file or node) cannot be completed as it is."""


class BundleError(SkullVAEError):
    """A model bundle is missing, corrupt, or does not match this version of the engine."""


class DeviceError(SkullVAEError):
    """The requested compute device is not available."""


class CancelledError(SkullVAEError):
    """The user cancelled a running completion; nothing was written."""


def build_config(cls: type, data: dict, what: str) -> Any:
    """``cls(**data)`` for a config dataclass, refusing keys it does not know (a typo must not pass silently)."""
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise BundleError(f"unknown {what} keys: {sorted(unknown)}")
    return cls(**data)
