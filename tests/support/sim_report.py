"""What every `dhtdeb sim scale` report must satisfy, whatever its fleet: its counters add up."""

from __future__ import annotations

from typing import Any

import pytest


def check_counters(r: dict[str, Any], context: str) -> None:
    """Files and bytes are each counted once, the mirror's bytes by reason and by time add up to
    its totals, offload is bytes from peers over bytes requested, and the ceilings are ordered."""
    assert r["files_failed"] == 0, context
    assert r["wrong_pieces"] == 0, context  # every accepted piece has its true digest
    assert r["files_finished"] + r["files_abandoned"] == r["files_requested"], context
    # every byte of a finished file came from exactly one source
    assert r["bytes_from_peers"] + r["bytes_from_mirror"] == r["bytes_requested"], context
    assert r["bytes_mirror_sent"] >= r["bytes_from_mirror"], context  # plus audits, cut streams
    assert r["bytes_peers_sent"] >= r["bytes_from_peers"], context
    assert sum(r["mirror_bytes_series"]["bytes"]) == r["bytes_mirror_sent"], context
    assert sum(r["mirror_bytes_by_reason"].values()) == r["bytes_from_mirror"], context
    assert r["mirror_bytes_per_node"] == pytest.approx(r["bytes_mirror_sent"] / r["nodes"]), context
    offload = r["bytes_from_peers"] / r["bytes_requested"]
    assert 0.0 < r["offload"] == pytest.approx(offload, abs=1e-6), context  # 6 digits in the JSON
    # the ceilings: every file's first finished copy (and, with NAT, every copy finished before
    # a reachable machine had one) from the mirror, every other from peers
    assert 0.0 < r["offload_ceiling_nat"] <= r["offload_ceiling"] < 1.0, context
