"""Downloads: streamed to a temp file and renamed; failures name the URL and leave nothing behind."""

from __future__ import annotations

import io
import urllib.error

import pytest

from hiedit.data.download import KNOWN_URLS, download
from hiedit.errors import DataError


def test_file_url_download(tmp_path):
    source = tmp_path / "src.json"
    source.write_bytes(b'[{"a": 1}]' * 1000)
    dest = download(source.as_uri(), tmp_path / "out" / "data.json")
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.json"]


def test_http_error_names_url_and_keeps_old_file(tmp_path):
    dest = tmp_path / "data.json"
    dest.write_text("old")
    url = "https://example.invalid/dsets/counterfact.json"

    def failing_opener(u, timeout):
        raise urllib.error.HTTPError(u, 404, "Not Found", {}, io.BytesIO())

    with pytest.raises(
        DataError,
        match=r"download failed: https://example\.invalid/dsets/counterfact\.json: HTTP 404",
    ):
        download(url, dest, opener=failing_opener)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_broken_stream_leaves_no_partial_file(tmp_path):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise ConnectionResetError("connection reset")

    with pytest.raises(DataError, match="connection reset"):
        download(
            "https://example.invalid/x.json",
            tmp_path / "x.json",
            opener=lambda u, timeout: Broken(),
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="download failed: file://"):
        download((tmp_path / "nope.json").as_uri(), tmp_path / "x.json")


def test_known_urls_are_the_public_data_sites():
    assert KNOWN_URLS["counterfact"].endswith("/data/dsets/counterfact.json")
    assert KNOWN_URLS["zsre_mend_eval"].endswith("/data/dsets/zsre_mend_eval.json")
