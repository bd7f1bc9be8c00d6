"""Atomic file writes: write next to the destination, then rename, so readers never see half a file.

Every file the project writes goes through here: one file (:func:`atomic_path` and the
``write_*`` / :func:`save_torch` helpers on top of it) or a group of files that must appear
together (:func:`write_all_or_nothing`). A failed write leaves no temporary file and the
destination untouched; a full disk is reported as such, naming the folder. Data are flushed to
disk before the rename, so that after a power loss a file is either the old one or complete.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RANDOM_PART = re.compile(r"[a-z0-9_]{8}")
# Below this much free space a failed write is taken to be a full disk (libraries such as
# torch's zip writer report ENOSPC as a generic error).
_NEARLY_FULL_BYTES = 1 << 20


def file_mode() -> int:
    """The permissions an ordinary ``open()`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete what a killed earlier write of ``dest`` left (one writer per destination: a job's
    outputs are its own), so that a hard kill leaves no litter once the job has run again."""
    prefix = f".{dest.name}."
    for stale in dest.parent.glob(glob.escape(prefix) + "*.tmp"):
        # mkstemp's random part: 8 characters without a dot (not another file's temporary).
        if _RANDOM_PART.fullmatch(stale.name[len(prefix) : -len(".tmp")]):
            stale.unlink(missing_ok=True)


def _temporary(dest: Path) -> Path:
    _remove_stale_temporaries(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file private (0600); give the result the usual umask-based mode.
    os.chmod(tmp, file_mode())
    return tmp


def _sync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk: without it, a rename can reach the disk before
    the data it points to, and a power loss leaves an empty or truncated file in place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some filesystems cannot sync a folder; the file itself has been synced by then.
        if not path.is_dir() or err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Make sure files can be written into ``folder`` (or, while it does not exist, into the
    folder it would be created in) before long work whose results would otherwise be lost at the
    first save: a read-only filesystem, a folder without write permission, or a disk too full to
    hold even an empty file. Creates nothing."""
    folder = Path(folder)
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        _temporary(probe / "write-check").unlink()
    except OSError as err:
        full = _disk_full(probe, err)
        if full is not None:
            raise OSError(
                errno.ENOSPC, f"No space left on device while writing into {folder}"
            ) from err
        raise OSError(err.errno, f"{err.strerror}: cannot write into {folder}") from err


def _disk_full(folder: Path, err: BaseException) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``folder`` if ``err`` came from a full disk, else None."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        full = True
    elif isinstance(err, OSError) and err.errno is not None:
        full = False  # the error says what it is (e.g. a read-only filesystem)
    else:
        try:
            full = shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
        except OSError:
            full = False
    if not full:
        return None
    return OSError(errno.ENOSPC, f"No space left on device while writing into {folder}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; on success rename it onto ``path``.

    The folder is created if missing. On error the temporary file is removed and ``path`` is left
    untouched. Same-folder temp files keep ``os.replace`` a rename on one filesystem.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest)
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, dest)
        _sync(dest.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = _disk_full(dest.parent, err)
        if full is not None:
            raise full from err
        raise


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def json_writer(
    obj: Any, *, indent: int | None = 1, default: Callable[[Any], Any] | None = None
) -> Callable[[Path], None]:
    """A writer of ``obj`` as UTF-8 JSON (NaN and inf refused: they are not JSON).

    ``default`` converts values JSON cannot encode (e.g. ``str`` for paths); without it they
    are an error.
    """

    def dump(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, ensure_ascii=False, indent=indent, allow_nan=False, default=default)
            fh.write("\n")

    return dump


def write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 1,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``obj`` as UTF-8 JSON atomically."""
    return write_with(path, json_writer(obj, indent=indent, default=default))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj)`` atomically."""
    import torch

    return write_with(path, lambda tmp: torch.save(obj, tmp))


def write_all_or_nothing(
    out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], None]]
) -> list[Path]:
    """Write every ``name -> writer(tmp_path)`` into ``out_dir``; rename only once all succeeded.

    Files are renamed in the mapping's order, so put a completeness marker last. A failure at
    any point leaves no temporary file and no new result file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, writer in writers.items():
            staged.append((_temporary(out / name), out / name))
            writer(staged[-1][0])
            _sync(staged[-1][0])
    except BaseException as err:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        full = _disk_full(out, err)
        if full is not None:
            raise full from err
        raise
    for tmp, dest in staged:
        os.replace(tmp, dest)
    _sync(out)
    return [dest for _, dest in staged]
