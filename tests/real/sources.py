"""This machine's apt sources, reduced to the Debian entries `make check-real` runs against.

Owns: parsing both formats apt reads (one-line `sources.list` / `*.list`, deb822 `*.sources`),
and the rule that keeps an entry: `deb` (not deb-src), `http://` (dhtdeb is an HTTP proxy; apt
talks TLS to an https mirror itself), an archive named `debian` or `debian-security` (Debian's
own layout), no `signed-by` other than Debian's archive keyrings, enabled, with the `main`
component. Every other entry is skipped with a reason the check prints.
Trusts: nothing; the texts are parsed as untrusted input and a malformed entry is skipped, not
raised. No mirror is named here: the check reads it at run time.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ETC_APT = Path("/etc/apt")
# The last path component of a Debian archive's URI (Debian's mirrors and its security archive).
DEBIAN_ARCHIVES = ("debian", "debian-security")
DEBIAN_KEYRING = re.compile(r"^/usr/share/keyrings/debian-archive-[^/]*\.(?:gpg|asc|pgp)$")
_EMBEDDED_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One `Types x URIs x Suites` combination as apt reads it, before any judgement."""

    type: str  # "deb" or "deb-src"
    uri: str
    suite: str
    components: tuple[str, ...]
    where: str  # "file:line", for messages
    signed_by: str | None = None
    architectures: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return " ".join((self.type, self.uri, self.suite, *self.components))


@dataclass(frozen=True, slots=True)
class Skipped:
    where: str
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text} -- skipped: {self.reason}"


@dataclass(frozen=True, slots=True)
class DebianSource:
    """A Debian suite to check: `uri` without a trailing slash, e.g. http://HOST/debian."""

    uri: str
    suite: str
    components: tuple[str, ...]

    @property
    def archive(self) -> str:
        """The archive's name: debian or debian-security."""
        return urllib.parse.urlsplit(self.uri).path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def in_release_url(self) -> str:
        return f"{self.uri}/dists/{self.suite}/InRelease"

    @property
    def sources_line(self) -> str:
        return f"{self.uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True, slots=True)
class AptSources:
    debian: tuple[DebianSource, ...]
    skipped: tuple[Skipped, ...] = ()
    files: tuple[str, ...] = field(default=())

    def release(self) -> DebianSource | None:
        """The suite debootstrap can install: on a `debian` archive, a release (no -updates,
        -security, -backports suffix) if there is one."""
        mirrors = [s for s in self.debian if s.archive == "debian"]
        plain = [s for s in mirrors if "-" not in s.suite and "/" not in s.suite]
        candidates = plain or mirrors
        return candidates[0] if candidates else None


# --- one-line format ------------------------------------------------------------------------------


def parse_one_line(text: str, origin: str) -> Iterator[SourceEntry | Skipped]:
    """`type [options] uri suite [component…]` per line; `#` starts a comment anywhere."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{number}"
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                yield Skipped(where, line, "malformed options: no closing ]")
                continue
            options = _options(rest[1:end])
            rest = rest[end + 1 :]
        words = rest.split()
        if len(words) < 2:
            yield Skipped(where, line, "malformed: needs a URI and a suite")
            continue
        uri, suite, *components = words
        yield SourceEntry(
            type=kind,
            uri=uri,
            suite=suite,
            components=tuple(components),
            where=where,
            signed_by=options.get("signed-by"),
            architectures=_words(options.get("arch", "")),
        )


def _options(text: str) -> dict[str, str]:
    """`arch=amd64,arm64 signed-by=/path` -> {"arch": "amd64,arm64", "signed-by": "/path"};
    `arch+=` and `arch-=` count as `arch`."""
    options: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep:
            options[key.rstrip("+-").lower()] = value
    return options


def _words(value: str) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s,]+", value) if w)


# --- deb822 format --------------------------------------------------------------------------------


def parse_deb822(text: str, origin: str) -> Iterator[SourceEntry | Skipped]:
    """Stanzas separated by blank lines; `#` lines are comments (also inside a stanza); a line
    starting with a space continues the field above (an embedded Signed-By key)."""
    for where, fields in _stanzas(text, origin):
        if isinstance(fields, Skipped):
            yield fields
            continue
        types = fields.get("types", "").split()
        uris = fields.get("uris", "").split()
        suites = fields.get("suites", "").split()
        summary = f"Types: {' '.join(types)} URIs: {' '.join(uris)} Suites: {' '.join(suites)}"
        if not (types and uris and suites):
            yield Skipped(where, summary, "malformed: needs Types, URIs and Suites")
            continue
        if fields.get("enabled", "yes").strip().lower() == "no":
            yield Skipped(where, summary, "disabled (Enabled: no)")
            continue
        for kind in types:
            for uri in uris:
                for suite in suites:
                    yield SourceEntry(
                        type=kind,
                        uri=uri,
                        suite=suite,
                        components=tuple(fields.get("components", "").split()),
                        where=where,
                        signed_by=fields.get("signed-by"),
                        architectures=_words(fields.get("architectures", "")),
                    )


def _stanzas(text: str, origin: str) -> Iterator[tuple[str, dict[str, str] | Skipped]]:
    fields: dict[str, str] = {}
    start = 0
    last: str | None = None
    broken: Skipped | None = None
    for number, raw in enumerate([*text.splitlines(), ""], 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields or broken:
                yield f"{origin}:{start}", broken or fields
            fields, last, broken = {}, None, None
            continue
        if not fields and broken is None:
            start = number
        if raw[0] in " \t":
            if last is None:
                broken = broken or Skipped(f"{origin}:{number}", raw.strip(), "malformed stanza")
            else:
                fields[last] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            broken = broken or Skipped(f"{origin}:{number}", raw.strip(), "malformed stanza")
            continue
        last = key.strip().lower()
        fields[last] = value.strip()


# --- which entries are Debian's -------------------------------------------------------------------


def skip_reason(entry: SourceEntry, arch: str) -> str | None:
    """Why the check does not run against `entry` (None: it is an http:// Debian suite)."""
    if entry.type != "deb":
        return f"{entry.type}: only binary packages (deb) are checked"
    parts = urllib.parse.urlsplit(entry.uri)
    if parts.scheme == "https":
        return "https: apt talks TLS to this mirror itself, dhtdeb proxies http:// only"
    if parts.scheme != "http" or not parts.netloc:
        return f"not an http:// mirror ({parts.scheme or 'no scheme'})"
    if entry.suite.endswith("/"):
        return "flat repository: not a Debian archive"
    if parts.path.rstrip("/").rsplit("/", 1)[-1] not in DEBIAN_ARCHIVES:
        return "third-party repository (not a .../debian or .../debian-security archive)"
    if entry.signed_by is not None:
        if _EMBEDDED_KEY in entry.signed_by:
            return "third-party: signed by a key embedded in the entry"
        others = [k for k in _words(entry.signed_by) if not DEBIAN_KEYRING.match(k)]
        if others:
            return f"third-party: signed by {', '.join(others)}"
    if entry.architectures and arch not in entry.architectures:
        return f"not for {arch} (architectures {','.join(entry.architectures)})"
    if "main" not in entry.components:
        return "no main component"
    return None


def select_debian(entries: Iterable[SourceEntry | Skipped], arch: str) -> AptSources:
    """Debian suites in order of appearance (one per URI and suite, components merged), and what
    was skipped."""
    found: dict[tuple[str, str], list[str]] = {}
    skipped: list[Skipped] = []
    for entry in entries:
        if isinstance(entry, Skipped):
            skipped.append(entry)
            continue
        reason = skip_reason(entry, arch)
        if reason is not None:
            skipped.append(Skipped(entry.where, entry.text, reason))
            continue
        components = found.setdefault((entry.uri.rstrip("/"), entry.suite), [])
        components += [c for c in entry.components if c not in components]
    debian = tuple(DebianSource(uri, suite, tuple(c)) for (uri, suite), c in found.items())
    return AptSources(debian, tuple(skipped))


def source_files(etc_apt: Path = ETC_APT) -> list[Path]:
    """The files apt reads, in its order: sources.list, then sources.list.d/*.list and *.sources
    sorted by name (other names, e.g. *.disabled, apt ignores)."""
    files = [etc_apt / "sources.list"] if (etc_apt / "sources.list").is_file() else []
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        files += sorted(
            p for p in parts.iterdir() if p.is_file() and p.suffix in (".list", ".sources")
        )
    return files


def read_apt_sources(arch: str, files: Sequence[Path] | None = None) -> AptSources:
    """The Debian suites of this machine's apt sources (`files` default: `source_files()`)."""
    paths = source_files() if files is None else list(files)
    entries: list[SourceEntry | Skipped] = []
    for path in paths:
        text = path.read_text(errors="replace")
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        entries += parse(text, str(path))
    selected = select_debian(entries, arch)
    return AptSources(selected.debian, selected.skipped, tuple(str(p) for p in paths))
