#!/usr/bin/python3
"""oauthlib's OAuth 1.0a server endpoints (Debian python3-oauthlib 3.2.2) behind a small
http.server front end, as a peer for tower-auth's OAuth1 tests. Started and stopped by
tests/peers/oauthlib.sh; listens on 127.0.0.1 only, on a free port written to DIR/port.

What it serves (every answer is JSON):

  ANY /2legged/...   oauthlib SignatureOnlyEndpoint: consumer signature only (no token)
  ANY /3legged/...   oauthlib ResourceEndpoint: consumer + access token signature
      A path containing /bh/ also requires oauth_body_hash on a body that is not a form.
      Whenever oauth_body_hash is present the front end checks it over the raw body, with
      the hash of the signature method (SHA-1 for *-SHA1 and PLAINTEXT, SHA-256, SHA-512),
      and refuses it on a form body (the body hash extension, which oauthlib does not check).
      200 {"accepted": true, "method", "params": [[name, value]...], "body_hash": bool,
           "query": "...", "body": "..."} or 401 {"accepted": false, "reason"}.
  POST /request_token   oauthlib RequestTokenEndpoint (oauth_callback required)
  GET  /authorize?oauth_token=T   oauthlib AuthorizationEndpoint, the user approving at once:
                       302 to the callback with oauth_token and oauth_verifier, or for
                       callback `oob` 200 with them form-encoded in the body
  POST /access_token    oauthlib AccessTokenEndpoint; the new access token is accepted by
                        /3legged/ afterwards
  GET  /health          200

Credentials (the tests know them):
  consumer key  tower-consumer-key-0001, secret  consumer-s3cret/+&=~é  (HMAC, PLAINTEXT)
                RSA methods: the public key given with --rsa-public-key
  access token  tower-access-token-0001, secret  access-s3cret&/+ %
  and, with secrets that need no percent-encoding (see PLAIN_* below):
  consumer key  tower-consumer-key-0002, secret  consumer-secret-0002
  access token  tower-access-token-0002, secret  access-secret-0002
Validator rules, as real providers: keys, tokens and verifiers 8 to 128 characters of
letters, digits, '-' and '_'; nonces 8 to 128 letters and digits, each used once per
consumer, token and timestamp; timestamps within 600 s; every signature method allowed.
"""

import argparse
import base64
import hashlib
import json
import os
import string
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from oauthlib.oauth1 import (AccessTokenEndpoint, AuthorizationEndpoint, RequestTokenEndpoint,
                             RequestValidator, ResourceEndpoint, SignatureOnlyEndpoint)
from oauthlib.oauth1.rfc5849 import SIGNATURE_METHODS
from oauthlib.oauth1.rfc5849.errors import OAuth1Error

CONSUMER_KEY = "tower-consumer-key-0001"
CONSUMER_SECRET = "consumer-s3cret/+&=~\u00e9"
ACCESS_TOKEN = "tower-access-token-0001"
ACCESS_SECRET = "access-s3cret&/+ %"
# Secrets that need no percent-encoding: oauthlib 3.2.2 percent-decodes oauth_* values read
# from the query or a form body twice (urldecode, then utils.unescape in collect_parameters),
# so a PLAINTEXT signature over secrets with reserved characters cannot be verified there,
# even one made by oauthlib's own Client.
PLAIN_CONSUMER_KEY = "tower-consumer-key-0002"
PLAIN_CONSUMER_SECRET = "consumer-secret-0002"
PLAIN_ACCESS_TOKEN = "tower-access-token-0002"
PLAIN_ACCESS_SECRET = "access-secret-0002"
CONSUMERS = {CONSUMER_KEY: CONSUMER_SECRET, PLAIN_CONSUMER_KEY: PLAIN_CONSUMER_SECRET}
SAFE = set(string.ascii_letters + string.digits + "-_")


class Validator(RequestValidator):
    def __init__(self, rsa_public_key):
        super().__init__()
        self.rsa_public_key = rsa_public_key
        self.lock = threading.Lock()
        self.nonces = set()
        self.request_tokens = {}  # token -> {secret, callback, verifier}
        self.access_tokens = {ACCESS_TOKEN: ACCESS_SECRET, PLAIN_ACCESS_TOKEN: PLAIN_ACCESS_SECRET}

    # Format rules, as real providers (Twitter's nonces are 42 characters).
    safe_characters = SAFE
    client_key_length = (8, 128)
    request_token_length = (8, 128)
    access_token_length = (8, 128)
    nonce_length = (8, 128)
    verifier_length = (8, 128)
    enforce_ssl = False  # 127.0.0.1

    @property
    def allowed_signature_methods(self):
        return SIGNATURE_METHODS

    @property
    def realms(self):
        return []

    dummy_client = "dummy-client-000000"
    dummy_request_token = "dummy-request-000000"
    dummy_access_token = "dummy-access-000000"

    def get_client_secret(self, client_key, request):
        return CONSUMERS.get(client_key, "dummy-secret")

    def get_rsa_key(self, client_key, request):
        return self.rsa_public_key

    def validate_client_key(self, client_key, request):
        return client_key in CONSUMERS

    def validate_timestamp_and_nonce(self, client_key, timestamp, nonce, request,
                                     request_token=None, access_token=None):
        key = (client_key, timestamp, nonce, request_token or access_token)
        with self.lock:
            if key in self.nonces:
                return False
            self.nonces.add(key)
            return True

    def get_access_token_secret(self, client_key, token, request):
        with self.lock:
            return self.access_tokens.get(token, "dummy-secret")

    def validate_access_token(self, client_key, token, request):
        with self.lock:
            return token in self.access_tokens

    def validate_realms(self, client_key, token, request, uri=None, realms=None):
        return True

    def validate_requested_realms(self, client_key, realms, request):
        return True

    def get_default_realms(self, client_key, request):
        return []

    def validate_redirect_uri(self, client_key, redirect_uri, request):
        return redirect_uri == "oob" or redirect_uri.startswith("http://127.0.0.1:")

    def save_request_token(self, token, request):
        with self.lock:
            self.request_tokens[token["oauth_token"]] = {
                "secret": token["oauth_token_secret"], "callback": request.redirect_uri, "verifier": None}

    def get_redirect_uri(self, token, request):
        with self.lock:
            return self.request_tokens[token]["callback"]

    def get_realms(self, token, request):
        return []

    def verify_request_token(self, token, request):
        with self.lock:
            return token in self.request_tokens

    def save_verifier(self, token, verifier, request):
        with self.lock:
            self.request_tokens[token]["verifier"] = verifier["oauth_verifier"]

    def validate_request_token(self, client_key, token, request):
        with self.lock:
            return token in self.request_tokens

    def get_request_token_secret(self, client_key, token, request):
        with self.lock:
            entry = self.request_tokens.get(token)
            return entry["secret"] if entry else "dummy-secret"

    def validate_verifier(self, client_key, token, verifier, request):
        with self.lock:
            entry = self.request_tokens.get(token)
            return bool(entry and entry["verifier"] and entry["verifier"] == verifier)

    def invalidate_request_token(self, client_key, request_token, request):
        with self.lock:
            self.request_tokens.pop(request_token, None)

    def save_access_token(self, token, request):
        with self.lock:
            self.access_tokens[token["oauth_token"]] = token["oauth_token_secret"]


def body_hash(method, body):
    name = {"256": hashlib.sha256, "512": hashlib.sha512}.get(method[-3:], hashlib.sha1)
    return base64.b64encode(name(body).digest()).decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "oauthlib-verifier"

    def log_message(self, fmt, *args):  # to DIR/verifier.log, never the Authorization header
        self.server.log.write("%s %s\n" % (self.command, fmt % args))
        self.server.log.flush()

    def reply(self, status, payload, headers=None):
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        uri = "http://%s%s" % (self.headers.get("Host"), self.path)
        headers = {k: v for k, v in self.headers.items()}
        path = urllib.parse.urlsplit(self.path).path
        v = self.server.validator
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.reply(400, {"accepted": False, "reason": "body is not UTF-8"})
        if path == "/health":
            return self.reply(200, {"ok": True})
        if path == "/request_token":
            h, b, s = RequestTokenEndpoint(v).create_request_token_response(uri, self.command, body, headers)
            return self.token_reply(h, b, s)
        if path == "/access_token":
            h, b, s = AccessTokenEndpoint(v).create_access_token_response(uri, self.command, body, headers)
            return self.token_reply(h, b, s)
        if path == "/authorize":
            try:
                h, b, s = AuthorizationEndpoint(v).create_authorization_response(
                    uri, self.command, body, headers, realms=[])
            except OAuth1Error as e:
                return self.reply(400, {"accepted": False, "reason": e.description})
            return self.token_reply(h, b, s)
        if path.startswith("/2legged/"):
            ok, req = SignatureOnlyEndpoint(v).validate_request(uri, self.command, body, headers)
        elif path.startswith("/3legged/"):
            ok, req = ResourceEndpoint(v).validate_protected_resource_request(
                uri, self.command, body, headers, realms=[])
        else:
            return self.reply(404, {"accepted": False, "reason": "no such path"})
        if not ok or req is None:
            return self.reply(401, {"accepted": False, "reason": "oauthlib rejected the request"})
        form = "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or "")
        hashed = req.oauth_params.get("oauth_body_hash")
        if hashed is not None:
            if form:
                return self.reply(401, {"accepted": False, "reason": "oauth_body_hash on a form body"})
            if hashed != body_hash(req.signature_method, raw):
                return self.reply(401, {"accepted": False, "reason": "wrong oauth_body_hash"})
        elif "/bh/" in path and not form:
            return self.reply(401, {"accepted": False, "reason": "oauth_body_hash required"})
        self.reply(200, {
            "accepted": True,
            "method": req.signature_method,
            "params": [[k, val] for k, val in req.params if not k.startswith("oauth_")],
            "body_hash": hashed is not None,
            "query": urllib.parse.urlsplit(self.path).query,
            "body": body,
        })

    def token_reply(self, headers, body, status):
        data = (body or "").encode()
        self.send_response(status)
        for k, val in (headers or {}).items():
            self.send_header(k, val)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--rsa-public-key", required=True)
    args = p.parse_args()
    with open(args.rsa_public_key) as f:
        rsa_public_key = f.read()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.validator = Validator(rsa_public_key)
    server.log = open(os.path.join(args.dir, "verifier.log"), "a")
    tmp = os.path.join(args.dir, "port.tmp")
    with open(tmp, "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.replace(tmp, os.path.join(args.dir, "port"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
