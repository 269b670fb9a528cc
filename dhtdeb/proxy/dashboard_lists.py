"""The dashboard's two lists: recent transfers and known peers (/status.json's "transfers" and
"peers", lists of records rather than groups of counters).

Owns: their columns (`TRANSFER_COLUMNS`, `PEER_COLUMNS`: the status field, the heading and how a
value is shown), which the page's script receives as JSON to redraw the same rows from each poll,
and their server-rendered tables. Every cell carries the field's exact status value in `data-v`
(what the script and the tests compare) and shows a human form of it. Trusts nothing it shows:
URLs come from apt and mirrors, addresses, node ids and ban reasons from peers, so every value and
attribute goes through `html.escape`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

from dhtdeb.cli_status import human_bytes

# (status field, heading, kind). Kinds: ago (a Unix time, shown as how long ago), until (a Unix
# time to come), bytes, seconds, node (a node id, shortened), url, flag, text.
TRANSFER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("at", "when", "ago"),
    ("url", "file", "url"),
    ("size", "size", "bytes"),
    ("seconds", "took", "seconds"),
    ("source", "source", "text"),
    ("peer_bytes", "from peers", "bytes"),
    ("peers", "peers", "text"),
    ("top_peer", "top peer", "text"),
    ("mirror_bytes", "from mirror", "bytes"),
    ("cache_bytes", "from cache", "bytes"),
    ("error", "failed", "text"),
)
PEER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("address", "peer", "text"),
    ("via", "known by", "text"),
    ("node", "node", "node"),
    ("received_bytes", "received", "bytes"),
    ("pieces", "pieces", "text"),
    ("sent_bytes", "sent", "bytes"),
    ("last_seen", "last seen", "ago"),
    ("banned", "banned", "flag"),
    ("ban_reason", "why", "text"),
    ("banned_until", "until", "until"),
)
# For the script: the lists it redraws, by table id.
LISTS_JSON = json.dumps(
    {"transfers": TRANSFER_COLUMNS, "peers": PEER_COLUMNS}, separators=(",", ":")
)


def escape(value: object) -> str:
    """For HTML text and attribute values: everything shown comes from the network."""
    return html.escape(str(value), quote=True)


def raw(value: object) -> str:
    """A status value as text, as the script writes it (JSON's null: empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def span(seconds: float) -> str:
    """A duration as the dashboard shows it: seconds, minutes or hours, whole."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def shown(kind: str, value: object, now: float) -> str:
    """How a value reads in its cell (`now`: wall clock)."""
    if value is None or value == "":
        return "-" if kind in ("bytes", "ago", "until") else ""
    if isinstance(value, bool):
        return ("banned" if value else "") if kind == "flag" else raw(value)
    if isinstance(value, int | float):
        if kind == "ago":
            return f"{span(now - value)} ago"
        if kind == "until":
            return f"in {span(value - now)}"
        if kind == "bytes" and isinstance(value, int):
            return human_bytes(value)
        if kind == "seconds":
            return f"{value:.2f} s"
        return str(value)
    if kind == "node":
        return str(value)[:12]
    return str(value)


def table(
    list_id: str,
    records: object,
    columns: Sequence[tuple[str, str, str]],
    now: float,
    empty: str,
) -> str:
    """The table of one status list (anything but a list of objects shows as empty)."""
    rows = [r for r in records if isinstance(r, Mapping)] if isinstance(records, list) else []
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{escape(kind)}" data-f="{escape(field)}" '
            f'data-v="{escape(raw(record.get(field)))}">'
            f"{escape(shown(kind, record.get(field), now))}</td>"
            for field, _, kind in columns
        )
        + "</tr>"
        for record in rows
    )
    return (
        f'<p class=note id="{escape(list_id)}-empty"{" hidden" if rows else ""}>{escape(empty)}</p>'
        f'<table class=list id="{escape(list_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
