"""Downloading the paper's datasets (CounterFact, ZsRE) from their public locations into a file."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiedit.data.atomic import atomic_path
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
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh, CHUNK_BYTES)
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: {url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DataError(f"download failed: {url}: {err.reason}") from err
    except (OSError, ValueError) as err:  # ValueError: malformed URL
        raise DataError(f"download failed: {url}: {err}") from err
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest
