"""Atomic file writes: write next to the destination, then rename, so readers never see half a file.

Every file the project writes goes through here: one file (:func:`atomic_path` and the
``write_*`` / :func:`save_torch` helpers on top of it) or a group of files that must appear
together (:func:`write_all_or_nothing`). A failed write leaves no temporary file and the
destination untouched; a full disk is reported as such, naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Below this much free space a failed write is taken to be a full disk (libraries such as
# torch's zip writer report ENOSPC as a generic error).
_NEARLY_FULL_BYTES = 1 << 20


def file_mode() -> int:
    """The permissions an ordinary ``open()`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary(dest: Path) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file private (0600); give the result the usual umask-based mode.
    os.chmod(tmp, file_mode())
    return tmp


def _disk_full(folder: Path, err: BaseException) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``folder`` if ``err`` came from a full disk, else None."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        full = True
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
        os.replace(tmp, dest)
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
    except BaseException as err:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        full = _disk_full(out, err)
        if full is not None:
            raise full from err
        raise
    for tmp, dest in staged:
        os.replace(tmp, dest)
    return [dest for _, dest in staged]
