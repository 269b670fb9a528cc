"""A Debian-shaped test archive for the fleet harness: hundreds of packages, three signing keys.

Owns: the shape of the archive (modelled on bookworm's main as the Debian mirror serves it):
`dists/<codename>/` with InRelease and Release.gpg each signed by three keys (like Debian's two
"automatic" keys and its "stable release" key), `Acquire-By-Hash: yes` with by-hash copies under
MD5Sum/ and SHA256/, `No-Support-for-Architecture-all: Packages` (arch:all packages are listed in
binary-amd64/Packages as well as in binary-all/Packages), Packages{,.gz,.xz} and a per-directory
Release in binary-amd64/ and binary-all/, i18n/Translation-en{,.xz} carrying the long descriptions
(Packages only has the short one and Description-md5, as apt-ftparchive writes with
LongDescription=false), MD5Sum + SHA256 sections; package sizes drawn from Debian's distribution;
an "older versions" dpkg status file so that `apt-get upgrade` wants every package; a build cache.
Trusts: dpkg-deb, apt-ftparchive and gpg on PATH (through tests/support/archive.py and
tests/support/signing.py); nothing from the network.

Deterministic for a given `ArchiveSpec` except for the keys and the signatures (gpg draws its own
randomness): names, versions, sizes, payloads and every index file are the same on every build.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import lzma
import math
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from support.archive import (
    SOURCE_DATE_EPOCH,
    ArchiveToolError,
    SigningKey,
    create_key,
    sha256_file,
)
from support.signing import clearsign, detach_sign, shared_home

MiB = 1024 * 1024
# Bump when the layout changes, so that a cached tree of an older layout is rebuilt.
FORMAT = 1
DEFAULT_SEED = 20260601
# Debian's bookworm main amd64 .deb sizes (63,440 packages): cumulative share -> bytes. The two
# ends are ours: the smallest Debian .debs are about 1 KB, and the far tail is cut by `max_size`.
SIZE_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.0, 1_100.0),
    (0.25, 18_000.0),
    (0.50, 59_000.0),
    (0.80, 455_000.0),
    (0.95, 3_900_000.0),
    (0.99, 22_000_000.0),
    (1.0, 200_000_000.0),
)
BIG_THRESHOLD = 10 * MiB
# The three keys that sign bookworm's InRelease, by the role each plays there.
KEY_NAMES = ("bookworm-automatic", "trixie-automatic", "bookworm-stable")
# Below this a .deb is gzip -1 (tar pads to 10 KiB records: uncompressed, no .deb could be under
# 20 KB, yet a quarter of Debian's are); above it no compression at all, which is fastest.
_GZIP_BELOW = 1 * MiB
_GZIP_OVERHEAD = 800  # bytes a gzip -1 .deb adds to its random payload (measured)
_PLAIN_OVERHEAD = 16 * 1024  # the same for an uncompressed one (tar headers and padding)
_MANIFEST = "fleet-archive.json"
_TOOL_TIMEOUT = 300.0
_RELEASE_DATE = datetime.fromtimestamp(SOURCE_DATE_EPOCH, UTC)


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """What to build. Equal specs give the same archive (up to signatures): one cache entry."""

    packages: int = 200
    seed: int = DEFAULT_SEED
    # No .deb is larger (Debian's largest are hundreds of MB; tests do not need them).
    max_size: int = 32 * MiB
    # At least this many packages over 10 MiB (needs max_size above 10 MiB).
    over_10mib: int = 0
    # Share of Architecture: all packages (Debian main: about a fifth to a quarter).
    arch_all_share: float = 0.2
    suite: str = "stable"
    codename: str = "bookworm"
    component: str = "main"

    def __post_init__(self) -> None:
        if self.packages < 1:
            raise ValueError("an archive needs at least one package")
        if self.over_10mib and self.max_size <= BIG_THRESHOLD + MiB:
            raise ValueError("over_10mib needs max_size above 11 MiB")
        if self.over_10mib > self.packages:
            raise ValueError("over_10mib is more than the number of packages")

    @property
    def cache_key(self) -> str:
        text = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ArchivePackage:
    """One binary package of the archive, as its Packages stanza lists it."""

    name: str
    version: str
    # The version the "older versions" dpkg status file claims is installed.
    older_version: str
    architecture: str  # "amd64" or "all"
    filename: str  # relative to the archive root, as in `Filename:`
    size: int
    sha256: str

    @property
    def download_name(self) -> str:
        """The file name apt writes (`download` and the archives/ cache alike; ':' -> %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True, slots=True)
class FleetArchive:
    """A built archive on disk. `root` is what the mirror serves under /debian/."""

    root: Path
    spec: ArchiveSpec
    keys: tuple[SigningKey, ...]  # in KEY_NAMES order
    packages: tuple[ArchivePackage, ...]  # sorted by name
    build_seconds: float

    # --- layout -----------------------------------------------------------------------------------

    @property
    def suite(self) -> str:
        """What apt's sources line names (the codename, as Debian's own sources do)."""
        return self.spec.codename

    @property
    def component(self) -> str:
        return self.spec.component

    @property
    def arch(self) -> str:
        return "amd64"

    @property
    def dist_dir(self) -> Path:
        return self.root / "dists" / self.spec.codename

    def path(self, relative: str) -> Path:
        return self.root / relative

    def package(self, name: str) -> ArchivePackage:
        for package in self.packages:
            if package.name == name:
                return package
        raise KeyError(name)

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.packages)

    def smallest(self, count: int) -> tuple[ArchivePackage, ...]:
        """The `count` smallest packages (by size, then name): quick to fetch in smoke tests."""
        return tuple(sorted(self.packages, key=lambda p: (p.size, p.name))[:count])

    # --- trust ------------------------------------------------------------------------------------

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def signing_keys(self, names: Iterable[str] | None = None) -> tuple[SigningKey, ...]:
        """The keys called `names` (None: all three); unknown names raise KeyError."""
        if names is None:
            return self.keys
        wanted = tuple(names)
        by_name = {k.name: k for k in self.keys}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise KeyError(f"no such archive key: {', '.join(missing)} (have {KEY_NAMES})")
        return tuple(by_name[n] for n in wanted)

    def keyring(self, names: Iterable[str] | None = None) -> Path:
        """One binary keyring file with the public keys `names` (None: all three), for apt's
        `signed-by=`. A host with an older debian-archive-keyring lacks one of them."""
        keys = self.signing_keys(names)
        tag = "+".join(sorted(k.name for k in keys))
        path = self.root.parent / "keys" / f"keyring-{tag}.gpg"
        if not path.exists():
            # Hosts are set up on several threads of one process: each writes its own temporary
            # file (a name from the pid alone was shared, and the second rename found it gone).
            data = b"".join(k.keyring.read_bytes() for k in keys)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        return path

    def keyring_files(self, names: Iterable[str] | None = None) -> tuple[Path, ...]:
        """One keyring file per key (the daemon's repeatable `--keyring`)."""
        return tuple(k.keyring for k in self.signing_keys(names))

    # --- what apt should end up with --------------------------------------------------------------

    def older_status(self, packages: Iterable[ArchivePackage] | None = None) -> str:
        """A dpkg status file listing `packages` (default: all) as installed at an older version,
        so that `apt-get --download-only upgrade` fetches every one of them."""
        stanzas = []
        for p in self.packages if packages is None else packages:
            stanzas.append(
                f"Package: {p.name}\n"
                "Status: install ok installed\n"
                "Priority: optional\n"
                "Section: misc\n"
                f"Installed-Size: {max(1, p.size // 1024)}\n"
                "Maintainer: dhtdeb tests <tests@dhtdeb.invalid>\n"
                f"Architecture: {p.architecture}\n"
                f"Version: {p.older_version}\n"
                f"Description: {_short_description(p.name)}\n"
            )
        return "\n".join(stanzas)

    def check_files(self, directory: Path, expected: Iterable[ArchivePackage]) -> None:
        """AssertionError unless `directory` holds exactly the .deb files of `expected` (by apt's
        file names), each with the archive's SHA256."""
        wanted = {p.download_name: p for p in expected}
        present = {p.name for p in directory.glob("*.deb")}
        problems = [f"missing {n}" for n in sorted(wanted.keys() - present)]
        problems += [f"unexpected {n}" for n in sorted(present - wanted.keys())]
        for name in sorted(wanted.keys() & present):
            digest = sha256_file(directory / name)
            if digest != wanted[name].sha256:
                problems.append(f"{name}: sha256 {digest}, archive says {wanted[name].sha256}")
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise AssertionError(f"files in {directory} are not the archive's:\n  {shown}{more}")


# --- sizes and names ------------------------------------------------------------------------------


def size_at(quantile: float) -> int:
    """The .deb size at this cumulative share of Debian's distribution (log-linear between the
    measured quantiles)."""
    q = min(max(quantile, 0.0), 1.0)
    shares = [s for s, _ in SIZE_QUANTILES]
    i = max(1, bisect.bisect_left(shares, q))
    (q0, s0), (q1, s1) = SIZE_QUANTILES[i - 1], SIZE_QUANTILES[i]
    t = (q - q0) / (q1 - q0)
    return round(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))


def draw_sizes(spec: ArchiveSpec, rng: random.Random) -> list[int]:
    sizes = [min(size_at(rng.random()), spec.max_size) for _ in range(spec.packages)]
    big = sum(1 for s in sizes if s > BIG_THRESHOLD)
    if big < spec.over_10mib:
        small = [i for i, s in enumerate(sizes) if s <= BIG_THRESHOLD]
        ceiling = min(spec.max_size, 3 * BIG_THRESHOLD)
        for i in rng.sample(small, spec.over_10mib - big):
            sizes[i] = rng.randint(BIG_THRESHOLD + MiB // 2, ceiling)
    return sizes


_SYLLABLES = (
    "ab ac ad al am an ar as at ba be bi bo ca ce ci co da de di do el em en er es fa fe fi "
    "fo ga ge gi go ha he hi ho ka ke ki ko la le li lo ma me mi mo na ne ni no pa pe pi po "
    "ra re ri ro sa se si so ta te ti to va ve vi vo xa xe za ze zi zo"
).split()
_ALL_PREFIXES = ("python3-", "fonts-", "node-", "")
_ALL_SUFFIXES = ("-data", "-common", "-doc", "")
_ARCH_PREFIXES = ("lib", "lib", "golang-", "")
_ARCH_SUFFIXES = ("", "", "1", "2", "6", "-bin", "-utils", "-dev")


@dataclass(frozen=True, slots=True)
class _DebSpec:
    name: str
    version: str
    older_version: str
    architecture: str
    payload_bytes: int
    seed: int

    @property
    def pool_dir(self) -> str:
        # Debian's pool layout: lib* packages under their first four letters.
        return self.name[:4] if self.name.startswith("lib") else self.name[0]


def _name(rng: random.Random, arch_all: bool) -> str:
    prefixes, suffixes = (
        (_ALL_PREFIXES, _ALL_SUFFIXES) if arch_all else (_ARCH_PREFIXES, _ARCH_SUFFIXES)
    )
    body = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    return f"{rng.choice(prefixes)}{body}{rng.choice(suffixes)}"


def _versions(rng: random.Random) -> tuple[str, str]:
    """(archive version, older installed version): a point-release update or a new revision."""
    epoch = "1:" if rng.random() < 0.05 else ""
    upstream = f"{rng.randint(0, 30)}.{rng.randint(0, 20)}"
    if rng.random() < 0.5:
        upstream += f".{rng.randint(0, 9)}"
    revision = rng.randint(1, 6)
    if rng.random() < 0.5:
        base = f"{epoch}{upstream}-{revision}"
        return f"{base}+deb12u{rng.randint(1, 3)}", base
    return f"{epoch}{upstream}-{revision + 1}", f"{epoch}{upstream}-{revision}"


def _deb_specs(spec: ArchiveSpec) -> list[_DebSpec]:
    rng = random.Random(spec.seed)
    sizes = draw_sizes(spec, rng)
    specs: list[_DebSpec] = []
    names: set[str] = set()
    for size in sizes:
        arch_all = rng.random() < spec.arch_all_share
        name = _name(rng, arch_all)
        while name in names:
            name = _name(rng, arch_all)
        names.add(name)
        version, older = _versions(rng)
        overhead = _GZIP_OVERHEAD if size < _GZIP_BELOW else _PLAIN_OVERHEAD
        specs.append(
            _DebSpec(
                name=name,
                version=version,
                older_version=older,
                architecture="all" if arch_all else "amd64",
                payload_bytes=max(64, size - overhead),
                seed=rng.getrandbits(64),
            )
        )
    return specs


def _short_description(name: str) -> str:
    return f"dhtdeb fleet test package {name}"


# --- building -------------------------------------------------------------------------------------


def run_tool(
    argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> bytes:
    """Run a Debian tool; its stdout, or ArchiveToolError with its stderr."""
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        raise ArchiveToolError(f"{' '.join(argv)} exited {result.returncode}:\n{stderr}")
    return result.stdout


def _build_deb(spec: _DebSpec, workdir: Path, pool: Path) -> None:
    tree = workdir / f"{spec.name}_{spec.architecture}"
    doc = tree / "usr" / "share" / "doc" / spec.name
    doc.mkdir(parents=True)
    (tree / "DEBIAN").mkdir()
    # Seeded random bytes do not compress, so the .deb size follows payload_bytes.
    (doc / "payload.bin").write_bytes(random.Random(spec.seed).randbytes(spec.payload_bytes))
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {spec.name}\n"
        f"Version: {spec.version}\n"
        f"Architecture: {spec.architecture}\n"
        "Maintainer: dhtdeb tests <tests@dhtdeb.invalid>\n"
        f"Installed-Size: {spec.payload_bytes // 1024 + 1}\n"
        "Section: misc\n"
        "Priority: optional\n"
        f"Description: {_short_description(spec.name)}\n"
        f" Payload of {spec.payload_bytes} seeded random bytes (seed {spec.seed}).\n"
        " .\n"
        " Built by tests/fleet/archive.py; the long description lives in Translation-en.\n"
    )
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
    directory = pool / spec.pool_dir / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    upstream = spec.version.split(":", 1)[-1]
    deb = directory / f"{spec.name}_{upstream}_{spec.architecture}.deb"
    compression = ["-Zgzip", "-z1"] if spec.payload_bytes < _GZIP_BELOW else ["-Znone"]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    run_tool(
        ["dpkg-deb", "--root-owner-group", *compression, "--build", str(tree), str(deb)], env=env
    )
    os.utime(deb, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))  # pool files on a mirror are old
    shutil.rmtree(tree)


def _stanzas(text: str) -> list[str]:
    return [s for s in text.strip().split("\n\n") if s.strip()]


def _field(stanza: str, name: str) -> str:
    for line in stanza.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    raise KeyError(name)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_compressed(path: Path, text: bytes, suffixes: Sequence[str]) -> list[Path]:
    """`path` plus compressed copies (".gz", ".xz"), compressed deterministically."""
    written = [path]
    _write(path, text)
    for suffix in suffixes:
        target = path.with_name(path.name + suffix)
        if suffix == ".gz":
            _write(target, gzip.compress(text, compresslevel=9, mtime=0))
        elif suffix == ".xz":
            _write(target, lzma.compress(text, format=lzma.FORMAT_XZ))
        else:
            raise ValueError(suffix)
        written.append(target)
    return written


def _by_hash(files: Iterable[Path]) -> None:
    """Debian's by-hash copies (hard links): <dir>/by-hash/{MD5Sum,SHA256}/<hex>."""
    for path in files:
        data = path.read_bytes()
        for algorithm, directory in (("md5", "MD5Sum"), ("sha256", "SHA256")):
            target = path.parent / "by-hash" / directory / hashlib.new(algorithm, data).hexdigest()
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(path, target)


def _component_release(spec: ArchiveSpec, architecture: str) -> bytes:
    return (
        f"Archive: {spec.suite}\n"
        "Origin: dhtdeb-fleet\n"
        "Label: dhtdeb-fleet\n"
        "Version: 12.99\n"
        "Acquire-By-Hash: yes\n"
        f"Component: {spec.component}\n"
        f"Architecture: {architecture}\n"
    ).encode()


def _write_indexes(
    root: Path, spec: ArchiveSpec, specs: Sequence[_DebSpec]
) -> tuple[ArchivePackage, ...]:
    text = run_tool(
        [
            "apt-ftparchive",
            *("-o", "APT::FTPArchive::SHA1=false", "-o", "APT::FTPArchive::SHA512=false"),
            *("-o", "APT::FTPArchive::LongDescription=false"),
            "packages",
            f"pool/{spec.component}",
        ],
        cwd=root,
    ).decode()
    by_name = {s.name: s for s in specs}
    stanzas = sorted(_stanzas(text), key=lambda s: _field(s, "Package"))
    all_only = [s for s in stanzas if _field(s, "Architecture") == "all"]
    dist = root / "dists" / spec.codename
    component = dist / spec.component
    indexes: list[Path] = []
    for architecture, chosen in (("amd64", stanzas), ("all", all_only)):
        binary = component / f"binary-{architecture}"
        body = ("\n\n".join(chosen) + "\n").encode() if chosen else b""
        indexes += _write_compressed(binary / "Packages", body, (".gz", ".xz"))
        release = binary / "Release"
        _write(release, _component_release(spec, architecture))
    translations = []
    for stanza in stanzas:
        deb = by_name[_field(stanza, "Package")]
        long = (
            f"{_short_description(deb.name)}\n"
            f" Payload of {deb.payload_bytes} seeded random bytes (seed {deb.seed}).\n"
            " .\n"
            " Built by tests/fleet/archive.py; the long description lives in Translation-en.\n"
        )
        md5 = _field(stanza, "Description-md5")
        if hashlib.md5(long.encode()).hexdigest() != md5:
            raise AssertionError(f"Description-md5 of {deb.name} does not match its description")
        translations.append(f"Package: {deb.name}\nDescription-md5: {md5}\nDescription-en: {long}")
    # Like Debian: Translation-en uncompressed and .xz (other languages ship .bz2).
    indexes += _write_compressed(
        component / "i18n" / "Translation-en", "\n".join(translations).encode(), (".xz",)
    )
    _by_hash(indexes)
    packages = []
    for stanza in stanzas:
        deb = by_name[_field(stanza, "Package")]
        packages.append(
            ArchivePackage(
                name=deb.name,
                version=_field(stanza, "Version"),
                older_version=deb.older_version,
                architecture=_field(stanza, "Architecture"),
                filename=_field(stanza, "Filename"),
                size=int(_field(stanza, "Size")),
                sha256=_field(stanza, "SHA256"),
            )
        )
    return tuple(packages)


def _write_release(
    root: Path, spec: ArchiveSpec, keys: Sequence[SigningKey], key_dir: Path
) -> None:
    dist = root / "dists" / spec.codename
    argv = ["apt-ftparchive", "-o", "APT::FTPArchive::SHA1=false"]
    argv += ["-o", "APT::FTPArchive::SHA512=false", "release", f"dists/{spec.codename}"]
    sums = run_tool(argv, cwd=root).decode()
    _, sep, checksums = sums.partition("MD5Sum:\n")
    if not sep:
        raise AssertionError(f"apt-ftparchive wrote no MD5Sum section:\n{sums}")
    # apt-ftparchive computes the checksum sections; the fields are written here, in the order
    # of Debian's own Release (it knows no No-Support-for-Architecture-all, with which apt takes
    # arch:all packages from binary-amd64/Packages only and never asks for binary-all).
    fields = {
        "Origin": "dhtdeb-fleet",
        "Label": "dhtdeb-fleet",
        "Suite": spec.suite,
        "Version": "12.99",
        "Codename": spec.codename,
        "Date": _RELEASE_DATE.strftime("%a, %d %b %Y %H:%M:%S UTC"),
        "Acquire-By-Hash": "yes",
        "No-Support-for-Architecture-all": "Packages",
        "Architectures": "all amd64",
        "Components": spec.component,
        "Description": "dhtdeb fleet test archive (Debian-shaped)",
    }
    header = "".join(f"{key}: {value}\n" for key, value in fields.items())
    data = (header + "MD5Sum:\n" + checksums).encode()
    _write(dist / "Release", data)
    home = shared_home(keys, key_dir)
    _write(dist / "InRelease", clearsign(data, keys, home=home))
    _write(dist / "Release.gpg", detach_sign(data, keys, home=home))


def _build(directory: Path, spec: ArchiveSpec, workers: int) -> FleetArchive:
    started = time.monotonic()
    root = directory / "archive"
    pool = root / "pool" / spec.component
    work = directory / "build"
    specs = _deb_specs(spec)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool_executor:
        for future in [pool_executor.submit(_build_deb, s, work, pool) for s in specs]:
            future.result()
    shutil.rmtree(work, ignore_errors=True)
    packages = _write_indexes(root, spec, specs)
    # gpg-agent's socket lives in the GNUPGHOME, and a Unix socket path has at most 107 bytes:
    # keys are made and used under a short temporary path, then kept in the cache (their public
    # keyrings are what hosts trust; the secret keys are kept only to look at).
    with tempfile.TemporaryDirectory(prefix="dfk", dir="/tmp") as short:
        key_dir = Path(short)
        keys = tuple(create_key(key_dir / name, name) for name in KEY_NAMES)
        _write_release(root, spec, keys, key_dir)
        shutil.copytree(key_dir, directory / "keys", ignore=shutil.ignore_patterns("S.*", "*.lock"))
    kept = tuple(
        dataclasses.replace(
            k,
            gnupghome=directory / "keys" / k.gnupghome.relative_to(key_dir),
            keyring=directory / "keys" / k.keyring.relative_to(key_dir),
        )
        for k in keys
    )
    return FleetArchive(
        root=root,
        spec=spec,
        keys=kept,
        packages=packages,
        build_seconds=time.monotonic() - started,
    )


def _save_manifest(archive: FleetArchive, directory: Path) -> None:
    """Paths are stored relative to `directory`, which is renamed into the cache afterwards."""

    def relative(path: Path) -> str:
        return str(path.relative_to(directory))

    data = {
        "spec": dataclasses.asdict(archive.spec),
        "build_seconds": archive.build_seconds,
        "keys": [
            {
                "name": k.name,
                "fingerprint": k.fingerprint,
                "gnupghome": relative(k.gnupghome),
                "keyring": relative(k.keyring),
            }
            for k in archive.keys
        ],
        "packages": [dataclasses.asdict(p) for p in archive.packages],
    }
    _write(directory / _MANIFEST, json.dumps(data, indent=1).encode())


def _load_manifest(directory: Path, spec: ArchiveSpec) -> FleetArchive | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except FileNotFoundError:
        return None
    if data["spec"] != dataclasses.asdict(spec):
        return None
    return FleetArchive(
        root=directory / "archive",
        spec=spec,
        keys=tuple(
            SigningKey(
                name=k["name"],
                gnupghome=directory / k["gnupghome"],
                fingerprint=k["fingerprint"],
                keyring=directory / k["keyring"],
            )
            for k in data["keys"]
        ),
        packages=tuple(ArchivePackage(**p) for p in data["packages"]),
        build_seconds=float(data["build_seconds"]),
    )


def build_archive(
    cache_dir: Path, spec: ArchiveSpec | None = None, *, workers: int | None = None
) -> FleetArchive:
    """The archive for `spec`, built under `cache_dir/<spec.cache_key>/` or reused from there.

    A build happens in a scratch directory that is renamed into place when complete, so an
    interrupted build is never reused and two processes building the same spec do not collide.
    `workers` dpkg-deb processes run at once (default: the number of CPUs)."""
    spec = spec or ArchiveSpec()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / spec.cache_key
    cached = _load_manifest(final, spec)
    if cached is not None:
        return cached
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.cache_key}-", dir=cache_dir))
    try:
        _save_manifest(_build(scratch, spec, workers or os.cpu_count() or 2), scratch)
        try:
            scratch.rename(final)
        except OSError:
            # Another process finished the same spec first: use theirs.
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    loaded = _load_manifest(final, spec)
    if loaded is None:
        raise RuntimeError(f"archive cache {final} has no usable manifest")
    return loaded
