"""The fleet harness: N machines on one LAN, each in its own network namespace with its own address
and dhtdeb on the default ports, a rate-capped mirror serving a Debian-shaped archive, and real
apt-get on every machine. Used by the tests under tests/fleet/ and by benchmarks (bench/).

Modules, one concern each:
- archive.py       the Debian-shaped archive (three signing keys, Debian's size distribution)
- netns.py         namespaces, veths, the bridge, tbf, nft, forwarding; names carry the PID
- cleanup.py       teardown at exit and on SIGTERM/SIGHUP
- mirror_process.py / mirror_host.py   the mirror in its namespace, and its remote control
- host.py          one machine: its daemon, its apt clients, requests from inside it
- fleet.py         the whole topology (`Fleet`)

Needs root (CI runs as root): without it a fleet raises FleetNeedsRoot, it never skips.
Outside pytest, put tests/ on sys.path first (bench/ scripts do), then:

    from fleet import ArchiveSpec, Fleet, build_archive
"""

from .archive import ArchivePackage, ArchiveSpec, FleetArchive, build_archive
from .fleet import DEFAULT_MIRROR_RATE, Fleet
from .host import FleetApt, FleetHost
from .mirror_host import MirrorBytes, MirrorHost
from .netns import NEEDS_ROOT, FleetError, FleetNeedsRoot, root_problem

__all__ = [
    "DEFAULT_MIRROR_RATE",
    "NEEDS_ROOT",
    "ArchivePackage",
    "ArchiveSpec",
    "Fleet",
    "FleetApt",
    "FleetArchive",
    "FleetError",
    "FleetHost",
    "FleetNeedsRoot",
    "MirrorBytes",
    "MirrorHost",
    "build_archive",
    "root_problem",
]
