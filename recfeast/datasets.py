"""Fetch public data sets: MovieLens-100k from GroupLens, checked, cached, resumable, unpacked atomically.

``recfeast datasets download movielens-100k`` is a thin wrapper over :func:`download_movielens_100k`.

What it does, in order:

1. **cache**: the archive lives in ``<cache>/ml-100k.zip`` (``$RECFEAST_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/recfeast``, else ``~/.cache/recfeast``); a cached archive whose checksum
   matches is used without any network access;
2. **download with resume**: bytes go to ``ml-100k.zip.part``; a transfer cut short (network error,
   Ctrl-C) leaves the part file, and the next attempt (up to ``attempts`` in one call, or a later
   call) asks the server for the rest with an HTTP ``Range: bytes=N-`` request (RFC 9110 §14); a
   server that ignores ranges (answers 200) is read from the start again;
3. **verify**: the archive's MD5 against the checksum GroupLens publishes next to it
   (``ml-100k.zip.md5``: ``0e33842e24a9c977be4e0107933c0723``), then the SHA-256 of every file the
   job reads (``u.data``, ``u.item``, ``u.user``, ``u.genre``, ``u.occupation``), pinned from the
   GroupLens files; a mismatch deletes the bad archive and raises :class:`~recfeast.errors.DataError`;
4. **unpack atomically**: into a temporary sibling folder, checked, then renamed to ``dest``; a
   reader never sees half a data set, and an interrupted unpack leaves ``dest`` untouched.

The archive holds GroupLens' files only. The TMDB enrichments this repository's results were
computed with (``items_tmdb_clean.csv``: overviews, taglines, runtimes; ``posters/``) come from
TMDB's API under TMDB's terms and cannot be redistributed; see :data:`ENRICHMENT_NOTICE` for what
the main job does without them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from recfeast.errors import ConfigError, DataError

MOVIELENS_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: published by GroupLens at ``MOVIELENS_100K_URL + ".md5"``
MOVIELENS_100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
#: SHA-256 of the files the main job reads, computed from the GroupLens archive's files
MOVIELENS_100K_FILES = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
}
DATASETS = ("movielens-100k",)

ENRICHMENT_NOTICE = """\
Not included, and not redistributable: the TMDB enrichments (items_tmdb_clean.csv with overviews,
taglines and runtimes; posters/<movie_id>.jpg) come from TMDB's API under TMDB's terms of use. The
main job runs without them:
  - item text is built from the title and the genres (no overview), so text embeddings carry less;
  - there is no poster, so the item_image_embedding table is empty and the ranking model's image
    input is null for every item (items are quarantined as image_missing);
  - runtime is null.
With your own TMDB API key you can add both files to the data folder (columns movie_id, overview,
tagline, runtime, poster_file, title_sim; see recfeast/adapters/movielens.py) and rerun
`recfeast materialize`: only the changed items are re-embedded."""


def cache_dir() -> Path:
    """The download cache folder: ``$RECFEAST_CACHE_DIR``, ``$XDG_CACHE_HOME/recfeast`` or ``~/.cache/recfeast``."""
    raw = os.environ.get("RECFEAST_CACHE_DIR")
    if raw:
        return Path(raw).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "recfeast"


@dataclass
class DownloadResult:
    """What :func:`download_movielens_100k` did."""

    dest: Path                       # the unpacked data folder
    archive: Path                    # the cached, verified archive
    downloaded_bytes: int = 0        # bytes fetched over the network in this call (0: cache hit)
    resumed_from: list[int] = field(default_factory=list)  # byte offsets of each ranged request
    already_present: bool = False    # dest already held verified files: nothing unpacked
    files: dict[str, str] = field(default_factory=dict)   # file name -> sha256 verified


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(folder: Path, expected: dict[str, str]) -> dict[str, str] | None:
    """``{name: sha256}`` when every expected file is there with its checksum, else None."""
    got = {}
    for name, sha in expected.items():
        p = folder / name
        if not p.is_file() or _digest(p, "sha256") != sha:
            return None
        got[name] = sha
    return got


def _fetch(url: str, part: Path, timeout: float, progress: bool, result: DownloadResult) -> None:
    """Append the rest of ``url`` to ``part`` (a ranged request when it already holds bytes)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "recfeast-datasets"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:     # nothing left to send: the part file is complete (verified next)
            return
        raise
    with resp:
        if have and resp.status == 206:
            start = int((resp.headers.get("Content-Range") or "bytes 0-").split()[1].split("-")[0])
            if start != have:
                raise DataError(f"{url}: asked for bytes from {have}, server sent from {start}")
            result.resumed_from.append(have)
            mode = "ab"
        else:                            # 200: the server ignores ranges, start over
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                       file=sys.stderr)
        try:
            with open(part, mode) as out:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    result.downloaded_bytes += len(chunk)
                    if bar:
                        bar.update(len(chunk))
        finally:
            if bar:
                bar.close()
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"transfer cut short at {part.stat().st_size} of {total} bytes")


def _unpack(archive: Path, dest: Path, expected: dict[str, str]) -> dict[str, str]:
    """Extract ``archive`` (files under one top folder, e.g. ``ml-100k/``) into ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or len(parts) < 2 or ".." in parts or Path(info.filename).is_absolute():
                    continue             # folders, stray top-level entries, unsafe paths
                target = tmp.joinpath(*parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        got = {}
        for name, sha in expected.items():
            p = tmp / name
            if not p.is_file():
                raise DataError(f"{archive}: has no {name} (expected ml-100k/{name})")
            actual = _digest(p, "sha256")
            if actual != sha:
                raise DataError(f"{archive}: {name} has sha256 {actual}, expected {sha} (not the GroupLens file)")
            got[name] = sha
        if dest.exists():
            dest.rmdir()                 # empty (checked by the caller); rename needs it gone or empty
        os.rename(tmp, dest)
        return got
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def download_movielens_100k(dest: str | os.PathLike, url: str = MOVIELENS_100K_URL, *,
                            archive_md5: str | None = MOVIELENS_100K_MD5,
                            files_sha256: dict[str, str] | None = None,
                            cache: str | os.PathLike | None = None, attempts: int = 3,
                            timeout: float = 60.0, progress: bool = True) -> DownloadResult:
    """Fetch, verify, cache and unpack MovieLens-100k into ``dest`` (see the module docstring).

    Args:
        dest: data folder to create (``recfeast materialize --data-dir`` reads it).
        url: archive address; a mirror or a local server (tests).
        archive_md5: expected MD5 of the archive (GroupLens' published one); None skips that check
            (a mirror that repackaged the files: the per-file SHA-256 checks still apply).
        files_sha256: ``{file name: sha256}`` every unpacked file must match; default
            :data:`MOVIELENS_100K_FILES`.
        cache: folder for the archive; default :func:`cache_dir`.
        attempts: transfers tried in this call, each resuming where the last one stopped.
        timeout: seconds without data before a transfer counts as failed.
        progress: a byte progress bar on stderr.

    Returns:
        :class:`DownloadResult`.

    Raises:
        ConfigError: ``dest`` exists, is not empty and does not hold the verified files.
        DataError: the archive or a file in it does not match its checksum (the archive is deleted),
            or the download failed ``attempts`` times (the part file is kept for the next call).
    """
    expected = dict(MOVIELENS_100K_FILES if files_sha256 is None else files_sha256)
    dest = Path(dest).expanduser().resolve()
    cache = Path(cache).expanduser() if cache is not None else cache_dir()
    archive = cache / "ml-100k.zip"
    result = DownloadResult(dest=dest, archive=archive)

    present = _verified(dest, expected) if dest.is_dir() else None
    if present is not None:
        result.already_present, result.files = True, present
        return result
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} exists and does not hold the verified MovieLens-100k files: "
                          "pick another --dir or remove it")

    def archive_ok(path: Path) -> bool:
        return archive_md5 is None or _digest(path, "md5") == archive_md5.lower()

    if archive.is_file() and not archive_ok(archive):
        archive.unlink()                 # a corrupt cached copy: fetch again
    if not archive.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        part = archive.with_name(archive.name + ".part")
        last_error: Exception | None = None
        for attempt in range(attempts):
            try:
                _fetch(url, part, timeout, progress, result)
                last_error = None
                break
            except (OSError, urllib.error.URLError, ConnectionError) as exc:   # keep the part file
                last_error = exc
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    break                # 404, 403: retrying will not help
                time.sleep(min(2 ** attempt, 8) * 0.25)
        if last_error is not None:
            got = part.stat().st_size if part.exists() else 0
            raise DataError(f"download of {url} failed after {attempts} attempt(s) ({got} bytes kept in {part}; "
                            f"run the command again to resume): {last_error}")
        if not archive_ok(part):
            actual = _digest(part, "md5")
            part.unlink()
            raise DataError(f"{url}: archive md5 {actual} does not match the published {archive_md5}; "
                            "the file was deleted (a bad mirror or a transfer error): run the command again, "
                            "or pass --url with another mirror")
        os.replace(part, archive)
    try:
        result.files = _unpack(archive, dest, expected)
    except (DataError, zipfile.BadZipFile) as exc:
        archive.unlink(missing_ok=True)
        raise DataError(f"{exc} (the cached archive was deleted)") from exc
    return result
