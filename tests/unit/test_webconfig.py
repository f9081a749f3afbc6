"""--web.config.file: the exporter-toolkit web configuration, with real TLS (a CA,
server and client certificates made by the openssl command at test time), real
bcrypt (cost 4) and the real server on loopback."""

import base64
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import bcrypt
import pytest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from vfiomond import cli, config, exposition, webconfig
from vfiomond.errors import ConfigError
from vfiomond.exposition import serve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "s3cret-scrape"


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


HASH = hashed(PASSWORD)


def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _issue(d, name, subject, ext, ca="ca"):
    """A P-256 key and a certificate for it signed by ``ca``, with the extensions ``ext``."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=d)
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + ext)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey", ca + ".key", "-CAcreateserial",
             "-days", "2", "-extfile", name + ".ext", "-out", name + ".crt", cwd=d)


def _self_signed(d, name, subject):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-keyout", name + ".key", "-out", name + ".crt", "-subj", subject,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """ca.crt signs server.crt (localhost, 127.0.0.1) and client.crt (SAN DNS:prometheus.example);
    stranger.crt is a self-signed client certificate; enc.key is a passphrase-protected key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = str(tmp_path_factory.mktemp("pki"))
    _self_signed(d, "ca", "/CN=vfiomond test CA")
    _issue(d, "server", "/CN=localhost",
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    _issue(d, "client", "/CN=prometheus",
           "subjectAltName=DNS:prometheus.example,URI:spiffe://example/prometheus\nextendedKeyUsage=clientAuth\n"
           "keyUsage=digitalSignature\n")
    _self_signed(d, "stranger", "/CN=stranger")
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:x", "-out", "enc.key", cwd=d)
    paths = {"%s_%s" % (n, ext): os.path.join(d, "%s.%s" % (n, ext))
             for n in ("ca", "server", "client", "stranger") for ext in ("crt", "key")}
    return types.SimpleNamespace(dir=d, enc_key=os.path.join(d, "enc.key"), **paths)


class OneGauge:
    def collect(self):
        g = GaugeMetricFamily("vfiomond_test_gauge", "A test gauge.")
        g.add_metric([], 42)
        yield g


def tls_yaml(pki, extra_tls="", rest=""):
    return ("tls_server_config:\n  cert_file: %s\n  key_file: %s\n%s" % (pki.server_crt, pki.server_key, extra_tls)
            + rest)


def users_yaml(**users):
    return "basic_auth_users:\n" + "".join("  %s: %s\n" % (u, h) for u, h in users.items())


@pytest.fixture()
def start(tmp_path):
    """start(yaml_text) -> (base URL, path of the file, server): the real server on 127.0.0.1."""
    servers = []

    def run(text, name="web.yml"):
        path = tmp_path / name
        path.write_text(text)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OneGauge())
        srv = serve("127.0.0.1", 0, registry, web_config=str(path))
        servers.append(srv)
        scheme = "https" if srv.web.current().tls else "http"
        return "%s://127.0.0.1:%d" % (scheme, srv.server_address[1]), path, srv

    yield run
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def client(pki, cert=None, maximum=None):
    ctx = ssl.create_default_context(cafile=pki.ca_crt)
    if cert:
        ctx.load_cert_chain(getattr(pki, cert + "_crt"), getattr(pki, cert + "_key"))
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def fetch(url, ctx=None, authorization=None, timeout=10):
    """(status, headers, body); an HTTP error status is an answer too."""
    req = urllib.request.Request(url)
    if authorization:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read().decode()


# ----------------------------------------------------------------- TLS + basic auth served


def test_right_credentials_scrape_metrics_over_https(pki, start):
    headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    url, _, _ = start(tls_yaml(pki, rest=users_yaml(prometheus=HASH) + headers))
    assert url.startswith("https://")
    status, hdrs, body = fetch(url + "/metrics", client(pki), basic("prometheus", PASSWORD))
    assert status == 200 and "vfiomond_test_gauge 42.0" in body
    assert hdrs["X-Frame-Options"] == "deny" and hdrs["X-Content-Type-Options"] == "nosniff"
    status, _, body = fetch(url + "/", client(pki), basic("prometheus", PASSWORD))
    assert status == 200 and 'href="/metrics"' in body


@pytest.fixture(scope="module")
def guarded(pki, tmp_path_factory):
    """One server (TLS, a user, a header) for the table of refused requests."""
    path = tmp_path_factory.mktemp("guarded") / "web.yml"
    path.write_text(tls_yaml(pki, rest=users_yaml(prometheus=HASH)
                             + "http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OneGauge())
    srv = serve("127.0.0.1", 0, registry, web_config=str(path))
    yield "https://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("authorization", [
    basic("prometheus", "wrong"),
    basic("mallory", PASSWORD),
    None,
    "Bearer abc",
    "Basic !!!notbase64",
    "Basic " + base64.b64encode(b"no-colon").decode(),
], ids=["wrong password", "unknown user", "no header", "other scheme", "bad base64", "no colon"])
@pytest.mark.parametrize("path", ["/metrics", "/", "/nope"])
def test_bad_or_missing_credentials_are_401_on_every_path(pki, guarded, authorization, path):
    status, hdrs, body = fetch(guarded + path, client(pki), authorization)
    assert status == 401
    assert hdrs["WWW-Authenticate"] == 'Basic realm="vfiomond"'
    assert hdrs["X-Frame-Options"] == "sameorigin"  # the file's headers on every answer
    assert "vfiomond_test_gauge" not in body


def test_the_success_cache_never_lets_a_wrong_password_in(pki, tmp_path, monkeypatch):
    path = tmp_path / "web.yml"
    path.write_text(users_yaml(prometheus=HASH, other=hashed("other-pw")))
    web = webconfig.load(str(path))
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: calls.append(pw) or real(pw, h))
    assert web.check_auth(basic("prometheus", PASSWORD))
    assert web.check_auth(basic("prometheus", PASSWORD)) and len(calls) == 1  # the second one from the cache
    assert not web.check_auth(basic("prometheus", PASSWORD + "x"))
    assert not web.check_auth(basic("prometheus", PASSWORD[:-1]))
    assert not web.check_auth(basic("other", PASSWORD))  # one user's cached password is not another's
    assert not web.check_auth(basic("nobody", PASSWORD))
    assert web.check_auth(basic("other", "other-pw"))
    assert web.check_auth(basic("prometheus", PASSWORD))
    assert not web.check_auth(basic("prometheus", ""))
    assert not web.check_auth(basic("prometheus", "a\0b"))


def test_no_users_means_no_auth(pki, start):
    url, _, _ = start(tls_yaml(pki))
    assert fetch(url + "/metrics", client(pki))[0] == 200


def test_plain_http_to_the_tls_port_fails(pki, start):
    url, _, _ = start(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    plain = url.replace("https://", "http://")
    status, _, body = fetch(plain + "/metrics", None, basic("prometheus", PASSWORD))
    assert status == 400 and "HTTPS server" in body and "vfiomond_test_gauge" not in body


def test_https_to_a_plain_port_fails(pki, start):
    url, _, _ = start(users_yaml(prometheus=HASH))  # basic auth without TLS
    assert url.startswith("http://")
    with pytest.raises(OSError):
        fetch(url.replace("http://", "https://") + "/metrics", client(pki), basic("prometheus", PASSWORD))
    assert fetch(url + "/metrics", None, basic("prometheus", PASSWORD))[0] == 200
    assert fetch(url + "/metrics", None, basic("prometheus", "wrong"))[0] == 401


def test_the_client_must_trust_the_server_certificate(pki, start):
    url, _, _ = start(tls_yaml(pki))
    with pytest.raises(urllib.error.URLError) as e:
        fetch(url + "/metrics", ssl.create_default_context(cafile=pki.stranger_crt))
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)


def test_required_client_certificate(pki, start):
    url, _, _ = start(tls_yaml(pki, "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: %s\n" % pki.ca_crt))
    assert fetch(url + "/metrics", client(pki, "client"))[0] == 200
    with pytest.raises(OSError):  # no certificate: the handshake is refused
        fetch(url + "/metrics", client(pki))
    with pytest.raises(OSError):  # a certificate the CA did not sign
        fetch(url + "/metrics", client(pki, "stranger"))
    with pytest.raises(OSError):
        fetch(url + "/metrics", client(pki, maximum=ssl.TLSVersion.TLSv1_2))
    assert fetch(url + "/metrics", client(pki, "client"))[0] == 200  # and the server still serves


def test_client_certificate_verified_if_given(pki, start):
    url, _, _ = start(tls_yaml(pki, "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: %s\n" % pki.ca_crt))
    assert fetch(url + "/metrics", client(pki))[0] == 200
    assert fetch(url + "/metrics", client(pki, "client"))[0] == 200
    with pytest.raises(OSError):
        fetch(url + "/metrics", client(pki, "stranger"))


@pytest.mark.parametrize("sans, allowed", [
    ("[prometheus.example]", True),
    ("[\"spiffe://example/prometheus\"]", True),
    ("[grafana.example, 127.0.0.1]", False),
])
def test_client_allowed_sans(pki, start, sans, allowed):
    url, _, _ = start(tls_yaml(pki, "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: %s\n"
                                    "  client_allowed_sans: %s\n" % (pki.ca_crt, sans)))
    if allowed:
        assert fetch(url + "/metrics", client(pki, "client"))[0] == 200
    else:
        with pytest.raises(OSError):
            fetch(url + "/metrics", client(pki, "client"))


def test_min_version_and_cipher_suites(pki, start):
    url, _, _ = start(tls_yaml(pki, "  min_version: TLS13\n"))
    with pytest.raises(OSError):
        fetch(url + "/metrics", client(pki, maximum=ssl.TLSVersion.TLSv1_2))
    assert fetch(url + "/metrics", client(pki))[0] == 200
    url, _, _ = start(tls_yaml(pki, "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"),
                      name="web2.yml")
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as raw:
        with client(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2" and tls.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_inline_cert_and_key_and_relative_paths(pki, start, tmp_path):
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(os.path.join(pki.dir, name), tmp_path / name)
    url, _, _ = start("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")  # next to the file
    assert fetch(url + "/metrics", client(pki))[0] == 200
    indent = lambda p: "".join("    " + line + "\n" for line in open(p).read().splitlines())  # noqa: E731
    url, _, _ = start("tls_server_config:\n  cert: |\n%s  key: |\n%s" % (indent(pki.server_crt), indent(pki.server_key)),
                      name="inline.yml")
    assert fetch(url + "/metrics", client(pki))[0] == 200


def test_a_stalled_client_does_not_block_other_scrapes(pki, start, monkeypatch):
    monkeypatch.setattr(exposition, "HANDSHAKE_TIMEOUT", 1.0)
    url, _, _ = start(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    port = int(url.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    try:
        began = time.monotonic()
        for _ in range(3):
            assert fetch(url + "/metrics", client(pki), basic("prometheus", PASSWORD), timeout=5)[0] == 200
        assert time.monotonic() - began < 3
        # The stalled connections are closed once the handshake timeout passes.
        for s in (silent, half):
            s.settimeout(10)
            assert s.recv(100) == b""
        assert time.monotonic() - began < 8
    finally:
        silent.close()
        half.close()


# ----------------------------------------------------------------- the file read again


def test_changes_apply_to_the_next_connection_and_a_broken_file_keeps_the_last_good_one(pki, start, caplog):
    url, path, srv = start(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    ctx = client(pki)
    assert fetch(url + "/metrics", ctx, basic("prometheus", PASSWORD))[0] == 200
    replace(path, tls_yaml(pki, rest=users_yaml(grafana=hashed("new-pw"))))
    assert fetch(url + "/metrics", ctx, basic("prometheus", PASSWORD))[0] == 401
    assert fetch(url + "/metrics", ctx, basic("grafana", "new-pw"))[0] == 200
    with caplog.at_level(logging.INFO, logger="vfiomond"):
        replace(path, tls_yaml(pki, rest="basic_auth_users: [oops\n"))
        assert fetch(url + "/metrics", ctx, basic("grafana", "new-pw"))[0] == 200
        assert fetch(url + "/metrics", ctx, basic("grafana", "new-pw"))[0] == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping the previous one" in errors[0] and "bad YAML" in errors[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vfiomond"):
        replace(path, users_yaml(grafana=hashed("new-pw")))  # TLS off: not on a running socket
        assert fetch(url + "/metrics", ctx, basic("grafana", "new-pw"))[0] == 200
    assert any("restart vfiomond" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_a_renewed_certificate_is_served_at_the_next_connection(pki, start, tmp_path):
    for name in ("server.crt", "server.key"):
        shutil.copy(os.path.join(pki.dir, name), tmp_path / name)
    url, _, _ = start("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    port = int(url.rsplit(":", 1)[1])

    def served():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.getpeercert(binary_form=True)

    first = served()
    _issue(pki.dir, "renewed", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    shutil.copy(os.path.join(pki.dir, "renewed.key"), tmp_path / "server.key.new")
    shutil.copy(os.path.join(pki.dir, "renewed.crt"), tmp_path / "server.crt.new")
    os.replace(tmp_path / "server.crt.new", tmp_path / "server.crt")  # the cert first: a pair that does not match
    assert served() == first  # ... keeps the old pair
    os.replace(tmp_path / "server.key.new", tmp_path / "server.key")
    renewed = served()
    assert renewed != first and renewed == ssl.PEM_cert_to_DER_cert(open(tmp_path / "server.crt").read())


def replace(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, str(path))


# ----------------------------------------------------------------- bad files: one line, naming the key


BAD = [
    ("tls_server_config:\n  cert_file: a\nbogus: 1\n", "unknown key bogus"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  certfile: x\n", "unknown key tls_server_config.certfile"),
    ("http_server_config:\n  http3: true\n", "unknown key http_server_config.http3"),
    ("basic_auth_users:\n  prometheus: notahash\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("basic_auth_users:\n  prometheus: $1$abc$defghijklmnopqrstuvwxyz\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("basic_auth_users:\n  prometheus: 12\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("basic_auth_users:\n  'a:b': {hash}\n", "has a ':'"),
    ("basic_auth_users: [prometheus]\n", "basic_auth_users must be a mapping"),
    ("tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: {key}\n",
     "tls_server_config.cert_file /nonexistent/server.crt: No such file or directory"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {dir}\n", "tls_server_config.key_file {dir}: Is a directory"),
    ("tls_server_config:\n  key_file: {key}\n", "tls_server_config: missing cert_file"),
    ("tls_server_config:\n  cert_file: {crt}\n", "tls_server_config: missing key_file"),
    ("tls_server_config:\n  min_version: TLS13\n", "min_version but no cert_file and key_file"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {stranger_key}\n", "do not load as a certificate and its key"),
    ("tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n", "no PEM certificate in it"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {crt}\n", "no PEM private key in it"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {enc}\n", "the key is encrypted"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: RequireAnyClientCert\n",
     "RequireAnyClientCert (a client certificate that is never verified) is not supported"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: Sometimes\n",
     "client_auth_type must be one of"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: RequireAndVerifyClientCert\n",
     "RequireAndVerifyClientCert needs client_ca_file"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_ca_file: {ca}\n",
     "a client CA is given but client_auth_type is NoClientCert"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: RequireAndVerifyClientCert\n"
     "  client_ca_file: {key}\n", "tls_server_config.client_ca_file {key}: no CA certificate loads from it"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_allowed_sans: [a]\n",
     "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  min_version: TLS14\n",
     "tls_server_config.min_version must be one of TLS10, TLS11, TLS12, TLS13, not 'TLS14'"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  min_version: TLS13\n  max_version: TLS12\n",
     "min_version is above max_version"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     "unknown cipher suite 'TLS_RSA_WITH_RC4_128_SHA'"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  curve_preferences: [X25519]\n",
     "curve_preferences is not supported"),
    ("tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  prefer_server_cipher_suites: yes please\n",
     "tls_server_config.prefer_server_cipher_suites must be true or false"),
    ("tls_server_config:\n  cert_file: {crt}\n  cert: x\n  key_file: {key}\n", "give cert_file or cert, not both"),
    ("rate_limit:\n  interval: 1s\n  burst: 20\n", "rate_limit is not supported"),
    ("http_server_config:\n  headers:\n    Server: vfiomond\n", "header 'Server' cannot be set"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
     "http_server_config.headers.X-Frame-Options must be one of deny, sameorigin, not 'allow'"),
    ("http_server_config: [http2]\n", "http_server_config must be a mapping"),
    ("tls_server_config:\n  cert_file: a\n tls: b\n", "bad YAML at line 3, column"),
    ("basic_auth_users:\n  a: {hash}\n  a: {hash}\n", "bad YAML at line 3, column 3: duplicate key 'a'"),
    ("- tls_server_config\n", "expected a mapping"),
    ("\xff\xfe\x00", "bad YAML"),
]


@pytest.mark.parametrize("text, words", BAD, ids=[w for _, w in BAD])
def test_bad_files_are_one_line_errors_naming_the_key(pki, tmp_path, text, words):
    names = dict(crt=pki.server_crt, key=pki.server_key, ca=pki.ca_crt, stranger_key=pki.stranger_key,
                 enc=pki.enc_key, dir=str(tmp_path), hash=HASH)
    path = tmp_path / "web.yml"
    path.write_bytes(text.format(**names).encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        webconfig.load(str(path))
    message = str(e.value)
    assert message.startswith("web config %s: " % path) and "\n" not in message
    assert words.format(**names) in message


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^web config /nonexistent/web.yml: No such file or directory$"):
        webconfig.load("/nonexistent/web.yml")
    with pytest.raises(ConfigError, match=r": Is a directory$"):
        webconfig.load(str(tmp_path))


def test_only_a_regular_file_of_at_most_a_mebibyte_is_read(pki, tmp_path):
    """Not /dev/zero (read without end), not a FIFO (open() would wait for a writer),
    not a file larger than MAX_FILE_BYTES; a NUL or a line break in a path stays one line."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    big = tmp_path / "big.yml"
    big.write_bytes(b"#" * (webconfig.MAX_FILE_BYTES + 1))
    for path, words in (("/dev/zero", "web config /dev/zero: not a regular file"),
                        (fifo, "web config %s: not a regular file" % fifo),
                        (str(big), "web config %s: larger than 1 MiB: refused" % big),
                        ("a\0b", "web config 'a\\x00b': a path cannot hold a NUL character"),
                        (str(tmp_path / "a\nb"), "No such file or directory")):
        with pytest.raises(ConfigError) as e:
            webconfig.load(path)
        assert str(e.value).startswith(words) or words in str(e.value)
        assert "\n" not in str(e.value)
    ok = tmp_path / "ok.yml"
    ok.write_bytes(b"#" * webconfig.MAX_FILE_BYTES)
    assert not webconfig.load(str(ok)).tls
    for target in ("/dev/zero", fifo, str(big)):
        web = tmp_path / "web.yml"
        web.write_text("tls_server_config:\n  cert_file: %s\n  key_file: %s\n" % (target, pki.server_key))
        with pytest.raises(ConfigError, match=r"tls_server_config\.cert_file %s: (not a regular file|larger than 1 MiB)"
                           % target):
            webconfig.load(str(web))


def test_names_with_line_breaks_are_escaped_in_the_one_line_error(tmp_path):
    path = tmp_path / "web.yml"
    for text, words in (('"a\\nb": 1\n', "unknown key 'a\\nb'"),
                        ('tls_server_config:\n  "x\\u2028y": 1\n', "unknown key tls_server_config.'x\\u2028y'"),
                        ('basic_auth_users:\n  "a\\nb": x\n', "basic_auth_users.'a\\nb': not a bcrypt hash")):
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            webconfig.load(str(path))
        assert words in str(e.value) and len(str(e.value).splitlines()) == 1


def test_unreadable_file():
    """Mode 000, read by an unprivileged user (as root, in a child that drops to nobody)."""
    import tempfile

    d = tempfile.mkdtemp()
    try:
        os.chmod(d, 0o755)
        path = os.path.join(d, "web.yml")
        open(path, "w").close()
        os.chmod(path, 0)
        code = ("from vfiomond import webconfig\ntry:\n    webconfig.load(%r)\nexcept Exception as e:\n    print(e)\n"
                % path)
        drop = (lambda: (os.setgid(65534), os.setuid(65534))) if os.geteuid() == 0 else None
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, preexec_fn=drop)
        assert out.stdout == "web config %s: Permission denied\n" % path, out.stderr
    finally:
        shutil.rmtree(d)


def test_empty_file_is_plain_http_without_auth(tmp_path, start):
    (tmp_path / "empty.yml").write_text("")
    web = webconfig.load(str(tmp_path / "empty.yml"))
    assert not web.tls and not web.users and web.check_auth(None)
    url, _, _ = start("# nothing\n")
    assert url.startswith("http://") and fetch(url + "/metrics")[0] == 200


def test_notes_for_what_is_ignored_or_weak(pki, tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(users_yaml(prometheus=HASH) + "http_server_config:\n  http2: true\n")
    notes = " ".join(text for _, text in webconfig.load(str(path)).notes)
    assert "http2 is ignored" in notes and "clear text" in notes


@pytest.mark.parametrize("module, words", [("yaml", "reading it needs PyYAML (python3-yaml)"),
                                           ("bcrypt", "basic_auth_users needs bcrypt (python3-bcrypt)")])
def test_a_missing_package_is_a_one_line_error(tmp_path, monkeypatch, module, words):
    path = tmp_path / "web.yml"
    path.write_text(users_yaml(prometheus=HASH))
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.setattr(webconfig, "_LOADER", None)
    with pytest.raises(ConfigError) as e:
        webconfig.load(str(path))
    assert str(e.value) == "web config %s: %s" % (path, words)


def test_vfiomond_imports_without_yaml_and_bcrypt():
    code = ("import sys; sys.modules['yaml'] = sys.modules['bcrypt'] = None; "
            "import vfiomond.cli, vfiomond.exposition, vfiomond.config; "
            "from vfiomond.config import Config, validate; validate(Config(), 'x'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------- config file and flag


def test_config_key_and_flag(pki, tmp_path, monkeypatch):
    good = tmp_path / "web.yml"
    good.write_text(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users:\n  prometheus: nope\n")
    assert config.from_dict({"daemon": {"web_config_file": str(good)}}, "config f.toml").web_config_file == str(good)
    with pytest.raises(ConfigError, match=r"^web config .*bad.yml: basic_auth_users.prometheus: not a bcrypt hash"):
        config.from_dict({"daemon": {"web_config_file": str(bad)}}, "config f.toml")
    with pytest.raises(ConfigError, match="daemon.web_config_file must be a str"):
        config.from_dict({"daemon": {"web_config_file": 1}}, "config f.toml")
    assert "web_config_file" in config.RESTART_ONLY
    assert config.Config().web_config_file == ""

    other = tmp_path / "other.yml"
    other.write_text(users_yaml(grafana=HASH))
    toml = tmp_path / "vfiomond.toml"
    toml.write_text('[daemon]\nweb_config_file = "%s"\n' % other)
    seen = {}
    monkeypatch.setattr("vfiomond.daemon.run", lambda cfg, load: seen.update(cfg=cfg, load=load) or 0)
    assert cli.main(["run", "--config", str(toml)]) == 0
    assert seen["cfg"].web_config_file == str(other)
    assert cli.main(["run", "--config", str(toml), "--web.config.file", str(good)]) == 0  # the flag wins
    assert seen["cfg"].web_config_file == str(good)
    assert cli.main(["run", "--config", str(toml), "--web.config.file", ""]) == 0  # "" turns it off
    assert seen["cfg"].web_config_file == ""
    assert cli.main(["run", "--web.config.file", str(bad)]) == 2
    # A reload (SIGHUP) reads the web config again: a broken one fails the reload.
    assert cli.main(["run", "--config", str(toml)]) == 0
    other.write_text("basic_auth_users:\n  grafana: nope\n")
    with pytest.raises(ConfigError, match="other.yml: basic_auth_users.grafana: not a bcrypt hash"):
        seen["load"]()


def test_cli_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n")
    assert cli.main(["run", "--web.config.file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == "vfiomond: error: web config %s: tls_server_config.cert_file /nonexistent.crt: " \
                  "No such file or directory\n" % bad


def test_serve_takes_a_loaded_config(pki, tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    srv = serve("127.0.0.1", 0, CollectorRegistry(), web_config=webconfig.load(str(path)))
    try:
        url = "https://127.0.0.1:%d/metrics" % srv.server_address[1]
        assert fetch(url, client(pki), basic("prometheus", PASSWORD))[0] == 200
        assert fetch(url, client(pki))[0] == 401
    finally:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------- a real Prometheus scrapes it


def _promserver():
    sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
    try:
        import promserver
    finally:
        sys.path.pop(0)
    return promserver


def test_promserver_scrape_config_passes_promtool(pki, tmp_path):
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        pytest.skip("needs prometheus and promtool")
    promserver = _promserver()
    plain = promserver.PrometheusServer(10119, str(tmp_path / "plain"))
    os.makedirs(plain.workdir)
    assert "tls_config" not in open(plain._config()).read()
    server = promserver.PrometheusServer(10119, str(tmp_path / "https"), scheme="https", ca_file=pki.ca_crt,
                                         server_name="localhost", basic_auth=("prometheus", PASSWORD))
    os.makedirs(server.workdir)
    path = server._config()
    text = open(path).read()
    assert "scheme: https" in text and "server_name: \"localhost\"" in text and PASSWORD not in text
    out = subprocess.run(["promtool", "check", "config", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_real_prometheus_scrapes_over_tls_with_basic_auth(pki, start, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus")
    promserver = _promserver()
    url, _, _ = start(tls_yaml(pki, rest=users_yaml(prometheus=HASH)))
    port = int(url.rsplit(":", 1)[1])
    server = promserver.PrometheusServer(port, str(tmp_path / "prometheus"), scheme="https", ca_file=pki.ca_crt,
                                         server_name="localhost", basic_auth=("prometheus", PASSWORD))
    server.start(timeout=30)
    try:
        server.wait_for_scrapes(1, timeout=30)
        r = server.api("query", query="vfiomond_test_gauge")
        assert r["data"]["result"][0]["value"][1] == "42"
    finally:
        server.stop()
