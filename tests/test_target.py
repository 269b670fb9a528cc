"""Request targets: both apt modes, and everything that could escape the archive."""

import pytest

from dhtdeb.proxy.target import BadTarget, LocalTarget, UpstreamTarget, parse_target


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        (
            "http://Mirror.Example:8080/debian/dists/x/InRelease",
            "http://mirror.example:8080/debian/dists/x/InRelease",
        ),
        ("http://m.example:80/debian/pool/a.deb", "http://m.example/debian/pool/a.deb"),
        (
            "http://127.0.0.1:9/debian/pool/main/f/foo_0.1%7erc1_amd64.deb",
            "http://127.0.0.1:9/debian/pool/main/f/foo_0.1~rc1_amd64.deb",
        ),
        ("/127.0.0.1:9/debian/dists/s/InRelease", "http://127.0.0.1:9/debian/dists/s/InRelease"),
        ("/mirror.example/debian//pool/a.deb", "http://mirror.example/debian/pool/a.deb"),
        ("/[::1]:8080/debian/pool/a.deb", "http://[::1]:8080/debian/pool/a.deb"),
    ],
)
def test_upstream_targets_are_canonical(raw: str, url: str) -> None:
    target = parse_target(raw)
    assert isinstance(target, UpstreamTarget)
    assert target.url == url


@pytest.mark.parametrize("raw", ["/", "/health", "/status.json", "/metrics", "/peers/" + "a" * 64])
def test_local_pages(raw: str) -> None:
    assert isinstance(parse_target(raw), LocalTarget)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("/m.example/debian/../../etc/passwd", 400),
        ("/m.example/debian/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/m.example/debian/pool%2f..%2fsecret", 400),
        ("/m.example/debian/a\\..\\b", 400),
        ("/m.example/debian/a%00b.deb", 400),
        ("/m.example/debian/%ff.deb", 400),
        ("/../etc/passwd", 400),
        ("/user@m.example/x", 400),
        ("/m.example:99999/x", 400),
        ("http://user:pw@m.example/x", 400),
        ("https://m.example/x", 400),
        ("ftp://m.example/x", 400),
        ("m.example:443", 400),
        ("/m.example", 404),
        ("/" + "a" * 5000, 414),
    ],
)
def test_refused_targets(raw: str, status: int) -> None:
    with pytest.raises(BadTarget) as caught:
        parse_target(raw)
    assert caught.value.status == status
