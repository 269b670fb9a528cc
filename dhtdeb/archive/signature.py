"""OpenPGP verification of Release files with gpgv, accepting a signature exactly when apt would.

Owns: the trusted keyring set and the fingerprint allow-list; running gpgv; judging its status
lines. Trusts: only gpgv's machine-readable status output and the payload gpgv writes with
`--output`.

apt's rule (apt 2.6, `methods/gpgv.cc`: `GPGVMethod::VerifyGetSigners` sorts gpgv's status lines,
`GPGVMethod::URIAcquire` decides): a file is accepted when at least one signature is good and none
is bad. Signatures that cannot count, because their key is not in the keyring (NO_PUBKEY) or they
are worthless (expired or revoked key, expired signature, an MD5/SHA1/RIPEMD160 digest, an ERRSIG
that is not a missing key), are ignored beside a good one: Debian signs each InRelease with several
keys and a machine seldom holds all of them. gpgv's exit status decides nothing: it is non-zero as
soon as one signature could not be checked. Like apt with `Signed-By` fingerprints, dhtdeb counts a
good signature only when its primary key is in the allow-list.

The raw InRelease bytes are never parsed. Their layout must pass the checks apt's own splitter
makes (`SplitClearSignedFile` in apt-pkg/contrib/gpgv.cc): nothing before or after the signed block
(such as an unsigned paragraph prepended by an attacker), one signed block, no unescaped dash line
in the signed text. The payload then comes from gpgv. A Release.gpg must likewise be what apt's
`ExecGPGV` accepts: armored signature blocks and nothing else.

One difference from apt remains, on the safe side. apt gives gpgv the signature apart from the
text, so the `Hash:` armor header does not matter to it; gpgv reading the whole clearsigned file
calls a signature whose digest that header does not name an ERRSIG ("signature digest conflict").
No archive tool writes such a header; were one to, dhtdeb would pass the repository through
unverified and apt would still check it itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import ConfigError, SignatureError

log = logging.getLogger(__name__)

GPGV_TIMEOUT = 30.0
# gpgv writes a few hundred bytes of status per signature; more than this is not a Release file.
MAX_STATUS_BYTES = 1 << 20
_BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
_BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
_END_SIGNATURE = b"-----END PGP SIGNATURE-----"
_ARMOR_HEADER = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_GPG = ("gpg", "--batch", "--no-options")
_STATUS_PREFIX = "[GNUPG:] "

# OpenPGP hash algorithm ids (RFC 4880 9.4) a signature may use, as apt's `Digests` table in
# methods/gpgv.cc rates them (without its APT::Hashes::<name>::Untrusted/Weak overrides): MD5 (1),
# SHA1 (2), RIPEMD160 (3) and any id outside the table are untrusted; the table also lists the
# reserved ids 4-7 as trusted, which gpg never produces.
_TRUSTED_DIGESTS = frozenset(range(4, 12))
_DIGEST_NAMES = {1: "MD5", 2: "SHA1", 3: "RIPEMD160", 8: "SHA256", 9: "SHA384", 10: "SHA512"}


@dataclass(frozen=True, slots=True)
class VerifiedPayload:
    """Release text that gpgv verified, and the primary key fingerprints of its good signatures."""

    text: bytes
    # Every good signature by an allow-listed key, in gpgv's order; never empty.
    fingerprints: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """The first good signer (the one the index records)."""
        return self.fingerprints[0]


@dataclass(frozen=True, slots=True)
class Signers:
    """An accepted verdict on gpgv's status lines."""

    # Primary key fingerprints of the good signatures by allow-listed keys, in order, no repeats.
    good: tuple[str, ...]
    # Signatures that did not count and, beside a good one, do no harm ("NO_PUBKEY <id>", …).
    ignored: tuple[str, ...]


def _same_key(fingerprint: str, key_id: str) -> bool:
    """apt's `IsTheSameKey`: VALIDSIG names a fingerprint, GOODSIG a fingerprint or a long key id
    (the fingerprint's last 16 hex digits)."""
    if len(key_id) == len(fingerprint):
        return key_id == fingerprint
    return len(key_id) >= 16 and fingerprint[-16:] == key_id[:16]


def _digest_id(validsig_args: Sequence[str]) -> int:
    # VALIDSIG <fpr> <date> <timestamp> <expires> <version> <reserved> <pk-algo> <hash-algo> …
    token = validsig_args[7] if len(validsig_args) > 7 else ""
    return int(token) if token.isdigit() else 0


def judge_status(status: Iterable[str], allowed: Collection[str]) -> Signers:
    """Decide, from gpgv's `--status-fd` lines, whether apt would accept the file; `allowed` holds
    the primary key fingerprints (upper case) a good signature must come from.

    Returns the good signers, or raises SignatureError naming what was wrong. Follows apt's
    `VerifyGetSigners`: BADSIG is bad; GOODSIG is good unless its VALIDSIG reports an untrusted
    digest; NO_PUBKEY (also an ERRSIG followed by a NO_PUBKEY for the same key) means the key is
    missing; EXPKEYSIG, EXPSIG, REVKEYSIG and any other ERRSIG are worthless. Then `URIAcquire`:
    accept when something is good and nothing is bad. Stricter than apt 2.6 in two corners where
    gpgv itself reports trouble: an `ERROR` status line refuses (as apt does since 2.7.13) and so
    does NODATA, which apt 2.6 reports as an error only when no signature was good."""
    good: list[str] = []  # GOODSIG key ids, in order
    bad: list[str] = []
    errsig: list[str] = []
    missing: list[str] = []
    worthless: list[str] = []
    valid: list[tuple[str, str]] = []  # (signing key fingerprint, primary key fingerprint)
    errors: list[str] = []
    nodata = False
    for line in status:
        if not line.startswith(_STATUS_PREFIX):
            continue
        keyword, _, rest = line[len(_STATUS_PREFIX) :].strip().partition(" ")
        args = rest.split()
        key = args[0].upper() if args else "?"
        if keyword == "BADSIG":
            bad.append(key)
        elif keyword == "ERRSIG":
            errsig.append(key)
        elif keyword == "NO_PUBKEY":
            missing.append(f"NO_PUBKEY {key}")
            errsig = [e for e in errsig if e[:16] != key[:16]]
        elif keyword == "NODATA":
            nodata = True
        elif keyword in ("EXPKEYSIG", "EXPSIG", "REVKEYSIG"):
            worthless.append(f"{keyword} {key}")
        elif keyword == "GOODSIG":
            good.append(key)
        elif keyword == "VALIDSIG":
            primary = args[9].upper() if len(args) > 9 else key
            digest = _digest_id(args)
            if digest not in _TRUSTED_DIGESTS:
                name = _DIGEST_NAMES.get(digest, f"algorithm {digest}")
                worthless.append(f"VALIDSIG {key} (untrusted digest {name})")
                # apt drops every GOODSIG of this key seen so far (this VALIDSIG's own among them).
                good = [g for g in good if not _same_key(key, g)]
            valid.append((key, primary))
        elif keyword == "ERROR":
            errors.append(rest.strip())
    worthless += [f"ERRSIG {e}" for e in errsig]

    # The allow-list works like apt's Signed-By fingerprints: a good signature counts only when a
    # VALIDSIG ties it to an allowed primary key; otherwise it is as good as a missing key.
    signers: list[str] = []
    for key_id in good:
        primaries = [p for fpr, p in valid if _same_key(fpr, key_id)]
        allowed_primaries = [p for p in primaries if p in allowed]
        if allowed_primaries:
            signers.append(allowed_primaries[0])
        elif primaries:
            missing.append(
                f"GOODSIG {key_id} (primary key {primaries[0]} is not in the allow-list)"
            )
        else:
            missing.append(f"GOODSIG {key_id} (no VALIDSIG names its key)")

    if errors:
        raise SignatureError("gpgv reported an error: " + "; ".join(errors))
    if bad:
        raise SignatureError(", ".join(f"BADSIG by {b}" for b in bad))
    if nodata:
        raise SignatureError("gpgv found no signature data (NODATA)")
    ignored = (*missing, *worthless)
    if not signers:
        raise SignatureError("no good signature: " + (", ".join(ignored) or "gpgv reported none"))
    return Signers(good=tuple(dict.fromkeys(signers)), ignored=ignored)


def _apt_lines(data: bytes) -> Iterator[bytes]:
    """Lines as apt's `LineBuffer` reads them: split at LF, then line-end characters and trailing
    blanks (RFC 4880 7.1) removed."""
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line starts no new one
        lines.pop()
    for line in lines:
        yield line.rstrip(b"\r\n").rstrip(b" \t")


def check_clearsigned_layout(document: bytes) -> None:
    """Refuse an InRelease whose layout apt's `SplitClearSignedFile` refuses (raises
    SignatureError): gpgv alone would verify the signed block and ignore text around it."""
    lines = _apt_lines(document)
    if next(lines, None) != _BEGIN_SIGNED:
        if _BEGIN_SIGNED in document:
            raise SignatureError("text before the signed block (possible injection)")
        raise SignatureError("not a clearsigned document")
    for line in lines:  # armor headers ("Hash: …"), up to an empty line
        if not line:
            break
        if line.startswith(b"-"):
            raise SignatureError("an armor header of the signed block starts with a dash")
    else:
        raise SignatureError("clearsigned document ends in its armor headers")
    for line in lines:  # the signed text, dash-escaped
        if line == _BEGIN_SIGNATURE:
            break
        if line == _BEGIN_SIGNED:
            raise SignatureError("more than one signed block")
        if line.startswith(b"-") and not line.startswith(b"- "):
            raise SignatureError("a line of the signed text starts with an unescaped dash")
    else:
        raise SignatureError("clearsigned document has no signature")
    inside = True
    for line in lines:  # one or more armored signature blocks, nothing else
        if inside:
            if line == _END_SIGNATURE:
                inside = False
            elif line.startswith(b"-"):
                raise SignatureError("unexpected line starting with a dash in a signature block")
        elif line != _BEGIN_SIGNATURE:
            raise SignatureError("text after the signed block (unsigned lines)")
        else:
            inside = True
    if inside:
        raise SignatureError("signature block not closed")


def check_detached_layout(signature: bytes) -> None:
    """Refuse a Release.gpg that apt's `ExecGPGV` refuses before running gpgv (raises
    SignatureError): only armored signature blocks, no other lines, no binary signature."""
    inside = False
    blocks = 0
    stray = False
    for line in _apt_lines(signature):
        if inside:
            if line == _END_SIGNATURE:
                inside = False
            elif line.startswith(b"-"):
                raise SignatureError("unexpected line starting with a dash in a signature block")
        elif line == _BEGIN_SIGNATURE:
            inside = True
            blocks += 1
            if stray:
                break
        else:
            stray = True
            if blocks:
                break
    if blocks == 0:
        # apt guesses a binary signature from an old-format packet tag, and refuses it too.
        if signature[:1] and signature[0] & 0xC0 == 0x80:
            raise SignatureError("binary detached signature (apt accepts only armored ones)")
        raise SignatureError("no armored signature in the detached signature file (NODATA)")
    if stray:
        raise SignatureError("lines outside the signature blocks of the detached signature file")
    if inside:
        raise SignatureError("signature block not closed")


@dataclass(frozen=True, slots=True)
class _GpgvRun:
    status: tuple[str, ...]
    returncode: int
    stderr: str


def _binary_keyring(path: Path, workdir: Path) -> bytes:
    data = path.read_bytes()
    if _ARMOR_HEADER not in data:
        return data
    out = workdir / (path.name + ".gpg")
    result = subprocess.run(
        [
            "gpg",
            "--batch",
            "--no-options",
            "--homedir",
            str(workdir),
            "--yes",
            "--dearmor",
            "--output",
            str(out),
            str(path),
        ],
        capture_output=True,
        timeout=GPGV_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip()
        raise ConfigError(f"keyring {path}: gpg --dearmor failed: {reason}")
    return out.read_bytes()


def _fingerprints(keyring: Path, workdir: Path) -> frozenset[str]:
    result = subprocess.run(
        [*_GPG, "--homedir", str(workdir), "--with-colons", "--show-keys", str(keyring)],
        capture_output=True,
        timeout=GPGV_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"cannot read keyring {keyring}: {result.stderr.decode(errors='replace').strip()}"
        )
    fingerprints: set[str] = set()
    expect_primary_fpr = False
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            expect_primary_fpr = True
        elif fields[0] == "fpr" and expect_primary_fpr and len(fields) > 9:
            fingerprints.add(fields[9].upper())
            expect_primary_fpr = False
        elif fields[0] in ("sub", "uid"):
            expect_primary_fpr = False
    return frozenset(fingerprints)


class TrustedKeys:
    """The keyrings dhtdeb trusts, merged into one binary keyring that gpgv reads."""

    def __init__(
        self, keyring: Path, fingerprints: frozenset[str], sources: Sequence[Path]
    ) -> None:
        self.keyring = keyring
        self.fingerprints = fingerprints
        self.sources = tuple(sources)

    @classmethod
    def load(cls, paths: Iterable[Path], workdir: Path) -> TrustedKeys:
        """Merge keyring files (binary or ASCII-armoured) into `workdir/trusted.gpg`."""
        if shutil.which("gpgv") is None or shutil.which("gpg") is None:
            raise ConfigError("gpgv and gpg are required (Debian packages gpgv, gpg)")
        workdir.mkdir(parents=True, exist_ok=True)
        sources = [p for p in paths]
        if not sources:
            raise ConfigError(
                "no trusted keyring: give --keyring or install debian-archive-keyring"
            )
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            merged = b"".join(_binary_keyring(p, Path(scratch)) for p in sources)
            target = workdir / "trusted.gpg"
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(merged)
            os.replace(tmp, target)
            fingerprints = _fingerprints(target, Path(scratch))
        if not fingerprints:
            raise ConfigError("the trusted keyrings hold no usable keys")
        log.info("trusting %d keys from %d keyrings", len(fingerprints), len(sources))
        return cls(target, fingerprints, sources)

    def verify_clearsigned(self, document: bytes) -> VerifiedPayload:
        """Verify an InRelease; return gpgv's payload. Raises SignatureError."""
        check_clearsigned_layout(document)
        with tempfile.TemporaryDirectory(prefix="dhtdeb-gpgv-") as scratch:
            signed = Path(scratch) / "InRelease"
            payload = Path(scratch) / "payload"
            signed.write_bytes(document)
            signers = self._verify(Path(scratch), ["--output", str(payload), str(signed)])
            try:
                text = payload.read_bytes()
            except OSError as exc:
                raise SignatureError(f"gpgv wrote no payload: {exc}") from exc
            return VerifiedPayload(text, signers.good)

    def verify_detached(self, release: bytes, signature: bytes) -> VerifiedPayload:
        """Verify Release against Release.gpg. Raises SignatureError."""
        check_detached_layout(signature)
        with tempfile.TemporaryDirectory(prefix="dhtdeb-gpgv-") as scratch:
            data = Path(scratch) / "Release"
            sig = Path(scratch) / "Release.gpg"
            data.write_bytes(release)
            sig.write_bytes(signature)
            signers = self._verify(Path(scratch), [str(sig), str(data)])
            return VerifiedPayload(release, signers.good)

    def _verify(self, scratch: Path, args: list[str]) -> Signers:
        run = self._run_gpgv(scratch, args)
        if not run.status and run.returncode != 0:
            raise SignatureError(f"gpgv failed (exit {run.returncode}): {run.stderr}")
        signers = judge_status(run.status, self.fingerprints)
        if signers.ignored:
            log.debug("beside a good signature, ignored: %s", ", ".join(signers.ignored))
        return signers

    def _run_gpgv(self, scratch: Path, args: list[str]) -> _GpgvRun:
        # The status goes to a file, not a pipe: nothing to drain while gpgv runs, so a flood of
        # stderr cannot wedge it and the timeout covers everything.
        with (scratch / "status").open("w+b") as status_file:
            status_fd = status_file.fileno()
            try:
                result = subprocess.run(
                    [
                        *("gpgv", "--status-fd", str(status_fd)),
                        *("--keyring", str(self.keyring), *args),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=(status_fd,),
                    timeout=GPGV_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise SignatureError("gpgv timed out") from None
            except OSError as exc:
                raise SignatureError(f"cannot run gpgv: {exc}") from exc
            status_file.seek(0)
            status_bytes = status_file.read(MAX_STATUS_BYTES + 1)
        if len(status_bytes) > MAX_STATUS_BYTES:
            # Refused rather than cut: a BADSIG past the cut would go unseen.
            raise SignatureError("gpgv status output too large (too many signatures)")
        stderr = result.stderr.decode(errors="replace").strip()
        return _GpgvRun(
            tuple(status_bytes.decode(errors="replace").splitlines()),
            result.returncode,
            stderr.splitlines()[-1] if stderr else "",
        )


def default_keyrings(package_keys: Path | None) -> list[Path]:
    """keys/ shipped with dhtdeb plus the system's apt keyrings."""
    found: list[Path] = []
    if package_keys is not None and package_keys.is_dir():
        found += sorted(package_keys.glob("*.gpg")) + sorted(package_keys.glob("*.asc"))
    trusted_d = Path("/etc/apt/trusted.gpg.d")
    if trusted_d.is_dir():
        found += sorted(trusted_d.glob("*.gpg")) + sorted(trusted_d.glob("*.asc"))
    legacy = Path("/etc/apt/trusted.gpg")
    if legacy.is_file():
        found.append(legacy)
    keyrings = Path("/usr/share/keyrings")
    if keyrings.is_dir():
        found += sorted(p for p in keyrings.glob("debian-archive-*.gpg") if "removed" not in p.name)
    return [p for p in found if p.is_file() and p.stat().st_size > 0]


def shipped_keys_dir() -> Path | None:
    """Where the keys/ directory of this installation is (source tree or installed data files)."""
    here = Path(__file__).resolve().parent.parent.parent / "keys"
    candidates = [
        here,
        Path(sys.prefix) / "share" / "dhtdeb" / "keys",
        Path("/usr/share/dhtdeb/keys"),
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None
