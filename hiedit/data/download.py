"""Downloading the paper's datasets (CounterFact, ZsRE) from their public locations into a file."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiedit.atomic import atomic_path
from hiedit.errors import DataError

log = logging.getLogger(__name__)

# The ROME/MEMIT data sites (the URLs their dataset loaders download from). ZsRE's MEND-format
# train file is not served there; it ships with MEND/EasyEdit's data archives.
KNOWN_URLS = {
    "counterfact": "https://rome.baulab.info/data/dsets/counterfact.json",
    "zsre_mend_eval": "https://rome.baulab.info/data/dsets/zsre_mend_eval.json",
    "multi_counterfact": "https://memit.baulab.info/data/dsets/multi_counterfact.json",
}
CHUNK_BYTES = 1 << 20


def _copy_with_progress(response: Any, path: Path, url: str) -> None:
    from tqdm import tqdm

    length = getattr(response, "headers", {}).get("Content-Length")
    total = int(length) if length and str(length).isdigit() else None
    # disable=None: a bar on a terminal, nothing in a workflow log.
    with (
        open(path, "wb") as fh,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=None
        ) as bar,
    ):
        while chunk := response.read(CHUNK_BYTES):
            fh.write(chunk)
            bar.update(len(chunk))


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    opener: Callable[..., Any] = urllib.request.urlopen,
) -> Path:
    """Stream ``url`` into ``dest`` (temp file in the same folder, then rename).

    ``dest`` is only replaced once the whole body has arrived; any failure raises ``DataError``
    naming the URL and leaves no partial file behind.
    """
    dest = Path(dest)
    log.info("downloading %s -> %s", url, dest)
    try:
        with opener(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            status = getattr(response, "status", None)
            if status is not None and status >= 400:  # openers other than urllib's may not raise
                raise DataError(f"download failed: {url}: HTTP {status}")
            _copy_with_progress(response, tmp, url)
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: {url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DataError(f"download failed: {url}: {err.reason}") from err
    except (OSError, ValueError) as err:  # ValueError: malformed URL
        raise DataError(f"download failed: {url}: {err}") from err
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest
