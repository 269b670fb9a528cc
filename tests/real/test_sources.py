"""Reading apt sources for `make check-real`: both formats, what is kept, what is skipped and why.
Pure parsing of sample texts (the hosts are example names); runs in the normal suite."""

from __future__ import annotations

from pathlib import Path

from .sources import (
    DebianSource,
    Skipped,
    SourceEntry,
    parse_deb822,
    parse_one_line,
    read_apt_sources,
    select_debian,
    source_files,
)

DEB822 = """\
# Debian's own entries, as the installer writes them
Types: deb
# a comment inside a stanza does not end it
URIs: http://mirror-a.example.org/debian http://mirror-b.example.net/debian/
Suites: bookworm bookworm-updates
Components: main contrib non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror-a.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror-a.example.org/debian
Suites: bookworm-backports
Components: main
Enabled: no

Types: deb
URIs: https://secure.example.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://vendor.example.com/debian
Suites: stable
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGRhc2RmAAAAAAAAAAAAAAAAAAAAAAAA
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
deb http://mirror-a.example.org/debian bookworm main contrib  # trailing comment
# deb http://mirror-a.example.org/debian bookworm-proposed-updates main
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] \
http://mirror-a.example.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/vendor.gpg] http://vendor.example.com/debian stable main
deb [arch=arm64] http://mirror-a.example.org/debian bookworm-updates main
deb http://apt.example.com/tools nodistro main
deb https://secure.example.org/debian bookworm main
deb-src http://mirror-a.example.org/debian bookworm main
deb http://mirror-a.example.org/debian ./
deb [arch=amd64
deb http://mirror-a.example.org/debian
deb cdrom:[Debian 12]/ bookworm main
"""


def reasons(skipped: tuple[Skipped, ...]) -> dict[str, str]:
    return {s.text: s.reason for s in skipped}


def test_deb822_expands_uris_and_suites_and_skips_the_rest() -> None:
    sources = select_debian(parse_deb822(DEB822, "debian.sources"), "amd64")
    main = ("main", "contrib", "non-free-firmware")
    assert sources.debian == (
        DebianSource("http://mirror-a.example.org/debian", "bookworm", main),
        DebianSource("http://mirror-a.example.org/debian", "bookworm-updates", main),
        DebianSource("http://mirror-b.example.net/debian", "bookworm", main),
        DebianSource("http://mirror-b.example.net/debian", "bookworm-updates", main),
        DebianSource("http://mirror-a.example.org/debian-security", "bookworm-security", ("main",)),
    )
    why = reasons(sources.skipped)
    assert why["deb-src http://mirror-a.example.org/debian-security bookworm-security main"] == (
        "deb-src: only binary packages (deb) are checked"
    )
    disabled = "Types: deb URIs: http://mirror-a.example.org/debian Suites: bookworm-backports"
    assert why[disabled] == "disabled (Enabled: no)"
    assert why["deb https://secure.example.org/debian bookworm main"].startswith("https:")
    assert why["deb http://vendor.example.com/debian stable main"] == (
        "third-party: signed by a key embedded in the entry"
    )
    assert len(sources.skipped) == 4


def test_deb822_stanza_lines_are_reported_where_they_start() -> None:
    entries = list(parse_deb822(DEB822, "f.sources"))
    first = entries[0]
    assert isinstance(first, SourceEntry)
    assert first.where == "f.sources:2"
    assert first.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_options_comments_and_skips() -> None:
    sources = select_debian(parse_one_line(ONE_LINE, "sources.list"), "amd64")
    assert sources.debian == (
        DebianSource("http://mirror-a.example.org/debian", "bookworm", ("main", "contrib")),
        DebianSource("http://mirror-a.example.org/debian-security", "bookworm-security", ("main",)),
    )
    assert sources.release() == sources.debian[0]
    why = reasons(sources.skipped)
    assert why == {
        "deb http://vendor.example.com/debian stable main": (
            "third-party: signed by /usr/share/keyrings/vendor.gpg"
        ),
        "deb http://mirror-a.example.org/debian bookworm-updates main": (
            "not for amd64 (architectures arm64)"
        ),
        "deb http://apt.example.com/tools nodistro main": (
            "third-party repository (not a .../debian or .../debian-security archive)"
        ),
        "deb https://secure.example.org/debian bookworm main": (
            "https: apt talks TLS to this mirror itself, dhtdeb proxies http:// only"
        ),
        "deb-src http://mirror-a.example.org/debian bookworm main": (
            "deb-src: only binary packages (deb) are checked"
        ),
        "deb http://mirror-a.example.org/debian ./": "flat repository: not a Debian archive",
        "deb [arch=amd64": "malformed options: no closing ]",
        "deb http://mirror-a.example.org/debian": "malformed: needs a URI and a suite",
        "deb cdrom:[Debian 12]/ bookworm main": "not an http:// mirror (cdrom)",
    }


def test_one_line_signed_by_and_arch_are_read() -> None:
    (entry,) = parse_one_line(
        "deb [arch+=amd64,i386 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror-a.example.org/debian/ bookworm main\n",
        "x.list",
    )
    assert isinstance(entry, SourceEntry)
    assert entry.architectures == ("amd64", "i386")
    assert entry.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert entry.where == "x.list:1"


def test_a_suite_listed_twice_merges_its_components() -> None:
    text = (
        "deb http://mirror-a.example.org/debian bookworm main\n"
        "deb http://mirror-a.example.org/debian/ bookworm main non-free-firmware\n"
    )
    sources = select_debian(parse_one_line(text, "l"), "amd64")
    assert sources.debian == (
        DebianSource(
            "http://mirror-a.example.org/debian", "bookworm", ("main", "non-free-firmware")
        ),
    )


def test_without_a_main_component_an_entry_is_skipped() -> None:
    sources = select_debian(
        parse_one_line("deb http://mirror-a.example.org/debian bookworm contrib\n", "l"), "amd64"
    )
    assert sources.debian == ()
    assert [s.reason for s in sources.skipped] == ["no main component"]


def test_malformed_deb822_stanzas_are_skipped_not_raised() -> None:
    text = (
        "Types: deb\nURIs: http://mirror-a.example.org/debian\n\n continuation first\n\nnonsense\n"
    )
    entries = list(parse_deb822(text, "m.sources"))
    assert [e.reason for e in entries if isinstance(e, Skipped)] == [
        "malformed: needs Types, URIs and Suites",
        "malformed stanza",
        "malformed stanza",
    ]


def test_the_release_suite_is_a_plain_codename_on_a_debian_archive() -> None:
    sources = select_debian(
        parse_one_line(
            "deb http://m.example.org/debian-security bookworm-security main\n"
            "deb http://m.example.org/debian bookworm-updates main\n"
            "deb http://m.example.org/debian bookworm main\n",
            "l",
        ),
        "amd64",
    )
    release = sources.release()
    assert release is not None and release.suite == "bookworm"
    assert release.in_release_url == "http://m.example.org/debian/dists/bookworm/InRelease"
    assert select_debian([], "amd64").release() is None


def test_files_are_read_as_apt_reads_them(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://m.example.org/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://m.example.org/debian-security\nSuites: bookworm-security\n"
        "Components: main\n"
    )
    # apt ignores other names, e.g. a file disabled by renaming it
    (tmp_path / "sources.list.d" / "vendor.list.disabled").write_text(
        "deb http://m.example.org/debian trixie main\n"
    )
    files = source_files(tmp_path)
    assert [p.name for p in files] == ["sources.list", "debian.sources"]
    sources = read_apt_sources("amd64", files)
    assert [(s.archive, s.suite) for s in sources.debian] == [
        ("debian", "bookworm"),
        ("debian-security", "bookworm-security"),
    ]
    assert sources.files == tuple(str(p) for p in files)
