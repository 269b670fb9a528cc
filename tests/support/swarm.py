"""Swarm fixtures and helpers shared by the swarm test files: a `dhtdeb bootstrap` node, DHT-enabled
`dhtdeb serve` daemons that join it, and waiting until a daemon's DHT lookup finds given peers.

A test file imports the fixtures (pytest finds them by name in the module) and lists them in its
`__all__`, which tells linters the import is used.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import POLL_INTERVAL
from .daemon import BootstrapProcess, DaemonFactory, DaemonProcess

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

SwarmNode = Callable[..., DaemonProcess]


@pytest.fixture
def bootstrap_node(tmp_path: Path) -> Iterator[BootstrapProcess]:
    node = BootstrapProcess(tmp_path / "bootstrap")
    node.start()
    yield node
    node.stop()


@pytest.fixture
def swarm_node(dhtdeb_daemon: DaemonFactory, bootstrap_node: BootstrapProcess) -> SwarmNode:
    """Start a DHT-enabled daemon that joins the test's bootstrap node."""

    def start(*extra: str) -> DaemonProcess:
        return dhtdeb_daemon(
            no_dht=False, extra_args=("--bootstrap", bootstrap_node.dht, "--no-lan", *extra)
        )

    return start


def peers_of(daemon: DaemonProcess, sha256: str) -> list[str]:
    """The peer URLs `daemon`'s DHT lookup finds for a file (its /peers/<sha256> page)."""
    with _DIRECT.open(f"{daemon.proxy_url}/peers/{sha256}", timeout=30) as response:
        answer = json.loads(response.read())
    return list(answer["peers"])


def wait_until_found(
    asker: DaemonProcess,
    holders: list[DaemonProcess],
    sha256: str,
    timeout: float = 30.0,
    *,
    urls: tuple[str, ...] = (),
) -> None:
    """Block until `asker`'s DHT lookup returns every holder, given as daemons or as peer `urls`
    (http://HOST:PORT), since announces are asynchronous."""
    wanted = {f"http://{h.addresses.peer}" for h in holders} | set(urls)
    deadline = time.monotonic() + timeout
    while not wanted <= set(peers_of(asker, sha256)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{wanted} not announced for {sha256} within {timeout}s")
        time.sleep(POLL_INTERVAL)  # polling a condition with a deadline
