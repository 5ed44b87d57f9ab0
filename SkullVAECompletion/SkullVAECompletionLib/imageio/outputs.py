"""The command line's outputs: names, staging folder, folder lock, publishing the results in one step, the
summary JSON.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from .atomic import _atomic_target, claim_exclusive
from .volumes import VolumeMeta, is_volume_file, split_suffix


def ensure_writable_folder(folder: str | os.PathLike, role: str, hint: str) -> Path:
    """Create ``folder`` if needed and check it is writable, before any work starts (fail fast, write nothing).

    ``role`` names the folder in the message ("output folder"), ``hint`` says what to do instead.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the {role} {folder}: {error.strerror}; {hint}") from error
    if not os.access(folder, os.W_OK):
        raise InputError(f"the {role} {folder} is not writable; {hint}")
    return folder


def output_stem(path: str | os.PathLike, others: Iterable[str | os.PathLike] = ()) -> str:
    """The name an input's outputs start with: NAME for NAME.nrrd, or NAME_nrrd (NAME_nii_gz, NAME_seg_nrrd...) when
    another volume file shares NAME -- in the input's own folder or among ``others`` (the run's other inputs).

    It depends only on the input's name and its neighbours, not on which runs came first: ``skull.nrrd`` and
    ``skull.nii.gz`` side by side get ``skull_nrrd_*`` and ``skull_nii_gz_*`` whether completed together or apart.
    """
    path = Path(path)
    stem, suffix = split_suffix(path)
    candidates = list(others)
    if path.parent.is_dir():
        candidates += [p for p in path.parent.iterdir() if is_volume_file(p)]
    shared = any(split_suffix(other)[0] == stem and Path(other).name != path.name for other in candidates)
    return f"{stem}_{suffix[1:].replace('.', '_')}" if shared else stem


def output_paths(meta: VolumeMeta, output_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """The files the CLI writes for one input, named after it (``stem``: see :func:`output_stem`; default: NAME)."""
    stem, suffix = stem or meta.stem, (".nrrd" if meta.format == "nrrd" else meta.suffix)
    return {
        "completed": output_dir / f"{stem}_completed{suffix}",
        "implant": output_dir / f"{stem}_implant{suffix}",
        "stl": output_dir / f"{stem}_implant.stl",
        "preview": output_dir / f"{stem}_preview.png",
        "render": output_dir / f"{stem}_render.png",
        "skull": output_dir / f"{stem}_skull{suffix}",  # the skull extracted from a CT (--from-ct)
        "distance": output_dir / f"{stem}_distance.png",
        "summary": output_dir / f"{stem}_summary.json",
    }


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock`` on the folder itself: no lock file is left behind) so
    that two processes publishing into it take turns. Without ``fcntl`` (Windows) the exclusive claims of
    :func:`claim_exclusive` still keep one input's files from replacing another's."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            os.close(handle)  # closing releases the lock


def recorded_input(summary_path: Path) -> str | None:
    """The input an existing NAME_summary.json was written for (None: no summary, or not readable)."""
    import json

    try:
        return str(json.loads(summary_path.read_text(encoding="utf-8"))["input"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def same_input(recorded: str, path: Path) -> bool:
    """Whether a summary's ``input`` names ``path``: the same file name, and the same file where both resolve."""
    other = Path(recorded)
    if other.name != path.name:
        return False
    if other.is_absolute() and path.is_absolute():
        return other.resolve() == path.resolve()
    return True  # a relative path recorded from another working folder: the name is what can be compared


def check_targets(targets: dict[str, Path], source: Path, overwrite: bool) -> None:
    """SkullVAEError unless ``source`` may write ``targets``: none exists, or (``overwrite``) those that exist are
    ``source``'s own (its NAME_summary.json names it, or there is none)."""
    from ..errors import SkullVAEError

    existing = [target for target in targets.values() if target.exists()]
    if existing and not overwrite:
        raise SkullVAEError(f"outputs exist already: {', '.join(str(p) for p in existing)}; pass --overwrite to "
                            "replace them")
    owner = recorded_input(targets["summary"]) if "summary" in targets else None
    if existing and owner is not None and not same_input(owner, source):
        folder = existing[0].parent
        raise SkullVAEError(f"{', '.join(p.name for p in existing)} in {folder} belong to another input ({owner}); "
                            "--overwrite replaces only this input's own outputs: choose another output folder")


def publish_outputs(staged: dict[str, Path], targets: dict[str, Path], source: Path, overwrite: bool,
                    own: Iterable[Path] = ()) -> dict[str, Path]:
    """Give the files written to a staging folder (``staged[key]``) their final names (``targets[key]``), as one
    step under the output folder's lock; returns the final paths.

    Without ``overwrite`` nothing is published if any target exists, and every name is claimed exclusively; with it,
    only ``source``'s own outputs are replaced (see :func:`check_targets`), and its own earlier outputs that this
    run did not write again (``targets`` and ``own``: every name of this input, e.g. the STL of a now empty implant)
    are removed, so the set on disk is always one run's.
    """
    folder = next(iter(targets.values())).parent
    with folder_lock(folder):
        check_targets(targets, source, overwrite)
        placed: list[Path] = []
        try:
            for key, staged_path in staged.items():
                if overwrite:
                    os.replace(staged_path, targets[key])
                else:
                    claim_exclusive(staged_path, targets[key])
                placed.append(targets[key])
        except BaseException:
            if not overwrite:  # the names this run claimed were free before: free them again
                for path in placed:
                    path.unlink(missing_ok=True)
            raise
        if overwrite:
            published = {targets[key] for key in staged}
            for stale in {*targets.values(), *own} - published:
                stale.unlink(missing_ok=True)  # this input's own earlier output (ownership checked above)
    return {key: targets[key] for key in staged}


@contextmanager
def staging_folder(output_dir: Path) -> Iterator[Path]:
    """A hidden temporary folder inside ``output_dir`` (same file system: the final moves are renames), removed on
    exit with whatever is left in it."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=".skullvae-staging-", dir=output_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """A JSON file (UTF-8, indented), written atomically like every other output."""
    import json

    path = Path(path)
    with _atomic_target(path, overwrite) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
