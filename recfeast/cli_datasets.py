"""``recfeast datasets download movielens-100k``: a thin wrapper over :mod:`recfeast.datasets`."""

from __future__ import annotations

import sys

import click

from recfeast.errors import RecfeastError


@click.group()
def datasets() -> None:
    """Fetch public data sets (checked, cached, resumable)."""


@datasets.command()
@click.argument("name", type=click.Choice(["movielens-100k"]))
@click.option("--dir", "dest", type=click.Path(), default="data/movielens-100k", show_default=True,
              help="Folder to unpack into (then: recfeast materialize --data-dir DIR).")
@click.option("--url", default=None, help="Archive address (a mirror). Default: GroupLens' ml-100k.zip.")
@click.option("--archive-md5", default=None,
              help="Expected MD5 of the archive. Default: the one GroupLens publishes. 'none' skips it "
                   "(a repackaged mirror); each file's SHA-256 is still checked.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the archive is kept. Default: $RECFEAST_CACHE_DIR or ~/.cache/recfeast.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download(name, dest, url, archive_md5, cache_dir, quiet):
    """Download NAME (movielens-100k), verify it and unpack it into --dir."""
    from recfeast import datasets as D

    md5 = D.MOVIELENS_100K_MD5 if archive_md5 is None else (None if archive_md5.lower() == "none" else archive_md5)
    try:
        res = D.download_movielens_100k(dest, url or D.MOVIELENS_100K_URL, archive_md5=md5, cache=cache_dir,
                                        progress=not quiet)
    except RecfeastError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if res.already_present:
        click.echo(f"{res.dest}: already holds the verified MovieLens-100k files; nothing to do")
    else:
        how = (f"downloaded {res.downloaded_bytes} bytes"
               + (f", resumed from byte {', '.join(map(str, res.resumed_from))}" if res.resumed_from else "")
               if res.downloaded_bytes or res.resumed_from else "from the cache")
        click.echo(f"MovieLens-100k ({how}; archive {res.archive}) verified and unpacked into {res.dest}")
    click.echo(f"checked (sha256): {', '.join(res.files)}")
    click.echo("")
    click.echo(D.ENRICHMENT_NOTICE)
    click.echo("")
    click.echo(f"next: recfeast materialize --data-dir {dest}")
