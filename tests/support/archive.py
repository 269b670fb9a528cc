"""A real, signed Debian archive built in a temporary directory, and the attacks tests run on it.

Owns: throwaway OpenPGP keys (ed25519, each in its own GNUPGHOME), .deb files made by dpkg-deb from
seeded-random payloads, the pool/ + dists/ layout, Packages{,.gz,.xz} and Release made by
apt-ftparchive, by-hash copies, InRelease and Release.gpg signed by gpg.
Trusts: the Debian tools on PATH (gpg, dpkg-deb, apt-ftparchive); nothing from the network.

The archive is deterministic for a given seed except for the keys and signatures (gpg draws its
own randomness), so package hashes are stable across runs and a failing run can be reproduced
from its seed. No gpg-agent outlives a helper call: each one that signs stops the agent after.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import lzma
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_SEED = 20260601
MiB = 1024 * 1024
# Not a power of two so that piece boundaries never line up with the end of the file.
BIG_PAYLOAD_BYTES = 20 * MiB + 123_457
# All file timestamps inside the .debs; the ar/tar headers then do not depend on the clock.
SOURCE_DATE_EPOCH = 1_700_000_000
PACKAGES_FILES = ("Packages", "Packages.gz", "Packages.xz")
_TOOL_TIMEOUT = 120.0


class ArchiveToolError(RuntimeError):
    """A Debian tool the harness runs (gpg, dpkg-deb, apt-ftparchive) failed."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A throwaway OpenPGP key: its GNUPGHOME (with the secret key) and its public keyring file."""

    name: str
    gnupghome: Path
    fingerprint: str
    # Binary (not armored) export, usable with `gpgv --keyring` and apt's `signed-by=`.
    keyring: Path


@dataclass(frozen=True, slots=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    # Relative to the archive root, exactly as in the Packages `Filename:` field.
    filename: str
    size: int
    sha256: str

    @property
    def download_name(self) -> str:
        """The file name `apt-get download` writes (it escapes ':' of an epoch as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True, slots=True)
class SignedArchive:
    """A signed archive on disk. `root` is the directory a mirror serves (with pool/ and dists/)."""

    root: Path
    suite: str
    component: str
    arch: str
    key: SigningKey
    # A second key that the daemon and apt do not trust; see `resign`.
    unknown_key: SigningKey
    packages: tuple[DebPackage, ...]
    big_package: str
    seed: int

    @property
    def keyring(self) -> Path:
        return self.key.keyring

    @property
    def dist_dir(self) -> Path:
        return self.root / "dists" / self.suite

    @property
    def binary_dir(self) -> Path:
        """dists/<suite>/<component>/binary-<arch>, where the Packages files live."""
        return self.dist_dir / self.component / f"binary-{self.arch}"

    def package(self, name: str) -> DebPackage:
        for package in self.packages:
            if package.name == name:
                return package
        raise KeyError(name)

    @property
    def big(self) -> DebPackage:
        return self.package(self.big_package)

    @property
    def small_packages(self) -> tuple[DebPackage, ...]:
        return tuple(p for p in self.packages if p.name != self.big_package)

    def path(self, relative: str) -> Path:
        """The file behind an archive-relative path such as a package's `filename`."""
        return self.root / relative

    def copy_to(self, destination: Path) -> SignedArchive:
        """A full copy of the archive tree (keys are shared: they are never modified)."""
        shutil.copytree(self.root, destination, symlinks=True)
        return dataclasses.replace(self, root=destination)


@dataclass(frozen=True, slots=True)
class _PackageSpec:
    name: str
    version: str
    architecture: str
    payload_bytes: int
    compression: str  # dpkg-deb -Z value


# A few realistic naming edge cases: an epoch (apt's download name uses %3a), '+' in name and
# version (apt sends it as %2b in request URLs), an Architecture: all package, and .deb files that
# are compressed in different ways.
_SMALL_PACKAGES = (
    _PackageSpec("dt-alpha", "1.0-1", "amd64", 1_000, "xz"),
    _PackageSpec("dt-bravo", "2.3.1-2", "amd64", 17_000, "gzip"),
    _PackageSpec("dt-charlie", "1:0.9-1", "amd64", 4_321, "xz"),
    _PackageSpec("dt-delta-data", "20240101-1", "all", 65_536, "none"),
    _PackageSpec("dt-echo++", "3.0+really2.9-1", "amd64", 300, "xz"),
    _PackageSpec("dt-foxtrot", "0.1~rc1-1", "amd64", 200_000, "gzip"),
    _PackageSpec("dt-golf", "5.0-1", "amd64", 8_192, "xz"),
    _PackageSpec("dt-hotel", "1.2.3-4", "amd64", 123_456, "none"),
)
_BIG_PACKAGE = _PackageSpec("dt-big", "1.0-1", "amd64", BIG_PAYLOAD_BYTES, "none")


def _run(
    argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> bytes:
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
        raise ArchiveToolError(
            f"{' '.join(argv)} exited {result.returncode}:\n"
            f"{result.stderr.decode(errors='replace')}"
        )
    return result.stdout


def _gpg(key_home: Path, *args: str) -> bytes:
    return _run(
        [
            *("gpg", "--batch", "--no-tty", "--homedir", str(key_home)),
            *("--pinentry-mode", "loopback", "--passphrase", "", *args),
        ]
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace a file rather than rewrite it in place, so a hard-linked copy is never changed."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def create_key(directory: Path, name: str) -> SigningKey:
    """Generate an ed25519 signing key without passphrase in `directory/gnupghome`."""
    home = directory / "gnupghome"
    home.mkdir(parents=True, mode=0o700)
    uid = f"dhtdeb test {name} <{name}@dhtdeb.invalid>"
    _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "never")
    fingerprint = ""
    for line in _gpg(home, "--with-colons", "--list-secret-keys").decode().splitlines():
        fields = line.split(":")
        if fields[0] == "fpr":
            fingerprint = fields[9]
            break
    if not fingerprint:
        raise ArchiveToolError(f"no fingerprint listed for the new key in {home}")
    keyring = directory / f"{name}.gpg"
    keyring.write_bytes(_gpg(home, "--export", fingerprint))
    key = SigningKey(name=name, gnupghome=home, fingerprint=fingerprint, keyring=keyring)
    stop_key_agent(key)
    return key


def stop_key_agent(key: SigningKey) -> None:
    """Stop the gpg-agent that signing started for this key's GNUPGHOME."""
    subprocess.run(
        ["gpgconf", "--homedir", str(key.gnupghome), "--kill", "all"],
        capture_output=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
    )


def _build_deb(spec: _PackageSpec, rng: random.Random, workdir: Path, pool: Path) -> Path:
    tree = workdir / f"{spec.name}_{spec.architecture}"
    debian = tree / "DEBIAN"
    debian.mkdir(parents=True)
    doc = tree / "usr" / "share" / "doc" / spec.name
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{spec.name} {spec.version}: a dhtdeb test package.\n")
    # Seeded random bytes do not compress, so the .deb size follows payload_bytes.
    (doc / "payload.bin").write_bytes(rng.randbytes(spec.payload_bytes))
    (debian / "control").write_text(
        f"Package: {spec.name}\n"
        f"Version: {spec.version}\n"
        f"Architecture: {spec.architecture}\n"
        "Maintainer: dhtdeb tests <tests@dhtdeb.invalid>\n"
        f"Installed-Size: {spec.payload_bytes // 1024 + 1}\n"
        "Section: misc\n"
        "Priority: optional\n"
        f"Description: dhtdeb test package {spec.name}\n"
        f" Payload of {spec.payload_bytes} seeded random bytes.\n"
    )
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
    upstream = spec.version.split(":", 1)[-1]
    directory = pool / spec.name[0] / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    deb = directory / f"{spec.name}_{upstream}_{spec.architecture}.deb"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    _run(
        ["dpkg-deb", "--root-owner-group", f"-Z{spec.compression}", "--build", str(tree), str(deb)],
        env=env,
    )
    # Pool files on a mirror are old; a fixed Last-Modified also keeps If-Range checks exact.
    os.utime(deb, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    return deb


def _parse_packages(text: str) -> tuple[DebPackage, ...]:
    packages: list[DebPackage] = []
    for stanza in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key] = value.strip()
        packages.append(
            DebPackage(
                name=fields["Package"],
                version=fields["Version"],
                architecture=fields["Architecture"],
                filename=fields["Filename"],
                size=int(fields["Size"]),
                sha256=fields["SHA256"],
            )
        )
    return tuple(sorted(packages, key=lambda p: p.name))


def _write_packages_files(binary_dir: Path, text: bytes) -> None:
    """Packages, Packages.gz and Packages.xz with the same content, compressed deterministically."""
    _write_atomic(binary_dir / "Packages", text)
    _write_atomic(binary_dir / "Packages.gz", gzip.compress(text, compresslevel=9, mtime=0))
    _write_atomic(binary_dir / "Packages.xz", lzma.compress(text, format=lzma.FORMAT_XZ))


def _write_by_hash(binary_dir: Path) -> None:
    by_hash = binary_dir / "by-hash" / "SHA256"
    by_hash.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES_FILES:
        source = binary_dir / name
        target = by_hash / sha256_file(source)
        if not target.exists():
            _write_atomic(target, source.read_bytes())


def _write_release(
    archive: SignedArchive,
    *,
    valid_until: datetime | None,
    date: datetime | None,
) -> None:
    dist = archive.dist_dir
    for stale in ("Release", "InRelease", "Release.gpg"):
        (dist / stale).unlink(missing_ok=True)
    options = {
        "Origin": "dhtdeb-tests",
        "Label": "dhtdeb-tests",
        "Suite": archive.suite,
        "Codename": archive.suite,
        "Architectures": archive.arch,
        "Components": archive.component,
        "Description": "dhtdeb test archive",
        "Acquire-By-Hash": "yes",
    }
    fmt = "%a, %d %b %Y %H:%M:%S UTC"
    if date is not None:
        options["Date"] = date.astimezone(UTC).strftime(fmt)
    # Like Debian's own Release files: MD5Sum and SHA256 only. apt asks for by-hash/<strongest hash
    # listed>/…, so listing SHA512 would make it skip the by-hash/SHA256 copies.
    argv = [
        "apt-ftparchive",
        "-o",
        "APT::FTPArchive::SHA1=false",
        "-o",
        "APT::FTPArchive::SHA512=false",
    ]
    for key, value in options.items():
        argv += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    argv += ["release", f"dists/{archive.suite}"]
    release = _run(argv, cwd=archive.root).decode()
    if valid_until is not None:
        # apt-ftparchive only derives Valid-Until from Date + ValidTime; write the field directly.
        field = f"Valid-Until: {valid_until.astimezone(UTC).strftime(fmt)}\n"
        head, sep, tail = release.partition("\nMD5Sum:")
        release = head + "\n" + field.rstrip("\n") + sep + tail
    _write_atomic(dist / "Release", release.encode())


def sign(archive: SignedArchive, key: SigningKey | None = None) -> None:
    """(Re-)sign dists/<suite>/Release into InRelease and Release.gpg with `key` (default: the
    archive's own key)."""
    key = key or archive.key
    dist = archive.dist_dir
    release = str(dist / "Release")
    for target, mode in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
        out = dist / f".{target}.tmp"
        _gpg(
            key.gnupghome,
            "--yes",
            "--armor",
            "--digest-algo",
            "SHA512",
            "--local-user",
            key.fingerprint,
            "--output",
            str(out),
            mode,
            release,
        )
        os.replace(out, dist / target)
    stop_key_agent(key)


def reindex(
    archive: SignedArchive,
    *,
    key: SigningKey | None = None,
    valid_until: datetime | None = None,
    date: datetime | None = None,
) -> SignedArchive:
    """Regenerate Packages*, by-hash, Release and signatures from the current pool/.

    Use it after adding or replacing .deb files in pool/; returns the archive with the new package
    list. `date` defaults to now; `valid_until` adds a Valid-Until field."""
    # Like Debian's Packages files: MD5sum and SHA256 per package. apt's http method computes
    # every hash the index lists while it downloads, so SHA1 and SHA512 would add CPU per byte
    # that no real archive makes apt spend.
    text = _run(
        [
            "apt-ftparchive",
            "-o",
            "APT::FTPArchive::SHA1=false",
            "-o",
            "APT::FTPArchive::SHA512=false",
            "packages",
            "pool",
        ],
        cwd=archive.root,
    )
    archive.binary_dir.mkdir(parents=True, exist_ok=True)
    _write_packages_files(archive.binary_dir, text)
    _write_by_hash(archive.binary_dir)
    updated = dataclasses.replace(archive, packages=_parse_packages(text.decode()))
    _write_release(updated, valid_until=valid_until, date=date)
    sign(updated, key)
    return updated


def build_archive(
    directory: Path,
    *,
    seed: int = DEFAULT_SEED,
    suite: str = "testing-dhtdeb",
    component: str = "main",
    arch: str = "amd64",
) -> SignedArchive:
    """Build the standard test archive under `directory`: keys in keys/, the archive in archive/."""
    rng = random.Random(seed)
    keys = directory / "keys"
    key = create_key(keys / "trusted", "archive")
    unknown_key = create_key(keys / "unknown", "unknown")
    root = directory / "archive"
    pool = root / "pool" / component
    work = directory / "build"
    for spec in (*_SMALL_PACKAGES, _BIG_PACKAGE):
        _build_deb(spec, rng, work, pool)
    shutil.rmtree(work)
    archive = SignedArchive(
        root=root,
        suite=suite,
        component=component,
        arch=arch,
        key=key,
        unknown_key=unknown_key,
        packages=(),
        big_package=_BIG_PACKAGE.name,
        seed=seed,
    )
    return reindex(archive)


# --- attacks --------------------------------------------------------------------------------------


def resign(archive: SignedArchive, key: SigningKey | None = None) -> None:
    """Sign InRelease and Release.gpg with a key nobody trusts (default: `archive.unknown_key`).

    Release and the indexes stay intact: only the signer changes."""
    sign(archive, key or archive.unknown_key)


def prepend_unsigned_paragraph(archive: SignedArchive, paragraph: str | None = None) -> str:
    """Put an unsigned Release-like paragraph in front of the (still validly signed) InRelease.

    The default paragraph claims Origin/Suite of the archive and lists SHA256 entries for every
    Packages file that do not match the files served: whoever parses the raw file instead of the
    verified payload believes the wrong hashes. Returns the paragraph written."""
    if paragraph is None:
        lines = [
            "Origin: dhtdeb-tests",
            "Label: dhtdeb-tests",
            f"Suite: {archive.suite}",
            f"Codename: {archive.suite}",
            f"Architectures: {archive.arch}",
            f"Components: {archive.component}",
            "SHA256:",
        ]
        for name in PACKAGES_FILES:
            bogus = hashlib.sha256(b"unsigned " + name.encode()).hexdigest()
            lines.append(f" {bogus} {1234:>16} {archive.component}/binary-{archive.arch}/{name}")
        paragraph = "\n".join(lines) + "\n"
    in_release = archive.dist_dir / "InRelease"
    _write_atomic(in_release, paragraph.encode() + b"\n" + in_release.read_bytes())
    return paragraph


def _flip(data: bytes, offset: int, count: int) -> bytes:
    flipped = bytes(b ^ 0xFF for b in data[offset : offset + count])
    return data[:offset] + flipped + data[offset + count :]


def tamper_deb(
    archive: SignedArchive, name: str, *, offset: int | None = None, count: int = 16
) -> bytes:
    """Flip `count` bytes of a package's .deb on disk, after indexing: same size, wrong SHA256.

    `offset` defaults to the middle of the file (inside the payload for the big package).
    Returns the new content (e.g. for `Mirror.override` on another mirror)."""
    package = archive.package(name)
    path = archive.path(package.filename)
    data = path.read_bytes()
    data = _flip(data, len(data) // 2 if offset is None else offset, count)
    _write_atomic(path, data)
    return data


def tampered_deb_bytes(archive: SignedArchive, name: str, *, offset: int | None = None) -> bytes:
    """The bytes `tamper_deb` would write, without touching the disk (for `Mirror.override`)."""
    data = archive.path(archive.package(name).filename).read_bytes()
    return _flip(data, len(data) // 2 if offset is None else offset, 16)


def tampered_packages_text(archive: SignedArchive, name: str, sha256: str) -> bytes:
    """The plain Packages text with `name`'s SHA256 replaced by `sha256` (an attacker's index)."""
    package = archive.package(name)
    text = (archive.binary_dir / "Packages").read_text()
    stanzas = text.strip().split("\n\n")
    out: list[str] = []
    for stanza in stanzas:
        if stanza.startswith(f"Package: {package.name}\n"):
            stanza = stanza.replace(f"SHA256: {package.sha256}", f"SHA256: {sha256}")
        out.append(stanza)
    return ("\n\n".join(out) + "\n").encode()


def tamper_packages(
    archive: SignedArchive, name: str | None = None, sha256: str | None = None
) -> None:
    """Replace every Packages file (plain, .gz, .xz and their by-hash copies, under their old names)
    with a well-formed index in which one package's SHA256 is changed. Release is not touched, so
    the indexes no longer match the signed hashes.

    Defaults: the first small package, and the SHA256 of `tampered_deb_bytes` for it, i.e. what an
    attacker who also swapped the .deb would publish."""
    name = name or archive.small_packages[0].name
    if sha256 is None:
        sha256 = hashlib.sha256(tampered_deb_bytes(archive, name)).hexdigest()
    binary_dir = archive.binary_dir
    old_hashes = {f: sha256_file(binary_dir / f) for f in PACKAGES_FILES}
    _write_packages_files(binary_dir, tampered_packages_text(archive, name, sha256))
    for filename, old in old_hashes.items():
        _write_atomic(binary_dir / "by-hash" / "SHA256" / old, (binary_dir / filename).read_bytes())
