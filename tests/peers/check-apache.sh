#!/usr/bin/env bash
# Checks, with Debian's curl, that the Apache peer started by
# `tests/peers/apache.sh start DIR` behaves as tower-auth's tests expect.
#
#   tests/peers/check-apache.sh DIR
#
# Reads the URLs from DIR/env. Runs every check, prints "ok"/"FAIL" per
# check, and exits non-zero if any failed.

set -euo pipefail

if [ $# -ne 1 ]; then
    printf 'usage: %s DIR\n' "$0" >&2
    exit 2
fi
DIR=$1
if [ ! -s "$DIR/env" ]; then
    printf 'check-apache.sh: %s/env not found: run tests/peers/apache.sh start %s first\n' "$DIR" "$DIR" >&2
    exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
    printf 'check-apache.sh: curl not found: apt-get install curl\n' >&2
    exit 1
fi

env_value() { sed -n "s/^$1=//p" "$DIR/env" | head -n 1; }
URL=$(env_value TOWER_AUTH_APACHE_URL)
PROXY_BASIC=$(env_value TOWER_AUTH_APACHE_PROXY_BASIC_URL)
PROXY_DIGEST=$(env_value TOWER_AUTH_APACHE_PROXY_DIGEST_URL)
for v in URL PROXY_BASIC PROXY_DIGEST; do
    if [ -z "${!v}" ]; then
        printf 'check-apache.sh: %s/env lacks a URL (%s)\n' "$DIR" "$v" >&2
        exit 1
    fi
done

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT
BODY=$WORK/body
HEADERS=$WORK/headers
failures=0
count=0

ok() {
    count=$((count + 1))
    printf 'ok   %s\n' "$1"
}
fail() {
    count=$((count + 1))
    failures=$((failures + 1))
    printf 'FAIL %s\n' "$1"
    shift
    [ $# -eq 0 ] || printf '     %s\n' "$@"
}

# req ARGS...: run curl, keep body in $BODY, headers in $HEADERS, print the
# final status code. Never fails (status 000 on a transport error).
req() {
    local code
    code=$(curl -sS --max-time 20 -o "$BODY" -D "$HEADERS" -w '%{http_code}' "$@" 2>"$WORK/curl.err") || true
    printf '%s\n' "${code:-000}"
}

# expect NAME CODE BODY_TEXT CURL_ARGS...: status and exact body.
expect() {
    local name=$1 want_code=$2 want_body=$3 code body
    shift 3
    code=$(req "$@")
    body=$(cat "$BODY" 2>/dev/null || true)
    if [ "$code" = "$want_code" ] && [ "$body" = "$want_body" ]; then
        ok "$name"
    else
        fail "$name" "expected $want_code '$want_body', got $code '$(printf '%s' "$body" | head -c 200)'" \
            "curl $*" "$(cat "$WORK/curl.err" 2>/dev/null)"
    fi
}

# expect_code NAME CODE CURL_ARGS...
expect_code() {
    local name=$1 want_code=$2 code
    shift 2
    code=$(req "$@")
    if [ "$code" = "$want_code" ]; then
        ok "$name"
    else
        fail "$name" "expected status $want_code, got $code" "curl $*"
    fi
}

# header_has NAME REGEX: the last response headers (case-insensitive ERE).
header_has() {
    if tr -d '\r' <"$HEADERS" | grep -qiE -- "$2"; then
        ok "$1"
    else
        fail "$1" "no header line matching /$2/ in:" "$(tr -d '\r' <"$HEADERS")"
    fi
}

md5_hex() { printf '%s' "$1" | md5sum | cut -d' ' -f1; }

# digest_header USER PASS REALM METHOD URI NONCE NC CNONCE -> Authorization value
digest_header() {
    local user=$1 pass=$2 realm=$3 method=$4 uri=$5 nonce=$6 nc=$7 cnonce=$8 ha1 ha2 resp
    ha1=$(md5_hex "$user:$realm:$pass")
    ha2=$(md5_hex "$method:$uri")
    resp=$(md5_hex "$ha1:$nonce:$nc:$cnonce:auth:$ha2")
    printf 'Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=MD5, qop=auth, nc=%s, cnonce="%s", response="%s"' \
        "$user" "$realm" "$nonce" "$uri" "$nc" "$cnonce" "$resp"
}

challenge_nonce() { # from $HEADERS
    tr -d '\r' <"$HEADERS" | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: Digest .*[ ,]nonce="\([^"]*\)".*/\1/p' | head -n 1
}

printf 'Apache peer: %s (proxies: basic %s, digest %s)\n' "$URL" "$PROXY_BASIC" "$PROXY_DIGEST"

# ------------------------------------------------------------- public ---
expect "public: no auth" 200 "hello public" "$URL/public/hello.txt"
expect "public: CGI echo GET" 200 "GET" "$URL/public/echo"

# -------------------------------------------------------------- basic ---
expect_code "basic: no credentials gives 401" 401 "$URL/basic/hello.txt"
header_has "basic: challenge" '^WWW-Authenticate: Basic realm="basic-realm"$'
expect "basic: --basic alice" 200 "hello basic" --basic -u alice:s3cret "$URL/basic/hello.txt"
expect "basic: --basic bob" 200 "hello basic" --basic -u bob:hunter2 "$URL/basic/hello.txt"
expect "basic: --anyauth" 200 "hello basic" --anyauth -u alice:s3cret "$URL/basic/hello.txt"
expect_code "basic: wrong password gives 401" 401 --basic -u alice:wrong "$URL/basic/hello.txt"
expect_code "basic: unknown user gives 401" 401 --basic -u mallory:s3cret "$URL/basic/hello.txt"
expect_code "basic: digest credentials refused" 401 --digest -u alice:s3cret "$URL/basic/hello.txt"
expect "basic-post: POST echo" 200 "$(printf 'POST\nx=1&y=2')" \
    --basic -u alice:s3cret --data-binary 'x=1&y=2' "$URL/basic-post/echo"
header_has "basic-post: Content-Type text/plain" '^Content-Type: text/plain'
header_has "basic-post: X-Echo-Remote-User" '^X-Echo-Remote-User: alice$'
expect "basic-post: PUT echo" 200 "$(printf 'PUT\nput body')" \
    --basic -u bob:hunter2 -X PUT --data-binary 'put body' "$URL/basic-post/echo"
expect_code "basic-post: no credentials gives 401" 401 --data-binary 'x' "$URL/basic-post/echo"

# ------------------------------------------------------------- digest ---
expect_code "digest: no credentials gives 401" 401 "$URL/digest/hello.txt"
header_has "digest: challenge realm" '^WWW-Authenticate: Digest realm="digest-realm", nonce="[^"]+"'
header_has "digest: challenge qop=auth" '^WWW-Authenticate: Digest .*qop="auth"'
header_has "digest: challenge algorithm=MD5" '^WWW-Authenticate: Digest .*algorithm=MD5'
expect "digest: --digest alice" 200 "hello digest" --digest -u alice:s3cret "$URL/digest/hello.txt"
header_has "digest: Authentication-Info rspauth" '^Authentication-Info: rspauth="[0-9a-f]{32}"'
expect "digest: --digest bob" 200 "hello digest" --digest -u bob:hunter2 "$URL/digest/hello.txt"
expect "digest: --anyauth" 200 "hello digest" --anyauth -u alice:s3cret "$URL/digest/hello.txt"
expect_code "digest: wrong password gives 401" 401 --digest -u alice:wrong "$URL/digest/hello.txt"
expect_code "digest: basic credentials refused" 401 --basic -u alice:s3cret "$URL/digest/hello.txt"

# hand-crafted Digest (checks the RFC 7616 MD5/qop=auth computation itself)
req "$URL/digest/hello.txt" >/dev/null
nonce=$(challenge_nonce)
auth=$(digest_header alice s3cret digest-realm GET /digest/hello.txt "$nonce" 00000001 0a4f113b)
expect "digest: hand-crafted response" 200 "hello digest" -H "Authorization: $auth" "$URL/digest/hello.txt"
auth=$(digest_header alice s3cret digest-realm GET /digest/other.txt "$nonce" 00000002 0a4f113b)
expect_code "digest: uri mismatch gives 400" 400 -H "Authorization: $auth" "$URL/digest/hello.txt"

# ------------------------------------------------- digest POST / echo ---
expect_code "digest-post: no credentials gives 401" 401 --data-binary 'a=1' "$URL/digest-post/echo"
header_has "digest-post: challenge realm" '^WWW-Authenticate: Digest realm="post-realm"'
expect "digest-post: POST echo" 200 "$(printf 'POST\na=1&b=2')" \
    --digest -u alice:s3cret --data-binary 'a=1&b=2' "$URL/digest-post/echo"
header_has "digest-post: Content-Type text/plain" '^Content-Type: text/plain'
header_has "digest-post: X-Echo-Content-Length" '^X-Echo-Content-Length: 7$'
expect "digest-post: chunked POST echo" 200 "$(printf 'POST\nchunked body')" \
    --digest -u bob:hunter2 -H 'Transfer-Encoding: chunked' --data-binary 'chunked body' "$URL/digest-post/echo"
head -c 100000 /dev/urandom >"$WORK/big"
{ printf 'POST\n'; cat "$WORK/big"; } >"$WORK/big.expected"
code=$(req --digest -u alice:s3cret --data-binary "@$WORK/big" "$URL/digest-post/echo")
if [ "$code" = 200 ] && cmp -s "$BODY" "$WORK/big.expected"; then
    ok "digest-post: 100 kB binary body echoed byte for byte"
else
    fail "digest-post: 100 kB binary body echoed byte for byte" "status $code, $(wc -c <"$BODY" 2>/dev/null || echo 0) bytes back"
fi
expect_code "digest-post: wrong password gives 401" 401 --digest -u alice:wrong --data-binary 'x' "$URL/digest-post/echo"

# ------------------------------------------------------- digest stale ---
expect "digest-stale: --digest" 200 "hello stale" --digest -u alice:s3cret "$URL/digest-stale/hello.txt"
expect_code "digest-stale: no credentials gives 401" 401 "$URL/digest-stale/hello.txt"
header_has "digest-stale: challenge realm" '^WWW-Authenticate: Digest realm="stale-realm"'
nonce=$(challenge_nonce)
if [ -z "$nonce" ]; then
    fail "digest-stale: nonce in challenge" "$(cat "$HEADERS")"
fi
auth=$(digest_header alice s3cret stale-realm GET /digest-stale/hello.txt "$nonce" 00000001 5ca1ab1e)
expect "digest-stale: fresh nonce accepted" 200 "hello stale" -H "Authorization: $auth" "$URL/digest-stale/hello.txt"
header_has "digest-stale: Authentication-Info has nextnonce" '^Authentication-Info: .*nextnonce="[^"]+"'
sleep 2
auth=$(digest_header alice s3cret stale-realm GET /digest-stale/hello.txt "$nonce" 00000002 5ca1ab1e)
expect_code "digest-stale: nonce reused after 2 s gives 401" 401 -H "Authorization: $auth" "$URL/digest-stale/hello.txt"
header_has "digest-stale: challenge has stale=true" '^WWW-Authenticate: Digest realm="stale-realm".*stale=true'
new_nonce=$(challenge_nonce)
if [ -n "$new_nonce" ] && [ "$new_nonce" != "$nonce" ]; then
    ok "digest-stale: stale challenge carries a new nonce"
else
    fail "digest-stale: stale challenge carries a new nonce" "old $nonce new $new_nonce"
fi
auth=$(digest_header alice s3cret stale-realm GET /digest-stale/hello.txt "$new_nonce" 00000001 5ca1ab1e)
expect "digest-stale: retry with the new nonce" 200 "hello stale" -H "Authorization: $auth" "$URL/digest-stale/hello.txt"
auth=$(digest_header alice wrong stale-realm GET /digest-stale/hello.txt "$new_nonce" 00000002 5ca1ab1e)
expect_code "digest-stale: wrong password is not stale" 401 -H "Authorization: $auth" "$URL/digest-stale/hello.txt"
if tr -d '\r' <"$HEADERS" | grep -qi 'stale=true'; then
    fail "digest-stale: wrong password challenge has no stale=true" "$(tr -d '\r' <"$HEADERS")"
else
    ok "digest-stale: wrong password challenge has no stale=true"
fi

# ---------------------------------------- digest nc check and opaque ---
expect "digest-nc: --digest" 200 "hello nc" --digest -u bob:hunter2 "$URL/digest-nc/hello.txt"
expect_code "digest-nc: no credentials gives 401" 401 "$URL/digest-nc/hello.txt"
header_has "digest-nc: challenge has opaque" '^WWW-Authenticate: Digest realm="nc-realm".*opaque="[^"]+"'
nonce=$(challenge_nonce)
opaque=$(tr -d '\r' <"$HEADERS" | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: Digest .*[ ,]opaque="\([^"]*\)".*/\1/p' | head -n 1)
nc_auth() { # NC [OPAQUE]
    printf '%s' "$(digest_header alice s3cret nc-realm GET /digest-nc/hello.txt "$nonce" "$1" c0ffee)"
    if [ -n "${2:-}" ]; then printf ', opaque="%s"' "$2"; fi
}
expect "digest-nc: nc=1 with opaque" 200 "hello nc" -H "Authorization: $(nc_auth 00000001 "$opaque")" "$URL/digest-nc/hello.txt"
expect_code "digest-nc: replayed nc=1 gives 401" 401 -H "Authorization: $(nc_auth 00000001 "$opaque")" "$URL/digest-nc/hello.txt"
expect "digest-nc: nc=3 (gaps allowed)" 200 "hello nc" -H "Authorization: $(nc_auth 00000003 "$opaque")" "$URL/digest-nc/hello.txt"
expect_code "digest-nc: lower nc=2 gives 401" 401 -H "Authorization: $(nc_auth 00000002 "$opaque")" "$URL/digest-nc/hello.txt"
expect_code "digest-nc: opaque omitted gives 401" 401 -H "Authorization: $(nc_auth 00000004)" "$URL/digest-nc/hello.txt"

# --------------------------------------------------------- proxy basic ---
expect "proxy-basic: --proxy-basic alice" 200 "hello public" \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret "$URL/public/hello.txt"
expect "proxy-basic: --proxy-basic bob" 200 "hello public" \
    -x "$PROXY_BASIC" --proxy-basic -U bob:hunter2 "$URL/public/hello.txt"
expect "proxy-basic: --proxy-anyauth" 200 "hello public" \
    -x "$PROXY_BASIC" --proxy-anyauth -U alice:s3cret "$URL/public/hello.txt"
expect_code "proxy-basic: no proxy credentials gives 407" 407 -x "$PROXY_BASIC" "$URL/public/hello.txt"
header_has "proxy-basic: Proxy-Authenticate" '^Proxy-Authenticate: Basic realm="proxy-basic"$'
expect_code "proxy-basic: wrong password gives 407" 407 \
    -x "$PROXY_BASIC" --proxy-basic -U alice:wrong "$URL/public/hello.txt"
expect "proxy-basic: plus origin Basic" 200 "hello basic" \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret --basic -u bob:hunter2 "$URL/basic/hello.txt"
expect "proxy-basic: plus origin Digest POST" 200 "$(printf 'POST\nvia proxy')" \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret --digest -u bob:hunter2 --data-binary 'via proxy' "$URL/digest-post/echo"
expect_code "proxy-basic: origin 401 passes through" 401 \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret "$URL/basic/hello.txt"
expect_code "proxy-basic: localhost target refused (403)" 403 \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret "http://localhost:${URL##*:}/public/hello.txt"
expect_code "proxy-basic: outside target refused (403)" 403 \
    -x "$PROXY_BASIC" --proxy-basic -U alice:s3cret "http://example.invalid/"

# -------------------------------------------------------- proxy digest ---
expect "proxy-digest: --proxy-digest alice" 200 "hello public" \
    -x "$PROXY_DIGEST" --proxy-digest -U alice:s3cret "$URL/public/hello.txt"
expect "proxy-digest: --proxy-anyauth bob" 200 "hello public" \
    -x "$PROXY_DIGEST" --proxy-anyauth -U bob:hunter2 "$URL/public/hello.txt"
expect_code "proxy-digest: no proxy credentials gives 407" 407 -x "$PROXY_DIGEST" "$URL/public/hello.txt"
header_has "proxy-digest: Proxy-Authenticate" '^Proxy-Authenticate: Digest realm="proxy-digest", nonce="[^"]+".*qop="auth"'
expect_code "proxy-digest: wrong password gives 407" 407 \
    -x "$PROXY_DIGEST" --proxy-digest -U alice:wrong "$URL/public/hello.txt"
expect_code "proxy-digest: Basic proxy credentials refused (407)" 407 \
    -x "$PROXY_DIGEST" --proxy-basic -U alice:s3cret "$URL/public/hello.txt"
expect "proxy-digest: plus origin Digest" 200 "hello digest" \
    -x "$PROXY_DIGEST" --proxy-digest -U alice:s3cret --digest -u bob:hunter2 "$URL/digest/hello.txt"
expect_code "proxy-digest: outside target refused (403)" 403 \
    -x "$PROXY_DIGEST" --proxy-digest -U alice:s3cret "http://example.invalid/"

# --------------------------------------------------------- concurrency ---
pids=()
for i in $(seq 1 16); do
    (
        code=$(curl -sS --max-time 20 -o /dev/null -w '%{http_code}' --digest -u alice:s3cret \
            --data-binary "req $i" "$URL/digest-post/echo" 2>/dev/null) || true
        printf '%s\n' "$code" >"$WORK/par.$i"
    ) &
    pids+=("$!")
done
for p in "${pids[@]}"; do wait "$p" || true; done
if [ "$(cat "$WORK"/par.* | sort | uniq -c | tr -s ' ')" = " 16 200" ]; then
    ok "concurrency: 16 parallel digest POSTs all 200"
else
    fail "concurrency: 16 parallel digest POSTs all 200" "$(cat "$WORK"/par.* | sort | uniq -c)"
fi

printf '%d checks, %d failed\n' "$count" "$failures"
[ "$failures" -eq 0 ]
