"""dhtdeb on a fleet, end to end: two machines on one LAN, each with its daemon on the default
ports, real apt on each going through its own daemon.

Asserts only what must hold whatever the daemon's peer logic does (apt succeeds, the files are the
archive's); how much the mirror was spared is printed, not asserted.
"""

from __future__ import annotations

import json

from .conftest import FleetFactory


def test_two_hosts_fetch_through_their_own_daemons(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(hosts=2)
    h1, h2 = fleet.hosts
    h1.start_daemon()
    h2.start_daemon(bootstrap=[h1])
    wanted = fleet.archive.smallest(20)
    names = [p.name for p in wanted]
    unique = sum(p.size for p in wanted)
    sent: dict[str, int] = {}
    notes: list[str] = []
    for host in (h1, h2):
        apt = host.apt()
        apt.update().check()
        before = fleet.mirror.deb_bytes()
        apt.download(names).check()
        apt.check_downloaded(wanted)
        sent[host.name] = fleet.mirror.deb_bytes() - before
        if host is h1:
            # The daemon gathers announces for a moment (apt's batches); h2 asks only once h1
            # has told the DHT, so that the numbers below say whether peers were used at all.
            try:
                h1.wait_for_status(lambda s: s["dht"]["announced"] >= len(wanted), timeout=10)
            except TimeoutError as exc:
                notes.append(f"h1 had not announced its files: {exc}")
    total = fleet.mirror.bytes_by_kind()
    print(
        f"\nfleet smoke: {len(wanted)} packages, {unique} unique .deb bytes; mirror sent "
        f".deb bytes h1 {sent['h1']}, h2 {sent['h2']} (total {total.deb} = "
        f"{total.deb / unique:.2f}x unique), index bytes {total.index}"
    )
    for host in (h1, h2):
        print(f"{host.name} status: {json.dumps(host.status(), sort_keys=True)}")
    for note in notes:
        print(note)
