#!/usr/bin/env python3
"""NTLM (and Negotiate wrapping NTLM) peer for tower-auth's tests: pyspnego's acceptor behind a
small HTTP/1.1 front end that keeps each connection authenticated after a successful handshake,
as IIS does.

Started by tests/peers/ntlm.sh with the venv's python (pyspnego from PyPI, pinned there). It
listens on 127.0.0.1 only and writes its ports to DIR/ports ("server PORT" and "proxy PORT"
lines) once both listeners are bound.

Users (NTLM_USER_FILE, written by this script into DIR/users.txt; pyspnego checks the password
for real: NTLMv2, MIC, channel bindings when given):

    TOWERAUTH\\alice       Passw0rd!
    alice@towerauth.test   Passw0rd!  (user principal name form, empty domain)
    bob (no domain)        hunter2

Server port: every path needs NTLM or Negotiate on the connection except:
    /health              200, no authentication
    /open/...            200 "open", no authentication (the proxy tests' target)
A request on an authenticated connection is answered 200 with the user in `X-Ntlm-User`, the
connection's number in `X-Ntlm-Connection`, and a body "METHOD PATH user=U len=N body=B".
Special paths, to test the client's failure handling:
    /drop/...            the connection is closed without an answer after the type 1 message
    /forever/...         401 with a fresh challenge forever, even after a valid type 3
    /truncated/...       the type 2 message is cut short
    /badoffset/...       the type 2 message's target-info offset points outside it
    /stats               200 JSON: handshakes, connections, authenticated requests (no auth)

HTTPS ports (with --tls-cert/--tls-key): the server's paths with Extended Protection required
(channel binding, RFC 5929 tls-server-end-point); "https_badcbt" expects another certificate's
hash, so every handshake there fails.

Proxy port: the same with 407 / Proxy-Authenticate / Proxy-Authorization; once the connection is
authenticated, absolute-form requests are forwarded (plain http) and CONNECT opens a tunnel to
127.0.0.1 only.
"""

import argparse
import base64
import http.client
import json
import os
import hashlib
import select
import socket
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import spnego
import spnego.exceptions
from spnego.channel_bindings import GssChannelBindings

USERS = "TOWERAUTH:alice:Passw0rd!\n:alice@towerauth.test:Passw0rd!\n:bob:hunter2\n"

STATS = {"handshakes": 0, "connections": 0, "authenticated_requests": 0, "failed_handshakes": 0}
STATS_LOCK = threading.Lock()


def count(key):
    with STATS_LOCK:
        STATS[key] += 1
        return STATS[key]


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    proxy = False
    server_version = "ntlm-peer"

    def setup(self):
        super().setup()
        self.ctx = None
        self.ctx_scheme = None
        self.user = None
        self.conn_no = count("connections")

    def log_message(self, fmt, *args):
        log("%s conn=%d %s" % ("proxy" if self.proxy else "server", self.conn_no, fmt % args))

    # -- helpers -----------------------------------------------------------------------------

    @property
    def status_challenge(self):
        return 407 if self.proxy else 401

    @property
    def challenge_header(self):
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def credentials_header(self):
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def drain(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = b""
        while len(body) < length:
            chunk = self.rfile.read(length - len(body))
            if not chunk:
                break
            body += chunk
        return body

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def challenge(self, token=None, scheme=None):
        if token is None:
            headers = [(self.challenge_header, "Negotiate"), (self.challenge_header, "NTLM")]
        else:
            headers = [(self.challenge_header, "%s %s" % (scheme, base64.b64encode(token).decode()))]
        self.reply(self.status_challenge, b"authentication needed\n", headers)

    def path_only(self):
        if self.proxy:
            return "/"
        return urlsplit(self.path).path

    # -- authentication ----------------------------------------------------------------------

    def authenticate(self):
        """True once the connection is authenticated (answers the challenge legs otherwise)."""
        path = self.path_only()
        forever = path.startswith("/forever/")
        if self.user is not None and not forever:
            return True
        value = self.headers.get(self.credentials_header)
        if not value or " " not in value:
            self.ctx = None
            self.challenge()
            return False
        scheme, _, token = value.partition(" ")
        scheme = scheme.strip()
        if scheme.lower() not in ("ntlm", "negotiate"):
            self.challenge()
            return False
        try:
            token = base64.b64decode(token.strip(), validate=True)
        except Exception:
            self.reply(400, b"bad token\n")
            return False
        # A type 1 (or a fresh SPNEGO init) starts a new handshake on this connection.
        if self.ctx is None or self.ctx_scheme != scheme.lower() or token[:12] == b"NTLMSSP\x00\x01\x00\x00\x00":
            protocol = "ntlm" if scheme.lower() == "ntlm" else "negotiate"
            self.ctx = spnego.server(protocol=protocol, channel_bindings=self.server.bindings)
            self.ctx_scheme = scheme.lower()
            count("handshakes")
        try:
            out = self.ctx.step(token)
        except spnego.exceptions.SpnegoError as e:
            log("conn=%d handshake failed: %s" % (self.conn_no, type(e).__name__))
            count("failed_handshakes")
            self.ctx = None
            self.challenge()
            return False
        if not self.ctx.complete:
            if path.startswith("/drop/"):
                log("conn=%d dropping the connection mid-handshake" % self.conn_no)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return False
            if path.startswith("/truncated/"):
                out = out[:20]
            elif path.startswith("/badoffset/"):
                out = out[:40] + struct.pack("<HHI", 200, 200, 0xFFFF) + out[48:]
            self.challenge(out, scheme)
            return False
        self.ctx_final = out
        if forever:
            self.ctx = None
            self.challenge()
            return False
        self.user = self.ctx.client_principal or "?"
        self.ctx = None
        return True

    # -- requests ----------------------------------------------------------------------------

    def handle_any(self):
        body = self.drain()
        path = self.path_only()
        if path == "/health":
            return self.reply(200, b"ok\n")
        if path == "/stats":
            with STATS_LOCK:
                data = json.dumps(STATS).encode()
            return self.reply(200, data, [("Content-Type", "application/json")])
        if path.startswith("/open/"):
            return self.reply(200, b"open\n")
        self.ctx_final = None
        if not self.authenticate():
            return
        count("authenticated_requests")
        if self.proxy:
            return self.forward(body)
        text = "%s %s user=%s len=%d body=%s\n" % (
            self.command, path, self.user, len(body), body.decode("utf-8", "replace"))
        headers = [("X-Ntlm-User", self.user), ("X-Ntlm-Connection", str(self.conn_no))]
        headers.extend(self.final_token_header())
        self.reply(200, text.encode(), headers)

    def final_token_header(self):
        """SPNEGO's last token (accept-completed, mechListMIC) on the answer that ends a handshake."""
        if not self.ctx_final:
            return []
        scheme = "Negotiate" if self.ctx_scheme == "negotiate" else "NTLM"
        return [(self.challenge_header, "%s %s" % (scheme, base64.b64encode(self.ctx_final).decode()))]

    def forward(self, body):
        if self.command == "CONNECT":
            return self.tunnel()
        url = urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost"):
            return self.reply(403, b"this proxy forwards to 127.0.0.1 only\n")
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-authorization", "proxy-connection", "connection", "host")}
        conn.request(self.command, (url.path or "/") + ("?" + url.query if url.query else ""), body=body,
                     headers=headers)
        res = conn.getresponse()
        data = res.read()
        out = [(k, v) for k, v in res.getheaders()
               if k.lower() not in ("content-length", "transfer-encoding", "connection")]
        out.append(("X-Ntlm-Proxy-User", self.user))
        out.extend(self.final_token_header())
        self.reply(res.status, data, out)
        conn.close()

    def tunnel(self):
        host, _, port = self.path.rpartition(":")
        if host not in ("127.0.0.1", "localhost"):
            return self.reply(403, b"this proxy tunnels to 127.0.0.1 only\n")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            return self.reply(502, b"cannot reach the target\n")
        self.send_response(200, "Connection established")
        for name, value in self.final_token_header():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 60)
                if not readable:
                    break
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_CONNECT = handle_any


class ProxyHandler(Handler):
    proxy = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of 8 clients connecting at once (they
    # come back after the kernel's 1 s retransmission).
    request_queue_size = 128
    bindings = None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    users = os.path.join(args.dir, "users.txt")
    with open(users, "w") as f:
        f.write(USERS)
    os.environ["NTLM_USER_FILE"] = users
    server = Server(("127.0.0.1", 0), Handler)
    proxy = Server(("127.0.0.1", 0), ProxyHandler)
    servers = [("server", server), ("proxy", proxy)]
    if args.tls_cert:
        # HTTPS with Extended Protection required: the NTLM authenticate message must carry the
        # RFC 5929 tls-server-end-point hash of this certificate (SHA-256: it is signed with
        # sha256WithRSAEncryption). The second listener expects the hash of another certificate,
        # as a server behind a TLS-intercepting box would: every client must fail there.
        with open(args.tls_cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        good = b"tls-server-end-point:" + hashlib.sha256(der).digest()
        bad = b"tls-server-end-point:" + hashlib.sha256(b"another certificate").digest()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        context.set_alpn_protocols(["http/1.1"])
        for name, data in (("https", good), ("https_badcbt", bad)):
            tls = Server(("127.0.0.1", 0), Handler)
            tls.bindings = GssChannelBindings(application_data=data)
            tls.socket = context.wrap_socket(tls.socket, server_side=True)
            servers.append((name, tls))
    for _, s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tmp = os.path.join(args.dir, "ports.tmp")
    with open(tmp, "w") as f:
        for name, s in servers:
            f.write("%s %d\n" % (name, s.server_address[1]))
    os.replace(tmp, os.path.join(args.dir, "ports"))
    log("ntlm peer: " + ", ".join("%s %d" % (n, s.server_address[1]) for n, s in servers))
    threading.Event().wait()


if __name__ == "__main__":
    main()
