"""``recfeast datasets download movielens-100k`` against a real HTTP server on 127.0.0.1 serving an
archive built here from the GroupLens files: checksums, cache, resume after a cut transfer, a
server without ranges, a checksum mismatch, atomic unpack. No internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from recfeast import datasets as D
from recfeast.errors import ConfigError, DataError
from tests.conftest import DATA_DIR

PORTS = range(18300, 18400)   # this suite's port range for extra servers


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/", b"")
        for name, data in files.items():
            zf.writestr(f"ml-100k/{name}", data)
    return buf.getvalue()


def _real_files() -> dict[str, bytes]:
    if not (DATA_DIR / "u.data").is_file():
        pytest.fail(f"MovieLens-100k not found at {DATA_DIR}: set RECFEAST_TEST_DATA_DIR")
    names = list(D.MOVIELENS_100K_FILES) + ["u.info", "README"]
    return {n: (DATA_DIR / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def real_files() -> dict[str, bytes]:
    """Files in GroupLens' layout, made up here (the fast tier needs no data set); 300 KB of
    ratings so that a transfer can be cut in the middle. ``sha`` holds their checksums."""
    ratings = b"".join(b"%d\t%d\t%d\t%d\n" % (1 + i % 943, 1 + i % 1682, 1 + i % 5, 874965758 + i)
                       for i in range(15_000))
    return {"u.data": ratings, "u.item": b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
            "u.user": b"1|24|M|technician|85711\n", "u.genre": b"unknown|0\nAction|1\n",
            "u.occupation": b"technician\n", "u.info": b"943 users\n", "README": b"made up\n"}


@pytest.fixture(scope="module")
def sha(real_files) -> dict[str, str]:
    return {n: hashlib.sha256(real_files[n]).hexdigest() for n in D.MOVIELENS_100K_FILES}


@pytest.fixture(scope="module")
def archive(real_files) -> bytes:
    """The GroupLens files zipped as GroupLens does (under ``ml-100k/``), built once."""
    return _zip(real_files)


class _Server:
    """A ThreadingHTTPServer serving ``body`` at /ml-100k.zip; honours Range unless ``ranges=False``;
    ``cut_first=N`` closes the first transfer after N bytes. Records each request's Range header."""

    def __init__(self, body: bytes, ranges: bool = True, cut_first: int | None = None):
        self.body, self.ranges, self.cut_first, self.requests = body, ranges, cut_first, []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append(rng)
                if self.path != "/ml-100k.zip":
                    self.send_error(404)
                    return
                start = 0
                if rng and srv.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(srv.body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(srv.body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(srv.body) - 1}/{len(srv.body)}")
                else:
                    self.send_response(200)
                data = srv.body[start:]
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if srv.cut_first is not None and len(srv.requests) == 1:
                    self.wfile.write(data[:srv.cut_first])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

        for port in PORTS:
            try:
                self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                continue
        else:
            pytest.fail(f"no free port in {PORTS}")
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/ml-100k.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_download_verify_unpack_and_cache(tmp_path, real_files, archive, sha):
    body = archive
    with _Server(body) as srv:
        res = D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=_md5(body), cache=tmp_path / "cache",
                                        progress=False, files_sha256=sha)
        assert res.downloaded_bytes == len(body) and res.resumed_from == [] and not res.already_present
        assert srv.requests == [None]
        for name, data in real_files.items():
            assert (tmp_path / "ml" / name).read_bytes() == data
        assert res.files == sha
        assert (tmp_path / "cache" / "ml-100k.zip").read_bytes() == body
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp folder left

        # second call: the folder is complete, no request at all
        again = D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=_md5(body),
                                          cache=tmp_path / "cache", progress=False, files_sha256=sha)
        assert again.already_present and len(srv.requests) == 1
        # a new folder from the cached archive: still no request
        other = D.download_movielens_100k(tmp_path / "ml2", srv.url, archive_md5=_md5(body),
                                          cache=tmp_path / "cache", progress=False, files_sha256=sha)
        assert other.downloaded_bytes == 0 and len(srv.requests) == 1
        assert (tmp_path / "ml2" / "u.data").read_bytes() == real_files["u.data"]


def test_resume_after_cut_transfer(tmp_path, real_files, archive, sha):
    body = archive
    cut = len(body) // 3
    with _Server(body, cut_first=cut) as srv:
        res = D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=_md5(body), cache=tmp_path / "c",
                                        progress=False, files_sha256=sha)
    assert srv.requests == [None, f"bytes={cut}-"]
    assert res.resumed_from == [cut] and res.downloaded_bytes == len(body)
    assert (tmp_path / "c" / "ml-100k.zip").read_bytes() == body
    assert (tmp_path / "ml" / "u.data").read_bytes() == real_files["u.data"]


def test_resume_from_part_file_of_an_earlier_call(tmp_path, real_files, archive, sha):
    body = archive
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ml-100k.zip.part").write_bytes(body[:1000])   # left by an interrupted call
    with _Server(body) as srv:
        res = D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=_md5(body), cache=tmp_path / "c",
                                        progress=False, files_sha256=sha)
    assert srv.requests == ["bytes=1000-"] and res.downloaded_bytes == len(body) - 1000
    assert (tmp_path / "c" / "ml-100k.zip").read_bytes() == body
    assert not (tmp_path / "c" / "ml-100k.zip.part").exists()


def test_server_without_ranges_restarts_from_zero(tmp_path, real_files, archive, sha):
    body = archive
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ml-100k.zip.part").write_bytes(b"x" * 500)
    with _Server(body, ranges=False) as srv:
        res = D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=_md5(body), cache=tmp_path / "c",
                                        progress=False, files_sha256=sha)
    assert srv.requests == ["bytes=500-"] and res.resumed_from == []
    assert (tmp_path / "c" / "ml-100k.zip").read_bytes() == body


def test_archive_checksum_mismatch_deletes_and_raises(tmp_path, real_files, archive, sha):
    body = archive
    with _Server(body) as srv, pytest.raises(DataError, match="does not match the published"):
        D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5="0" * 32, cache=tmp_path / "c",
                                  progress=False, files_sha256=sha)
    assert not (tmp_path / "ml").exists()
    assert list((tmp_path / "c").iterdir()) == []


def test_tampered_file_is_refused_and_dest_untouched(tmp_path, real_files, sha):
    body = _zip({**real_files, "u.data": real_files["u.data"].replace(b"\t5\t", b"\t1\t", 1)})
    with _Server(body) as srv, pytest.raises(DataError, match="u.data has sha256"):
        D.download_movielens_100k(tmp_path / "ml", srv.url, archive_md5=None, cache=tmp_path / "c", progress=False, files_sha256=sha)
    assert not (tmp_path / "ml").exists()
    assert not (tmp_path / "c" / "ml-100k.zip").exists()          # the bad archive is not kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_a_foreign_non_empty_folder(tmp_path, sha):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="does not hold the verified"):
        D.download_movielens_100k(tmp_path / "ml", "http://127.0.0.1:9/none", cache=tmp_path / "c", progress=False, files_sha256=sha)
    assert (tmp_path / "ml" / "notes.txt").read_text() == "mine"


def test_unreachable_server_keeps_nothing_and_says_so(tmp_path, sha):
    with pytest.raises(DataError, match="failed after 2 attempt"):
        D.download_movielens_100k(tmp_path / "ml", "http://127.0.0.1:9/ml-100k.zip", cache=tmp_path / "c",
                                  attempts=2, timeout=2, progress=False, files_sha256=sha)


@pytest.mark.slow   # the real GroupLens files (the pinned checksums)
def test_pinned_checksums_are_the_grouplens_files():
    files = _real_files()
    assert {n: hashlib.sha256(files[n]).hexdigest() for n in D.MOVIELENS_100K_FILES} == D.MOVIELENS_100K_FILES


@pytest.mark.slow   # the real GroupLens files: the CLI checks the pinned checksums
def test_cli_download_prints_what_is_missing(tmp_path):
    from recfeast.cli import main

    body = _zip(_real_files())
    with _Server(body, cut_first=5000) as srv:
        res = CliRunner().invoke(main, ["datasets", "download", "movielens-100k", "--dir", str(tmp_path / "ml"),
                                        "--url", srv.url, "--archive-md5", _md5(body),
                                        "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resumed from byte 5000" in res.output
    assert "u.data, u.item, u.user, u.genre, u.occupation" in res.output
    assert "items_tmdb_clean.csv" in res.output and "no poster" in res.output
    assert f"recfeast materialize --data-dir {tmp_path / 'ml'}" in res.output
    bad = CliRunner().invoke(main, ["datasets", "download", "movielens-100k", "--dir", str(tmp_path / "ml3"),
                                    "--url", "http://127.0.0.1:9/x.zip", "--cache-dir", str(tmp_path / "c3"),
                                    "--quiet"])
    assert bad.exit_code == 2 and "error: download of http://127.0.0.1:9/x.zip failed" in bad.output
