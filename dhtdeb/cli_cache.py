"""`dhtdeb cache list|stats|pin|unpin|evict`: the running daemon's store, through its local pages
(`GET /cache.json`, `POST /cache/<action>/<sha256>`). `dhtdeb cache verify`, the offline re-hash,
lives in cli.py beside the group.

Owns: the command line of these actions and their output (plain aligned text: `list` is for grep
and awk as much as for eyes; `--json` gives the daemon's answer). Trusts the daemon to have
checked every action; checks the SHA256 shape itself only to answer a typo without a request.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from dhtdeb.cli_status import human_bytes
from dhtdeb.daemon_client import DaemonClient, complaint, daemon_url
from dhtdeb.errors import DhtdebError

UrlOption = Annotated[
    str | None,
    typer.Option(
        help="The daemon's proxy URL (default: from --state-dir, else http://127.0.0.1:9977)"
    ),
]
StateDirOption = Annotated[Path | None, typer.Option(help="The daemon's state directory")]
JsonOption = Annotated[bool, typer.Option("--json", help="The daemon's JSON answer, as is")]
HashesArgument = Annotated[list[str], typer.Argument(help="SHA256 (hex) of stored files")]
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _client(url: str | None, state_dir: Path | None) -> DaemonClient:
    return DaemonClient(daemon_url(url, state_dir))


def _listing(url: str | None, state_dir: Path | None) -> dict[str, object]:
    try:
        return _client(url, state_dir).get("/cache.json")
    except DhtdebError as exc:
        typer.echo(complaint(exc), err=True)
        raise typer.Exit(1) from None


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) else 0


def cache_list(
    url: UrlOption = None, state_dir: StateDirOption = None, json_: JsonOption = False
) -> None:
    """List the stored files, most recently used first: SHA256, size, last use, pinned, URL."""
    listing = _listing(url, state_dir)
    if json_:
        typer.echo(json.dumps(listing, indent=1))
        return
    files = listing.get("files")
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict):
            continue
        last_used = entry.get("last_used")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_used))
            if isinstance(last_used, int | float) and last_used > 0
            else "-"
        )
        typer.echo(
            f"{entry.get('sha256')}  {entry.get('size', 0):>12}  {when}  "
            f"{'pinned' if entry.get('pinned') else '-':6}  {entry.get('url') or '-'}"
        )


def cache_stats(
    url: UrlOption = None, state_dir: StateDirOption = None, json_: JsonOption = False
) -> None:
    """Files and bytes in the store, its limit, and what is pinned."""
    listing = _listing(url, state_dir)
    summary = {k: v for k, v in listing.items() if k != "files"}
    if json_:
        typer.echo(json.dumps(summary, indent=1))
        return
    stored, limit = _int(listing, "bytes"), _int(listing, "limit_bytes")
    rows = [
        ("files", f"{_int(listing, 'count')}"),
        ("bytes", f"{stored} ({human_bytes(stored)})"),
        (
            "limit",
            f"{limit} ({human_bytes(limit)}, {100 * stored / limit:.1f} % used)"
            if limit
            else "unlimited",
        ),
        ("pinned files", f"{_int(listing, 'pinned')}"),
        ("pinned bytes", f"{_int(listing, 'pinned_bytes')}"),
    ]
    for name, value in rows:
        typer.echo(f"{name:<14}{value}")


def _act(action: str, hashes: list[str], url: str | None, state_dir: Path | None) -> None:
    digests = [sha256.strip().lower() for sha256 in hashes]
    for sha256 in digests:
        if not _HEX64.fullmatch(sha256):
            typer.echo(f"dhtdeb: {sha256!r} is not a SHA256 in hex (64 characters)", err=True)
            raise typer.Exit(2)
    client = _client(url, state_dir)
    failed = False
    for sha256 in digests:
        try:
            answer = client.post(f"/cache/{action}/{sha256}")
        except DhtdebError as exc:
            typer.echo(complaint(exc), err=True)
            raise typer.Exit(1) from None
        if answer.status != 200:
            failed = True
            reason = answer.body.get("error", f"HTTP {answer.status}")
            typer.echo(f"dhtdeb: {action} {sha256}: {reason}", err=True)
        elif action == "evict":
            typer.echo(f"evicted {sha256} ({answer.body.get('freed_bytes')} bytes)")
        elif answer.body.get("changed"):
            typer.echo(f"{action}ned {sha256}")
        else:
            typer.echo(f"{sha256} was {action}ned already")
    if failed:
        raise typer.Exit(1)


def cache_pin(
    hashes: HashesArgument, url: UrlOption = None, state_dir: StateDirOption = None
) -> None:
    """Keep files in the store whatever --cache-limit says (kept across restarts)."""
    _act("pin", hashes, url, state_dir)


def cache_unpin(
    hashes: HashesArgument, url: UrlOption = None, state_dir: StateDirOption = None
) -> None:
    """Let --cache-limit evict these files again."""
    _act("unpin", hashes, url, state_dir)


def cache_evict(
    hashes: HashesArgument, url: UrlOption = None, state_dir: StateDirOption = None
) -> None:
    """Remove files from the store now (refused for pinned files and files being sent)."""
    _act("evict", hashes, url, state_dir)
