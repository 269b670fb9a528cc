"""Fleet scenarios: what a fleet of machines running dhtdeb does on an `apt-get upgrade`, played on
the fleet harness and measured; shared by tests/fleet/test_fleet.py (which asserts) and
bench/fleet.py (which prints ratios).

Owns: the choreography of each scenario (which daemon starts when and how it joins, which apt runs
when, which daemon dies or which mirror goes down when), and what is measured on the way: apt's
wall time per host, the .deb bytes the mirror sent to each host's address (the mirror counts per
client address, see mirror_process.py), each daemon's /status.json byte counters, whether every
file apt ended with is the archive's, and the WARNING/ERROR lines of the daemons' logs.
Trusts: the harness (fleet.py, host.py, mirror_host.py) and nothing the daemons say about
correctness: files are checked against the archive's own SHA256s.

Every scenario takes a started `Fleet` whose hosts run no daemon yet and returns a frozen
`ScenarioResult`; none raises for what dhtdeb does wrong (a failed apt, a wrong file, a host that
never finds its peers): that is recorded for the caller to judge. Daemons run with default
settings, joined as README's "A fleet" says (`Join.BOOTSTRAP`: host 1 first, every other host
`--bootstrap <host 1>:9978`; LAN discovery stays on, as by default) or by LAN multicast alone
(`Join.LAN`: no --bootstrap anywhere).

- `staggered`: every daemon runs; host after host runs `apt-get update` and `apt-get
  --download-only -y upgrade` (every package installed at an older version); the next starts when
  the previous finished and its daemon has announced what it stored (polled: machines of a fleet
  upgrade minutes apart, not within the 0.1 s announce gathering), or `gap` seconds after the
  previous one started. `daemons_in_turn=True`: each daemon starts just before its host's turn
  (machines switched on one after another; host 1 upgrades alone).
- `classroom`: every host runs `update` first, then all upgrades start at the same moment.
- `killed`: host 1 holds part of the archive; host 2 upgrades from it and the mirror; while host 2
  is still downloading and hosts 3.. are fetching from it, its daemon is killed with SIGKILL.
  Hosts 3.. must finish on their own (other peers, the mirror); host 2's daemon restarts with the
  same state dir and host 2's apt runs again (resuming its partial file).
- `mirror_down`: every host runs `update` first (InRelease can only come from the mirror: it is
  what the trust chain starts from), host 1 upgrades, the mirror goes down, then the others
  upgrade one after another, from peers only.
- `direct`: the reference: one host's apt straight to the mirror, no daemon.
"""

from __future__ import annotations

import concurrent.futures
import enum
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support.apt import AptResult, ProxyMode, RunningApt

from .archive import ArchivePackage
from .fleet import Fleet
from .host import FleetApt, FleetHost
from .mirror_host import MirrorBytes

MiB = 1024 * 1024
PIECE = MiB  # dhtdeb/swarm/pieces.py: a one-piece file has no piece offers mid-download
APT_TIMEOUT = 600.0
JOIN_TIMEOUT = 30.0  # a daemon's DHT finding its first contacts
SETTLE_TIMEOUT = 30.0  # a daemon announcing the files it just stored
KILL_TIMEOUT = 120.0  # waiting for the moment to kill host 2
_LOG_LINES = 40  # WARNING/ERROR lines kept per host
T = TypeVar("T")


class Join(enum.Enum):
    """How the daemons find each other."""

    BOOTSTRAP = "bootstrap"  # host 1 first, the others --bootstrap <host 1>:9978 (+ LAN)
    LAN = "lan"  # no --bootstrap: LAN multicast discovery only


@dataclass(frozen=True, slots=True)
class HostOutcome:
    """One host's part in a scenario."""

    name: str
    address: str
    keys: tuple[str, ...]  # the archive keys it trusts (apt's signed-by and the daemon's)
    started: float  # when its upgrade started, seconds since the scenario's first upgrade
    seconds: float  # apt-get upgrade's wall time (the killed host: its last, complete run)
    update_seconds: float
    apt_ok: bool  # apt-get upgrade exited 0 (the killed host: its last run)
    correct: bool  # apt's archives/ holds exactly the archive's files, each with its SHA256
    problem: str  # why not (apt's output or the file check), "" when correct
    mirror_deb: int  # .deb body bytes the mirror sent to this host's address
    mirror_index: int  # index body bytes (InRelease, Packages, Translation, by-hash)
    from_peers: int  # the daemon's bytes.from_peers during the upgrade
    from_mirror: int  # the daemon's bytes.from_mirror during the upgrade
    to_peers: int  # the daemon's bytes.to_peers during the whole scenario
    waited: float = 0.0  # seconds spent waiting for the DHT (join, announces) before its upgrade
    wanted: int = 0  # .deb bytes its upgrade needs

    @property
    def finished(self) -> float:
        return self.started + self.seconds

    @property
    def peer_share(self) -> float:
        """Share of the .deb bytes it needed that the mirror did not send it."""
        return 1.0 - self.mirror_deb / self.wanted if self.wanted else 0.0


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    join: Join | None  # None: no daemons (direct)
    seed: int
    packages: int
    unique_deb: int  # the archive's .deb bytes, each file once
    hosts: tuple[HostOutcome, ...]
    mirror: MirrorBytes  # everything the mirror sent during the scenario
    # .deb bytes the mirror sent for one-piece files (<= 1 MiB: no piece offers) and what
    # those files weigh once each
    mirror_one_piece: int
    unique_one_piece: int
    # What left the mirror's link (its eth0 after tbf; IP and TCP headers included): the bytes
    # above count a body chunk once the mirror's socket took it, and when a daemon cuts a mirror
    # stream short what still sat in the socket's buffer is counted there but never sent.
    mirror_link: int
    # Share of this machine's CPU time that was busy from the first upgrade's start to the end.
    cpu_busy: float
    wall: float  # first upgrade start to last upgrade end
    log_lines: tuple[str, ...] = ()  # "h2: <WARNING/ERROR line>"
    notes: tuple[str, ...] = ()  # what did not go as planned (a join or settle timeout, ...)
    # killed: which host was killed, whether its apt was still downloading then, and when
    killed: str = ""
    killed_mid_download: bool = False
    killed_at: float = 0.0
    killed_to_peers: int = 0  # what the killed daemon had sent to peers when it died
    # mirror_down: .deb bytes the mirror sent and requests it got after it went down
    mirror_deb_after_down: int | None = None
    requests_after_down: int | None = None

    @property
    def correct(self) -> bool:
        return all(h.correct for h in self.hosts)

    @property
    def mirror_ratio(self) -> float:
        """Mirror .deb bytes / unique .deb bytes (1.00: each file once)."""
        return self.mirror.deb / self.unique_deb

    @property
    def one_piece_ratio(self) -> float:
        return self.mirror_one_piece / self.unique_one_piece if self.unique_one_piece else 0.0

    @property
    def multi_piece_ratio(self) -> float:
        unique = self.unique_deb - self.unique_one_piece
        return (self.mirror.deb - self.mirror_one_piece) / unique if unique else 0.0

    def host(self, name: str) -> HostOutcome:
        for outcome in self.hosts:
            if outcome.name == name:
                return outcome
        raise KeyError(name)

    def describe(self) -> str:
        """A few lines for a failing assertion or a benchmark's detail: seed, ratios, hosts."""
        lines = [
            f"scenario {self.scenario} (join {self.join.value if self.join else 'none'}, "
            f"seed {self.seed}): {self.packages} packages, {self.unique_deb} unique .deb bytes; "
            f"mirror sent .deb {self.mirror.deb} ({self.mirror_ratio:.3f}x), index "
            f"{self.mirror.index}; wall {self.wall:.1f} s; correct {self.correct}",
            f"  one-piece files (<= 1 MiB): mirror sent {self.mirror_one_piece} of "
            f"{self.unique_one_piece} unique ({self.one_piece_ratio:.2f}x); multi-piece: "
            f"{self.mirror.deb - self.mirror_one_piece} of "
            f"{self.unique_deb - self.unique_one_piece} ({self.multi_piece_ratio:.2f}x)",
            f"  mirror link: {self.mirror_link} bytes left its eth0 (headers included); CPU "
            f"{self.cpu_busy:.0%} busy during the upgrades",
        ]
        if self.killed:
            lines.append(
                f"  killed {self.killed} at t={self.killed_at:.1f} s (mid-download: "
                f"{self.killed_mid_download}, it had sent {self.killed_to_peers} B to peers)"
            )
        if self.mirror_deb_after_down is not None:
            lines.append(
                f"  after the mirror went down: {self.mirror_deb_after_down} .deb bytes, "
                f"{self.requests_after_down} requests"
            )
        for h in self.hosts:
            lines.append(
                f"  {h.name} keys={_short_keys(h.keys)} "
                f"start {h.started:6.1f} s apt {h.seconds:6.2f} s (update {h.update_seconds:.2f}, "
                f"waited {h.waited:.2f}) mirror .deb {h.mirror_deb} ({h.peer_share:.1%} not "
                f"from the mirror), daemon from_peers {h.from_peers} from_mirror "
                f"{h.from_mirror} to_peers {h.to_peers}"
                + ("" if h.correct else f" WRONG: {h.problem[-1500:]}")
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  log: {line}" for line in self.log_lines[:60]]
        return "\n".join(lines)


# --- the machinery common to every scenario -------------------------------------------------------


@dataclass
class _Run:
    """Bookkeeping of one scenario while it plays."""

    fleet: Fleet
    name: str
    join: Join | None
    seed: int
    t0: float = 0.0  # time.monotonic() of the first upgrade's start
    link0: int = 0  # the mirror link's transmitted bytes at the start
    cpu0: tuple[int, int] = (0, 0)  # (busy, total) jiffies at the first upgrade's start
    notes: list[str] = field(default_factory=list)
    apts: dict[str, FleetApt] = field(default_factory=dict)
    updates: dict[str, float] = field(default_factory=dict)
    waited: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, int]] = field(default_factory=dict)  # status bytes after update
    finals: dict[str, dict[str, int]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    results: dict[str, AptResult] = field(default_factory=dict)
    wanted: dict[str, tuple[ArchivePackage, ...]] = field(default_factory=dict)
    # bytes counted by a daemon's earlier lives (a killed daemon's counters restart at 0)
    carried: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def archive_packages(self) -> tuple[ArchivePackage, ...]:
        return self.fleet.archive.packages

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def apt(self, host: FleetHost, mode: ProxyMode = ProxyMode.HTTP_PROXY) -> FleetApt:
        if host.name not in self.apts:
            self.apts[host.name] = host.apt(mode=mode)
        return self.apts[host.name]

    def update(self, host: FleetHost, timeout: float) -> bool:
        result = self.apt(host).update(timeout=timeout)
        self.updates[host.name] = self.updates.get(host.name, 0.0) + result.seconds
        if not result.ok:
            self.notes.append(f"{host.name}: apt-get update failed: {result.output[-1500:]}")
        if host.daemon is not None:
            self.baselines[host.name] = _bytes(host)
        return result.ok

    def begin(self) -> None:
        """Zero the mirror's counters; note its link's counter."""
        self.fleet.mirror.reset()
        self.link0 = link_bytes(self.fleet)

    def start_clock(self) -> None:
        if not self.t0:
            self.t0 = time.monotonic()
            self.cpu0 = cpu_jiffies()

    def start_upgrade(
        self, host: FleetHost, packages: Sequence[ArchivePackage] | None = None
    ) -> RunningApt:
        self.start_clock()
        # A second run (the killed host's) counts from its own start.
        self.started[host.name] = self.now()
        self.wanted[host.name] = tuple(packages or self.archive_packages)
        return self.apt(host).start_upgrade(packages)

    def finish(self, host: FleetHost, running: RunningApt, timeout: float) -> AptResult:
        result = running.wait(timeout)
        self.results[host.name] = result
        if host.daemon is not None and host.daemon.running:
            self.finals[host.name] = _bytes(host)
        return result

    def upgrade(
        self, host: FleetHost, timeout: float, packages: Sequence[ArchivePackage] | None = None
    ) -> AptResult:
        return self.finish(host, self.start_upgrade(host, packages), timeout)

    def wait_joined(self, host: FleetHost, contacts: int) -> None:
        """Poll until the host's DHT routing table holds `contacts` nodes (a note if never)."""
        started = time.monotonic()
        try:
            host.wait_for_status(
                lambda s: int(s["dht"]["routing_table"]) >= contacts,
                timeout=JOIN_TIMEOUT,
                what=f"{contacts} DHT contacts",
            )
        except TimeoutError as exc:
            self.notes.append(f"{host.name}: DHT join: {exc}")
        self.waited[host.name] = self.waited.get(host.name, 0.0) + time.monotonic() - started

    def wait_announced(self, host: FleetHost, before: int, files: int, waiter: str) -> None:
        """Poll until the host has announced `files` more keys than `before` (time charged to
        `waiter`, the host that waits for it). `dht.announced` counts the keys in the daemon's
        announce schedule, whether or not a node accepted them: a daemon alone in its DHT
        reaches it too."""
        started = time.monotonic()
        try:
            host.wait_for_status(
                lambda s: int(s["dht"]["announced"]) >= before + files,
                timeout=SETTLE_TIMEOUT,
                what=f"{before + files} announced keys",
            )
        except TimeoutError as exc:
            self.notes.append(f"{host.name}: announces: {exc}")
        self.waited[waiter] = self.waited.get(waiter, 0.0) + time.monotonic() - started

    def outcomes(
        self, hosts: Iterable[FleetHost], mirror: dict[str, MirrorBytes]
    ) -> tuple[HostOutcome, ...]:
        result = []
        for host in hosts:
            apt = self.apts.get(host.name)
            run = self.results.get(host.name)
            wanted = self.wanted.get(host.name, ())
            problem = ""
            if run is None or apt is None:
                problem = "apt-get upgrade never ran"
            elif not run.ok:
                problem = run.output
            else:
                try:
                    apt.check_upgraded(wanted)
                except AssertionError as exc:
                    problem = str(exc)
            base = self.baselines.get(host.name, {})
            final = self.finals.get(host.name, {})
            carried = self.carried.get(host.name, {})
            delta = {
                key: carried.get(key, 0) + final.get(key, 0) - base.get(key, 0)
                for key in ("from_peers", "from_mirror")
            }

            sent = mirror.get(host.address, MirrorBytes(0, 0, 0))
            result.append(
                HostOutcome(
                    name=host.name,
                    address=host.address,
                    keys=host.keys,
                    started=self.started.get(host.name, 0.0),
                    seconds=run.seconds if run else 0.0,
                    update_seconds=self.updates.get(host.name, 0.0),
                    apt_ok=bool(run and run.ok),
                    correct=not problem,
                    problem=problem,
                    mirror_deb=sent.deb,
                    mirror_index=sent.index,
                    from_peers=delta["from_peers"],
                    from_mirror=delta["from_mirror"],
                    to_peers=carried.get("to_peers", 0) + final.get("to_peers", 0),
                    waited=self.waited.get(host.name, 0.0),
                    wanted=sum(p.size for p in wanted),
                )
            )
        return tuple(result)

    def result(self, hosts: Sequence[FleetHost], **extra: Any) -> ScenarioResult:
        for host in hosts:  # to_peers: what each served until the scenario's end
            if host.daemon is not None and host.daemon.running and host.name in self.finals:
                self.finals[host.name]["to_peers"] = _bytes(host).get("to_peers", 0)
        by_client = self.fleet.mirror.bytes_by_kind_and_client()
        outcomes = self.outcomes(hosts, by_client)
        one_piece = {p.filename: p.size for p in self.archive_packages if p.size <= PIECE}
        by_path = self.fleet.mirror.bytes_by_path()
        ends = [o.finished for o in outcomes if o.name in self.results]
        busy, total = cpu_jiffies()
        cpu = (busy - self.cpu0[0]) / max(1, total - self.cpu0[1])
        return ScenarioResult(
            scenario=self.name,
            join=self.join,
            seed=self.seed,
            packages=len(self.archive_packages),
            unique_deb=self.fleet.archive.total_bytes,
            hosts=outcomes,
            mirror=self.fleet.mirror.bytes_by_kind(),
            mirror_one_piece=sum(n for path, n in by_path.items() if path in one_piece),
            unique_one_piece=sum(one_piece.values()),
            mirror_link=link_bytes(self.fleet) - self.link0,
            cpu_busy=cpu,
            wall=max(ends, default=0.0) - min((o.started for o in outcomes), default=0.0),
            log_lines=tuple(log_problems(hosts)),
            notes=tuple(self.notes),
            **extra,
        )


def _bytes(host: FleetHost) -> dict[str, int]:
    """The daemon's byte counters and announce count (empty when it does not answer)."""
    try:
        status = host.status()
    except (OSError, ValueError):
        return {}
    counters = {k: int(v) for k, v in status.get("bytes", {}).items()}
    counters["announced"] = int(status.get("dht", {}).get("announced", 0))
    return counters


def link_bytes(fleet: Fleet) -> int:
    """Bytes the mirror's eth0 has transmitted (after its tbf), from its own namespace."""
    out = fleet.mirror.namespace.ip("-j", "-s", "link", "show", "dev", "eth0")
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of this machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def log_problems(hosts: Iterable[FleetHost], limit: int = _LOG_LINES) -> list[str]:
    """The WARNING, ERROR and CRITICAL lines (and tracebacks) of each host's daemon log."""
    found: list[str] = []
    for host in hosts:
        try:
            text = host.daemon_log.read_text(errors="replace")
        except FileNotFoundError:
            continue
        lines = [
            line
            for line in text.splitlines()
            if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        ]
        found += [f"{host.name}: {line}" for line in lines[:limit]]
        if len(lines) > limit:
            found.append(f"{host.name}: … {len(lines) - limit} more")
    return found


def start_daemons(run: _Run, hosts: Sequence[FleetHost], join: Join) -> None:
    """Host 1 first; the others at once, each with --bootstrap host 1 (Join.BOOTSTRAP) or
    nothing (Join.LAN). Then wait (polled) until each one's DHT knows a contact (Join.LAN: every
    other host, which is what multicast discovery promises on one segment)."""
    first, rest = hosts[0], hosts[1:]
    first.start_daemon()
    bootstrap = [first] if join is Join.BOOTSTRAP else []
    _parallel(lambda h: h.start_daemon(bootstrap=bootstrap), rest)
    wanted = 1 if join is Join.BOOTSTRAP else len(hosts) - 1
    for host in hosts if len(hosts) > 1 else ():
        run.wait_joined(host, wanted)


def _parallel(function: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
    """`function` on every item at once (one thread each); the results in order."""
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


# --- the scenarios --------------------------------------------------------------------------------


def staggered(
    fleet: Fleet,
    *,
    join: Join = Join.BOOTSTRAP,
    gap: float | None = None,
    daemons_in_turn: bool = False,
    seed: int = 0,
    apt_timeout: float = APT_TIMEOUT,
) -> ScenarioResult:
    """Host after host: `update`, then `upgrade`, every daemon running from the start. With `gap`
    None the next host starts when the previous one's upgrade finished and its daemon announced
    what it stored; with a gap, host k starts k * gap seconds after host 1 (they may overlap).

    `daemons_in_turn` (gap None only): a host's daemon starts just before its own turn, as
    machines switched on one after another, so host 1 upgrades while it is alone; host k waits
    (polled) until its DHT knows a contact (Join.LAN: all k - 1 running hosts)."""
    hosts = fleet.hosts
    name = "staggered" if join is Join.BOOTSTRAP else "lan-only"
    run = _Run(fleet, name + ("-in-turn" if daemons_in_turn else ""), join, seed)
    run.begin()
    files = len(fleet.archive.packages)
    if not daemons_in_turn:
        start_daemons(run, hosts, join)
    if gap is None:
        previous: FleetHost | None = None
        for number, host in enumerate(hosts):
            if daemons_in_turn:
                host.start_daemon(bootstrap=hosts[:1] if join is Join.BOOTSTRAP and number else ())
                if number:
                    run.wait_joined(host, 1 if join is Join.BOOTSTRAP else number)
            if previous is not None:
                before = run.baselines.get(previous.name, {}).get("announced", 0)
                run.wait_announced(previous, before, files, host.name)
            if run.update(host, apt_timeout):
                run.upgrade(host, apt_timeout)
            previous = host
        return run.result(hosts)
    if daemons_in_turn:
        raise ValueError("daemons_in_turn needs gap=None")
    run.t0 = time.monotonic()

    def one(numbered: tuple[int, FleetHost]) -> None:
        number, host = numbered
        delay = run.t0 + number * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the scenario's schedule (a fixed gap), not a synchronisation
        if run.update(host, apt_timeout):
            run.upgrade(host, apt_timeout)

    _parallel(one, list(enumerate(hosts)))
    return run.result(hosts)


def classroom(
    fleet: Fleet, *, join: Join = Join.BOOTSTRAP, seed: int = 0, apt_timeout: float = APT_TIMEOUT
) -> ScenarioResult:
    """Every host runs `update`, then every upgrade starts at the same moment."""
    hosts = fleet.hosts
    run = _Run(fleet, "classroom", join, seed)
    run.begin()
    start_daemons(run, hosts, join)
    updated = _parallel(lambda h: run.update(h, apt_timeout), hosts)
    ready = [h for h, ok in zip(hosts, updated, strict=True) if ok]
    running = [(h, run.start_upgrade(h)) for h in ready]
    _parallel(lambda h: run.finish(h, dict(running)[h], apt_timeout), [h for h, _ in running])
    return run.result(hosts)


def killed(
    fleet: Fleet,
    *,
    join: Join = Join.BOOTSTRAP,
    seed: int = 0,
    apt_timeout: float = APT_TIMEOUT,
    kill_after_served: int = 1 * MiB,
) -> ScenarioResult:
    """Host 1 upgrades about half of the small packages (chosen with `seed`), from the mirror.
    Host 2 upgrades everything: the rest comes from the mirror, so for a while host 2 is the
    only machine with those files. Once host 2 has some of them, hosts 3.. start their upgrades;
    once host 2's peer server has sent `kill_after_served` bytes to them, host 2's daemon gets
    SIGKILL. Hosts 3.. finish as they can; then host 2's daemon starts again with the same state
    dir and host 2's apt runs `upgrade` again (resuming its partial file)."""
    hosts = fleet.hosts
    if len(hosts) < 3:
        raise ValueError("the killed-host scenario needs at least 3 hosts")
    h1, h2, others = hosts[0], hosts[1], hosts[2:]
    run = _Run(fleet, "killed", join, seed)
    rng = random.Random(seed)
    small = [p for p in fleet.archive.packages if p.size <= MiB]
    first_part = tuple(p for p in small if rng.random() < 0.5)
    rest_bytes = fleet.archive.total_bytes - sum(p.size for p in first_part)
    run.begin()
    start_daemons(run, hosts, join)
    _parallel(lambda h: run.update(h, apt_timeout), hosts)
    announced = run.baselines.get(h1.name, {}).get("announced", 0)
    run.upgrade(h1, apt_timeout, first_part)
    run.wait_announced(h1, announced, len(first_part), h2.name)

    base2 = run.baselines.get(h2.name, {})
    upgrade2 = run.start_upgrade(h2)
    latest: dict[str, int] = dict(base2)

    def h2_has(key: str, amount: int) -> Callable[[dict[str, Any]], bool]:
        def check(status: dict[str, Any]) -> bool:
            latest.update({k: int(v) for k, v in status["bytes"].items()})
            return upgrade2.process.poll() is not None or (
                latest.get(key, 0) - base2.get(key, 0) >= amount
            )

        return check

    running: list[tuple[FleetHost, RunningApt]] = []
    try:
        # Host 2 holds files nobody else has once it got a few MiB from the mirror.
        h2.wait_for_status(h2_has("from_mirror", min(4 * MiB, rest_bytes // 8)), KILL_TIMEOUT)
        running += [(h, run.start_upgrade(h)) for h in others]
        h2.wait_for_status(h2_has("to_peers", kill_after_served), KILL_TIMEOUT)
    except TimeoutError as exc:
        run.notes.append(f"{h2.name}: the moment to kill never came: {exc}")
        running += [(h, run.start_upgrade(h)) for h in others if h.name not in run.started]
    mid_download = upgrade2.process.poll() is None
    killed_at = run.now()
    h2.kill_daemon()
    run.carried[h2.name] = {k: latest.get(k, 0) - base2.get(k, 0) for k in latest}
    run.carried[h2.name]["to_peers"] = latest.get("to_peers", 0)
    first_try = upgrade2.wait(apt_timeout)
    run.notes.append(
        f"{h2.name}: apt-get upgrade at the kill: exit {first_try.returncode} after "
        f"{first_try.seconds:.1f} s"
    )
    _parallel(lambda h: run.finish(h, dict(running)[h], apt_timeout), others)
    h2.restart_daemon()
    run.baselines[h2.name] = {}
    run.upgrade(h2, apt_timeout)
    return run.result(
        hosts,
        killed=h2.name,
        killed_mid_download=mid_download,
        killed_at=killed_at,
        killed_to_peers=latest.get("to_peers", 0),
    )


def mirror_down(
    fleet: Fleet, *, join: Join = Join.BOOTSTRAP, seed: int = 0, apt_timeout: float = APT_TIMEOUT
) -> ScenarioResult:
    """Every host runs `update` while the mirror is up (the signed InRelease, the root of the
    chain, exists only there), host 1 upgrades, its daemon announces, the mirror goes down, and
    the other hosts upgrade one after another."""
    hosts = fleet.hosts
    run = _Run(fleet, "mirror-down", join, seed)
    run.begin()
    start_daemons(run, hosts, join)
    _parallel(lambda h: run.update(h, apt_timeout), hosts)
    files = len(fleet.archive.packages)
    previous = hosts[0]
    run.upgrade(previous, apt_timeout)
    deb_before = fleet.mirror.deb_bytes()
    requests_before = len(fleet.mirror.requests())
    fleet.mirror.down()
    try:
        for host in hosts[1:]:
            before = run.baselines.get(previous.name, {}).get("announced", 0)
            run.wait_announced(previous, before, files, host.name)
            run.upgrade(host, apt_timeout)
            previous = host
        after = fleet.mirror.deb_bytes() - deb_before
        requests_after = len(fleet.mirror.requests()) - requests_before
    finally:
        fleet.mirror.up()
    return run.result(hosts, mirror_deb_after_down=after, requests_after_down=requests_after)


def first_host(
    fleet: Fleet, *, join: Join = Join.BOOTSTRAP, seed: int = 0, apt_timeout: float = APT_TIMEOUT
) -> ScenarioResult:
    """Every daemon up on default settings, only host 1 upgrades: nobody holds any file, so
    every lookup finds nothing and the mirror serves it all (what the DHT costs a lone host)."""
    hosts = fleet.hosts
    run = _Run(fleet, "first-host", join, seed)
    run.begin()
    start_daemons(run, hosts, join)
    first = hosts[0]
    if run.update(first, apt_timeout):
        run.upgrade(first, apt_timeout)
    return run.result([first])


def direct(
    fleet: Fleet, *, host: int = 1, seed: int = 0, apt_timeout: float = APT_TIMEOUT
) -> ScenarioResult:
    """One host, no daemon: apt straight to the mirror (`update`, then the same `upgrade`)."""
    chosen = fleet.host(host)
    run = _Run(fleet, "direct", None, seed)
    run.begin()
    run.apt(chosen, ProxyMode.DIRECT)
    if run.update(chosen, apt_timeout):
        run.upgrade(chosen, apt_timeout)
    return run.result([chosen])


SCENARIOS: dict[str, Callable[..., ScenarioResult]] = {
    "staggered": staggered,
    "classroom": classroom,
    "killed": killed,
    "mirror-down": mirror_down,
    "direct": direct,
    "first-host": first_host,
}


def _short_keys(keys: Sequence[str]) -> str:
    """ "bookworm-automatic" -> "bw-auto" etc., for one-line host descriptions."""
    words = {"bookworm": "bw", "trixie": "tx", "automatic": "auto"}
    return "+".join("-".join(words.get(w, w) for w in k.split("-")) for k in keys)
