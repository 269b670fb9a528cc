"""dhtdeb accepts a Release signature exactly when apt does (issue 11).

The differential table: each variant is an InRelease (or Release + Release.gpg) of one small
archive, signed by some keys and checked against a keyring of some keys. Real `apt-get update
--error-on=any`, with no proxy and that keyring as `signed-by`, decides accept or refuse;
`TrustedKeys`, loaded from the very same keyring file, must reach the same verdict. Each row also
states the verdict, so that the table documents apt's rules, and the gpgv status keywords of its
file, so that the file is known to be the case it claims to be (e.g. that gpg really made a SHA1
signature).

Then unit tests of the pure parts: the status-line judge (`judge_status`) on hand-written gpgv
status lines, and the layout checks apt makes before it runs gpgv.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.apt import AptClient
from support.archive import (
    SignedArchive,
    SigningKey,
    create_key,
    prepend_unsigned_paragraph,
    stop_key_agent,
)
from support.mirror import Mirror
from support.signing import (
    clearsign,
    create_expired_key,
    create_subkey_signer,
    detach_sign,
    gpgv_status,
    merge_clearsigned,
    merge_detached,
    revoked_keyring,
    shared_home,
    signature_packets,
)

from dhtdeb.archive.signature import (
    TrustedKeys,
    VerifiedPayload,
    check_clearsigned_layout,
    check_detached_layout,
    judge_status,
)
from dhtdeb.errors import SignatureError

# The expired key lived for one day from here; its signatures were made an hour into that day.
EXPIRED_KEY_CREATED = 1_577_836_800  # 2020-01-01 00:00 UTC
EXPIRED_KEY_SIGNED = EXPIRED_KEY_CREATED + 3600
# gpgv status keywords that describe a signature's fate; each variant states how many of each.
SIGNATURE_STATUS = (
    "GOODSIG",
    "BADSIG",
    "ERRSIG",
    "NO_PUBKEY",
    "EXPKEYSIG",
    "EXPSIG",
    "REVKEYSIG",
    "NODATA",
)


class ModuleKeys:
    """The throwaway keys of this module by name, their keyrings and how each one signs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, SigningKey] = {
            name: create_key(directory / name, name) for name in ("a", "b", "c", "untrusted")
        }
        self.keys["expired"] = create_expired_key(
            directory / "expired", "expired", created=EXPIRED_KEY_CREATED
        )
        self.keys["revoked"] = create_key(directory / "revoked", "revoked")
        self.keys["subkey"], subkey_primary = create_subkey_signer(directory / "subkey", "subkey")
        self.keyrings = {name: key.keyring for name, key in self.keys.items()}
        self.keyrings["revoked"] = revoked_keyring(self.keys["revoked"], directory)
        self.primaries = {name: key.fingerprint for name, key in self.keys.items()}
        self.primaries["subkey"] = subkey_primary

    def keyring(self, path: Path, names: tuple[str, ...]) -> Path:
        """One binary keyring file with the public keys of `names` (for apt and dhtdeb alike)."""
        path.write_bytes(b"".join(self.keyrings[name].read_bytes() for name in names))
        return path

    def _home_and_time(self, names: tuple[str, ...]) -> tuple[Path, int | None]:
        keys = [self.keys[name] for name in names]
        home = keys[0].gnupghome if len(keys) == 1 else shared_home(keys, self.directory)
        # The expired key signs while it was valid, and only alone (the others did not exist yet).
        faked_time = EXPIRED_KEY_SIGNED if "expired" in names else None
        if faked_time is not None and len(names) > 1:
            raise ValueError("the expired key signs alone; merge its signature with others")
        return home, faked_time

    def clearsign(self, data: bytes, *names: str, digest: str = "SHA512") -> bytes:
        home, faked_time = self._home_and_time(names)
        keys = [self.keys[name] for name in names]
        return clearsign(data, keys, home=home, digest=digest, faked_time=faked_time)

    def detach_sign(self, data: bytes, *names: str) -> bytes:
        home, faked_time = self._home_and_time(names)
        keys = [self.keys[name] for name in names]
        return detach_sign(data, keys, home=home, faked_time=faked_time)

    def stop_agents(self) -> None:
        for key in self.keys.values():
            stop_key_agent(key)


ORIGINAL = b"Description: dhtdeb test archive\n"
ALTERED = b"Description: dhtdeb test ARCHIVE\n"


def altered(release: bytes) -> bytes:
    """Other text than the Release: a signature over it is a BADSIG on the Release."""
    assert release.count(ORIGINAL) == 1
    return release.replace(ORIGINAL, ALTERED)


def signature_block(document: bytes) -> bytes:
    return document[document.index(b"-----BEGIN PGP SIGNATURE-----") :]


def with_unsigned_paragraph(archive: SignedArchive, in_release: bytes) -> bytes:
    """`in_release` behind the attack's unsigned paragraph (which lists bogus Packages hashes)."""
    path = archive.dist_dir / "InRelease"
    path.write_bytes(in_release)
    prepend_unsigned_paragraph(archive)
    return path.read_bytes()


Sign = Callable[[ModuleKeys, bytes, SignedArchive], bytes]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    # Keys in the keyring that apt (signed-by) and dhtdeb both get.
    trusted: tuple[str, ...]
    # Release -> InRelease, or -> Release.gpg when `detached`.
    sign: Sign
    # apt's verdict, as observed (the test checks it).
    accepted: bool
    # gpgv's status keywords for the file against that keyring (SIGNATURE_STATUS; absent: 0).
    status: dict[str, int]
    # Keys whose primary fingerprints dhtdeb reports, in order, when it accepts.
    signers: tuple[str, ...] = ()
    detached: bool = False
    # The hash algorithm ids of gpgv's VALIDSIG lines, sorted (2 SHA1, 10 SHA512), when it matters.
    digests: tuple[int, ...] | None = None
    # Only for a documented divergence: dhtdeb's verdict where it differs from apt's.
    dhtdeb_accepted: bool | None = None
    # Part of dhtdeb's SignatureError message when it refuses.
    refusal: str = ""


VARIANTS = (
    Variant(
        "one-signature",
        ("a",),
        lambda k, r, _: k.clearsign(r, "a"),
        accepted=True,
        status={"GOODSIG": 1},
        signers=("a",),
    ),
    Variant(
        "two-signatures",
        ("a", "b"),
        lambda k, r, _: k.clearsign(r, "a", "b"),
        accepted=True,
        status={"GOODSIG": 2},
        signers=("a", "b"),
    ),
    Variant(
        "three-signatures",
        ("a", "b", "c"),
        lambda k, r, _: k.clearsign(r, "a", "b", "c"),
        accepted=True,
        status={"GOODSIG": 3},
        signers=("a", "b", "c"),
    ),
    # Debian's InRelease on a machine whose keyring lacks one of the three keys.
    Variant(
        "three-signatures-one-key-missing",
        ("a", "b"),
        lambda k, r, _: k.clearsign(r, "a", "b", "c"),
        accepted=True,
        status={"GOODSIG": 2, "ERRSIG": 1, "NO_PUBKEY": 1},
        signers=("a", "b"),
    ),
    Variant(
        "bad-signature-among-good",
        ("a", "b", "c"),
        lambda k, r, _: merge_clearsigned(k.clearsign(r, "a", "b"), k.clearsign(altered(r), "c")),
        accepted=False,
        status={"GOODSIG": 2, "BADSIG": 1},
        refusal="BADSIG by ",
    ),
    Variant(
        "bad-signature-alone",
        ("a",),
        lambda k, r, _: k.clearsign(altered(r), "a").replace(ALTERED, ORIGINAL),
        accepted=False,
        status={"BADSIG": 1},
        refusal="BADSIG by ",
    ),
    Variant(
        "expired-key-alone",
        ("expired",),
        lambda k, r, _: k.clearsign(r, "expired"),
        accepted=False,
        status={"EXPKEYSIG": 1},
        refusal="no good signature: EXPKEYSIG ",
    ),
    Variant(
        "expired-key-beside-good",
        ("a", "expired"),
        lambda k, r, _: merge_clearsigned(k.clearsign(r, "a"), k.clearsign(r, "expired")),
        accepted=True,
        status={"GOODSIG": 1, "EXPKEYSIG": 1},
        signers=("a",),
    ),
    Variant(
        "revoked-key-alone",
        ("revoked",),
        lambda k, r, _: k.clearsign(r, "revoked"),
        accepted=False,
        status={"REVKEYSIG": 1},
        refusal="no good signature: REVKEYSIG ",
    ),
    Variant(
        "revoked-key-beside-good",
        ("a", "revoked"),
        lambda k, r, _: k.clearsign(r, "revoked", "a"),
        accepted=True,
        status={"GOODSIG": 1, "REVKEYSIG": 1},
        signers=("a",),
    ),
    # gpgv calls a SHA1 signature good; apt does not.
    Variant(
        "sha1-only",
        ("a",),
        lambda k, r, _: k.clearsign(r, "a", digest="SHA1"),
        accepted=False,
        status={"GOODSIG": 1},
        digests=(2,),
        refusal="(untrusted digest SHA1)",
    ),
    Variant(
        "sha1-beside-sha512",
        ("a", "b"),
        lambda k, r, _: merge_clearsigned(
            k.clearsign(r, "a", digest="SHA1"), k.clearsign(r, "b", digest="SHA512")
        ),
        accepted=True,
        status={"GOODSIG": 2},
        signers=("b",),
        digests=(2, 10),
    ),
    Variant(
        "untrusted-key-only",
        ("a",),
        lambda k, r, _: k.clearsign(r, "untrusted"),
        accepted=False,
        status={"ERRSIG": 1, "NO_PUBKEY": 1},
        refusal="no good signature: NO_PUBKEY ",
    ),
    # As Debian's keys sign: VALIDSIG names the subkey, then the primary key dhtdeb reports.
    Variant(
        "signing-subkey",
        ("subkey",),
        lambda k, r, _: k.clearsign(r, "subkey"),
        accepted=True,
        status={"GOODSIG": 1},
        signers=("subkey",),
    ),
    # gpgv alone verifies the signed block and ignores text around it; apt's splitter refuses.
    Variant(
        "unsigned-paragraph-prepended",
        ("a",),
        lambda k, r, archive: with_unsigned_paragraph(archive, k.clearsign(r, "a")),
        accepted=False,
        status={"GOODSIG": 1},
        refusal="text before the signed block (possible injection)",
    ),
    Variant(
        "blank-line-after-signature",
        ("a",),
        lambda k, r, _: k.clearsign(r, "a") + b"\n",
        accepted=False,
        status={"GOODSIG": 1},
        refusal="text after the signed block (unsigned lines)",
    ),
    Variant(
        "second-signature-block-good",
        ("a", "b"),
        lambda k, r, _: k.clearsign(r, "a") + signature_block(k.clearsign(r, "b")),
        accepted=True,
        status={"GOODSIG": 2},
        signers=("a", "b"),
    ),
    Variant(
        "second-signature-block-bad",
        ("a", "b"),
        lambda k, r, _: k.clearsign(r, "a") + signature_block(k.clearsign(altered(r), "b")),
        accepted=False,
        status={"GOODSIG": 1, "BADSIG": 1},
        refusal="BADSIG by ",
    ),
    # A known divergence, on the safe side: apt splits the InRelease itself and hands gpgv a
    # detached signature, dropping the `Hash:` armor header; dhtdeb gives gpgv the whole file (to
    # parse only gpgv's `--output`), and gpgv refuses a signature whose digest the header does not
    # name ("signature digest conflict", ERRSIG). dhtdeb then passes the repository through
    # unverified, and apt still checks it. No archive tool writes such a header.
    Variant(
        "hash-header-names-another-digest",
        ("a",),
        lambda k, r, _: k.clearsign(r, "a").replace(b"\nHash: SHA512\n", b"\nHash: SHA256\n", 1),
        accepted=True,
        status={"ERRSIG": 1},
        dhtdeb_accepted=False,
        refusal="no good signature: ERRSIG ",
    ),
    # Release + Release.gpg.
    Variant(
        "detached-three-signatures",
        ("a", "b", "c"),
        lambda k, r, _: k.detach_sign(r, "a", "b", "c"),
        accepted=True,
        status={"GOODSIG": 3},
        signers=("a", "b", "c"),
        detached=True,
    ),
    Variant(
        "detached-one-key-missing",
        ("a", "c"),
        lambda k, r, _: k.detach_sign(r, "a", "b", "c"),
        accepted=True,
        status={"GOODSIG": 2, "ERRSIG": 1, "NO_PUBKEY": 1},
        signers=("a", "c"),
        detached=True,
    ),
    Variant(
        "detached-bad-among-good",
        ("a", "b", "c"),
        lambda k, r, _: merge_detached(k.detach_sign(r, "a", "b"), k.detach_sign(altered(r), "c")),
        accepted=False,
        status={"GOODSIG": 2, "BADSIG": 1},
        detached=True,
        refusal="BADSIG by ",
    ),
    Variant(
        "detached-expired-key-beside-good",
        ("a", "expired"),
        lambda k, r, _: merge_detached(k.detach_sign(r, "expired"), k.detach_sign(r, "a")),
        accepted=True,
        status={"GOODSIG": 1, "EXPKEYSIG": 1},
        signers=("a",),
        detached=True,
    ),
    Variant(
        "detached-untrusted-key-only",
        ("a",),
        lambda k, r, _: k.detach_sign(r, "untrusted"),
        accepted=False,
        status={"ERRSIG": 1, "NO_PUBKEY": 1},
        detached=True,
        refusal="no good signature: NO_PUBKEY ",
    ),
    # gpgv verifies a binary Release.gpg; apt refuses it before running gpgv.
    Variant(
        "detached-binary-signature",
        ("a",),
        lambda k, r, _: signature_packets(k.detach_sign(r, "a")),
        accepted=False,
        status={"GOODSIG": 1},
        detached=True,
        refusal="binary detached signature (apt accepts only armored ones)",
    ),
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleKeys]:
    test_keys = ModuleKeys(tmp_path_factory.mktemp("signature-keys"))
    yield test_keys
    test_keys.stop_agents()


@pytest.fixture(scope="module")
def archive(
    signed_archive: SignedArchive, tmp_path_factory: pytest.TempPathFactory
) -> SignedArchive:
    """The standard archive's dists/ (all `apt-get update` reads), whose signatures each test
    replaces."""
    root = tmp_path_factory.mktemp("signature-archive")
    own = dataclasses.replace(signed_archive, root=root)
    shutil.copytree(signed_archive.dist_dir, own.dist_dir)
    return own


@pytest.fixture(scope="module")
def archive_mirror(archive: SignedArchive) -> Iterator[Mirror]:
    with Mirror(archive.root) as mirror:
        yield mirror


def _publish(archive: SignedArchive, signed: bytes, *, detached: bool) -> Path:
    """Serve `signed` as the suite's only signature file; returns its path."""
    dist = archive.dist_dir
    for name in ("InRelease", "Release.gpg"):
        (dist / name).unlink(missing_ok=True)
    target = dist / ("Release.gpg" if detached else "InRelease")
    target.write_bytes(signed)
    return target


def _status_counts(lines: list[str]) -> dict[str, int]:
    counts = collections.Counter(line.split()[0] for line in lines if line.split())
    return {keyword: counts[keyword] for keyword in SIGNATURE_STATUS if counts[keyword]}


def _digests(lines: list[str]) -> tuple[int, ...]:
    return tuple(sorted(int(line.split()[8]) for line in lines if line.startswith("VALIDSIG ")))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_dhtdeb_accepts_a_signature_exactly_when_apt_does(
    variant: Variant,
    keys: ModuleKeys,
    archive: SignedArchive,
    archive_mirror: Mirror,
    tmp_path: Path,
) -> None:
    release_path = archive.dist_dir / "Release"
    release = release_path.read_bytes()
    signed = variant.sign(keys, release, archive)
    keyring = keys.keyring(tmp_path / "keyring.gpg", variant.trusted)
    signed_path = _publish(archive, signed, detached=variant.detached)

    # The file is what the row says it is.
    status = gpgv_status(keyring, signed_path, release_path if variant.detached else None)
    assert _status_counts(status) == variant.status, status
    if variant.digests is not None:
        assert _digests(status) == variant.digests, status

    apt = AptClient(
        tmp_path / "apt",
        mirror_url=archive_mirror.url,
        suite=archive.suite,
        component=archive.component,
        keyring=keyring,
        arch=archive.arch,
    ).update()

    trusted = TrustedKeys.load([keyring], tmp_path / "dhtdeb")
    payload: VerifiedPayload | None = None
    try:
        if variant.detached:
            payload = trusted.verify_detached(release, signed)
        else:
            payload = trusted.verify_clearsigned(signed)
        dhtdeb_says = f"accepted, signed by {payload.fingerprints}"
    except SignatureError as exc:
        dhtdeb_says = f"refused: {exc}"

    assert apt.ok == variant.accepted, apt.output
    if apt.ok:
        assert "W:" not in apt.output, apt.output
    else:
        # Refused for its signature, not for anything else.
        assert "is not signed." in apt.output, apt.output
    dhtdeb_expected = (
        variant.accepted if variant.dhtdeb_accepted is None else variant.dhtdeb_accepted
    )
    assert (payload is not None) == dhtdeb_expected, f"apt: {apt.output}\ndhtdeb {dhtdeb_says}"
    if payload is None:
        assert variant.refusal and variant.refusal in dhtdeb_says, dhtdeb_says
    else:
        assert payload.text == release
        assert payload.fingerprints == tuple(keys.primaries[name] for name in variant.signers)
        assert payload.fingerprint == payload.fingerprints[0]


# --- the status-line judge, fed directly ----------------------------------------------------------

A = "A" * 24 + "1111111111111111"
B = "B" * 24 + "2222222222222222"
SUB = "C" * 24 + "3333333333333333"


def goodsig(fpr: str, *, digest: int = 10, primary: str | None = None) -> list[str]:
    """The status lines of one good signature by `fpr` (signing key), made with `digest`."""
    return [
        "[GNUPG:] NEWSIG",
        f"[GNUPG:] GOODSIG {fpr[-16:]} dhtdeb test <t@dhtdeb.invalid>",
        f"[GNUPG:] VALIDSIG {fpr} 2026-12-02 1796238701 0 4 0 22 {digest} 01 {primary or fpr}",
    ]


def nopubkey(key_id: str) -> list[str]:
    return [
        "[GNUPG:] NEWSIG",
        f"[GNUPG:] ERRSIG {key_id} 22 10 01 1796238701 9 -",
        f"[GNUPG:] NO_PUBKEY {key_id}",
    ]


def refused(lines: list[str], allowed: frozenset[str] = frozenset({A, B})) -> str:
    with pytest.raises(SignatureError) as info:
        judge_status(lines, allowed)
    return str(info.value)


def test_good_signature_with_sha512_is_accepted() -> None:
    signers = judge_status(goodsig(A, digest=10), {A})
    assert signers.good == (A,)
    assert signers.ignored == ()


def test_good_signature_with_sha256_is_accepted() -> None:
    assert judge_status(goodsig(A, digest=8), {A}).good == (A,)


@pytest.mark.parametrize(("digest", "name"), [(1, "MD5"), (2, "SHA1"), (3, "RIPEMD160")])
def test_good_signature_with_an_untrusted_digest_is_worthless(digest: int, name: str) -> None:
    message = refused(goodsig(A, digest=digest))
    assert message == f"no good signature: VALIDSIG {A} (untrusted digest {name})"


def test_sha1_signature_beside_a_good_one_is_ignored() -> None:
    signers = judge_status(goodsig(A, digest=2) + goodsig(B, digest=10), {A, B})
    assert signers.good == (B,)
    assert signers.ignored == (f"VALIDSIG {A} (untrusted digest SHA1)",)


def test_missing_key_alone_is_refused() -> None:
    assert refused(nopubkey("DEADBEEFDEADBEEF")) == "no good signature: NO_PUBKEY DEADBEEFDEADBEEF"


def test_missing_key_beside_a_good_signature_is_ignored() -> None:
    signers = judge_status(goodsig(A) + nopubkey("DEADBEEFDEADBEEF") + goodsig(B), {A, B})
    assert signers.good == (A, B)
    assert signers.ignored == ("NO_PUBKEY DEADBEEFDEADBEEF",)


def test_errsig_without_no_pubkey_is_worthless() -> None:
    lines = ["[GNUPG:] NEWSIG", "[GNUPG:] ERRSIG DEADBEEFDEADBEEF 22 10 01 1796238701 1 -"]
    assert refused(lines) == "no good signature: ERRSIG DEADBEEFDEADBEEF"
    # An ERRSIG is cleared only by a NO_PUBKEY for the same key.
    assert refused([*lines, "[GNUPG:] NO_PUBKEY 0123456789ABCDEF"]) == (
        "no good signature: NO_PUBKEY 0123456789ABCDEF, ERRSIG DEADBEEFDEADBEEF"
    )
    assert judge_status([*goodsig(A), *lines], {A}).ignored == ("ERRSIG DEADBEEFDEADBEEF",)


@pytest.mark.parametrize("keyword", ["EXPKEYSIG", "EXPSIG", "REVKEYSIG"])
def test_expired_or_revoked_signature_is_worthless(keyword: str) -> None:
    lines = [
        "[GNUPG:] NEWSIG",
        f"[GNUPG:] {keyword} {A[-16:]} dhtdeb test <t@dhtdeb.invalid>",
        f"[GNUPG:] VALIDSIG {A} 2020-01-01 1577840400 0 4 0 22 10 01 {A}",
    ]
    assert refused(lines) == f"no good signature: {keyword} {A[-16:]}"
    # Beside a good signature it does no harm.
    assert judge_status([*lines, *goodsig(B)], {A, B}).good == (B,)


def test_bad_signature_is_refused_even_beside_good_ones() -> None:
    bad = ["[GNUPG:] NEWSIG", f"[GNUPG:] BADSIG {B[-16:]} dhtdeb test <t@dhtdeb.invalid>"]
    assert refused(goodsig(A) + bad) == f"BADSIG by {B[-16:]}"
    assert refused(bad + goodsig(A)) == f"BADSIG by {B[-16:]}"


def test_nodata_is_refused() -> None:
    assert refused(["[GNUPG:] NODATA 1"]) == "gpgv found no signature data (NODATA)"
    assert refused([*goodsig(A), "[GNUPG:] NODATA 4"]) == "gpgv found no signature data (NODATA)"


def test_error_status_is_refused() -> None:
    lines = [*goodsig(A), "[GNUPG:] ERROR keydb_search 33554445"]
    assert refused(lines) == "gpgv reported an error: keydb_search 33554445"


def test_good_signature_by_a_key_outside_the_allow_list_counts_as_a_missing_key() -> None:
    assert refused(goodsig(A), allowed=frozenset({B})) == (
        f"no good signature: GOODSIG {A[-16:]} (primary key {A} is not in the allow-list)"
    )
    signers = judge_status(goodsig(A) + goodsig(B), {B})
    assert signers.good == (B,)
    assert signers.ignored == (f"GOODSIG {A[-16:]} (primary key {A} is not in the allow-list)",)


def test_goodsig_without_validsig_does_not_count() -> None:
    lines = [f"[GNUPG:] GOODSIG {A[-16:]} dhtdeb test <t@dhtdeb.invalid>"]
    assert refused(lines) == f"no good signature: GOODSIG {A[-16:]} (no VALIDSIG names its key)"


def test_subkey_signature_reports_the_allowed_primary_key() -> None:
    assert judge_status(goodsig(SUB, primary=A), {A}).good == (A,)
    # The subkey's own fingerprint is not a primary key in the allow-list.
    assert "not in the allow-list" in refused(goodsig(SUB, primary=A), allowed=frozenset({SUB}))


def test_goodsig_may_name_a_whole_fingerprint() -> None:
    lines = [
        f"[GNUPG:] GOODSIG {A} dhtdeb test <t@dhtdeb.invalid>",
        f"[GNUPG:] VALIDSIG {A} 2026-12-02 1796238701 0 4 0 22 10 01 {A}",
    ]
    assert judge_status(lines, {A}).good == (A,)


def test_each_primary_key_is_reported_once_and_other_lines_are_ignored() -> None:
    lines = [
        "gpgv: Good signature from somebody",
        *goodsig(A),
        *goodsig(SUB, primary=A),
        "[GNUPG:] KEY_CONSIDERED " + A + " 0",
        "[GNUPG:]",
    ]
    assert judge_status(lines, {A}).good == (A,)


def test_nothing_at_all_is_refused() -> None:
    assert refused([]) == "no good signature: gpgv reported none"


# Debian bookworm's InRelease (December 2026) checked against a keyring that lacks the trixie key:
# NO_PUBKEY beside two good signatures by signing subkeys, which apt accepts.
BOOKWORM_MISSING_TRIXIE_KEY = """\
[GNUPG:] PLAINTEXT 74 0
[GNUPG:] NEWSIG
[GNUPG:] SIG_ID AgpdPZ7z8h3tPdbJ5G8ASdhxELQ 2026-07-11 1783765031
[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian Archive Automatic Signing Key (12/bookworm) <ftpmaster@debian.org>
[GNUPG:] VALIDSIG 4CB50190207B4758A3F73A796ED0E7B82643E131 2026-07-11 1783765031 0 4 0 1 8 01 B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8
[GNUPG:] NEWSIG
[GNUPG:] ERRSIG 78DBA3BC47EF2265 1 8 01 1783765032 9 B8E5F13176D2A7A75220028078DBA3BC47EF2265
[GNUPG:] NO_PUBKEY 78DBA3BC47EF2265
[GNUPG:] NEWSIG
[GNUPG:] SIG_ID Gl4sdUCMYWRx29C3McjkiwtuFHQ 2026-07-11 1783765141
[GNUPG:] GOODSIG F8D2585B8783D481 Debian Stable Release Key (12/bookworm) <debian-release@lists.debian.org>
[GNUPG:] VALIDSIG 4D64FEC119C2029067D6E791F8D2585B8783D481 2026-07-11 1783765141 0 4 0 22 8 01 4D64FEC119C2029067D6E791F8D2585B8783D481
"""  # noqa: E501


def test_debian_bookworm_with_one_key_missing_is_accepted() -> None:
    automatic = "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"
    stable = "4D64FEC119C2029067D6E791F8D2585B8783D481"
    signers = judge_status(BOOKWORM_MISSING_TRIXIE_KEY.splitlines(), {automatic, stable})
    assert signers.good == (automatic, stable)
    assert signers.ignored == ("NO_PUBKEY 78DBA3BC47EF2265",)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [*goodsig(A), *goodsig(B, digest=2), *nopubkey("DEADBEEFDEADBEEF"), "[GNUPG:] "]
            ),
            st.text(max_size=80).map(lambda s: "[GNUPG:] " + s),
        ),
        max_size=12,
    )
)
def test_judge_returns_signers_or_raises_signature_error(lines: list[str]) -> None:
    try:
        signers = judge_status(lines, {A, B})
    except SignatureError:
        return
    assert signers.good and set(signers.good) <= {A, B}


# --- the layout checks apt makes before gpgv ------------------------------------------------------

SIGNATURE = b"-----BEGIN PGP SIGNATURE-----\n\niHUEARYKAB0WIQ\n=aqoG\n-----END PGP SIGNATURE-----\n"
CLEARSIGNED = (
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: x\nSuite: y\n" + SIGNATURE
)


def layout_refused(document: bytes) -> str:
    with pytest.raises(SignatureError) as info:
        check_clearsigned_layout(document)
    return str(info.value)


def test_clearsigned_layout_accepts_what_gpg_writes() -> None:
    check_clearsigned_layout(CLEARSIGNED)
    check_clearsigned_layout(CLEARSIGNED + SIGNATURE)  # a second signature block
    check_clearsigned_layout(CLEARSIGNED.replace(b"\n", b"\r\n"))
    check_clearsigned_layout(CLEARSIGNED.replace(b"Suite: y\n", b"Suite: y\n- -dashed\n"))
    check_clearsigned_layout(CLEARSIGNED.rstrip(b"\n"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"", "not a clearsigned document"),
        (b"Origin: x\n", "not a clearsigned document"),
        (b"Origin: evil\n\n" + CLEARSIGNED, "text before the signed block (possible injection)"),
        (b"\n" + CLEARSIGNED, "text before the signed block (possible injection)"),
        (CLEARSIGNED + b"\n", "text after the signed block (unsigned lines)"),
        (CLEARSIGNED + b"Origin: evil\n", "text after the signed block (unsigned lines)"),
        (
            CLEARSIGNED.replace(b"Suite: y\n", b"Suite: y\n" + CLEARSIGNED),
            "more than one signed block",
        ),
        (
            CLEARSIGNED.replace(b"Suite: y\n", b"Suite: y\n-dashed\n"),
            "a line of the signed text starts with an unescaped dash",
        ),
        (
            CLEARSIGNED.replace(b"Hash: SHA512\n", b"Hash: SHA512\n-Hash: MD5\n"),
            "an armor header of the signed block starts with a dash",
        ),
        (
            CLEARSIGNED[: CLEARSIGNED.index(b"Hash")],
            "clearsigned document ends in its armor headers",
        ),
        (
            CLEARSIGNED[: CLEARSIGNED.index(b"-----BEGIN PGP SIGNATURE")],
            "clearsigned document has no signature",
        ),
        (CLEARSIGNED[: CLEARSIGNED.index(b"-----END")], "signature block not closed"),
        (
            CLEARSIGNED.replace(b"=aqoG\n", b"=aqoG\n-----BEGIN PGP SIGNATURE-----\n"),
            "unexpected line starting with a dash in a signature block",
        ),
    ],
)
def test_clearsigned_layout_refuses_what_apt_refuses(document: bytes, message: str) -> None:
    assert layout_refused(document) == message


def test_detached_layout() -> None:
    check_detached_layout(SIGNATURE)
    check_detached_layout(SIGNATURE + SIGNATURE)
    for bad, message in [
        (b"", "no armored signature in the detached signature file (NODATA)"),
        (b"\x88\x75\x04\x00binary", "binary detached signature (apt accepts only armored ones)"),
        (b"\n" + SIGNATURE, "lines outside the signature blocks of the detached signature file"),
        (
            SIGNATURE + b"junk\n",
            "lines outside the signature blocks of the detached signature file",
        ),
        (SIGNATURE.replace(b"-----END PGP SIGNATURE-----\n", b""), "signature block not closed"),
    ]:
        with pytest.raises(SignatureError) as info:
            check_detached_layout(bad)
        assert str(info.value) == message


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=40))
def test_layout_checks_only_ever_raise_signature_error(noise: bytes, splice: bytes) -> None:
    for document in (noise, CLEARSIGNED[: len(noise)] + splice, CLEARSIGNED + noise):
        for check in (check_clearsigned_layout, check_detached_layout):
            try:
                check(document)
            except SignatureError:
                pass
