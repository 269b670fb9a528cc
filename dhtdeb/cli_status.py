"""`dhtdeb status`: the daemon's /status.json as tables a person reads.

Owns: the grouping, titles and number formats of the status tables (rich, a dependency of ours
and typer's). Trusts nothing of the JSON's shape: a group it has no title for is shown under its
own name, a value that is not a number as it came, so a newer daemon's counters still show.
The two lists ("transfers", "peers") become tables of their own, one row per record; a record
that is not an object, or a field it lacks, shows as "-".
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

TITLES = {
    "bytes": "Bytes",
    "requests": "Requests by outcome",
    "verify_failures": "Verification failures by kind",
    "bans": "Peer bans",
    "inquiries": "Inquiries (whole-file mismatches with pieces from peers)",
    "cache": "Cache",
    "index": "Archive index",
    "dht": "DHT",
    "dht_datagrams": "DHT datagrams",
}
LABELS = {
    "from_peers": "from peers",
    "from_mirror": "from the mirror",
    "to_apt": "to apt",
    "to_peers": "to peers",
    "limit_bytes": "limit",
    "routing_table": "contacts (routing table)",
    "stored_keys": "keys stored for others",
    "announced": "files announced",
    "unannounced": "files not yet announced",
    "rate_limited": "requests dropped (rate limit)",
    "pool_files": "pool files known",
    "learning": "Packages files being learned",
    "rechecked_after_crash": "removed after an unclean stop",
    "unsynced": "committed, not yet fsynced",
    "readers": "being sent now",
    "retracted_pieces": "pieces fetched again",
    "check_bytes": "bytes asked of the mirror",
}


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _is_bytes(group: str, key: str) -> bool:
    return group == "bytes" or key == "bytes" or key.endswith("_bytes")


def _value(group: str, key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    if group == "cache" and key == "limit_bytes" and value == 0:
        return "unlimited"
    if _is_bytes(group, key):
        return f"{value:,}" if value < 1024 else f"{value:,}  ({human_bytes(value)})"
    return f"{value:,}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _table() -> Table:
    table = Table(box=None, show_header=False, padding=(0, 1, 0, 2))
    table.add_column("what")
    table.add_column("value", justify="right")
    return table


def _titled(title: str, table: Table) -> RenderableType:
    return Group(Text(title, style="bold"), table, Text(""))


def _bytes_table(values: Mapping[str, object]) -> RenderableType:
    """Bytes by source, with each source's share of what was downloaded."""
    numbers = {k: v for k, v in values.items() if isinstance(v, int)}
    downloaded = numbers.get("from_peers", 0) + numbers.get("from_mirror", 0)
    table = _table()
    table.add_column("share", justify="right")
    for key, value in values.items():
        share = ""
        if key in ("from_peers", "from_mirror") and isinstance(value, int):
            share = _share(value, downloaded) + " of downloads"
        table.add_row(_label(key), _value("bytes", key, value), share)
    return _titled(TITLES["bytes"], table)


def _group_table(group: str, values: Mapping[str, object]) -> RenderableType:
    table = _table()
    for key, value in values.items():
        table.add_row(_label(key), _value(group, key, value))
    if group == "cache":
        used, limit = values.get("bytes"), values.get("limit_bytes")
        if isinstance(used, int) and isinstance(limit, int) and limit:
            table.add_row("filled", _share(used, limit))
    return _titled(TITLES.get(group, group.replace("_", " ")), table)


def status_tables(
    status: Mapping[str, object], url: str, now: float | None = None
) -> Iterator[RenderableType]:
    """The header line, then one table per group, in the order of TITLES, unknown groups last,
    then the lists (`now`: the wall clock their times are told against)."""
    now = time.time() if now is None else now
    node = f", node {status['node_id']}" if "node_id" in status else ""
    yield f"dhtdeb {status.get('version', '?')} at {url}{node}\n"
    groups = {k: v for k, v in status.items() if isinstance(v, dict) and v}
    for group in sorted(groups, key=lambda g: list(TITLES).index(g) if g in TITLES else 99):
        values = groups[group]
        yield _bytes_table(values) if group == "bytes" else _group_table(group, values)
    for key, value in status.items():
        if key in LISTS:
            records = _records(value)
            if records:
                yield LISTS[key](records, now)
        elif key not in ("version", "node_id") and not isinstance(value, dict):
            yield f"{_label(key)}: {value}"


def _ago(at: object, now: float) -> str:
    if isinstance(at, bool) or not isinstance(at, int | float):
        return "-"
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago" if seconds < 7200 else f"{seconds // 3600} h ago"


def _amount(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return "-"
    return human_bytes(value)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _list_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table whose columns keep their width but the last, which is cut short (…) when the
    terminal is narrow."""
    table = Table(box=None, padding=(0, 1, 0, 2), header_style="")
    for column, heading in enumerate(headings):
        last = column == len(headings) - 1
        width = max([len(heading), *(len(row[column]) for row in rows)])
        table.add_column(
            heading, no_wrap=True, overflow="ellipsis", min_width=None if last else width
        )
    for row in rows:
        table.add_row(*row)
    return table


def _sources(record: Mapping[str, object]) -> str:
    """Where a file's bytes came from, in a few words: cache, mirror, 2 peers, 1 peer + mirror."""
    source, peers = record.get("source"), record.get("peers")
    if record.get("error"):
        return "failed"
    if not isinstance(source, str) or "peers" not in source:
        return _text(source)
    count = f"{peers} peer{'' if peers == 1 else 's'}" if isinstance(peers, int) else "peers"
    return count + (" + mirror" if "mirror" in source else "")


def _seconds(value: object) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else "-"


def _transfers_table(records: Sequence[Mapping[str, object]], now: float) -> RenderableType:
    """The last files fetched or served, newest first: where their bytes came from (the top
    peer and the byte counts by source are in --json)."""
    rows = [
        (
            _ago(r.get("at"), now),
            _amount(r.get("size")),
            _sources(r),
            _seconds(r.get("seconds")),
            str(r.get("url") or "-").rsplit("/", 1)[-1],
        )
        for r in records
    ]
    return _titled("Recent transfers", _list_table(("when", "size", "from", "took", "file"), rows))


def _peers_table(records: Sequence[Mapping[str, object]], now: float) -> RenderableType:
    """The peers known for swarm transfers, most recently seen first."""
    rows = [
        (
            _text(r.get("address")),
            _text(r.get("via")),
            _amount(r.get("received_bytes")),
            _amount(r.get("sent_bytes")),
            _ago(r.get("last_seen"), now),
            f"banned: {_text(r.get('ban_reason'))}" if r.get("banned") is True else "",
        )
        for r in records
    ]
    headings = ("peer", "known by", "received", "sent", "last seen", "")
    return _titled("Peers", _list_table(headings, rows))


LISTS = {"transfers": _transfers_table, "peers": _peers_table}


def _records(value: object) -> list[Mapping[str, object]]:
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []


def print_status(status: Mapping[str, object], url: str) -> None:
    console = Console(highlight=False, soft_wrap=True)  # soft: a long header line stays one line
    for renderable in status_tables(status, url):
        console.print(renderable)
