"""Files put straight into a `ContentStore`, as a verified download would commit them."""

from __future__ import annotations

import hashlib

from dhtdeb.store import ContentStore


def put(store: ContentStore, data: bytes) -> str:
    """Commit `data` under its own SHA256 and return that hash."""
    sha256 = hashlib.sha256(data).hexdigest()
    partial = store.begin(sha256, len(data))
    partial.write(data)
    store.commit(partial)
    return sha256
