"""The daemon's config file, `/etc/dhtdeb/dhtdeb.toml` (or `--config FILE`), and where each setting
of `dhtdeb serve` comes from: its default, a line of the file, or a flag (flags win).

Owns the file format (one `[section] key` per option of `dhtdeb serve`, listed in `SETTINGS`) and
its validation. Trusts nothing in the file: every value is checked with the parsers the flags use
(`parse_host_port`, `parse_cidr`, `parse_size`) or becomes one `ConfigError` that names the file,
the line and the key. tomllib gives no line numbers, so a key's line is found by scanning the text
for its `[section]` header and then a `key =` line: right for the documented format (plain
`[section]` tables, one `key = value` per line); for anything else (dotted keys, inline tables) the
section's line, or none, is named instead.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dhtdeb.errors import ConfigError
from dhtdeb.netaddr import parse_cidr, parse_host_port, parse_mirror

if TYPE_CHECKING:
    from dhtdeb.app import ServeConfig

DEFAULT_PATH = Path("/etc/dhtdeb/dhtdeb.toml")
DHT_PORT = 9978  # the port a bootstrap node listens on when its address names none
LOG_LEVELS = ("debug", "info", "warning", "error")

# A value as TOML or a flag gives it, before parsing.
Raw = str | int | float | bool | list[str]
Kind = Literal[
    "address",
    "nodes",
    "networks",
    "hosts",
    "path",
    "paths",
    "bool",
    "size",
    "count",
    "seconds",
    "level",
]

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`0`, `500M`, `20G`, ... in bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"bad size {text!r} (examples: 0, 500M, 20G)")
    exponent = "_kmgt".index(match.group(2).lower() or "_")
    return int(match.group(1)) * int(1024**exponent)


@dataclass(frozen=True)
class Setting:
    """One key of the file and the `dhtdeb serve` flag that overrides it."""

    section: str
    key: str
    flag: str
    kind: Kind
    default: Raw | None  # None: worked out at startup (the state dir, the keyrings)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SETTINGS = (
    Setting("proxy", "listen", "--proxy", "address", "127.0.0.1:9977"),
    Setting("peer", "listen", "--peer", "address", "0.0.0.0:9978"),
    Setting("peer", "upload_rate", "--upload-rate", "size", "0"),
    Setting("peer", "max_uploads", "--max-uploads", "count", 4),
    Setting("peer", "timeout", "--peer-timeout", "seconds", 10.0),
    Setting("peer", "announce", "--announce", "bool", True),
    Setting("dht", "enabled", "--dht", "bool", True),
    Setting("dht", "bootstrap", "--bootstrap", "nodes", []),
    Setting("lan", "enabled", "--lan", "bool", True),
    Setting("trust", "keyrings", "--keyring", "paths", None),
    Setting("cache", "state_dir", "--state-dir", "path", None),
    Setting("cache", "limit", "--cache-limit", "size", "0"),
    Setting("access", "allow_cidr", "--allow-cidr", "networks", []),
    Setting("access", "mirrors", "--mirror", "hosts", []),
    Setting("log", "level", "--log-level", "level", "info"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_SECTIONS = {s.section: [t.key for t in SETTINGS if t.section == s.section] for s in SETTINGS}


@dataclass(frozen=True)
class Value:
    raw: Raw
    source: str  # "default", a flag ("--proxy") or "FILE:LINE"


def _check(setting: Setting, raw: object) -> Raw:
    """`raw` if it is a good value for `setting` (paths made absolute elsewhere), else ConfigError
    saying what is wrong with it (without naming where it came from)."""
    kind = setting.kind
    if kind in ("address", "path", "level"):
        if not isinstance(raw, str):
            raise ConfigError(f"expected a string, got {_toml_type(raw)}")
        if kind == "address":
            parse_host_port(raw)
        elif kind == "level" and raw.lower() not in LOG_LEVELS:
            raise ConfigError(f"bad log level {raw!r} (one of {', '.join(LOG_LEVELS)})")
        return raw
    if kind in ("nodes", "networks", "hosts", "paths"):
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise ConfigError(f"expected a list of strings, got {_toml_type(raw)}")
        for item in raw:
            if kind == "nodes":
                parse_host_port(item, default_port=DHT_PORT)
            elif kind == "networks":
                parse_cidr(item)
            elif kind == "hosts":
                parse_mirror(item)
        return list(raw)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ConfigError(f"expected true or false, got {_toml_type(raw)}")
        return raw
    if kind == "size":
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ConfigError(
                f'expected a size (a string such as "20G", or bytes), got {_toml_type(raw)}'
            )
        if isinstance(raw, int) and raw < 0:
            raise ConfigError(f"bad size {raw}: negative")
        parse_size(str(raw))
        return raw
    if kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"expected an integer, got {_toml_type(raw)}")
        if raw < 1:
            raise ConfigError(f"must be at least 1, got {raw}")
        return raw
    # seconds
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(f"expected a number of seconds, got {_toml_type(raw)}")
    if not raw > 0:
        raise ConfigError(f"must be more than 0, got {raw}")
    return raw


def _toml_type(raw: object) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int):
        return "an integer"
    if isinstance(raw, float):
        return "a float"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "an array" if all(isinstance(i, str) for i in raw) else "an array of non-strings"
    if isinstance(raw, dict):
        return "a table"
    return type(raw).__name__  # dates and times


class _KeyLines:
    """Line numbers (1-based) of `[section]` headers and of `key =` lines within them."""

    _HEADER = re.compile(r"\s*\[\s*\"?([A-Za-z0-9_-]+)\"?\s*\]")
    _KEY = re.compile(r"\s*\"?([A-Za-z0-9_-]+)\"?\s*=")

    def __init__(self, text: str) -> None:
        self.sections: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        section = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if header := self._HEADER.match(line):
                section = header.group(1)
                self.sections.setdefault(section, number)
            elif key := self._KEY.match(line):
                self.keys.setdefault((section, key.group(1)), number)

    def of(self, section: str, key: str | None = None) -> int | None:
        if key is not None and (section, key) in self.keys:
            return self.keys[section, key]
        return self.sections.get(section)


@dataclass(frozen=True)
class ConfigFile:
    """The checked values of one file (none when the default file does not exist)."""

    path: Path
    values: dict[str, Value]  # by Setting.name
    exists: bool


def read_config(path: Path | None) -> ConfigFile:
    """Read `path` (must exist), or the default file (may be missing)."""
    chosen = path or DEFAULT_PATH
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return ConfigFile(chosen, {}, exists=False)
        raise ConfigError(f"{chosen}: config file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{chosen}: cannot read config file: {reason}") from None
    return parse_config(text, chosen)


def parse_config(text: str, path: Path) -> ConfigFile:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = _KeyLines(text)

    def where(section: str, key: str | None = None) -> str:
        line = lines.of(section, key)
        return f"{path}:{line}" if line else str(path)

    values: dict[str, Value] = {}
    for section, table in document.items():
        if section not in _SECTIONS:
            if isinstance(table, dict):
                raise ConfigError(
                    f"{where(section)}: unknown section [{section}] (known: {', '.join(_SECTIONS)})"
                )
            raise ConfigError(f"{where('', section)}: {section}: keys belong in a [section]")
        if not isinstance(table, dict):
            raise ConfigError(f"{where('', section)}: {section} must be a [{section}] section")
        for key, raw in table.items():
            setting = _BY_NAME.get(f"{section}.{key}")
            if setting is None:
                raise ConfigError(
                    f"{where(section, key)}: unknown key {key!r} in [{section}]"
                    f" (known: {', '.join(_SECTIONS[section])})"
                )
            try:
                checked = _check(setting, raw)
            except ConfigError as exc:
                raise ConfigError(f"{where(section, key)}: [{section}] {key}: {exc}") from None
            if setting.kind in ("path", "paths"):
                checked = _absolute(checked, path.parent)
            values[setting.name] = Value(checked, where(section, key))
    return ConfigFile(path, values, exists=True)


def _absolute(raw: Raw, base: Path) -> Raw:
    """Paths in the file are relative to the file's directory."""
    if isinstance(raw, str):
        return str(base / Path(raw).expanduser())
    if isinstance(raw, list):
        return [str(base / Path(item).expanduser()) for item in raw]
    return raw


def check_flag(name: str, flag: str, raw: Raw) -> Value:
    """A flag given on the command line, checked like a file's value."""
    try:
        return Value(_check(_BY_NAME[name], raw), flag)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


class Settings:
    """The effective value of every setting and where it came from."""

    def __init__(self, config: ConfigFile, flags: dict[str, Value]) -> None:
        self.config = config
        self.values: dict[str, Value] = {}
        for setting in SETTINGS:
            value = flags.get(setting.name) or config.values.get(setting.name)
            self.values[setting.name] = value or Value(_default(setting), "default")

    def text(self, name: str) -> str:
        raw = self.values[name].raw
        assert isinstance(raw, str)
        return raw

    def texts(self, name: str) -> list[str]:
        raw = self.values[name].raw
        assert isinstance(raw, list)
        return raw

    def flag(self, name: str) -> bool:
        raw = self.values[name].raw
        assert isinstance(raw, bool)
        return raw

    def number(self, name: str) -> float:
        raw = self.values[name].raw
        assert isinstance(raw, int | float) and not isinstance(raw, bool)
        return raw

    def size(self, name: str) -> int:
        raw = self.values[name].raw
        assert isinstance(raw, int | str) and not isinstance(raw, bool)
        return parse_size(str(raw))

    def where(self, name: str) -> str:
        """`FILE:LINE: [section] key`, `--flag` or `default [section] key`, for messages."""
        source = self.values[name].source
        setting = _BY_NAME[name]
        return source if source.startswith("--") else f"{source}: [{setting.section}] {setting.key}"

    def serve_config(self) -> ServeConfig:
        from dhtdeb.app import ServeConfig

        return ServeConfig(
            state_dir=Path(self.text("cache.state_dir")),
            proxy=parse_host_port(self.text("proxy.listen")),
            peer=parse_host_port(self.text("peer.listen")),
            keyrings=tuple(Path(p) for p in self.texts("trust.keyrings")),
            dht=self.flag("dht.enabled"),
            lan=self.flag("lan.enabled"),
            bootstrap=tuple(
                parse_host_port(b, default_port=DHT_PORT) for b in self.texts("dht.bootstrap")
            ),
            allow_cidr=tuple(parse_cidr(c) for c in self.texts("access.allow_cidr")),
            mirrors=tuple(parse_mirror(m) for m in self.texts("access.mirrors")),
            cache_limit=self.size("cache.limit"),
            announce=self.flag("peer.announce"),
            upload_rate=float(self.size("peer.upload_rate")) or None,
            max_uploads=int(self.number("peer.max_uploads")),
            peer_timeout=float(self.number("peer.timeout")),
        )

    def show(self) -> list[str]:
        """The effective configuration as a TOML file, each value's source in a comment."""
        where = str(self.config.path) if self.config.exists else f"{self.config.path} (absent)"
        lines = [f"# dhtdeb serve: effective configuration (config file {where})"]
        for section, keys in _SECTIONS.items():
            lines.append(f"\n[{section}]")
            for key in keys:
                value = self.values[f"{section}.{key}"]
                if isinstance(value.raw, list) and len(value.raw) > 1:  # one item a line
                    lines.append(f"{key} = [  # {value.source}")
                    lines.extend(f"    {_toml(item)}," for item in value.raw)
                    lines.append("]")
                else:
                    lines.append(f"{key} = {_toml(value.raw)}  # {value.source}")
        return lines


def _default(setting: Setting) -> Raw:
    if setting.default is not None:
        return setting.default
    from dhtdeb.app import default_state_dir
    from dhtdeb.archive.signature import default_keyrings, shipped_keys_dir

    if setting.kind == "path":
        return str(default_state_dir())
    return [str(p) for p in default_keyrings(shipped_keys_dir())]


def _toml(raw: Raw) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list):
        return "[" + ", ".join(_toml(item) for item in raw) + "]"
    if isinstance(raw, str):
        return json.dumps(raw)  # a TOML basic string
    return repr(raw)
