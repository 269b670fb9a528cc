"""OpenPGP verification of Release files with gpgv, the verifier apt itself uses.

Owns: the trusted keyring set and the fingerprint allow-list; running gpgv; reading its status
lines. Trusts: only gpgv's machine-readable status output and the payload gpgv writes with
`--output`.
The raw InRelease bytes are never parsed: text outside the signed block (an unsigned paragraph
prepended by an attacker) is rejected outright, and the payload comes from gpgv.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dhtdeb.errors import ConfigError, SignatureError

log = logging.getLogger(__name__)

GPGV_TIMEOUT = 30.0
_BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
_END_SIGNATURE = b"-----END PGP SIGNATURE-----"
_ARMOR_HEADER = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_GPG = ("gpg", "--batch", "--no-options")


@dataclass(frozen=True, slots=True)
class VerifiedPayload:
    """Release text that gpgv verified, and the primary key fingerprint that signed it."""

    text: bytes
    fingerprint: str


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
        start = document.find(_BEGIN_SIGNED)
        end = document.rfind(_END_SIGNATURE)
        if start < 0 or end < 0:
            raise SignatureError("not a clearsigned document")
        if document[:start].strip() or document[end + len(_END_SIGNATURE) :].strip():
            raise SignatureError("text outside the signed block (possible injection)")
        if document.count(_BEGIN_SIGNED) != 1:
            raise SignatureError("more than one signed block")
        with tempfile.TemporaryDirectory(prefix="dhtdeb-gpgv-") as scratch:
            signed = Path(scratch) / "InRelease"
            payload = Path(scratch) / "payload"
            signed.write_bytes(document)
            status = self._run_gpgv(["--output", str(payload), str(signed)])
            fingerprint = self._accept(status)
            return VerifiedPayload(payload.read_bytes(), fingerprint)

    def verify_detached(self, release: bytes, signature: bytes) -> VerifiedPayload:
        """Verify Release against Release.gpg. Raises SignatureError."""
        with tempfile.TemporaryDirectory(prefix="dhtdeb-gpgv-") as scratch:
            data = Path(scratch) / "Release"
            sig = Path(scratch) / "Release.gpg"
            data.write_bytes(release)
            sig.write_bytes(signature)
            status = self._run_gpgv([str(sig), str(data)])
            return VerifiedPayload(release, self._accept(status))

    def _run_gpgv(self, args: list[str]) -> list[list[str]]:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                ["gpgv", "--status-fd", str(write_fd), "--keyring", str(self.keyring), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            raise SignatureError(f"cannot run gpgv: {exc}") from exc
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as status_pipe:
            status_bytes = status_pipe.read(1 << 20)
        try:
            proc.communicate(timeout=GPGV_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise SignatureError("gpgv timed out") from None
        lines = []
        for raw in status_bytes.decode(errors="replace").splitlines():
            if raw.startswith("[GNUPG:] "):
                lines.append(raw[len("[GNUPG:] ") :].split())
        if proc.returncode != 0 and not any(line and line[0] == "VALIDSIG" for line in lines):
            reasons = sorted({line[0] for line in lines if line} & _FAILURE_STATUS) or [
                "gpgv failed"
            ]
            raise SignatureError("signature not accepted: " + ", ".join(reasons))
        if proc.returncode != 0:
            raise SignatureError(f"gpgv exited with status {proc.returncode}")
        return lines

    def _accept(self, status: list[list[str]]) -> str:
        keywords = [line[0] for line in status if line]
        bad = sorted(set(keywords) & _FAILURE_STATUS)
        if bad:
            raise SignatureError("signature not accepted: " + ", ".join(bad))
        valid = [line for line in status if line and line[0] == "VALIDSIG"]
        if len(valid) != 1 or keywords.count("GOODSIG") != 1:
            raise SignatureError("expected exactly one good signature")
        fields = valid[0]
        primary = fields[10].upper() if len(fields) > 10 else fields[1].upper()
        if primary not in self.fingerprints:
            raise SignatureError(f"signed by {primary}, which is not in the allow-list")
        return primary


# Status keywords after which a signature must not be believed, as apt also treats them.
_FAILURE_STATUS = frozenset(
    {"BADSIG", "ERRSIG", "NO_PUBKEY", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NODATA", "BADARMOR"}
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
