#!/usr/bin/python3
"""Kerberos (Negotiate) over HTTPS with channel binding required, for tower-auth's tests: MIT
GSSAPI's acceptor (Debian python3-gssapi, no venv) with the Kerberos peer's HTTP/localhost keytab,
behind a small HTTP/1.1 front end that keeps each connection authenticated after its handshake.

Started by tests/peers/kerberos.sh (which owns the realm, the keytab and the certificate). Debian's
mod_auth_gssapi (1.6.4) cannot check channel bindings (no directive for it; upstream only ever had
an unmerged rfc5929 branch, gssapi/mod_auth_gssapi issue 141), hence this acceptor.

It listens on 127.0.0.1 only, with TLS (--cert/--key), and writes its ports to --ports once bound:

    https         Extended Protection required: gss_accept_sec_context is given the RFC 5929
                  tls-server-end-point channel bindings of this certificate (application data
                  "tls-server-end-point:" + SHA-256 of its DER: it is signed with
                  sha256WithRSAEncryption), and a context that is not channel-bound is refused
                  too. MIT krb5 (>= 1.19) accepts an initiator that sent no bindings (an all-zero
                  checksum field) even when the acceptor passes some: it then leaves
                  GSS_C_CHANNEL_BOUND_FLAG (ret_flags 0x800) unset, which this server checks.
    https_badcbt  the same, expecting the bindings of another certificate (as behind a
                  TLS-intercepting box): gss_accept_sec_context fails with GSS_S_BAD_BINDINGS for
                  every client that sends bindings.

Paths (both ports): /health 200 "ok" without authentication; any other path needs
`Authorization: Negotiate` on the connection and is answered 200 "hello cbt user=U\n" with the
user in X-Remote-User, the connection's number in X-Connection, and the acceptor's final token
(SPNEGO accept-completed with the AP-REP) in `WWW-Authenticate: Negotiate <token>`. A refusal is a
401 with a bare `WWW-Authenticate: Negotiate` and the reason in X-Refused ("bad-bindings",
"not-channel-bound", "gss-error"); the connection stays open. /stats: JSON counters.
"""

import argparse
import base64
import hashlib
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gssapi
import gssapi.exceptions
import gssapi.raw
from gssapi.raw import ChannelBindings

STATS = {"connections": 0, "handshakes": 0, "refused": 0, "bad_bindings": 0, "not_channel_bound": 0}
LOCK = threading.Lock()


def count(key):
    with LOCK:
        STATS[key] += 1
        return STATS[key]


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "kerberos-cbt-peer"

    def setup(self):
        super().setup()
        self.user = None
        self.conn_no = count("connections")

    def log_message(self, fmt, *args):
        log("%s conn=%d %s" % (self.server.name, self.conn_no, fmt % args))

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def refuse(self, why):
        count("refused")
        log("%s conn=%d refused: %s" % (self.server.name, self.conn_no, why))
        self.reply(401, ("refused: %s\n" % why).encode(), [("WWW-Authenticate", "Negotiate"), ("X-Refused", why)])

    def authenticate(self):
        """None once the connection is authenticated (the final token, or b""), else answered."""
        value = self.headers.get("Authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "negotiate" or not token.strip():
            self.reply(401, b"authentication needed\n", [("WWW-Authenticate", "Negotiate")])
            return None
        try:
            token = base64.b64decode(token.strip(), validate=True)
        except ValueError:
            self.reply(400, b"bad token\n")
            return None
        count("handshakes")
        ctx = gssapi.SecurityContext(creds=self.server.creds, usage="accept",
                                     channel_bindings=self.server.bindings)
        # python-gssapi raises a step's error from the next call on the context, hence all in
        # the try.
        try:
            out = ctx.step(token)
            complete = ctx.complete
            bound = complete and bool(ctx.actual_flags & gssapi.RequirementFlag.channel_bound)
            user = str(ctx.initiator_name) if complete else None
        except gssapi.exceptions.BadChannelBindingsError:
            count("bad_bindings")
            self.refuse("bad-bindings")
            return None
        except gssapi.exceptions.GSSError as e:
            self.refuse("gss-error")
            log("  %s" % (e,))
            return None
        if not complete:
            # Kerberos in SPNEGO completes in one leg; anything else is not for this peer.
            self.refuse("gss-error")
            return None
        # MIT accepts a context whose initiator sent no bindings; "required" means refusing it.
        if not bound:
            count("not_channel_bound")
            self.refuse("not-channel-bound")
            return None
        self.user = user
        return out or b""

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/health":
            return self.reply(200, b"ok\n")
        if self.path == "/stats":
            with LOCK:
                data = json.dumps(STATS).encode()
            return self.reply(200, data, [("Content-Type", "application/json")])
        headers = []
        if self.user is None:
            final = self.authenticate()
            if final is None:
                return
            if final:
                headers.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(final).decode()))
        headers += [("X-Remote-User", self.user), ("X-Connection", str(self.conn_no))]
        text = "hello cbt user=%s len=%d\n" % (self.user, len(body))
        self.reply(200, text.encode(), headers)

    do_GET = do_POST = do_PUT = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keytab", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ports", required=True)
    args = parser.parse_args()
    # Any principal of the keytab (HTTP/localhost@TOWERAUTH.TEST), from this keytab only.
    creds = gssapi.Credentials(usage="accept", store={b"keytab": args.keytab.encode()})
    with open(args.cert) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    good = b"tls-server-end-point:" + hashlib.sha256(der).digest()
    bad = b"tls-server-end-point:" + hashlib.sha256(b"another certificate").digest()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    servers = []
    for name, data in (("https", good), ("https_badcbt", bad)):
        s = Server(("127.0.0.1", 0), Handler)
        s.name = name
        s.creds = creds
        s.bindings = ChannelBindings(application_data=data)
        s.socket = context.wrap_socket(s.socket, server_side=True)
        servers.append(s)
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tmp = args.ports + ".tmp"
    with open(tmp, "w") as f:
        for s in servers:
            f.write("%s %d\n" % (s.name, s.server_address[1]))
    os.replace(tmp, args.ports)
    log("kerberos cbt peer: " + ", ".join("%s %d" % (s.name, s.server_address[1]) for s in servers))
    threading.Event().wait()


if __name__ == "__main__":
    main()
