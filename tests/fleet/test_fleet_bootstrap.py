"""A bootstrap node given by host name, on namespace hosts with the system's own resolver.

An admin writes `bootstrap = ["boot.example:9978"]` before the name exists (DNS not set up yet,
or the laptop boots before the network is up). The daemon must not give up on the name: while
its routing table is empty it resolves it again, and joins once the name resolves. Here glibc's
resolver reads the host's /etc/hosts, which `ip netns exec` bind-mounts from
/etc/netns/<namespace>/hosts; the test writes the name into that file while the daemon runs
(this assumes nsswitch.conf asks `files` for hosts, as Debian's does, before any other source).
LAN discovery is off, so the name is the only way the two hosts can meet.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import netns
from .conftest import FleetFactory
from .host import FleetHost

NAME = "bootstrap.fleet.test"  # RFC 2606: never a real name
PORT = 9978  # the daemon's default peer and DHT port, on which h1 listens
TIMEOUT = 30.0
POLL = 0.1


def _resolver_files(host: FleetHost, hosts_line: str) -> Path:
    """The host's /etc/hosts and /etc/resolv.conf as its processes will see them: names from the
    file only (a nameserver on the host's own loopback, where nothing listens, answers at once
    that it cannot)."""
    etc = netns.ETC_NETNS_DIR / host.namespace.name  # removed with the namespace
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    hosts = etc / "hosts"
    hosts.write_text(hosts_line)
    return hosts


def _wait_for_log(host: FleetHost, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in host.log_tail(200):
        assert time.monotonic() < deadline, f"{host.name}: no {text!r} in {TIMEOUT} s"
        time.sleep(POLL)  # polling the daemon's log, with a deadline


def test_a_bootstrap_name_that_resolves_later_is_joined(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=2)
    h1, h2 = fleet.hosts
    hosts = _resolver_files(h2, "127.0.0.1 localhost\n")
    h1.start_daemon(extra_args=["--no-lan"])
    h2.start_daemon(bootstrap=[f"{NAME}:{PORT}"], extra_args=["--no-lan"])

    _wait_for_log(h2, f"cannot resolve bootstrap host {NAME}")
    assert int(h2.status()["dht"]["routing_table"]) == 0  # nobody else to join through

    # Written in place: the bind mount shows the file's inode, which a rename would replace.
    hosts.write_text(f"127.0.0.1 localhost\n{h1.address} {NAME}\n")
    for host in (h2, h1):  # h2 joins through the name; h1 learns h2 from its requests
        host.wait_for_status(
            lambda s: int(s["dht"]["routing_table"]) >= 1,
            timeout=TIMEOUT,
            what="a DHT contact",
        )
