"""The lab's secured endpoint: a web configuration (--web.config.file) with TLS and
basic auth for the guest's vfiomond, as an operator would write one.

``make(out)`` writes into ``out/web/`` (the guest sees it as /lab/out/web): a
self-signed certificate for 127.0.0.1 (openssl), its key, web.yml with a bcrypt
hash of a random password (python3-bcrypt), and scrape.json with what a scraper
needs (user, password, the certificate to trust).  The guest starts vfiomond with
it (guest/init.sh) and its scenarios scrape with it (scenarios/vfiolib.scrape);
the host's scrape and the real Prometheus use ``Web``.
"""

import base64
import json
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Dict, NamedTuple, Optional

USER = "prometheus"
SERVER_NAME = "vfiomond-lab"


class Web(NamedTuple):
    dir: str
    cert: str
    password: str

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False  # the certificate names 127.0.0.1 and SERVER_NAME; hostfwd changes the port only
        return ctx

    def get(self, url: str, user: Optional[str] = USER, password: Optional[str] = None, timeout: float = 30) -> bytes:
        request = urllib.request.Request(url)
        if user is not None:
            token = base64.b64encode(("%s:%s" % (user, self.password if password is None else password)).encode())
            request.add_header("Authorization", "Basic " + token.decode())
        with urllib.request.urlopen(request, timeout=timeout, context=self.context()) as r:
            return r.read()

    def rejections(self, port: int) -> Dict[str, str]:
        """What the endpoint answers a scraper that is not let in: an HTTP status, or the error."""
        base = "https://127.0.0.1:%d/metrics" % port
        out = {}
        for name, fn in (("no credentials", lambda: self.get(base, user=None)),
                         ("wrong password", lambda: self.get(base, password="not-" + self.password)),
                         ("unknown user", lambda: self.get(base, user="intruder")),
                         ("plain http", lambda: urllib.request.urlopen(base.replace("https", "http"), timeout=10).read())):
            try:
                fn()
                out[name] = "200"
            except urllib.error.HTTPError as e:
                out[name] = str(e.code)
            except (OSError, ssl.SSLError) as e:
                out[name] = type(e).__name__
        return out


def make(out: str) -> Web:
    import bcrypt

    d = os.path.join(out, "web")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=" + SERVER_NAME, "-keyout", key, "-out", cert,
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:" + SERVER_NAME],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    password = secrets.token_urlsafe(18)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    guest = "/lab/out/web/"
    with open(os.path.join(d, "web.yml"), "w") as f:
        f.write("# vfiomond's endpoint in the lab: TLS and basic auth (tests/lab/webtls.py)\n"
                "tls_server_config:\n  cert_file: %scert.pem\n  key_file: %skey.pem\n  min_version: TLS12\n"
                "basic_auth_users:\n  %s: %s\n" % (guest, guest, USER, json.dumps(hashed)))
    with open(os.path.join(d, "scrape.json"), "w") as f:
        json.dump({"user": USER, "password": password, "ca": guest + "cert.pem"}, f)
    return Web(d, cert, password)
