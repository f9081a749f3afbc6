"""The HTTP endpoint's web configuration: the YAML file Prometheus exporters take
with ``--web.config.file`` (the Prometheus exporter-toolkit format): TLS, client
certificates, basic authentication and extra response headers.

    tls_server_config: {cert_file: ..., key_file: ..., client_auth_type: ..., client_ca_file: ...}
    http_server_config: {headers: {X-Frame-Options: deny}}
    basic_auth_users: {prometheus: $2y$10$...}   # bcrypt hashes

Everything is checked when the file is read (the files it names are read, the
certificate and key are loaded into an ssl.SSLContext, every hash is a bcrypt
hash); any problem is one ConfigError naming the file and the key.  yaml and
bcrypt are imported only here, so vfiomond runs without them when no web
configuration is given.  ``Watched`` reads the file again when it, or a file it
names, changes (exporter-toolkit reads its file on every request).
"""

import base64
import binascii
import errno
import hashlib
import hmac
import importlib
import ipaddress
import logging
import os
import re
import ssl
import stat
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vfiomond.errors import ConfigError

log = logging.getLogger("vfiomond")

REALM = "vfiomond"
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# client_auth_type -> (verify mode, needs a client CA); the two types whose
# certificate is never verified are refused below (UNVERIFIED).
CLIENT_AUTH = {
    "NoClientCert": (ssl.CERT_NONE, False),
    # Go asks for a certificate and never checks it: for access, the same as NoClientCert.
    "RequestClientCert": (ssl.CERT_NONE, False),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
UNVERIFIED = ("RequireAnyClientCert", "RequireClientCert")
# Go's cipher suite names (crypto/tls CipherSuites()) -> OpenSSL's, for TLS 1.2 and
# older.  TLS 1.3's suites are always enabled, as in Go: listing them changes nothing.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
# The response headers exporter-toolkit lets a file set, and their allowed values (None: any).
HEADERS = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")

STR, BOOL, STRINGS, STRMAP = "a string", "true or false", "a list of strings", "a mapping of strings to strings"
_TLS_KEYS = {
    "cert": STR, "key": STR, "client_ca": STR, "cert_file": STR, "key_file": STR, "client_auth_type": STR,
    "client_ca_file": STR, "client_allowed_sans": STRINGS, "min_version": STR, "max_version": STR,
    "cipher_suites": STRINGS, "prefer_server_cipher_suites": BOOL, "curve_preferences": STRINGS,
}
_HTTP_KEYS = {"http2": BOOL, "headers": STRMAP}
_SECTIONS = ("tls_server_config", "http_server_config", "basic_auth_users")
# Known to exporter-toolkit, not implemented here: refused rather than ignored.
_UNSUPPORTED = {
    "rate_limit": "rate_limit is not supported by vfiomond",
    "tls_server_config.curve_preferences": "curve_preferences is not supported by vfiomond (Python's ssl module "
                                           "cannot set a list of key exchange groups); leave it out",
}
_SSL_SUFFIX = re.compile(r" \(_ssl\.c:\d+\)")
# The most read of any file named here (the YAML file, a certificate, key or CA bundle):
# "/dev/zero" or a runaway file must not be read without end.
MAX_FILE_BYTES = 1 << 20


class _Encrypted(Exception):
    """Raised from load_cert_chain's password callback: the key wants a passphrase."""


class WebConfig:
    """A loaded web configuration.  ``files`` are the files it was read from (the
    YAML file first); ``notes`` are (logging level, line) to log when it takes effect."""

    def __init__(self, path: str, context: Optional[ssl.SSLContext], users: Dict[str, bytes],
                 headers: Sequence[Tuple[str, str]], allowed_sans: Sequence[str], files: Sequence[str],
                 notes: Sequence[Tuple[int, str]]):
        self.path = path
        self._context = context
        self.users = dict(users)
        self.headers = list(headers)
        self.allowed_sans = tuple(allowed_sans)
        self.files = tuple(files)
        self.notes = tuple(notes)
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time: it is slow by design
        self._key = os.urandom(32)
        self._cache: Dict[str, bytes] = {}  # user -> keyed digest of the last password that passed bcrypt
        # An unknown user is checked against a configured hash of the highest cost, so
        # that the time an answer takes does not tell which users exist.
        self._decoy = max(self.users.values(), key=lambda h: h[4:6]) if self.users else b""

    @property
    def tls(self) -> bool:
        return self._context is not None

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The server-side context (certificate, versions, client verification), or None without TLS."""
        return self._context

    def log_notes(self) -> None:
        for level, note in self.notes:
            log.log(level, "web config %s: %s", self.path, note)

    def summary(self) -> str:
        parts = ["TLS" if self.tls else "no TLS"]
        if self.tls and self._context.verify_mode != ssl.CERT_NONE:
            parts.append("client certificates %s" % ("required" if self._context.verify_mode == ssl.CERT_REQUIRED
                                                      else "verified if given"))
        parts.append("basic auth for %d user(s)" % len(self.users) if self.users else "no basic auth")
        return ", ".join(parts)

    def check_auth(self, authorization: Optional[str]) -> bool:
        """Whether an ``Authorization`` header value lets the request in: always
        without basic_auth_users, else a known user with the right password."""
        if not self.users:
            return True
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self.users.get(user)
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        if stored is not None:
            cached = self._cache.get(user)
            if cached is not None and hmac.compare_digest(cached, digest):
                return True
        import bcrypt  # loaded at load(): present

        with self._bcrypt_lock:
            try:
                ok = bcrypt.checkpw(password, stored if stored is not None else self._decoy)
            except ValueError:  # NUL bytes, or over 72 bytes in some bcrypt versions
                ok = False
        if ok and stored is not None:
            self._cache[user] = digest
            return True
        return False

    def peer_allowed(self, cert: Optional[dict]) -> bool:
        """client_allowed_sans: whether the verified client certificate (``getpeercert()``)
        has one of the allowed Subject Alternative Names (DNS, IP, e-mail or URI)."""
        if not self.allowed_sans:
            return True
        for kind, value in (cert or {}).get("subjectAltName", ()):
            if kind == "IP Address":
                try:
                    value = str(ipaddress.ip_address(value.strip()))  # as Go writes it: 2001:db8::1
                except ValueError:
                    continue
            elif kind not in ("DNS", "email", "URI"):
                continue
            if value in self.allowed_sans:
                return True
        return False


def parse_basic(authorization: Optional[str]) -> Optional[Tuple[str, bytes]]:
    """``Basic base64(user:password)`` -> (user, password), or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def load(path: str) -> WebConfig:
    """Read and check ``path``; raises ConfigError (one line, naming the file and the key)."""
    return _load(path, [])


def _load(path: str, named: List[str]) -> WebConfig:
    """As load(); ``named`` receives the files it reads or tries to, even when it fails."""

    def fail(message: str):
        raise ConfigError("web config %s: %s" % (_shown(path), message))

    named.append(path)
    try:
        import yaml
    except ImportError:
        fail("reading it needs PyYAML (python3-yaml)")
    text = _read_file(path, "", fail)
    try:
        data = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as e:
        fail(_yaml_error(yaml, e))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail("expected a mapping with keys %s" % ", ".join(_SECTIONS))
    for key in data:
        if key in _UNSUPPORTED:
            fail(_UNSUPPORTED[key])
        if key not in _SECTIONS:
            fail("unknown key %s (known: %s)" % (_shown(key), ", ".join(_SECTIONS)))
    notes: List[Tuple[int, str]] = []
    base = os.path.dirname(os.path.abspath(path))
    tls = _section(data, "tls_server_config", _TLS_KEYS, fail)
    http = _section(data, "http_server_config", _HTTP_KEYS, fail)
    context, allowed_sans = _tls_context(tls, base, named, notes, fail)
    headers = []
    for name, value in (http.get("headers") or {}).items():
        allowed = HEADERS.get(name, ())
        if allowed == ():
            fail("http_server_config.headers: header %r cannot be set (these can: %s)" % (name, ", ".join(HEADERS)))
        if value == "":  # blank: unset, as exporter-toolkit documents
            continue
        if allowed is not None and value not in allowed:
            fail("http_server_config.headers.%s must be one of %s, not %r" % (name, ", ".join(allowed), value))
        headers.append((name, value))
    if "http2" in http:
        notes.append((logging.INFO, "http_server_config.http2 is ignored: vfiomond serves HTTP/1.x"))
    users = _users(data.get("basic_auth_users"), fail)
    if users and context is None:
        notes.append((logging.WARNING,
                      "basic_auth_users without tls_server_config: passwords cross the network in clear text"))
    return WebConfig(path, context, users, headers, allowed_sans, list(named), notes)


def _section(data: Dict[str, Any], name: str, keys: Dict[str, str], fail) -> Dict[str, Any]:
    body = data.get(name)
    if body is None:
        return {}
    if not isinstance(body, dict):
        fail("%s must be a mapping" % name)
    for key, value in body.items():
        full = "%s.%s" % (name, key)
        if full in _UNSUPPORTED:
            fail(_UNSUPPORTED[full])
        kind = keys.get(key)
        if kind is None:
            fail("unknown key %s.%s" % (name, _shown(key)))
        ok = {
            STR: isinstance(value, str),
            BOOL: isinstance(value, bool),
            STRINGS: isinstance(value, list) and all(isinstance(v, str) for v in value),
            STRMAP: isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
        }[kind]
        if not ok and not (value is None and kind in (STRINGS, STRMAP)):
            fail("%s must be %s" % (full, kind))
    return body


def _tls_context(tls: Dict[str, Any], base: str, named: List[str], notes: List[Tuple[int, str]],
                 fail) -> Tuple[Optional[ssl.SSLContext], List[str]]:
    """The server context tls_server_config describes, or None (no TLS), and the allowed client SANs."""
    given = {k for k, v in tls.items() if v not in (None, "", [])}
    if not given & {"cert", "key", "cert_file", "key_file", "client_ca", "client_ca_file", "client_auth_type"}:
        if given:
            fail("tls_server_config has %s but no cert_file and key_file: TLS would be off" % ", ".join(sorted(given)))
        return None, []
    for inline, file_key in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if inline in given and file_key in given:
            fail("tls_server_config: give %s or %s, not both" % (file_key, inline))
    for inline, file_key in (("cert", "cert_file"), ("key", "key_file")):
        if inline not in given and file_key not in given:
            fail("tls_server_config: missing %s" % file_key)

    def source(inline: str, file_key: str) -> Tuple[str, Optional[str], Optional[bytes]]:
        """(what to call it, path, inline bytes), the path made absolute and checked readable."""
        if inline in given:
            return "tls_server_config." + inline, None, tls[inline].encode()
        p = os.path.join(base, tls[file_key])
        named.append(p)
        what = "tls_server_config.%s %s" % (file_key, _shown(p))
        return what, p, _read_file(p, what + ": ", fail)

    cert_what, cert_path, cert_pem = source("cert", "cert_file")
    key_what, key_path, key_pem = source("key", "key_file")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        fail("%s: no PEM certificate in it" % cert_what)
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_pem):
        fail("%s: no PEM private key in it" % key_what)

    versions = []
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = tls.get(key) or default
        if name not in TLS_VERSIONS:
            fail("tls_server_config.%s must be one of %s, not %r" % (key, ", ".join(TLS_VERSIONS), name))
        versions.append(TLS_VERSIONS[name])
    if versions[0] > versions[1]:
        fail("tls_server_config: min_version is above max_version")

    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED:
        fail("tls_server_config.client_auth_type %s (a client certificate that is never verified) is not supported: "
             "use RequireAndVerifyClientCert with client_ca_file" % auth)
    if auth not in CLIENT_AUTH:
        fail("tls_server_config.client_auth_type must be one of %s, not %r"
             % (", ".join(list(CLIENT_AUTH) + ["RequireAnyClientCert"]), auth))
    verify, needs_ca = CLIENT_AUTH[auth]
    has_ca = "client_ca" in given or "client_ca_file" in given
    if has_ca and verify == ssl.CERT_NONE:
        fail("tls_server_config: a client CA is given but client_auth_type is %s (use RequireAndVerifyClientCert)" % auth)
    if needs_ca and not has_ca:
        fail("tls_server_config.client_auth_type %s needs client_ca_file" % auth)
    if auth == "RequestClientCert":
        notes.append((logging.WARNING, "client_auth_type RequestClientCert: client certificates are not checked "
                      "(use RequireAndVerifyClientCert to authenticate clients by certificate)"))
    allowed_sans = list(tls.get("client_allowed_sans") or [])
    if allowed_sans and auth != "RequireAndVerifyClientCert":
        fail("tls_server_config.client_allowed_sans needs client_auth_type RequireAndVerifyClientCert")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: allowed, as the file asks
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = versions
    if versions[0] < ssl.TLSVersion.TLSv1_2:
        notes.append((logging.WARNING, "min_version below TLS12: the system's OpenSSL policy may still refuse "
                                       "TLS 1.0 and 1.1"))

    def no_passphrase():
        raise _Encrypted()

    try:
        with _PemPath(cert_path, cert_pem) as c, _PemPath(key_path, key_pem) as k:
            context.load_cert_chain(c, k, password=no_passphrase)
    except _Encrypted:
        fail("%s: the key is encrypted; give an unencrypted key (readable by vfiomond only)" % key_what)
    except (ssl.SSLError, OSError) as e:
        fail("%s and %s do not load as a certificate and its key: %s" % (cert_what, key_what, _ssl_text(e)))

    context.verify_mode = verify
    if has_ca:
        if "client_ca" in given:
            what, cafile, cadata = "tls_server_config.client_ca", None, tls["client_ca"]
        else:
            what, cafile, _ = source("client_ca", "client_ca_file")
            cadata = None
        try:
            context.load_verify_locations(cafile=cafile, cadata=cadata)
        except (ssl.SSLError, OSError, ValueError) as e:
            fail("%s: no CA certificate loads from it: %s" % (what, _ssl_text(e)))

    suites = tls.get("cipher_suites") or []
    for s in suites:
        if s not in CIPHERS and s not in TLS13_SUITES:
            fail("tls_server_config.cipher_suites: unknown cipher suite %r (known: %s)"
                 % (s, ", ".join(list(CIPHERS) + list(TLS13_SUITES))))
    openssl_names = [CIPHERS[s] for s in suites if s in CIPHERS]
    if openssl_names:
        try:
            context.set_ciphers(":".join(openssl_names))
        except ssl.SSLError:
            fail("tls_server_config.cipher_suites: none of them is available in this system's OpenSSL")
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    return context, allowed_sans


class _PemPath:
    """A path to ``data``: ``path`` itself, or for an inline PEM an anonymous memory
    file (the key is never written to a disk)."""

    def __init__(self, path: Optional[str], data: bytes):
        self.path, self.data, self.fd = path, data, -1

    def __enter__(self) -> str:
        if self.path is not None:
            return self.path
        self.fd = os.memfd_create("vfiomond-web-config", os.MFD_CLOEXEC)
        os.write(self.fd, self.data)
        return "/proc/self/fd/%d" % self.fd

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)


def _users(body: Any, fail) -> Dict[str, bytes]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        fail("basic_auth_users must be a mapping of user names to bcrypt hashes")
    users = {}
    for user, hashed in body.items():
        if not isinstance(user, str):
            fail("basic_auth_users: user name %r must be a string (quote it)" % (user,))
        if ":" in user:
            fail("basic_auth_users: user name %r has a ':', which basic auth cannot send" % user)
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            fail("basic_auth_users.%s: not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters; "
                 "make one with htpasswd -nBC 10 \"\" | tr -d ':\\n')" % _shown(user))
        users[user] = hashed.encode()
    if users:
        try:
            importlib.import_module("bcrypt")
        except ImportError:
            fail("basic_auth_users needs bcrypt (python3-bcrypt)")
    return users


def _shown(name: Any) -> str:
    """A path, key or user name for a one-line error: as it is, or repr()'s escapes
    if it holds a line break, a NUL or another unprintable character."""
    text = str(name)
    return text if text.isprintable() else repr(name)


def _read_file(path: str, prefix: str, fail) -> bytes:
    """The bytes of the regular file ``path``, at most MAX_FILE_BYTES; anything else
    is ``fail(prefix + why)``."""
    if "\0" in path:  # open() and os.stat() raise ValueError (embedded null byte), not OSError
        fail(prefix + "a path cannot hold a NUL character")
    try:
        # Checked before opening it: opening a FIFO waits for a writer, a device
        # (a watchdog, a tape) may act on being opened, /dev/zero never ends.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            fail(prefix + os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            fail(prefix + "not a regular file")
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
                fail(prefix + "not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        fail(prefix + (e.strerror or str(e)))
    if len(data) > MAX_FILE_BYTES:
        fail(prefix + "larger than %d MiB: refused" % (MAX_FILE_BYTES >> 20))
    return data


def _ssl_text(e: Exception) -> str:
    return _SSL_SUFFIX.sub("", " ".join(str(e).split()))


def _yaml_error(yaml, e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
        return "bad YAML at line %d, column %d: %s" % (mark.line + 1, mark.column + 1, " ".join(str(e.problem).split()))
    return "bad YAML: " + " ".join(str(e).split())


_LOADER = None


def _strict_loader():
    """yaml's SafeLoader refusing duplicate keys (as Go's strict YAML decoding does)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class StrictLoader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # unhashable: the parent reports it
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                                "duplicate key %r" % (key,), key_node.start_mark)
                return super().construct_mapping(node, deep)

        _LOADER = StrictLoader
    return _LOADER


def _stamps(files: Sequence[str]) -> tuple:
    out = []
    for p in files:
        try:
            st = os.stat(p)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except (OSError, ValueError):  # ValueError: a NUL in the path
            out.append(None)
    return tuple(out)


class Fixed:
    """A web configuration that does not change (tests, or a caller that loaded it)."""

    def __init__(self, config: WebConfig):
        self.config = config

    def current(self) -> WebConfig:
        return self.config


class Watched:
    """The web configuration in ``path``, read again when the file or one it names
    (certificate, key, client CA) changes: checked on every connection, a few
    stat() calls.  A changed file that does not load, or that would turn TLS on or
    off (the listening socket's scheme is set at start), is logged and the
    previous configuration kept."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._files: Tuple[str, ...] = (path,)
        self._stamp: Optional[tuple] = None
        result = self._read()
        if isinstance(result, ConfigError):
            raise result
        self.config = result

    def _read(self):
        """Load until the set of files named is stable, stamping them before each
        read (a change during the read is seen at the next check); a WebConfig or
        the ConfigError."""
        result: Any = None
        for _ in range(3):
            files = self._files
            stamp = _stamps(files)
            named: List[str] = []
            try:
                result = _load(self.path, named)
            except ConfigError as e:
                result = e
            if tuple(named) == files:
                self._stamp = stamp
                return result
            self._files, self._stamp = tuple(named), None
        return result

    def current(self) -> WebConfig:
        if _stamps(self._files) == self._stamp:
            return self.config
        with self._lock:
            if _stamps(self._files) == self._stamp:
                return self.config
            result = self._read()
            if isinstance(result, ConfigError):
                log.error("web configuration changed but does not load, keeping the previous one: %s", result)
            elif result.tls != self.config.tls:
                log.error("web config %s: TLS turned %s; restart vfiomond to apply it, keeping the previous web "
                          "configuration", self.path, "on" if result.tls else "off")
            else:
                self.config = result
                log.info("web config %s read again: %s", self.path, result.summary())
                result.log_notes()
            return self.config
