"""The `dhtdeb` command line: serve, bootstrap, peers, status, cache, sim (cli_cache.py for the
commands that ask the running daemon, cli_status.py for the status tables, sim/cli.py for the
simulation)."""

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
from dhtdeb.config_file import Settings, Value, check_flag, parse_size, read_config
from dhtdeb.daemon_client import DaemonClient, complaint, daemon_url
from dhtdeb.errors import ConfigError, DhtdebError
from dhtdeb.logsetup import setup_logging
from dhtdeb.netaddr import parse_host_port
from dhtdeb.sim.cli import sim_app

# No rich markup in help texts: they name config sections as "[peer] listen", which markup eats.
app = typer.Typer(
    rich_markup_mode=None,
    add_completion=False,
    no_args_is_help=True,
    help="Peer-to-peer Debian package distribution behind a verifying apt proxy.",
)

__all__ = ["app", "main", "parse_size"]


def _fail(exc: ConfigError) -> None:
    typer.echo(f"dhtdeb: {exc}", err=True)
    raise typer.Exit(2)


# The options of `dhtdeb serve` (and `dhtdeb config show`). None means "not given": the config
# file's value, else the default in config_file.SETTINGS, applies (README.md, systemd/dhtdeb.toml).
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="Config file (default: /etc/dhtdeb/dhtdeb.toml if it exists); flags override it",
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR", help="State directory (default: /var/lib/dhtdeb as root, else XDG state dir)"
    ),
]
ProxyAddress = Annotated[
    str | None,
    typer.Option(
        "--proxy", metavar="HOST:PORT", help="Where apt reaches the proxy (default: 127.0.0.1:9977)"
    ),
]
PeerAddress = Annotated[
    str | None,
    typer.Option(
        metavar="HOST:PORT",
        help="Peer HTTP server (TCP) and DHT (UDP) address (default: 0.0.0.0:9978)",
    ),
]
Keyrings = Annotated[
    list[Path] | None,
    typer.Option(
        "--keyring",
        metavar="FILE",
        help="Trusted OpenPGP keyring (repeatable; default: keys/ + the system's apt keyrings)",
    ),
]
Dht = Annotated[
    bool | None,
    typer.Option("--dht/--no-dht", help="--no-dht: pure verified caching proxy, no DHT, no peers"),
]
Bootstrap = Annotated[
    list[str] | None,
    typer.Option(metavar="HOST[:PORT]", help="DHT node to join (repeatable)"),
]
Lan = Annotated[bool | None, typer.Option("--lan/--no-lan", help="LAN multicast discovery")]
AllowCidr = Annotated[
    list[str] | None,
    typer.Option(metavar="NET", help="Also accept apt clients from this network (repeatable)"),
]
Mirrors = Annotated[
    list[str] | None,
    typer.Option(
        "--mirror",
        metavar="HOST[:PORT]",
        help="Fetch only from this mirror (repeatable; default: any host)",
    ),
]
CacheLimit = Annotated[
    str | None,
    typer.Option(metavar="SIZE", help="Store size limit, e.g. 20G (0: unlimited) (default: 0)"),
]
UploadRate = Annotated[
    str | None,
    typer.Option(
        metavar="RATE", help="Cap on upload to peers, bytes/s, e.g. 5M (0: none) (default: 0)"
    ),
]
MaxUploads = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Concurrent uploads to peers, twice as many of at most 256 KiB (default: 4)",
    ),
]
PeerTimeout = Annotated[
    float | None,
    typer.Option(
        metavar="SECONDS",
        help="Seconds without a byte before a peer counts as stalled (default: 10)",
    ),
]
Announce = Annotated[
    bool | None,
    typer.Option(
        "--announce/--no-announce", help="--no-announce: fetch from peers, never announce"
    ),
]
LogLevel = Annotated[
    str | None, typer.Option(metavar="LEVEL", help="debug, info, warning or error (default: info)")
]


def _settings(config: Path | None, flags: dict[str, tuple[str, object]]) -> Settings:
    """The effective settings: `flags` (setting name -> (flag, value or None)) over the file."""
    given: dict[str, Value] = {}
    for name, (flag, raw) in flags.items():
        if raw is None or raw == []:
            continue
        if isinstance(raw, bool) and not raw:
            flag = flag.replace("--", "--no-", 1)
        if isinstance(raw, Path):
            raw = str(raw.absolute())
        elif isinstance(raw, list):
            raw = [str(item.absolute()) if isinstance(item, Path) else str(item) for item in raw]
        assert isinstance(raw, str | int | float | bool | list)
        given[name] = check_flag(name, flag, raw)
    return Settings(read_config(config), given)


def _serve_flags(
    state_dir: Path | None,
    proxy: str | None,
    peer: str | None,
    keyring: list[Path] | None,
    dht: bool | None,
    bootstrap: list[str] | None,
    lan: bool | None,
    allow_cidr: list[str] | None,
    mirrors: list[str] | None,
    cache_limit: str | None,
    upload_rate: str | None,
    max_uploads: int | None,
    peer_timeout: float | None,
    announce: bool | None,
    log_level: str | None,
) -> dict[str, tuple[str, object]]:
    return {
        "cache.state_dir": ("--state-dir", state_dir),
        "proxy.listen": ("--proxy", proxy),
        "peer.listen": ("--peer", peer),
        "trust.keyrings": ("--keyring", keyring),
        "dht.enabled": ("--dht", dht),
        "dht.bootstrap": ("--bootstrap", bootstrap),
        "lan.enabled": ("--lan", lan),
        "access.allow_cidr": ("--allow-cidr", allow_cidr),
        "access.mirrors": ("--mirror", mirrors),
        "cache.limit": ("--cache-limit", cache_limit),
        "peer.upload_rate": ("--upload-rate", upload_rate),
        "peer.max_uploads": ("--max-uploads", max_uploads),
        "peer.timeout": ("--peer-timeout", peer_timeout),
        "peer.announce": ("--announce", announce),
        "log.level": ("--log-level", log_level),
    }


@app.command()
def serve(
    config: ConfigOption = None,
    state_dir: StateDir = None,
    proxy: ProxyAddress = None,
    peer: PeerAddress = None,
    keyring: Keyrings = None,
    dht: Dht = None,
    bootstrap: Bootstrap = None,
    lan: Lan = None,
    allow_cidr: AllowCidr = None,
    mirror: Mirrors = None,
    cache_limit: CacheLimit = None,
    upload_rate: UploadRate = None,
    max_uploads: MaxUploads = None,
    peer_timeout: PeerTimeout = None,
    announce: Announce = None,
    log_level: LogLevel = None,
) -> None:
    """Run the daemon: the apt proxy, the peer server and the DHT."""
    from dhtdeb.app import serve as run_serve

    try:
        settings = _settings(
            config,
            _serve_flags(
                state_dir,
                proxy,
                peer,
                keyring,
                dht,
                bootstrap,
                lan,
                allow_cidr,
                mirror,
                cache_limit,
                upload_rate,
                max_uploads,
                peer_timeout,
                announce,
                log_level,
            ),
        )
        setup_logging(settings.text("log.level").lower())
        serve_config = settings.serve_config()
        for path in serve_config.keyrings:
            if not path.is_file():
                raise ConfigError(
                    f"{settings.where('trust.keyrings')}: keyring {path} does not exist"
                )
        asyncio.run(run_serve(serve_config))
    except ConfigError as exc:
        _fail(exc)


app.add_typer(sim_app, name="sim")

config_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="The config file of `dhtdeb serve`."
)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    state_dir: StateDir = None,
    proxy: ProxyAddress = None,
    peer: PeerAddress = None,
    keyring: Keyrings = None,
    dht: Dht = None,
    bootstrap: Bootstrap = None,
    lan: Lan = None,
    allow_cidr: AllowCidr = None,
    mirror: Mirrors = None,
    cache_limit: CacheLimit = None,
    upload_rate: UploadRate = None,
    max_uploads: MaxUploads = None,
    peer_timeout: PeerTimeout = None,
    announce: Announce = None,
    log_level: LogLevel = None,
) -> None:
    """Print the configuration `dhtdeb serve` would run with these flags, and where each value
    comes from: default, FILE:LINE, or a flag."""
    try:
        settings = _settings(
            config,
            _serve_flags(
                state_dir,
                proxy,
                peer,
                keyring,
                dht,
                bootstrap,
                lan,
                allow_cidr,
                mirror,
                cache_limit,
                upload_rate,
                max_uploads,
                peer_timeout,
                announce,
                log_level,
            ),
        )
    except ConfigError as exc:
        _fail(exc)
        return
    for line in settings.show():
        typer.echo(line)


@app.command("bootstrap")
def bootstrap_node(
    config: ConfigOption = None,
    listen: Annotated[
        str | None,
        typer.Option(help="UDP address of this DHT node ([peer] listen) (default: 0.0.0.0:9978)"),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory for node id and routing table")
    ] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="Other DHT node to join (repeatable)")
    ] = None,
    lan: Lan = None,
    log_level: LogLevel = None,
) -> None:
    """Run a DHT-only node (no proxy, no store) for others to join.

    Reads [peer] listen, [cache] state_dir, [dht] bootstrap, [lan] enabled and [log] level of the
    config file; flags override them."""
    from dhtdeb.app import bootstrap as run_bootstrap
    from dhtdeb.dht import DhtConfig

    try:
        settings = _settings(
            config,
            {
                "peer.listen": ("--listen", listen),
                "cache.state_dir": ("--state-dir", state_dir),
                "dht.bootstrap": ("--bootstrap", bootstrap),
                "lan.enabled": ("--lan", lan),
                "log.level": ("--log-level", log_level),
            },
        )
        setup_logging(settings.text("log.level").lower())
        directory = Path(settings.text("cache.state_dir"))
        dht_config = DhtConfig(
            listen=parse_host_port(settings.text("peer.listen")),
            state_dir=directory / "dht",
            bootstrap=tuple(
                parse_host_port(b, default_port=9978) for b in settings.texts("dht.bootstrap")
            ),
            lan=settings.flag("lan.enabled"),
        )
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(run_bootstrap(dht_config, directory))
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


cache_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="The content store in the state directory."
)
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
        typer.Option(
            metavar="DIR",
            help="State directory (default: /var/lib/dhtdeb as root, else XDG state dir)",
        ),
    ] = None,
) -> None:
    """Hash every file in the store against its name (SHA256); exit 1 if any is bad.

    Reads only: works with the daemon stopped or running."""
    from dhtdeb.app import default_state_dir
    from dhtdeb.store_check import verify_store

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
        Path | None,
        typer.Option(
            help="The program apt asks for the proxy (default: the .deb's "
            "/usr/libexec/dhtdeb/apt-proxy-detect for the default URL, else "
            "/usr/local/lib/dhtdeb/apt-proxy-detect, written here)"
        ),
    ] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Remove both files again")] = False,
) -> None:
    """Make apt use dhtdeb for http sources while it runs, and go direct while it does not."""
    from dhtdeb import setup_apt

    try:
        if undo:
            outcome = setup_apt.undo(
                apt_conf_dir, detect_program or setup_apt.DEFAULT_DETECT_PROGRAM
            )
        else:
            program = detect_program or setup_apt.default_detect_program(url)
            outcome = setup_apt.setup(apt_conf_dir, url, program)
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
