"""Kernel objects of the fleet harness: network namespaces, veth links, a bridge, tc shaping, an nft
NAT table and the IPv4 forwarding switch of the root namespace.

Owns: every such object a fleet creates, and their removal. Each one is named after a `Tag`, which
carries the creating process's PID (`dhtfleet<pid>x<serial>-<role>` for namespaces,
`dfl<pid>x<serial>u` for the one link in the root namespace, table `dhtfleet<pid>x<serial>`), so
that `sweep_dead_runs` can remove what a dead run left behind without touching a live run's.
Trusts: iproute2 (`ip`, `tc`) and `nft` on PATH, root, and a kernel with veth, bridge and tbf.

Nothing here knows about dhtdeb, apt or the mirror: it is plumbing, used by fleet.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

NEEDS_ROOT = "fleet tests need root: they create network namespaces"
NS_PREFIX = "dhtfleet"
LINK_PREFIX = "dfl"
NETNS_DIR = Path("/run/netns")
# Per-namespace files that `ip netns exec` bind-mounts over /etc (a test's /etc/hosts): on disk,
# so a crashed run's outlive a reboot, which empties /run/netns.
ETC_NETNS_DIR = Path("/etc/netns")
# What a run with an uplink changed in the root namespace's sysctls, for sweeping after a crash.
LEDGER_DIR = Path("/run/dhtdeb-fleet")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_COMMAND_TIMEOUT = 30.0
_KILL_TIMEOUT = 10.0
_POLL = 0.01
_TAG = re.compile(rf"^(?:{NS_PREFIX}|{LINK_PREFIX})(\d+)x(\d+)")
_CLONE_NEWNET = 0x40000000
_serial = 0
_serial_lock = threading.Lock()

T = TypeVar("T")


class FleetError(RuntimeError):
    """A command that builds or tears down the fleet's network failed."""


class FleetNeedsRoot(FleetError):
    """Not root: fleet tests fail (never skip) with `NEEDS_ROOT`."""


# --- preconditions --------------------------------------------------------------------------------


def root_problem(euid: int) -> str | None:
    """Why a process with this effective uid cannot run a fleet (None: it can)."""
    return None if euid == 0 else f"{NEEDS_ROOT} (running as uid {euid})"


def require_root() -> None:
    problem = root_problem(os.geteuid())
    if problem is not None:
        raise FleetNeedsRoot(problem)


def missing_tools(uplink: bool) -> list[str]:
    """What to install for a fleet: each entry names the command and the Debian package."""
    missing = []
    for command, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(command) is None:
            missing.append(f"{command} (apt-get install {package})")
    if uplink and shutil.which("nft") is None:
        missing.append("nft, for the uplink's NAT (apt-get install nftables)")
    return missing


def require_tools(uplink: bool) -> None:
    missing = missing_tools(uplink)
    if missing:
        raise FleetError("the fleet harness needs: " + "; ".join(missing))


# --- names ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Tag:
    """The name stem of everything one fleet creates."""

    pid: int
    serial: int

    @classmethod
    def new(cls) -> Tag:
        global _serial
        with _serial_lock:
            _serial += 1
            return cls(os.getpid(), _serial)

    @classmethod
    def parse(cls, name: str) -> Tag | None:
        match = _TAG.match(name)
        return None if match is None else cls(int(match.group(1)), int(match.group(2)))

    @property
    def stem(self) -> str:
        return f"{NS_PREFIX}{self.pid}x{self.serial}"

    def netns(self, role: str) -> str:
        return f"{self.stem}-{role}"

    @property
    def root_link(self) -> str:
        """The uplink's end in the root namespace (interface names have at most 15 bytes)."""
        name = f"{LINK_PREFIX}{self.pid}x{self.serial}u"
        if len(name) > 15:
            raise FleetError(f"interface name {name} is too long (serial {self.serial})")
        return name

    @property
    def nft_table(self) -> str:
        return self.stem

    def owns(self, name: str) -> bool:
        return Tag.parse(name) == self

    def alive(self) -> bool:
        """Whether the process that made this tag still runs."""
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


# --- commands -------------------------------------------------------------------------------------


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = _COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise FleetError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return run([*prefix, *args], check=check).stdout


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class Namespace:
    """One named network namespace (`ip netns add`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @classmethod
    def create(cls, name: str) -> Namespace:
        run(["ip", "netns", "add", name])
        namespace = cls(name)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Put this in front of a command line to run it in the namespace (`ip netns exec`
        execs the command: the process id is the command's own)."""
        return ("ip", "netns", "exec", self.name)

    def ip(self, *args: str, check: bool = True) -> str:
        return ip(*args, netns=self.name, check=check)

    def tc(self, *args: str, check: bool = True) -> str:
        return run(["tc", "-n", self.name, *args], check=check).stdout

    def sysctl(self, key: str, value: str) -> None:
        run([*self.exec_prefix, "sysctl", "-q", "-w", f"{key}={value}"])

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = _COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.exec_prefix, *argv], check=check, timeout=timeout)

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` in a thread that has entered this namespace, and return its result.

        Sockets it opens belong to the namespace (and keep working when used from elsewhere);
        files and the rest of the process are unaffected: setns(CLONE_NEWNET) changes only the
        calling thread, which ends with the call."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                fd = os.open(NETNS_DIR / self.name, os.O_RDONLY)
                try:
                    _libc_setns(fd)
                finally:
                    os.close(fd)
                box["value"] = function()
            except BaseException as exc:  # handed to the calling thread
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"netns:{self.name}", daemon=True)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def pids(self) -> list[int]:
        result = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit()]

    def kill_all(self, timeout: float = _KILL_TIMEOUT) -> None:
        """SIGKILL every process in the namespace and wait until none is left."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in pids:
                _reap(pid)
            if time.monotonic() >= deadline:
                raise FleetError(f"processes {pids} in {self.name} survive SIGKILL")
            time.sleep(_POLL)  # polling for the kernel to finish killing, with a deadline

    def delete(self) -> None:
        self.kill_all()
        run(["ip", "netns", "delete", self.name], check=False)
        # `ip netns exec` reads /etc/netns/<name>/ if it exists (a test may write its hosts file
        # there): it goes with the namespace.
        shutil.rmtree(ETC_NETNS_DIR / self.name, ignore_errors=True)


def _reap(pid: int) -> None:
    """Collect a killed child of ours so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- links, bridge, shaping -----------------------------------------------------------------------


def add_bridge(namespace: Namespace, name: str) -> None:
    """A bridge that forwards at once (no STP) and floods multicast to every port: with IGMP
    snooping on and no querier on the segment, group traffic can stop reaching members."""
    namespace.ip(
        "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0",
        "mcast_snooping", "0",
    )  # fmt: skip
    namespace.ip("link", "set", name, "up")


def add_veth(
    a: Namespace | None, a_name: str, b: Namespace, b_name: str, *, a_master: str | None = None
) -> None:
    """A veth pair with one end `a_name` in `a` (None: the root namespace), enslaved to bridge
    `a_master` if given, and the other end `b_name` in `b`. Both ends are set up."""
    ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name,
       netns=a.name if a else None)  # fmt: skip
    if a_master is not None:
        ip("link", "set", a_name, "master", a_master, netns=a.name if a else None)
    ip("link", "set", a_name, "up", netns=a.name if a else None)
    b.ip("link", "set", b_name, "up")


def shape(namespace: Namespace | None, device: str, rate: int) -> None:
    """Cap what `device` sends to `rate` bytes/s with a token bucket (tbf): a real link's
    speed (the kernel has no netem here). The bucket holds 20 ms of traffic (at least 64 KiB,
    so a GSO packet always fits) and the queue 50 ms."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    burst = max(rate // 50, 64 * 1024)
    argv = ["qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{rate * 8}bit"]
    argv += ["burst", str(burst), "latency", "50ms"]
    if namespace is None:
        run(["tc", *argv])
    else:
        namespace.tc(*argv)


# --- the root namespace: uplink, NAT, forwarding --------------------------------------------------


@contextlib.contextmanager
def root_lock() -> Iterator[None]:
    """Serialise changes to the root namespace between concurrent runs (two fleets with an
    uplink must not pick the same free network)."""
    LEDGER_DIR.mkdir(parents=True, exist_ok=True)
    with (LEDGER_DIR / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Networks the root namespace routes to (so that an uplink's network avoids them)."""
    networks = []
    for line in ip("-4", "route", "show").splitlines():
        first = line.split()[0] if line.split() else ""
        if first == "default":
            continue
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.IPv4Network(first, strict=False))
    return networks


def add_nat(tag: Tag, network: ipaddress.IPv4Network, uplink: str) -> None:
    """An nft table of the fleet's own that masquerades the fleet's traffic leaving the root
    namespace by any interface but the uplink itself."""
    table = tag.nft_table
    run(["nft", "add", "table", "ip", table])
    run(["nft", "add", "chain", "ip", table, "post",
         "{ type nat hook postrouting priority 100 ; }"])  # fmt: skip
    run(["nft", "add", "rule", "ip", table, "post", "ip", "saddr", str(network),
         "oifname", "!=", uplink, "masquerade"])  # fmt: skip


def nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    result = run(["nft", "list", "tables"], check=False)
    return [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("table ")]


def _ledgers() -> dict[Tag, str]:
    found: dict[Tag, str] = {}
    for path in LEDGER_DIR.glob("*.json") if LEDGER_DIR.is_dir() else ():
        tag = Tag.parse(path.stem)
        if tag is None:
            continue
        try:
            found[tag] = str(json.loads(path.read_text())["ip_forward_before"])
        except (OSError, ValueError, KeyError):
            continue
    return found


def enable_ip_forward(tag: Tag) -> None:
    """Turn on IPv4 forwarding in the root namespace, noting the value to restore: the one
    before the first live fleet with an uplink turned it on."""
    others = {t: v for t, v in _ledgers().items() if t != tag and t.alive()}
    before = next(iter(others.values())) if others else IP_FORWARD.read_text().strip()
    LEDGER_DIR.mkdir(parents=True, exist_ok=True)
    path = LEDGER_DIR / f"{tag.stem}.json"
    path.write_text(json.dumps({"ip_forward_before": before, "pid": tag.pid}) + "\n")
    IP_FORWARD.write_text("1\n")


def release_ip_forward(tag: Tag) -> None:
    """Forget `tag`'s use of forwarding; the last fleet using it restores the old value."""
    ledgers = _ledgers()
    mine = ledgers.pop(tag, None)
    (LEDGER_DIR / f"{tag.stem}.json").unlink(missing_ok=True)
    if mine is None:
        return
    if not any(t.alive() for t in ledgers):
        IP_FORWARD.write_text(mine + "\n")


def ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


# --- removal --------------------------------------------------------------------------------------


def namespaces() -> list[str]:
    """Every named network namespace: the files `ip netns add` mounts in /run/netns (read
    directly: `ip netns list` complains about namespaces being deleted while it lists)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def etc_dirs() -> list[str]:
    """The namespaces' directories of /etc files (ETC_NETNS_DIR)."""
    try:
        return sorted(os.listdir(ETC_NETNS_DIR))
    except FileNotFoundError:
        return []


def root_links() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        # "7: dfl123x1u@if6: <BROADCAST,…"
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What exists of one tag: the self-test asserts this is empty after a fleet is gone."""

    namespaces: tuple[str, ...]
    links: tuple[str, ...]
    nft_tables: tuple[str, ...]
    ledger: bool
    etc_dirs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.namespaces or self.links or self.nft_tables or self.ledger or self.etc_dirs
        )


def leftovers(tag: Tag) -> Leftovers:
    return Leftovers(
        namespaces=tuple(n for n in namespaces() if tag.owns(n)),
        links=tuple(n for n in root_links() if tag.owns(n)),
        nft_tables=tuple(t for t in nft_tables() if tag.owns(t)),
        ledger=(LEDGER_DIR / f"{tag.stem}.json").exists(),
        etc_dirs=tuple(n for n in etc_dirs() if tag.owns(n)),
    )


def remove_tag(tag: Tag) -> list[str]:
    """Remove everything named after `tag`: processes in its namespaces first (a namespace with
    a process in it outlives `ip netns delete`), then the root link, the nft table, the
    namespaces (their veths and bridge go with them), and restore forwarding. Carries on past
    failures and returns them, so that one stuck object does not keep the others alive."""
    errors: list[str] = []
    owned = [Namespace(n) for n in namespaces() if tag.owns(n)]
    for namespace in owned:
        try:
            namespace.kill_all()
        except FleetError as exc:
            errors.append(str(exc))
    link = f"{LINK_PREFIX}{tag.pid}x{tag.serial}u"
    if link in root_links():
        result = run(["ip", "link", "delete", link], check=False)
        if result.returncode != 0 and link in root_links():
            errors.append(f"ip link delete {link}: {result.stderr.strip()}")
    if tag.nft_table in nft_tables():
        result = run(["nft", "delete", "table", "ip", tag.nft_table], check=False)
        if result.returncode != 0:
            errors.append(f"nft delete table {tag.nft_table}: {result.stderr.strip()}")
    for namespace in owned:
        try:
            namespace.delete()
        except FleetError as exc:
            errors.append(str(exc))
    for name in etc_dirs():  # also of namespaces a reboot took
        if tag.owns(name):
            shutil.rmtree(ETC_NETNS_DIR / name, ignore_errors=True)
    try:
        release_ip_forward(tag)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            errors.append(f"restoring ip_forward: {exc}")
    return errors


def sweep_dead_runs() -> list[Tag]:
    """Remove what fleets of processes that no longer exist left behind (killed with SIGKILL,
    a crashed interpreter); returns their tags. Live runs, this one included, are untouched."""
    tags: set[Tag] = set()
    for name in [*namespaces(), *root_links(), *nft_tables(), *etc_dirs()]:
        tag = Tag.parse(name)
        if tag is not None:
            tags.add(tag)
    tags.update(_ledgers())
    dead = sorted(t for t in tags if not t.alive())
    for tag in dead:
        remove_tag(tag)
    return dead
