"""`dhtdeb setup-apt`: point apt at dhtdeb with a fallback to direct downloads, or undo it.

Owns: two files — an apt.conf.d snippet that sets `Acquire::http::Proxy-Auto-Detect`, and the detect
program it names: a copy of `apt_proxy_detect.py` with the proxy URL and the interpreter filled in
(apt passes the program nothing but the URL it fetches, so the proxy URL has to live in the copy).
The program goes in first and is run once; the snippet is written only if it answered, because apt
fails every http download when its detect program cannot run.
Trusts: the operator's paths; files it did not write are left alone (`--undo` checks its marker).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import ConfigError

DEFAULT_APT_CONF_DIR = Path("/etc/apt/apt.conf.d")
# Read after most other parts (apt reads them in name order, the last value wins), so a proxy
# detector configured earlier does not quietly replace this one.
SNIPPET_NAME = "99dhtdeb-proxy"
DEFAULT_DETECT_PROGRAM = Path("/usr/local/lib/dhtdeb/apt-proxy-detect")
# The .deb ships the detect program with DEFAULT_URL (debian/rules); dpkg owns it: setup-apt uses
# it as it is and --undo leaves it in place.
PACKAGED_DETECT_PROGRAM = Path("/usr/libexec/dhtdeb/apt-proxy-detect")
DEFAULT_URL = "http://127.0.0.1:9977"
MARKER = "Written by `dhtdeb setup-apt`"
_TEMPLATE = Path(__file__).with_name("apt_proxy_detect.py")
_URL_LINE = 'PROXY_URL = "http://127.0.0.1:9977"'
_SYSTEM_PYTHON = Path("/usr/bin/python3")
_NAMED_PROGRAM = re.compile(r'^Acquire::http::Proxy-Auto-Detect "([^"]+)";$', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Change:
    """One file setup-apt looked at: what it did ("wrote", "unchanged", "removed", "absent",
    "packaged": the package's detect program, used or kept as it is)."""

    action: str
    path: Path
    content: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    changes: tuple[Change, ...]
    url: str = DEFAULT_URL
    # What the installed detect program answered just now (setup only).
    answer: str = ""
    warnings: tuple[str, ...] = ()


def normalise_url(url: str) -> str:
    """`http://HOST:PORT` (a trailing slash dropped); ConfigError for anything apt could not use."""
    from dhtdeb.apt_proxy_detect import split_http_url
    from dhtdeb.netaddr import parse_host_port

    text = url.strip().rstrip("/")
    if not text.lower().startswith("http://"):
        raise ConfigError(
            f"bad --url {url!r}: expected http://HOST:PORT (dhtdeb speaks plain http)"
        )
    authority = text[len("http://") :]
    if not authority or any(c in authority for c in '/@"\\ \t\n;{}'):
        raise ConfigError(f"bad --url {url!r}: expected http://HOST:PORT, no path")
    parse_host_port(authority, default_port=80)
    if split_http_url(text) is None:
        raise ConfigError(f"bad --url {url!r}: expected http://HOST:PORT")
    return "http://" + authority


def default_detect_program(url: str, packaged: Path = PACKAGED_DETECT_PROGRAM) -> Path:
    """The package's detect program when it is installed and answers for `url`, else the one
    setup-apt writes itself."""
    if normalise_url(url) == DEFAULT_URL and packaged.is_file():
        return packaged
    return DEFAULT_DETECT_PROGRAM


def snippet_text(detect_program: Path) -> str:
    return (
        f"// {MARKER}: apt asks the program below which proxy to use for each http host.\n"
        "// It answers dhtdeb's URL while dhtdeb is up and DIRECT otherwise; https is untouched.\n"
        "// Remove with `dhtdeb setup-apt --undo`.\n"
        f'Acquire::http::Proxy-Auto-Detect "{detect_program}";\n'
    )


def detect_program_text(url: str, interpreter: Path) -> str:
    source = _TEMPLATE.read_text()
    lines = source.splitlines(keepends=True)
    if not lines[0].startswith("#!") or source.count(_URL_LINE) != 1:
        raise ConfigError(f"{_TEMPLATE} is not the expected detect program")
    body = "".join(lines[1:]).replace(_URL_LINE, f"PROXY_URL = {url!r}  # {MARKER}")
    return f"#!{interpreter} -IS\n{body}"


def interpreter() -> Path:
    """Debian's python3 when present (readable by apt's sandbox user), else this one."""
    if os.access(_SYSTEM_PYTHON, os.X_OK):
        return _SYSTEM_PYTHON
    return Path(os.path.realpath(sys.executable))


def _write(path: Path, text: str, mode: int) -> Change:
    try:
        if path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == mode:
            return Change("unchanged", path, text)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {path}: {_reason(exc)}") from None
    temporary = path.with_name(f".{path.name}.dhtdeb-new")
    try:
        temporary.write_text(text)
        temporary.chmod(mode)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a read-only directory refuses the unlink too
            temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {_reason(exc)}{_as_root(exc)}") from None
    return Change("wrote", path, text)


def _remove(path: Path) -> Change:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Change("absent", path)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {path}: {_reason(exc)}") from None
    if MARKER not in text:
        raise ConfigError(f"{path} was not written by dhtdeb setup-apt; not removing it")
    try:
        path.unlink()
    except FileNotFoundError:
        return Change("absent", path)
    except OSError as exc:
        raise ConfigError(f"cannot remove {path}: {_reason(exc)}{_as_root(exc)}") from None
    return Change("removed", path)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _as_root(exc: OSError) -> str:
    return " (run as root?)" if isinstance(exc, PermissionError) and os.geteuid() != 0 else ""


def _check_conf_dir(apt_conf_dir: Path) -> None:
    if not apt_conf_dir.is_dir():
        raise ConfigError(
            f"{apt_conf_dir} is not a directory (is apt installed? see --apt-conf-dir)"
        )


def run_detect_program(path: Path, probe_url: str = "http://mirror.example/debian/") -> str:
    """Run the program as apt would; its one line, or ConfigError when apt could not use it."""
    try:
        done = subprocess.run(
            [str(path), probe_url], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {path}: {exc}") from None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 1 or done.stderr:
        raise ConfigError(
            f"{path} exited {done.returncode} with {done.stdout!r} {done.stderr!r}: "
            "apt could not use it"
        )
    return lines[0]


def _unreachable_by_others(path: Path) -> Path | None:
    """The first directory (or the file) on `path` that other users cannot get through: apt runs
    its methods, and so the detect program, as the unprivileged `_apt` user."""
    for part in [*reversed(path.parents), path]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return part
        needed = stat.S_IXOTH | (stat.S_IROTH if part == path else 0)
        if mode & needed != needed:
            return part
    return None


def _other_detectors(apt_conf_dir: Path, snippet: Path) -> list[Path]:
    found = []
    for part in sorted(apt_conf_dir.iterdir()):
        if part == snippet or not part.is_file():
            continue
        try:
            text = part.read_text(errors="replace").lower()
        except OSError:
            continue
        if "proxy-auto-detect" in text or "proxyautodetect" in text:
            found.append(part)
    return found


def setup(
    apt_conf_dir: Path = DEFAULT_APT_CONF_DIR,
    url: str = DEFAULT_URL,
    detect_program: Path = DEFAULT_DETECT_PROGRAM,
) -> Outcome:
    """Install the detect program and the snippet naming it; idempotent."""
    url = normalise_url(url)
    _check_conf_dir(apt_conf_dir)
    if not detect_program.is_absolute() or any(c in str(detect_program) for c in '"\n'):
        raise ConfigError(
            f"--detect-program must be an absolute path apt can quote: {detect_program}"
        )
    snippet = apt_conf_dir / SNIPPET_NAME
    try:
        detect_program.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {detect_program.parent}: {_reason(exc)}{_as_root(exc)}"
        ) from None
    if detect_program == PACKAGED_DETECT_PROGRAM and url != DEFAULT_URL:
        raise ConfigError(
            f"{detect_program} is the dhtdeb package's and answers {DEFAULT_URL} only; "
            "give --detect-program another path for another --url"
        )
    if detect_program == PACKAGED_DETECT_PROGRAM:
        program = Change("packaged", detect_program)
    else:
        program = _write(detect_program, detect_program_text(url, interpreter()), 0o755)
    try:
        answer = run_detect_program(detect_program)
    except ConfigError:
        if program.action == "wrote":
            detect_program.unlink(missing_ok=True)
        raise
    written = _write(snippet, snippet_text(detect_program), 0o644)
    warnings = [
        f"{other} also sets Proxy-Auto-Detect; {snippet.name} comes later and wins"
        if other.name < snippet.name
        else f"{other} also sets Proxy-Auto-Detect and overrides {snippet.name}: remove it"
        for other in _other_detectors(apt_conf_dir, snippet)
    ]
    blocked = _unreachable_by_others(detect_program)
    if blocked is not None:
        warnings.append(
            f"{blocked} is not readable/searchable by other users: apt's sandbox user _apt cannot "
            f"run {detect_program} (apt would fail every http download); use --detect-program "
            "in a world-readable place"
        )
    return Outcome((program, written), url, answer, tuple(warnings))


def undo(
    apt_conf_dir: Path = DEFAULT_APT_CONF_DIR,
    detect_program: Path = DEFAULT_DETECT_PROGRAM,
) -> Outcome:
    """Remove the snippet first (apt stops running the program), then the program it names and
    `detect_program`; idempotent."""
    _check_conf_dir(apt_conf_dir)
    snippet = apt_conf_dir / SNIPPET_NAME
    programs = [detect_program]
    try:
        named = _NAMED_PROGRAM.search(snippet.read_text())
    except (OSError, UnicodeError):
        named = None
    if named is not None and Path(named.group(1)) != detect_program:
        programs.insert(0, Path(named.group(1)))
    changes = [_remove(snippet)]
    changes += [
        Change("packaged", program) if program == PACKAGED_DETECT_PROGRAM else _remove(program)
        for program in programs
    ]
    return Outcome(changes=tuple(changes))


def describe(outcome: Outcome, *, undo: bool) -> list[str]:
    """What `dhtdeb setup-apt` prints: each file and what happened to it, then how apt behaves."""
    lines: list[str] = []
    for change in outcome.changes:
        if change.action == "wrote" and change.path.name == SNIPPET_NAME:
            lines.append(f"wrote {change.path}:")
            lines.extend("    " + line for line in change.content.splitlines())
        elif change.action == "wrote":
            lines.append(f"wrote {change.path} (the detect program apt runs per http host)")
        elif change.action == "packaged":
            lines.append(f"{change.path} is the dhtdeb package's detect program (left as it is)")
        elif change.action == "unchanged":
            lines.append(f"{change.path} is already in place, unchanged")
        elif change.action == "removed":
            lines.append(f"removed {change.path}")
        else:
            lines.append(f"{change.path} is not there (nothing to remove)")
    if undo:
        lines.append("apt no longer asks dhtdeb; http sources are fetched as before setup-apt.")
        return lines
    state = "dhtdeb answers now" if outcome.answer != "DIRECT" else "dhtdeb does not answer now"
    lines += [
        f"The detect program answers {outcome.answer} ({state}): while dhtdeb answers /health "
        f"within {_detect_timeout_ms()} ms apt fetches http:// sources through it, otherwise "
        "directly, so apt keeps working while dhtdeb is stopped.",
        "Only http:// sources go through dhtdeb; https:// sources are untouched.",
        "URL-prefix mode is for sources that cannot use a proxy: write them as "
        f"{outcome.url}/<mirror-host>/<path>; they have no direct fallback.",
        "Undo with: dhtdeb setup-apt --undo",
    ]
    return lines


def _detect_timeout_ms() -> int:
    from dhtdeb.apt_proxy_detect import TIMEOUT

    return round(TIMEOUT * 1000)
