#!/usr/bin/python3
"""A Docker registry token service for tests (distribution "auth: token"), stdlib http.server
plus python3-jwt and python3-cryptography from Debian. Run with /usr/bin/python3.

    tokenserver.py --key KEY.pem --cert CERT.pem --issuer ISS --service SVC \
                   --port-file FILE [--port 0] [--expires 300] [--user zran:zran-secret]

It listens on 127.0.0.1 (port 0 = a free one, written to --port-file once listening).

GET /token?service=SVC&scope=repository:NAME:pull,push[&scope=...][&account=...]
    Without Authorization: anonymous, granted "pull" (only) on every requested repository.
    With Authorization: Basic for the configured user: granted every requested action
    (pull, push, delete, *), and registry:catalog:*. A wrong user or password: 401.
    Answer: {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": RFC 3339}.
POST /token (OAuth2, as containerd sends it): form grant_type=password with username and
    password, service, scope (space separated), client_id. Same rules; the answer has
    access_token, expires_in, issued_at, scope. Other grant types: 400 unsupported_grant_type.

The JWT is ES256, signed by KEY; its header carries x5c = [CERT in DER, base64], and kid =
the libtrust fingerprint of the key. distribution 2.8 (registry/auth/token/token.go) checks
x5c first: it verifies CERT against its rootcertbundle (which is CERT itself), then the
signature with CERT's key; then iss == issuer, aud == service, exp/nbf with 60 s leeway, and
the access claim against the request.
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import http.server
import json
import os
import socketserver
import sys
import time
import urllib.parse
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def libtrust_key_id(public_key):
    """libtrust's KeyID: base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo),
    in 12 groups of 4 characters joined by ':'."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


def parse_scope(s):
    """'repository:library/x:pull,push' -> ('repository', 'library/x', ['pull', 'push'])."""
    typ, _, rest = s.partition(":")
    name, _, actions = rest.rpartition(":")
    if not typ or not name:
        return None
    return typ, name, [a for a in actions.split(",") if a]


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "zran-tokenserver/1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (datetime.datetime.utcnow().isoformat(), fmt % args))

    def _json(self, code, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _unauthorized(self, msg):
        self._json(401, {"errors": [{"code": "UNAUTHORIZED", "message": msg}]},
                   {"WWW-Authenticate": 'Basic realm="zran-token"'})

    def _check(self, user, password):
        return (user, password) == self.server.opts.user_pass

    def _grant(self, scopes, authed):
        access = []
        for s in scopes:
            p = parse_scope(s)
            if p is None:
                continue
            typ, name, actions = p
            if authed:
                granted = actions
            else:
                granted = [a for a in actions if a == "pull"] if typ == "repository" else []
            if granted:
                access.append({"type": typ, "name": name, "actions": sorted(set(granted))})
        return access

    def _token(self, service, scopes, account, authed):
        o = self.server.opts
        if service and service != o.service:
            return None
        now = int(time.time())
        claims = {"iss": o.issuer, "sub": account if authed else "",
                  "aud": o.service, "exp": now + o.expires, "nbf": now - 1, "iat": now,
                  "jti": uuid.uuid4().hex, "access": self._grant(scopes, authed)}
        headers = {"typ": "JWT", "x5c": [self.server.cert_b64], "kid": self.server.kid}
        tok = jwt.encode(claims, self.server.key, algorithm="ES256", headers=headers)
        self.log_message("token for %r: %s", account if authed else "(anonymous)",
                         json.dumps(claims["access"]))
        return tok, now

    def _basic(self):
        h = self.headers.get("Authorization")
        if not h:
            return None
        kind, _, val = h.partition(" ")
        if kind.lower() != "basic":
            return ("", "")
        try:
            user, _, pw = base64.b64decode(val).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        return user, pw

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        if u.path != "/token":
            return self._json(404, {"error": "not found"})
        q = urllib.parse.parse_qs(u.query)
        creds = self._basic()
        if creds is not None and not self._check(*creds):
            return self._unauthorized("bad user name or password")
        authed = creds is not None
        scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
        account = creds[0] if authed else q.get("account", [""])[0]
        if authed:
            scopes.append("registry:catalog:*")
        r = self._token(q.get("service", [""])[0], scopes, account, authed)
        if r is None:
            return self._json(400, {"error": "unknown service"})
        tok, now = r
        self._json(200, {"token": tok, "access_token": tok, "expires_in": self.server.opts.expires,
                         "issued_at": datetime.datetime.utcfromtimestamp(now).strftime(
                             "%Y-%m-%dT%H:%M:%SZ")})

    def do_POST(self):
        u = urllib.parse.urlsplit(self.path)
        if u.path != "/token":
            return self._json(404, {"error": "not found"})
        n = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode())
        f = {k: v[0] for k, v in form.items()}
        if f.get("grant_type") != "password":
            return self._json(400, {"error": "unsupported_grant_type"})
        if not self._check(f.get("username", ""), f.get("password", "")):
            return self._unauthorized("bad user name or password")
        scopes = [s for s in f.get("scope", "").split(" ") if s] + ["registry:catalog:*"]
        r = self._token(f.get("service", ""), scopes, f["username"], True)
        if r is None:
            return self._json(400, {"error": "unknown service"})
        tok, now = r
        self._json(200, {"access_token": tok, "expires_in": self.server.opts.expires,
                         "issued_at": datetime.datetime.utcfromtimestamp(now).strftime(
                             "%Y-%m-%dT%H:%M:%SZ"), "scope": " ".join(scopes)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--expires", type=int, default=300)
    ap.add_argument("--user", default="zran:zran-secret")
    opts = ap.parse_args()
    opts.user_pass = tuple(opts.user.split(":", 1))

    with open(opts.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(opts.cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    srv = Server(("127.0.0.1", opts.port), Handler)
    srv.opts = opts
    srv.key = key
    srv.cert_b64 = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    srv.kid = libtrust_key_id(cert.public_key())
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, opts.port_file)
    sys.stderr.write("token service on 127.0.0.1:%d (kid %s)\n" % (srv.server_address[1], srv.kid))
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
