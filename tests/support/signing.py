"""Signing Release files the way Debian does: several keys in one InRelease or Release.gpg.

Owns: a GNUPGHOME that holds the secret keys of several throwaway `SigningKey`s (gpg signs with
all of them in one run only when they share a home), and clearsigning / detached signing with a
chosen set of keys, digest and clock. Trusts: gpg.

Debian's bookworm InRelease carries three signatures (the 12/bookworm and 13/trixie automatic
signing keys and the 12/bookworm stable release key); tests build such files here.
"""

from __future__ import annotations

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
