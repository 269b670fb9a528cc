"""The config file of `dhtdeb serve` (dhtdeb/config_file.py): precedence default < file < flag,
`dhtdeb config show` naming each value's source, one-line errors naming file, line and key, the
example systemd/dhtdeb.toml, and a real daemon started from a file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from support import wait_until
from typer.testing import CliRunner, Result

from dhtdeb import config_file
from dhtdeb.cli import app
from dhtdeb.config_file import SETTINGS

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "dhtdeb.toml"


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's /etc/dhtdeb/dhtdeb.toml must not leak into the tests."""
    monkeypatch.setattr(config_file, "DEFAULT_PATH", tmp_path / "absent" / "dhtdeb.toml")


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _write(tmp_path: Path, text: str, name: str = "dhtdeb.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _show(*args: str) -> dict[str, tuple[object, str]]:
    """`dhtdeb config show ARGS`: "section.key" -> (value, source)."""
    result = _cli("config", "show", *args)
    assert result.exit_code == 0, result.output
    values = tomllib.loads(result.stdout)  # the output is itself a TOML file
    sources: dict[str, str] = {}
    section = ""
    for line in result.stdout.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header.group(1)
        elif key := re.fullmatch(r"(\w+) = .*  # (.*)", line):
            sources[f"{section}.{key.group(1)}"] = key.group(2)
    return {
        name: (values[name.split(".")[0]][name.split(".")[1]], sources[name]) for name in sources
    }


def _error(result: Result) -> str:
    """The one line a refused configuration prints: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dhtdeb: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        '[proxy]\nlisten = "127.0.0.1:1111"\n\n[peer]\nlisten = "127.0.0.1:2222"\n'
        "max_uploads = 7\n\n[dht]\nenabled = false\n",
    )
    defaults = _show()
    assert defaults["proxy.listen"] == ("127.0.0.1:9977", "default")
    assert defaults["peer.max_uploads"] == (4, "default")
    assert defaults["dht.enabled"] == (True, "default")
    assert {source for _, source in defaults.values()} == {"default"}

    from_file = _show("--config", str(config))
    assert from_file["proxy.listen"] == ("127.0.0.1:1111", f"{config}:2")
    assert from_file["peer.listen"] == ("127.0.0.1:2222", f"{config}:5")
    assert from_file["peer.max_uploads"] == (7, f"{config}:6")
    assert from_file["dht.enabled"] == (False, f"{config}:9")
    assert from_file["cache.limit"] == ("0", "default")

    flagged = _show(
        "--config", str(config), "--proxy", "127.0.0.1:3333", "--dht", "--cache-limit", "5G",
        "--bootstrap", "a.example:1", "--bootstrap", "b.example",
    )  # fmt: skip
    assert flagged["proxy.listen"] == ("127.0.0.1:3333", "--proxy")
    assert flagged["peer.listen"] == ("127.0.0.1:2222", f"{config}:5")
    assert flagged["dht.enabled"] == (True, "--dht")
    assert flagged["cache.limit"] == ("5G", "--cache-limit")
    assert flagged["dht.bootstrap"] == (["a.example:1", "b.example"], "--bootstrap")
    assert _show("--config", str(config), "--no-lan")["lan.enabled"] == (False, "--no-lan")


def test_every_serve_config_field_comes_from_the_file(tmp_path: Path) -> None:
    """Each key reaches its ServeConfig field; relative paths are the file's directory's."""
    keyring = tmp_path / "keys.gpg"
    config = _write(
        tmp_path,
        """
        [proxy]
        listen = "[::1]:9"
        [peer]
        listen = "10.0.0.1:8"
        upload_rate = "2K"
        max_uploads = 3
        timeout = 2.5
        announce = false
        [dht]
        enabled = false
        bootstrap = ["n1:5", "n2"]
        [lan]
        enabled = false
        [trust]
        keyrings = ["keys.gpg"]
        [cache]
        state_dir = "state"
        limit = 1048576
        [access]
        allow_cidr = ["192.168.0.0/16"]
        mirrors = ["Mirror.Example", "10.0.0.2:8080"]
        [log]
        level = "warning"
        """,
    )
    settings = config_file.Settings(config_file.read_config(config), {})
    serve = settings.serve_config()
    assert (str(serve.proxy), str(serve.peer)) == ("[::1]:9", "10.0.0.1:8")
    assert (serve.upload_rate, serve.max_uploads, serve.peer_timeout) == (2048.0, 3, 2.5)
    assert (serve.announce, serve.dht, serve.lan) == (False, False, False)
    assert [str(b) for b in serve.bootstrap] == ["n1:5", "n2:9978"]
    assert serve.keyrings == (keyring,)
    assert (serve.state_dir, serve.cache_limit) == (tmp_path / "state", 1048576)
    assert [str(n) for n in serve.allow_cidr] == ["192.168.0.0/16"]
    assert [str(m) for m in serve.mirrors] == ["mirror.example:80", "10.0.0.2:8080"]
    assert settings.text("log.level") == "warning"
    assert {value.source.rsplit(":", 1)[0] for value in settings.values.values()} == {str(config)}
    # lines found inside an indented file too
    assert settings.values["cache.limit"].source == f"{config}:19"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[proxy]\nlisten = "127.0.0.1:1"\n\n[proxies]\nlisten = "x"\n', 4, ["[proxies]"]),
        ('[peer]\nlisten = "127.0.0.1:1"\nmax_upload = 3\n', 3, ["'max_upload'", "[peer]"]),
        ('[peer]\n# max_uploads = 2\nmax_uploads = "3"\n', 3, ["[peer] max_uploads", "integer"]),
        ("[dht]\nenabled = 1\n", 2, ["[dht] enabled", "true or false"]),
        ('[dht]\nbootstrap = "a:1"\n', 2, ["[dht] bootstrap", "list of strings"]),
        ('[proxy]\nlisten = "127.0.0.1"\n', 2, ["[proxy] listen", "bad address"]),
        ('[peer]\n  listen = "h:99999"\n', 2, ["[peer] listen", "port out of range"]),
        ('[access]\nallow_cidr = ["10.0.0.0/33"]\n', 2, ["[access] allow_cidr", "bad network"]),
        ('[access]\nmirrors = ["http://m/debian"]\n', 2, ["[access] mirrors", "no scheme"]),
        ('[cache]\nlimit = "20 parsecs"\n', 2, ["[cache] limit", "bad size"]),
        ("[peer]\nupload_rate = -1\n", 2, ["[peer] upload_rate", "bad size"]),
        ("[peer]\ntimeout = 0\n", 2, ["[peer] timeout", "more than 0"]),
        ('[log]\nlevel = "loud"\n', 2, ["[log] level", "bad log level"]),
        ('listen = "127.0.0.1:1"\n', 1, ["listen", "[section]"]),
    ],
)
def test_a_bad_file_is_one_line_naming_file_line_and_key(
    tmp_path: Path, text: str, line: int, words: list[str]
) -> None:
    config = _write(tmp_path, text)
    for command in (["config", "show"], ["serve"], ["bootstrap"]):
        message = _error(_cli(*command, "--config", str(config)))
        assert message.startswith(f"dhtdeb: {config}:{line}: "), message
        for word in words:
            assert word in message


def test_a_bad_flag_names_the_flag() -> None:
    assert _error(_cli("config", "show", "--proxy", "nowhere")) == (
        "dhtdeb: --proxy: bad address 'nowhere': expected HOST:PORT"
    )
    assert "--cache-limit: bad size" in _error(_cli("serve", "--cache-limit", "lots"))
    assert "--max-uploads: must be at least 1" in _error(_cli("serve", "--max-uploads", "0"))


def test_a_missing_config_file_is_an_error_and_a_missing_default_one_is_not(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope.toml"
    for command in (["config", "show"], ["serve"], ["bootstrap"]):
        message = _error(_cli(*command, "--config", str(missing)))
        assert message == f"dhtdeb: {missing}: config file does not exist"
    result = _cli("config", "show")
    assert result.exit_code == 0
    assert "(absent)" in result.stdout.splitlines()[0]


def test_invalid_or_unreadable_toml(tmp_path: Path) -> None:
    broken = _write(tmp_path, '[proxy]\nlisten = "127.0.0.1:1"\nlisten = "127.0.0.1:2"\n')
    message = _error(_cli("config", "show", "--config", str(broken)))
    assert message.startswith(f"dhtdeb: {broken}: not valid TOML: ")
    assert "line 3" in message
    assert "line 1" in _error(_cli("serve", "--config", str(_write(tmp_path, "[peer\n", "b.toml"))))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[proxy]\n")
    assert f"dhtdeb: {binary}: cannot read config file" in _error(
        _cli("serve", "--config", str(binary))
    )
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    assert f"dhtdeb: {directory}: cannot read config file" in _error(
        _cli("config", "show", "--config", str(directory))
    )


def test_a_missing_keyring_names_where_it_was_set(tmp_path: Path) -> None:
    config = _write(tmp_path, '[trust]\nkeyrings = ["/nonexistent/k.gpg"]\n')
    assert _error(_cli("serve", "--config", str(config))) == (
        f"dhtdeb: {config}:2: [trust] keyrings: keyring /nonexistent/k.gpg does not exist"
    )


def test_the_example_file_documents_every_key_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert config_file.parse_config(text, EXAMPLE).values == {}  # all commented out
    uncommented = re.sub(r"(?m)^#(\w+ = )", r"\1", text)
    values = config_file.parse_config(uncommented, tmp_path / "dhtdeb.toml").values
    assert set(values) == {setting.name for setting in SETTINGS}
    for setting in SETTINGS:
        if setting.default is not None:
            assert values[setting.name].raw == setting.default, setting.name


def test_serve_runs_with_the_addresses_and_settings_of_the_file(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        '[proxy]\nlisten = "127.0.0.1:0"\n[peer]\nlisten = "127.0.0.1:0"\nmax_uploads = 3\n'
        '[dht]\nenabled = false\n[lan]\nenabled = false\n[cache]\nstate_dir = "state"\n'
        'limit = "7M"\n',
    )
    addresses = tmp_path / "state" / "addresses.json"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dhtdeb",
                "serve",
                "--config",
                str(config),
                "--max-uploads",
                "5",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    try:
        wait_until(lambda: addresses.exists() or daemon.poll() is not None, 30, "addresses.json")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        proxy = json.loads(addresses.read_text())["proxy"]
        assert proxy.startswith("127.0.0.1:") and not proxy.endswith(":0")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://{proxy}/status.json", timeout=10) as response:
            status = json.load(response)
        assert status["dht"]["enabled"] is False
        assert status["cache"]["limit_bytes"] == 7 * 1024 * 1024
        assert status["peer_server"]["max_uploads"] == 5  # the flag beats the file
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, (tmp_path / "daemon.log").read_text()
