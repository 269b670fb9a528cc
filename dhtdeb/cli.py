"""The `dhtdeb` command line: serve, bootstrap, peers, status, cache (cli_cache.py for the
commands that ask the running daemon, cli_status.py for the status tables)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from dhtdeb import __version__, cli_cache
from dhtdeb.cli_cache import StateDirOption, UrlOption
from dhtdeb.cli_status import print_status
from dhtdeb.daemon_client import DaemonClient, complaint, daemon_url
from dhtdeb.errors import ConfigError, DhtdebError
from dhtdeb.logsetup import setup_logging
from dhtdeb.netaddr import parse_cidr, parse_host_port
from dhtdeb.swarm.peer_server import DEFAULT_MAX_UPLOADS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Peer-to-peer Debian package distribution behind a verifying apt proxy.",
)

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"bad size {text!r} (examples: 0, 500M, 20G)")
    exponent = "_kmgt".index(match.group(2).lower() or "_")
    return int(match.group(1)) * int(1024**exponent)


def _fail(exc: ConfigError) -> None:
    typer.echo(f"dhtdeb: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    state_dir: Annotated[
        Path | None,
        typer.Option(help="State directory (default: /var/lib/dhtdeb as root, else XDG state dir)"),
    ] = None,
    proxy: Annotated[str, typer.Option(help="Where apt reaches the proxy")] = "127.0.0.1:9977",
    peer: Annotated[
        str, typer.Option(help="Peer HTTP server (TCP) and DHT (UDP) address")
    ] = "0.0.0.0:9978",
    keyring: Annotated[
        list[Path] | None,
        typer.Option(
            help="Trusted OpenPGP keyring (repeatable; default: keys/ + the system's apt keyrings)"
        ),
    ] = None,
    no_dht: Annotated[
        bool, typer.Option("--no-dht", help="Pure verified caching proxy: no DHT, no peers")
    ] = False,
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="DHT node to join, HOST:PORT (repeatable)")
    ] = None,
    no_lan: Annotated[bool, typer.Option("--no-lan", help="No LAN multicast discovery")] = False,
    allow_cidr: Annotated[
        list[str] | None,
        typer.Option(help="Also accept apt clients from this network (repeatable)"),
    ] = None,
    cache_limit: Annotated[
        str, typer.Option(help="Store size limit, e.g. 20G (0: unlimited)")
    ] = "0",
    upload_rate: Annotated[
        str, typer.Option(help="Cap on upload to peers, bytes/s, e.g. 5M (0: none)")
    ] = "0",
    max_uploads: Annotated[
        int, typer.Option(help="Concurrent uploads to peers")
    ] = DEFAULT_MAX_UPLOADS,
    peer_timeout: Annotated[
        float, typer.Option(help="Seconds without a byte before a peer counts as stalled")
    ] = 10.0,
    no_announce: Annotated[
        bool, typer.Option("--no-announce", help="Fetch from peers but never announce")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the daemon: the apt proxy, the peer server and the DHT."""
    from dhtdeb.app import ServeConfig, default_state_dir
    from dhtdeb.app import serve as run_serve
    from dhtdeb.archive.signature import default_keyrings, shipped_keys_dir

    setup_logging(log_level)
    try:
        config = ServeConfig(
            state_dir=state_dir or default_state_dir(),
            proxy=parse_host_port(proxy),
            peer=parse_host_port(peer),
            keyrings=tuple(keyring) if keyring else tuple(default_keyrings(shipped_keys_dir())),
            dht=not no_dht,
            lan=not no_lan,
            bootstrap=tuple(parse_host_port(b, default_port=9978) for b in bootstrap or []),
            allow_cidr=tuple(parse_cidr(c) for c in allow_cidr or []),
            cache_limit=parse_size(cache_limit),
            announce=not no_announce,
            upload_rate=float(parse_size(upload_rate)) or None,
            max_uploads=max_uploads,
            peer_timeout=peer_timeout,
        )
        for path in config.keyrings:
            if not path.is_file():
                raise ConfigError(f"keyring {path} does not exist")
        asyncio.run(run_serve(config))
    except ConfigError as exc:
        _fail(exc)


@app.command("bootstrap")
def bootstrap_node(
    listen: Annotated[str, typer.Option(help="UDP address of this DHT node")] = "0.0.0.0:9978",
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory for node id and routing table")
    ] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="Other DHT node to join (repeatable)")
    ] = None,
    no_lan: Annotated[bool, typer.Option("--no-lan", help="No LAN multicast discovery")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run a DHT-only node (no proxy, no store) for others to join."""
    from dhtdeb.app import bootstrap as run_bootstrap
    from dhtdeb.app import default_state_dir
    from dhtdeb.dht import DhtConfig

    setup_logging(log_level)
    try:
        directory = state_dir or default_state_dir()
        config = DhtConfig(
            listen=parse_host_port(listen),
            state_dir=directory / "dht",
            bootstrap=tuple(parse_host_port(b, default_port=9978) for b in bootstrap or []),
            lan=not no_lan,
        )
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(run_bootstrap(config, directory))
    except ConfigError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


def _get_json(base: str, path: str) -> dict[str, object]:
    """A local page of the running daemon; exit 1 with one line if it cannot be had."""
    try:
        return DaemonClient(base).get(path)
    except DhtdebError as exc:
        typer.echo(complaint(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def peers(
    sha256: Annotated[str, typer.Argument(help="SHA256 (hex) of the file")],
    url: Annotated[
        str | None,
        typer.Option(
            help="The daemon's proxy URL (default: from --state-dir, else http://127.0.0.1:9977)"
        ),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="The daemon's state directory")] = None,
) -> None:
    """Ask the local daemon which peers hold a file."""
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        typer.echo("dhtdeb: expected a SHA256 in hex (64 characters)", err=True)
        raise typer.Exit(2)
    answer = _get_json(daemon_url(url, state_dir), f"/peers/{digest}")
    found = answer.get("peers")
    for peer in found if isinstance(found, list) else []:
        typer.echo(str(peer))
    if not found:
        typer.echo("no peers known", err=True)


@app.command()
def status(
    url: UrlOption = None,
    state_dir: StateDirOption = None,
    json_: Annotated[bool, typer.Option("--json", help="The raw /status.json")] = False,
) -> None:
    """Show the running daemon's counters: bytes, requests, failures, cache, DHT."""
    base = daemon_url(url, state_dir)
    answer = _get_json(base, "/status.json")
    if json_:
        typer.echo(json.dumps(answer, indent=2))
    else:
        print_status(answer, base)


cache_app = typer.Typer(no_args_is_help=True, help="The content store in the state directory.")
app.add_typer(cache_app, name="cache")
cache_app.command("list")(cli_cache.cache_list)
cache_app.command("stats")(cli_cache.cache_stats)
cache_app.command("pin")(cli_cache.cache_pin)
cache_app.command("unpin")(cli_cache.cache_unpin)
cache_app.command("evict")(cli_cache.cache_evict)


def _progress_line(done: int, total: int) -> None:
    if done == total or done % 64 == 1:
        typer.echo(f"\rhashing {done}/{total} files", nl=False, err=True)


@cache_app.command("verify")
def cache_verify(
    state_dir: Annotated[
        Path | None,
        typer.Option(help="State directory (default: /var/lib/dhtdeb as root, else XDG state dir)"),
    ] = None,
) -> None:
    """Hash every file in the store against its name (SHA256); exit 1 if any is bad.

    Reads only: works with the daemon stopped or running."""
    from dhtdeb.app import default_state_dir
    from dhtdeb.store import verify_store

    root = (state_dir or default_state_dir()) / "store"
    if not root.is_dir():
        typer.echo(f"dhtdeb: no store at {root}", err=True)
        raise typer.Exit(2)
    report = verify_store(root, progress=_progress_line if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        typer.echo("\r\033[K", nl=False, err=True)
    for bad in report.bad:
        typer.echo(f"bad: {bad.path}: {bad.reason}", err=True)
    typer.echo(
        f"{report.files} files, {report.bytes} bytes, {len(report.bad)} bad"
        + (f" ({report.partial} partial downloads in incoming/)" if report.partial else "")
    )
    if report.bad:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command("setup-apt")
def setup_apt_command(
    apt_conf_dir: Annotated[Path, typer.Option(help="apt.conf.d")] = Path("/etc/apt/apt.conf.d"),
    url: Annotated[str, typer.Option(help="The daemon's proxy URL")] = "http://127.0.0.1:9977",
    detect_program: Annotated[
        Path, typer.Option(help="Where to install the program apt asks for the proxy")
    ] = Path("/usr/local/lib/dhtdeb/apt-proxy-detect"),
    undo: Annotated[bool, typer.Option("--undo", help="Remove both files again")] = False,
) -> None:
    """Make apt use dhtdeb for http sources while it runs, and go direct while it does not."""
    from dhtdeb import setup_apt

    try:
        if undo:
            outcome = setup_apt.undo(apt_conf_dir, detect_program)
        else:
            outcome = setup_apt.setup(apt_conf_dir, url, detect_program)
    except ConfigError as exc:
        _fail(exc)
        return
    for line in setup_apt.describe(outcome, undo=undo):
        typer.echo(line)
    for warning in outcome.warnings:
        typer.echo(f"dhtdeb: warning: {warning}", err=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
