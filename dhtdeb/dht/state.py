"""The node's persistent state: its id and its contacts, as JSON in the state directory.

Owns: `dht.json` in the state dir. Trusts: nothing in it (a corrupt or foreign file is ignored with
a warning and the node starts fresh). Stock kademlia pickles its state, so a state file that
someone else could write would run their code; JSON cannot.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.dht.wire import ID_SIZE, family_of
from dhtdeb.errors import RemoteProtocolError

log = logging.getLogger("dhtdeb.dht")

STATE_FILE = "dht.json"
FORMAT = 1
MAX_SAVED_CONTACTS = 400


@dataclass(frozen=True)
class SavedState:
    node_id: bytes
    contacts: tuple[tuple[str, int], ...]


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load_state(state_dir: Path) -> SavedState | None:
    path = state_path(state_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("unknown format")
        node_id = bytes.fromhex(raw["node_id"])
        if len(node_id) != ID_SIZE:
            raise ValueError("bad node id")
        contacts = []
        for item in raw.get("contacts", [])[:MAX_SAVED_CONTACTS]:
            host, port = item["host"], item["port"]
            if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError("bad contact")
            family_of(host)
            contacts.append((host, port))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RemoteProtocolError) as exc:
        log.warning("DHT: ignoring unusable state file %s: %s", path, exc)
        return None
    return SavedState(node_id, tuple(contacts))


def save_state(state_dir: Path, state: SavedState) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state_dir)
    document = {
        "format": FORMAT,
        "node_id": state.node_id.hex(),
        "contacts": [
            {"host": host, "port": port} for host, port in state.contacts[:MAX_SAVED_CONTACTS]
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
    os.replace(tmp, path)
