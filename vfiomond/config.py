"""vfiomond's configuration: a TOML file (systemd/vfiomond.toml is the default).

Every key is validated; an unknown key or a bad value is a one-line
ConfigError naming the key.
"""

import ipaddress
import json
import re
import socket
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from vfiomond import webconfig
from vfiomond.errors import ConfigError
from vfiomond.probes import PROBES

DEFAULT_PORT = 10119  # 9100-9999 (the Prometheus exporter range) is fully allocated
DEFAULT_LISTEN = ":%d" % DEFAULT_PORT
LOG_LEVELS = ("debug", "info", "warning", "error")


class Config(NamedTuple):
    listen: str = DEFAULT_LISTEN
    log_level: str = "info"
    watch_kernel_log: bool = True  # splats from the journal or /dev/kmsg
    strict: bool = False  # exit if any probe cannot be attached
    disable: Tuple[str, ...] = ()  # probe names not to attach
    # fentry/fexit on the vfio modules' functions too (probes.attach_method): cheaper
    # per BAR fault and per pinned run, but vfio-pci and type1 stay loaded while it runs
    module_trampolines: bool = False
    pin_verify: bool = True  # verify pinned pages against the process mapping
    pin_verify_interval: float = 30.0  # seconds between verification passes
    pin_samples: int = 16  # sampled pages per DMA mapping (plus its last page)
    web_config_file: str = ""  # --web.config.file: TLS and basic auth (vfiomond.webconfig); "" for none


# Fields a reload (SIGHUP) cannot change in a running daemon: the listening
# socket, what is compiled into the BPF programs, and the threads started once.
# Each live DMA mapping holds samples + 1 PFNs in the kernel's table (bpf/common.h
# pin_maps, up to 65,536 mappings): 64 keeps an entry under 600 bytes.
MAX_PIN_SAMPLES = 64

RESTART_ONLY = ("listen", "strict", "watch_kernel_log", "pin_verify", "pin_samples", "web_config_file",
                "module_trampolines")

# section -> key -> type
_SCHEMA = {
    "daemon": {"listen": str, "log_level": str, "watch_kernel_log": bool, "web_config_file": str},
    "probes": {"strict": bool, "disable": list, "module_trampolines": bool},
    "pins": {"verify": bool, "verify_interval": (int, float), "samples": int},
}
# TOML key -> Config field, where they differ
_FIELDS = {("pins", "verify"): "pin_verify", ("pins", "verify_interval"): "pin_verify_interval", ("pins", "samples"): "pin_samples"}


# ASCII digits only: str.isdigit() and int() also take other scripts' digits ("\u0661"),
# isdigit() even superscripts ("\u00b2") that int() refuses.  Leading zeros are allowed,
# five significant digits at most (int() refuses more than 4300 digits).
_PORT = re.compile(r"0*[0-9]{1,5}")
# A TOML bare key: printed as it is; any other name is quoted (json.dumps: a TOML basic
# string) so that a name with a line break or a control character stays on one line.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def parse_listen(value: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT`` -> (host, port); "" means every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError("listen address %r: expected HOST:PORT, e.g. :%d" % (value, DEFAULT_PORT))
    if not host.isprintable():
        # getaddrinfo() stops at a NUL ("localhost\0x" resolves as localhost), then bind()
        # raises TypeError; no host name has a control character or a line break.
        raise ConfigError("listen address %r: the host has an unprintable character" % (value,))
    if host.startswith("[") or host.endswith("]"):
        # The brackets must hold an IPv6 address and nothing else: "[::1]::5" would
        # otherwise be host "[::1]:".
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError("listen address %r: expected [IPV6-ADDRESS]:PORT, e.g. [::1]:%d"
                              % (value, DEFAULT_PORT)) from None
        return host[1:-1], int(port)
    if ":" in host:  # as Go's net.SplitHostPort: "::1:5" is ambiguous
        raise ConfigError("listen address %r: an IPv6 address goes in brackets, e.g. [::1]:%d" % (value, DEFAULT_PORT))
    if host:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConfigError("listen address %r: unknown host %r" % (value, host)) from None
        except UnicodeError:  # getaddrinfo encodes the name with IDNA: a label over 63 characters or empty ("a..b")
            raise ConfigError("listen address %r: %r is not a valid host name" % (value, host)) from None
    return host, int(port)


def from_dict(data: Dict[str, Any], origin: str) -> Config:
    values: Dict[str, Any] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            raise ConfigError("%s: unknown section [%s]" % (origin, _key(section)))
        if not isinstance(body, dict):
            raise ConfigError("%s: [%s] must be a table" % (origin, section))
        for key, value in body.items():
            expected = _SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError("%s: unknown key %s.%s" % (origin, section, _key(key)))
            name = "%s.%s" % (section, key)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                kind = expected.__name__ if isinstance(expected, type) else "number"
                raise ConfigError("%s: %s must be a %s" % (origin, name, kind))
            values[_FIELDS.get((section, key), key)] = value
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return validate(config, origin)


def validate(config: Config, origin: str) -> Config:
    try:
        parse_listen(config.listen)
    except ConfigError as e:
        raise ConfigError("%s: daemon.listen: %s" % (origin, e)) from None
    if config.log_level not in LOG_LEVELS:
        raise ConfigError("%s: daemon.log_level must be one of %s" % (origin, ", ".join(LOG_LEVELS)))
    if not 0.1 <= config.pin_verify_interval <= 86400:
        raise ConfigError("%s: pins.verify_interval must be between 0.1 and 86400 seconds" % origin)
    if not 2 <= config.pin_samples <= MAX_PIN_SAMPLES:
        raise ConfigError("%s: pins.samples must be between 2 and %d" % (origin, MAX_PIN_SAMPLES))
    known = {p.name for p in PROBES}
    # TOML allows any array (disable = [[1]], [{}]): a list or a table in it would fail
    # the set lookup below with a TypeError (unhashable).
    if not all(isinstance(name, str) for name in config.disable):
        raise ConfigError("%s: probes.disable takes probe names (strings), e.g. disable = [\"pat_untrack\"]" % origin)
    for name in config.disable:
        if name not in known:
            raise ConfigError("%s: probes.disable: unknown probe %r (known: %s)" % (origin, name, ", ".join(sorted(known))))
    if config.web_config_file:
        webconfig.load(config.web_config_file)  # its own one-line error names the file and the key
    return config


def _parse_toml() -> Callable[[bytes], Dict[str, Any]]:
    """The first TOML parser this Python has: tomllib (3.11+), tomli (python3-tomli,
    Debian 12+), toml (python3-toml, Debian 11).  The function raises ValueError
    on bad TOML (all three parsers' errors are ValueErrors)."""
    try:
        import tomllib  # Python 3.11+

        return tomllib.loads
    except ImportError:
        pass
    try:
        import tomli  # python3-tomli on Python 3.9 / 3.10

        return tomli.loads
    except ImportError:
        pass
    try:
        import toml  # python3-toml: Debian 11 has no tomli

        return toml.loads
    except ImportError:
        raise ConfigError("reading a TOML config needs Python 3.11+, python3-tomli or python3-toml") from None


def loader(path: Optional[str], overrides: Dict[str, Any], origin: str = "command line") -> Callable[[], Config]:
    """A function that reads ``path`` and applies the command line's ``overrides``
    (which win over the file), validated; raises ConfigError.  Called at start
    and on every reload."""
    def load_now() -> Config:
        return validate(load(path)._replace(**overrides), origin)

    return load_now


def load(path: Optional[str]) -> Config:
    if path is None:
        return Config()
    parse = _parse_toml()
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = parse(text)
    except OSError as e:
        raise ConfigError("config %s: %s" % (path, e.strerror)) from None
    except ValueError as e:  # TOMLDecodeError, TomlDecodeError, UnicodeDecodeError
        raise ConfigError("config %s: %s" % (path, e)) from None
    return from_dict(data, "config " + path)
