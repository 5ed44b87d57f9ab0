"""Atomic file writes: a temporary file renamed into place, never a half-written file, and no existing file
replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _exists_message(path: Path) -> str:
    return f"{path} already exists; choose another output folder or allow overwriting"


@contextmanager
def _atomic_target(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Without ``overwrite`` the final name is created exclusively (:func:`claim_exclusive`): of two writers racing for
    one name, one wins and the other gets FileExistsError -- never a file replaced between a check and a rename.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(_exists_message(path))  # fail before the work; the claim below is what guarantees it
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix="".join(path.suffixes), dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates 0600 files
        if overwrite:
            os.replace(temporary, path)
        else:
            claim_exclusive(Path(temporary), path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def claim_exclusive(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` only if ``target`` does not exist, atomically (FileExistsError otherwise).

    A hard link is created exclusively by the file system; where links are not supported, an exclusively created
    empty file reserves the name before the rename replaces it.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(_exists_message(target)) from None
    except OSError:  # no hard links here (some network and FAT file systems)
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise FileExistsError(_exists_message(target)) from None
        os.replace(source, target)
        return
    source.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
