"""Signing Release files the way Debian does: several keys in one InRelease or Release.gpg.

Owns: a GNUPGHOME that holds the secret keys of several throwaway `SigningKey`s (gpg signs with
all of them in one run only when they share a home), and clearsigning / detached signing with a
chosen set of keys, digest and clock; keys that have expired, are revoked or sign with a subkey;
signature packets moved between files (to put a bad signature beside good ones); gpgv's status
lines for a file, so that a test can check it built what it meant to. Trusts: gpg, gpgv.

Debian's bookworm InRelease carries three signatures (the 12/bookworm and 13/trixie automatic
signing keys and the 12/bookworm stable release key); tests build such files here.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from support.archive import ArchiveToolError, SigningKey, stop_key_agent

_TOOL_TIMEOUT = 120.0


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    argv = [
        *("gpg", "--batch", "--no-tty", "--homedir", str(home)),
        *("--pinentry-mode", "loopback", "--passphrase", "", *args),
    ]
    result = subprocess.run(
        argv, input=stdin, capture_output=True, timeout=_TOOL_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise ArchiveToolError(
            f"{' '.join(argv)} exited {result.returncode}:\n"
            f"{result.stderr.decode(errors='replace')}"
        )
    return result.stdout


def shared_home(keys: Sequence[SigningKey], directory: Path) -> Path:
    """A GNUPGHOME under `directory` holding the secret keys of `keys` (made once, then reused:
    its name is derived from the fingerprints)."""
    tag = hashlib.sha256("".join(k.fingerprint for k in keys).encode()).hexdigest()[:12]
    home = directory / f"gnupghome-{tag}"
    if home.is_dir():
        return home
    scratch = Path(tempfile.mkdtemp(prefix=".home-", dir=directory))
    scratch.chmod(0o700)
    for key in keys:
        secret = _gpg(key.gnupghome, "--armor", "--export-secret-keys", key.fingerprint)
        stop_key_agent(key)
        _gpg(scratch, "--import", stdin=secret)
    _stop_agent(scratch)
    scratch.rename(home)
    return home


def _stop_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "all"],
        capture_output=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
    )


def _sign(
    data: bytes,
    keys: Sequence[SigningKey],
    mode: str,
    *,
    home: Path,
    digest: str,
    faked_time: int | None,
) -> bytes:
    if not keys:
        raise ValueError("signing needs at least one key")
    args = ["--armor", "--digest-algo", digest]
    if faked_time is not None:
        args += ["--faked-system-time", f"{faked_time}!"]
    for key in keys:
        args += ["--local-user", f"{key.fingerprint}!"]
    try:
        return _gpg(home, *args, "--output", "-", mode, stdin=data)
    finally:
        _stop_agent(home)


def clearsign(
    data: bytes,
    keys: Sequence[SigningKey],
    *,
    home: Path,
    digest: str = "SHA512",
    faked_time: int | None = None,
) -> bytes:
    """An InRelease: `data` clearsigned by every key in `keys` (one signature each), made in
    `home` (from `shared_home`). `faked_time` (seconds since the epoch) signs as of that time."""
    return _sign(data, keys, "--clearsign", home=home, digest=digest, faked_time=faked_time)


def detach_sign(
    data: bytes,
    keys: Sequence[SigningKey],
    *,
    home: Path,
    digest: str = "SHA512",
    faked_time: int | None = None,
) -> bytes:
    """A Release.gpg: detached signatures of `data` by every key in `keys`."""
    return _sign(data, keys, "--detach-sign", home=home, digest=digest, faked_time=faked_time)


# --- keys as real archives have them: expired, revoked, signing with a subkey ------------------


def _new_key(
    directory: Path, name: str, usage: str, expiry: str, *, faked_time: int | None = None
) -> Path:
    """A GNUPGHOME `directory/gnupghome` with a new ed25519 primary key, made at `faked_time`."""
    home = directory / "gnupghome"
    home.mkdir(parents=True, mode=0o700)
    uid = f"dhtdeb test {name} <{name}@dhtdeb.invalid>"
    clock = () if faked_time is None else ("--faked-system-time", f"{faked_time}!")
    _gpg(home, *clock, "--quick-gen-key", uid, "ed25519", usage, expiry)
    return home


def _fingerprints(home: Path) -> list[str]:
    """Fingerprints of the keys in `home`, primary first, then its subkeys."""
    out = _gpg(home, "--with-colons", "--list-keys").decode()
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]


def create_expired_key(directory: Path, name: str, *, created: int) -> SigningKey:
    """An ed25519 key made at `created` (seconds since the epoch, in the past) that expired a day
    later. Sign with `faked_time` inside that day: gpgv then reports EXPKEYSIG (with VALIDSIG)."""
    home = _new_key(directory, name, "sign", "1d", faked_time=created)
    fingerprint = _fingerprints(home)[0]
    keyring = directory / f"{name}.gpg"
    keyring.write_bytes(_gpg(home, "--export", fingerprint))
    _stop_agent(home)
    return SigningKey(name=name, gnupghome=home, fingerprint=fingerprint, keyring=keyring)


def revoked_keyring(key: SigningKey, directory: Path) -> Path:
    """A keyring file (under `directory`) holding `key` together with its revocation certificate;
    gpgv reports REVKEYSIG for its signatures. The key's own GNUPGHOME is left unrevoked, so it
    still signs (a file signed before the key was revoked)."""
    certificate = (key.gnupghome / "openpgp-revocs.d" / f"{key.fingerprint}.rev").read_text()
    # gpg writes the certificate with a ':' in front of the armor header against accidental use.
    certificate = certificate.replace(":-----BEGIN", "-----BEGIN")
    scratch = Path(tempfile.mkdtemp(prefix=".revoke-", dir=directory))
    scratch.chmod(0o700)
    try:
        _gpg(scratch, "--import", str(key.keyring))
        _gpg(scratch, "--import", stdin=certificate.encode())
        keyring = directory / f"{key.name}-revoked.gpg"
        keyring.write_bytes(_gpg(scratch, "--export", key.fingerprint))
    finally:
        _stop_agent(scratch)
    return keyring


def create_subkey_signer(directory: Path, name: str) -> tuple[SigningKey, str]:
    """An ed25519 primary key with an ed25519 signing subkey, as Debian's archive keys are.

    Returns the signer, whose `fingerprint` is the subkey's (so `clearsign` signs with the
    subkey), and the primary key's fingerprint, which gpgv names last on VALIDSIG."""
    home = _new_key(directory, name, "cert", "never")
    primary = _fingerprints(home)[0]
    _gpg(home, "--quick-add-key", primary, "ed25519", "sign", "never")
    subkey = _fingerprints(home)[-1]
    keyring = directory / f"{name}.gpg"
    keyring.write_bytes(_gpg(home, "--export", primary))
    _stop_agent(home)
    return SigningKey(name=name, gnupghome=home, fingerprint=subkey, keyring=keyring), primary


# --- signature packets --------------------------------------------------------------------------

_BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
_BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
_END_SIGNATURE = b"-----END PGP SIGNATURE-----"


def _crc24(data: bytes) -> int:
    """The OpenPGP armor checksum (RFC 4880 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def signature_packets(armored: bytes) -> bytes:
    """The binary signature packets of every armored signature block in `armored` (an InRelease
    or a Release.gpg), in order: also a Release.gpg in the binary form apt refuses."""
    packets = b""
    rest = armored
    while (start := rest.find(_BEGIN_SIGNATURE)) >= 0:
        end = rest.index(_END_SIGNATURE, start)
        lines = rest[start:end].decode("ascii").splitlines()[1:]
        body = lines[lines.index("") + 1 :]  # after the armor headers
        packets += base64.b64decode("".join(line for line in body if not line.startswith("=")))
        rest = rest[end + len(_END_SIGNATURE) :]
    if not packets:
        raise ValueError("no armored signature block")
    return packets


def armor_signature(packets: bytes) -> bytes:
    """One armored signature block, as gpg writes it, holding `packets`."""
    text = base64.b64encode(packets).decode("ascii")
    lines = [_BEGIN_SIGNATURE.decode(), ""]
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    lines.append("=" + base64.b64encode(_crc24(packets).to_bytes(3, "big")).decode("ascii"))
    lines.append(_END_SIGNATURE.decode())
    return ("\n".join(lines) + "\n").encode("ascii")


def _clearsigned_parts(document: bytes) -> tuple[list[str], bytes]:
    """The `Hash:` algorithms of a clearsigned document and its signed text (as written)."""
    if not document.startswith(_BEGIN_SIGNED + b"\n"):
        raise ValueError("not a clearsigned document")
    headers, _, rest = document[len(_BEGIN_SIGNED) + 1 :].partition(b"\n\n")
    digests: list[str] = []
    for header in headers.decode("ascii").splitlines():
        if header.startswith("Hash: "):
            digests += header.removeprefix("Hash: ").split(",")
    return digests, rest[: rest.index(b"\n" + _BEGIN_SIGNATURE) + 1]


def merge_clearsigned(first: bytes, *others: bytes) -> bytes:
    """The signed text of `first` followed by one signature block with the signatures of `first`
    and all `others`, the `Hash:` header naming every digest they use (as gpg writes it for
    signatures with different digests). A signature of `others` over a different text is then a
    bad signature among good ones, as is one made at another (faked) time by an expired key."""
    digests, text = _clearsigned_parts(first)
    for other in others:
        digests += _clearsigned_parts(other)[0]
    header = b"Hash: " + ",".join(dict.fromkeys(digests)).encode("ascii") + b"\n"
    packets = b"".join(signature_packets(doc) for doc in (first, *others))
    return _BEGIN_SIGNED + b"\n" + header + b"\n" + text + armor_signature(packets)


def merge_detached(*signatures: bytes) -> bytes:
    """One armored Release.gpg holding the signatures of all `signatures`."""
    return armor_signature(b"".join(signature_packets(sig) for sig in signatures))


def gpgv_status(keyring: Path, signed: Path, data: Path | None = None) -> list[str]:
    """gpgv's status lines (without the "[GNUPG:] " prefix) for an InRelease, or for a detached
    signature `signed` over `data`, checked against `keyring`."""
    argv = ["gpgv", "--status-fd", "1", "--keyring", str(keyring), str(signed)]
    if data is not None:
        argv.append(str(data))
    result = subprocess.run(
        argv, capture_output=True, timeout=_TOOL_TIMEOUT, check=False, stdin=subprocess.DEVNULL
    )
    lines = result.stdout.decode(errors="replace").splitlines()
    return [line.removeprefix("[GNUPG:] ") for line in lines if line.startswith("[GNUPG:] ")]
