#!/usr/bin/env bash
# Real Glewlwyd (OAuth2 / OpenID Connect server, Debian package `glewlwyd`
# 2.7.5, bookworm) peer for tower-auth's integration tests.
#
#   tests/peers/glewlwyd.sh start DIR   start (or reuse) a Glewlwyd rooted in
#                                       DIR, print its KEY=VALUE env lines on
#                                       stdout; it runs until `stop`
#   tests/peers/glewlwyd.sh stop DIR    stop it (idempotent)
#
# For test processes (tests/support/peers.rs), with reference counting, the
# same contract as tests/peers/apache.sh:
#
#   tests/peers/glewlwyd.sh acquire DIR PID
#       like `start`, and registers process PID as a user (DIR/users/PID). An
#       instance this starts is owned by the tests (DIR/run/tests-own); one
#       started by `start` is not, and is never stopped by `release`.
#   tests/peers/glewlwyd.sh release DIR PID
#       unregisters PID (and users no longer alive); the last user out stops
#       an instance the tests own.
#   tests/peers/glewlwyd.sh release-on-eof DIR PID
#       waits until its standard input is closed (the test process holds the
#       other end of a pipe), then runs `release DIR PID`.
#
# Needs: apt-get install glewlwyd dbconfig-sqlite3 curl (glewlwyd's set-up
# fails without a dbconfig-* package; .ci/run preseeds debconf with
# `glewlwyd/database-type select sqlite3`). The distro's own service and
# database (/etc/glewlwyd, /var/lib/dbconfig-common/sqlite3/glewlwyd, port
# 4593) are never used or started: everything lives in DIR.
#
# DIR holds: glewlwyd.conf (generated, self-contained: it never reads
# /etc/glewlwyd), glewlwyd.db (a fresh sqlite3 database made on every start
# from /usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz), logs/
# (glewlwyd.log, stdout.log, setup.log), run/ (glewlwyd.pid, tests-own), env
# (the lines printed by `start`, mode 600: it holds secrets), script.md5 (a
# live instance is reused only if this script is unchanged), users/ and lock
# (flock(1) file serialising every command). Glewlwyd listens on 127.0.0.1
# only (bind_address), on one free ephemeral port. It runs as the caller
# (root in CI); it does not switch users.
#
# What is configured, through Glewlwyd's admin REST API right after start
# (login as the admin user that Debian's initial schema ships, admin /
# password, cookie session, logged out afterwards; that login stays valid,
# which is harmless as the API is reachable from 127.0.0.1 only). A start,
# database and set-up included, takes 0.4 to 1 s:
#   - scope `scope1` (no password required for it);
#   - OIDC plugin instance `oidc` (module "oidc", allow-non-oidc, so the plain
#     OAuth2 grants work): client credentials, resource owner password,
#     refresh token, authorization code (PKCE allowed, S256 only) and implicit
#     (`token`, `id_token`) grants enabled (device grant off);
#     access tokens are HS256 JWTs (typ "at+jwt") lasting 60 s; refresh tokens
#     last 3600 s, no rolling, not one-time use (a refresh token can be used
#     again and again until it expires); issuer
#     http://127.0.0.1:PORT/api/oidc;
#   - OIDC plugin instance `oidc-short`: the same with access tokens lasting
#     5 s (for tests of expiry and refresh against a real server); issuer
#     http://127.0.0.1:PORT/api/oidc-short;
#   - confidential client `tower-client`, secret `tower-secret-0123` (client
#     secret stored as is), scope scope1, grants client_credentials,
#     password, refresh_token, code, token, id_token, token_endpoint_auth_method
#     client_secret_basic and client_secret_post, redirect URIs
#     http://127.0.0.1:P/ for P in REDIRECT_PORTS (28123 to 28126; Glewlwyd
#     compares redirect_uri as an exact string, no RFC 8252 port wildcard);
#   - public client `tower-public` (no secret), scopes scope1 and openid,
#     grants code, refresh_token, token, id_token, the same redirect URIs;
#   - confidential client `tower.odd~client`, secret `s3:cr+t/%&=x`, scope
#     scope1, client_credentials only, basic and post (see the Basic quirk
#     below);
#   - user `alice`, password `s3cret`, scopes scope1 and openid (so the
#     password grant with client tower-client and scope scope1 works).
# The login and consent web app (/usr/share/glewlwyd/webapp, copied to
# DIR/webapp, see copy_webapp) is served at / (login.html): an unauthenticated
# GET {AUTH_URL}?response_type=code&… answers 302 to login.html; after the
# login (#username, #password), the consent page (the first time a user meets
# a client: a #grant-<scope> checkbox per scope, "Grant access") and a
# "Continue" button, Glewlwyd redirects to the redirect URI with code and
# state (no `iss` parameter). tests/peers/chromium/login.cjs drives it.
#
# Env lines printed by `start` (PORT is the free port picked):
#   TOWER_AUTH_GLEWLWYD_URL=http://127.0.0.1:PORT
#   TOWER_AUTH_GLEWLWYD_ISSUER=http://127.0.0.1:PORT/api/oidc
#   TOWER_AUTH_GLEWLWYD_DISCOVERY_URL=http://127.0.0.1:PORT/api/oidc/.well-known/openid-configuration
#   TOWER_AUTH_GLEWLWYD_TOKEN_URL=http://127.0.0.1:PORT/api/oidc/token
#   TOWER_AUTH_GLEWLWYD_TOKEN_LIFETIME=60
#   TOWER_AUTH_GLEWLWYD_SHORT_ISSUER=http://127.0.0.1:PORT/api/oidc-short
#   TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_URL=http://127.0.0.1:PORT/api/oidc-short/token
#   TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_LIFETIME=5
#   TOWER_AUTH_GLEWLWYD_CLIENT_ID=tower-client
#   TOWER_AUTH_GLEWLWYD_CLIENT_SECRET=tower-secret-0123
#   TOWER_AUTH_GLEWLWYD_ODD_CLIENT_ID=tower.odd~client
#   TOWER_AUTH_GLEWLWYD_ODD_CLIENT_SECRET=s3:cr+t/%&=x
#   TOWER_AUTH_GLEWLWYD_SCOPE=scope1
#   TOWER_AUTH_GLEWLWYD_USERNAME=alice
#   TOWER_AUTH_GLEWLWYD_PASSWORD=s3cret
#   TOWER_AUTH_GLEWLWYD_AUTH_URL=http://127.0.0.1:PORT/api/oidc/auth
#   TOWER_AUTH_GLEWLWYD_PUBLIC_CLIENT_ID=tower-public
#   TOWER_AUTH_GLEWLWYD_REDIRECT_PORTS=28123,28124,28125,28126
#
# What Glewlwyd 2.7.5 answers on POST {TOKEN_URL} (form body), checked by
# hand and by tests/peers_glewlwyd.rs. Errors are NOT always RFC 6749 §5.2:
# most are an empty body with no Content-Type.
#   client_credentials + scope=scope1, right Basic or post credentials:
#       200, Content-Type: application/json, Cache-Control: no-store,
#       {"access_token":"<JWT>","token_type":"bearer","expires_in":60,
#        "scope":"scope1"}   (token_type is lower case "bearer")
#   client_credentials, wrong secret, unknown client, or no client auth:
#       403, empty body (no "invalid_client"; nor 401, nor WWW-Authenticate)
#   client_credentials without a scope parameter: 403, empty body
#   client_credentials with a scope the client lacks (scope=scope9):
#       400, application/json, {"error":"scope_invalid"}  (not the RFC's
#       "invalid_scope")
#   unknown grant_type (grant_type=foo): 400, empty body
#   password grant (username alice, password s3cret, scope scope1, client
#   authenticated with Basic):
#       200, application/json, {"token_type":"bearer","access_token":"<JWT>",
#        "refresh_token":"<128 chars>","iat":N,"expires_in":60,
#        "scope":"scope1"}
#   password grant, wrong user password: 403, empty body
#   password grant, wrong client secret: 400, empty body
#   refresh_token grant with a valid refresh token (Basic or post client
#   auth; scope optional):
#       200, application/json, {"access_token":"<JWT>","token_type":"bearer",
#        "expires_in":60,"scope":"scope1","iat":N}   (no new refresh token:
#       the old one stays valid)
#   refresh_token grant, unknown refresh token: 400, empty body (no
#       "invalid_grant")
#   refresh_token grant, valid refresh token but wrong client secret or no
#   client auth: 400, empty body
#   Basic client authentication: Glewlwyd compares the base64-decoded
#   id:secret as is; it does NOT form-urldecode them (RFC 6749 §2.3.1 says it
#   should). With `tower.odd~client` / `s3:cr+t/%&=x`: raw Basic -> 200;
#   form-urlencoded Basic (tower.odd%7Eclient:s3%3Acr%2Bt%2F%25%26%3Dx) ->
#   403, empty body; client_secret_post (form-urlencoded body, decoded by
#   Glewlwyd) -> 200. Credentials made only of letters, digits and "*-._"
#   (tower-client / tower-secret-0123) are the same either way.
# Discovery (GET {DISCOVERY_URL}): 200, application/json, "issuer" = ISSUER,
# "token_endpoint" = TOKEN_URL, "token_endpoint_auth_methods_supported":
# ["client_secret_basic","client_secret_post"]; quirk: "grant_types_supported"
# is ["authorization_code","implicit"] whatever is enabled (the enabled
# grants are listed in "response_types_supported" instead:
# ["id_token","password","client_credentials","refresh_token"]).
# Access tokens are JWTs: {"iss":ISSUER,"aud":"scope1","client_id":...,
# "sub":...,"iat","exp","nbf","jti","type":"access_token","scope":"scope1"}.

set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin

readonly GLEWLWYD_BIN=/usr/bin/glewlwyd
readonly INIT_SQL=/usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz
readonly MODULES=/usr/lib/glewlwyd
readonly INSTALL_HINT="apt-get install glewlwyd dbconfig-sqlite3 curl"

readonly CLIENT_ID=tower-client
readonly CLIENT_SECRET=tower-secret-0123
readonly ODD_CLIENT_ID='tower.odd~client'
readonly ODD_CLIENT_SECRET='s3:cr+t/%&=x'
readonly SCOPE=scope1
readonly USERNAME=alice
readonly PASSWORD=s3cret
readonly TOKEN_LIFETIME=60
readonly PUBLIC_CLIENT_ID=tower-public
# The loopback redirect URIs registered for the interactive grants. Glewlwyd
# compares redirect_uri as an exact string (no RFC 8252 §7.3 port wildcard),
# so the tests listen on one of these fixed ports (the crate's fallback ports
# take the next one when a port is busy). They lie below the kernel's
# ephemeral range (32768-60999 here), so no outgoing connection's local port
# can hold one of them (seen in CI with 47126: "Address already in use").
readonly REDIRECT_PORTS="28123 28124 28125 28126"
readonly SHORT_TOKEN_LIFETIME=5

# die, say, usage, the arguments (cmd, dir_arg, pid_arg), port_in_use, pick_port, alive and the
# reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"

# ---------------------------------------------------------------- helpers ---

# Pid of the Glewlwyd started from $DIR, if it is alive.
running_pid() {
    local pid
    [ -s "$DIR/run/glewlwyd.pid" ] || return 1
    read -r pid <"$DIR/run/glewlwyd.pid" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    # Make sure the pid was not recycled by something else.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/glewlwyd.conf" || return 1
    printf '%s\n' "$pid"
}

env_value() {
    sed -n "s/^$1=//p" "$DIR/env" 2>/dev/null | head -n 1
}

# curl against the instance, never through a proxy, bounded in time. Prints
# the body then a last line with the status code.
http() {
    curl --noproxy '*' -s -S --max-time 10 -w '\n%{http_code}' "$@"
}

# Status code of a client credentials request for $SCOPE to token URL $1.
token_status() {
    http -o /dev/null -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=client_credentials \
        -d "scope=$SCOPE" "$1" 2>/dev/null | tail -n 1
}

# Is the instance described by $DIR/env answering as configured?
healthy() {
    local token_url short_url
    token_url=$(env_value TOWER_AUTH_GLEWLWYD_TOKEN_URL)
    short_url=$(env_value TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_URL)
    [ -n "$token_url" ] && [ -n "$short_url" ] || return 1
    [ "$(token_status "$token_url")" = 200 ] || return 1
    [ "$(token_status "$short_url")" = 200 ] || return 1
}

stop_instance() {
    local pid i
    if pid=$(running_pid); then
        say "stopping Glewlwyd (pid $pid) in $DIR"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            alive "$pid" || break
            [ "$i" = 100 ] && { say "Glewlwyd did not stop after 10 s, killing it"; kill -KILL "$pid" 2>/dev/null || true; }
            sleep 0.1
        done
    fi
    rm -f "$DIR/env" "$DIR/run/glewlwyd.pid" "$DIR/script.md5" "$DIR/run/tests-own" "$DIR/run/admin.cookies"
}

# ------------------------------------------------------------ write files ---

write_config() { # $1 port
    local port=$1
    cat >"$DIR/glewlwyd.conf" <<EOF
# Generated by tests/peers/glewlwyd.sh on every start; edit that script instead.
# Self-contained: nothing from /etc/glewlwyd is read.
port=$port
bind_address="127.0.0.1"
external_url="http://127.0.0.1:$port"
login_url="login.html"
api_prefix="api"
# The login and consent web app (for the interactive grants, driven by
# headless Chromium in the tests), served by Glewlwyd itself at / from a
# dereferenced copy (see copy_webapp).
static_files_path="$DIR/webapp/"
static_files_mime_types = (
  { extension = ".html"  mime_type = "text/html" },
  { extension = ".css"   mime_type = "text/css" },
  { extension = ".js"    mime_type = "application/javascript" },
  { extension = ".json"  mime_type = "application/json" },
  { extension = ".png"   mime_type = "image/png" },
  { extension = ".jpg"   mime_type = "image/jpeg" },
  { extension = ".svg"   mime_type = "image/svg+xml" },
  { extension = ".ttf"   mime_type = "font/ttf" },
  { extension = ".woff"  mime_type = "font/woff" },
  { extension = ".woff2" mime_type = "font/woff2" },
  { extension = ".ico"   mime_type = "image/x-icon" }
)
allow_origin="*"
allow_methods="GET, POST, PUT, DELETE, OPTIONS"
allow_headers="Origin, X-Requested-With, Content-Type, Accept, Bearer, Authorization, DPoP"
expose_headers="Content-Encoding, Authorization"
log_mode="file"
log_level="INFO"
log_file="$DIR/logs/glewlwyd.log"
cookie_secure=0
cookie_same_site="empty"
session_expiration=3600
session_key="GLEWLWYD2_SESSION_ID"
admin_session_authentication="cookie"
profile_session_authentication="cookie"
allow_multiple_user_per_session=true
login_api_enabled=true
add_x_frame_option_header_deny=true
max_post_size=16778240
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="$MODULES/user"
client_module_path="$MODULES/client"
user_auth_scheme_module_path="$MODULES/scheme"
plugin_module_path="$MODULES/plugin"
# No use_secure_connection line at all: Glewlwyd 2.7.5 wants the key and
# certificate files whenever the setting is present, even when it is false.
hash_algorithm="SHA512"
database =
{
  type = "sqlite3"
  path = "$DIR/glewlwyd.db"
};
EOF
    chmod 600 "$DIR/glewlwyd.conf"
}

# POST JSON $2 to admin API path $1 (after login); dies unless 200.
admin_post() {
    local path=$1 json=$2 out status
    out=$(http -b "$DIR/run/admin.cookies" -H 'Content-Type: application/json' \
        --data-binary "$json" "$BASE/api/$path" 2>&1) || true
    status=${out##*$'\n'}
    printf 'POST /api/%s -> %s %s\n' "$path" "$status" "${out%$'\n'*}" >>"$DIR/logs/setup.log"
    [ "$status" = 200 ] || die "Glewlwyd admin API: POST /api/$path answered ${status:-nothing}: ${out%$'\n'*} (see $DIR/logs/glewlwyd.log)"
}

oidc_plugin_json() { # $1 name, $2 access token lifetime, $3 signing key
    cat <<EOF
{"module":"oidc","name":"$1","display_name":"tower-auth test OIDC $1","parameters":{
 "iss":"$BASE/api/$1","jwt-type":"sha","jwt-key-size":"256","key":"$3",
 "access-token-duration":$2,"refresh-token-duration":3600,"code-duration":600,
 "refresh-token-rolling":false,"allow-non-oidc":true,
 "auth-type-code-enabled":true,"auth-type-token-enabled":true,"auth-type-id-token-enabled":true,
 "auth-type-none-enabled":false,"auth-type-device-enabled":false,"auth-type-password-enabled":true,
 "auth-type-client-enabled":true,"auth-type-refresh-enabled":true,
 "pkce-allowed":true,"pkce-method-plain-allowed":false,"scope":[]}}
EOF
}

# Glewlwyd's static-file handler answers 404 for a symlink that leaves the
# webapp root, and Debian's /usr/share/glewlwyd/webapp is mostly symlinks
# (js/ to libjs-*, fonts/, config.json), so it serves a dereferenced copy
# (4.5 MB, instant). On Debian's install /etc/glewlwyd/config-2.7.json (the
# target of webapp/config.json) is a directory holding config.json, and
# Glewlwyd never answers a request for a directory: the real file goes in.
copy_webapp() {
    local src=/usr/share/glewlwyd/webapp
    [ -f "$src/login.html" ] || die "$src/login.html not found: install Glewlwyd with
    $INSTALL_HINT"
    rm -rf "$DIR/webapp"
    cp -rL "$src" "$DIR/webapp" || die "could not copy $src to $DIR/webapp"
    if [ -d "$DIR/webapp/config.json" ]; then
        rm -rf "$DIR/webapp/config.json"
        if [ -f /etc/glewlwyd/config-2.7.json/config.json ]; then
            cp /etc/glewlwyd/config-2.7.json/config.json "$DIR/webapp/config.json"
        else
            printf '{"GlewlwydUrl":"./","LoginUrl":"login.html","lang":["en"],"defaultLang":"en"}\n' >"$DIR/webapp/config.json"
        fi
    fi
}

# The registered redirect URIs, as a JSON array.
redirect_uris_json() {
    local port out=
    for port in $REDIRECT_PORTS; do
        out="$out\"http://127.0.0.1:$port/\","
    done
    printf '[%s]' "${out%,}"
}

random_key() {
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

configure() {
    local out status
    : >"$DIR/logs/setup.log"
    out=$(http -c "$DIR/run/admin.cookies" -H 'Content-Type: application/json' \
        --data-binary '{"username":"admin","password":"password"}' "$BASE/api/auth/" 2>&1) || true
    status=${out##*$'\n'}
    printf 'POST /api/auth/ (admin login) -> %s\n' "$status" >>"$DIR/logs/setup.log"
    [ "$status" = 200 ] || die "Glewlwyd admin login (admin/password, from Debian's initial schema) answered ${status:-nothing}"
    chmod 600 "$DIR/run/admin.cookies"
    admin_post scope/ "{\"name\":\"$SCOPE\",\"display_name\":\"$SCOPE\",\"description\":\"tower-auth test scope\",\"password_required\":false,\"password_max_age\":0,\"scheme\":{}}"
    # (Debian's initial schema already has the `openid` scope.)
    admin_post mod/plugin/ "$(oidc_plugin_json oidc "$TOKEN_LIFETIME" "$(random_key)")"
    admin_post mod/plugin/ "$(oidc_plugin_json oidc-short "$SHORT_TOKEN_LIFETIME" "$(random_key)")"
    admin_post client/ "{\"client_id\":\"$CLIENT_ID\",\"name\":\"tower-auth test client\",\"confidential\":true,\"client_secret\":\"$CLIENT_SECRET\",\"enabled\":true,\"scope\":[\"$SCOPE\"],\"authorization_type\":[\"client_credentials\",\"password\",\"refresh_token\",\"code\",\"token\",\"id_token\"],\"token_endpoint_auth_method\":[\"client_secret_basic\",\"client_secret_post\"],\"redirect_uri\":$(redirect_uris_json)}"
    admin_post client/ "{\"client_id\":\"$PUBLIC_CLIENT_ID\",\"name\":\"tower-auth public client\",\"confidential\":false,\"enabled\":true,\"scope\":[\"$SCOPE\",\"openid\"],\"authorization_type\":[\"code\",\"refresh_token\",\"token\",\"id_token\"],\"redirect_uri\":$(redirect_uris_json)}"
    admin_post client/ "{\"client_id\":\"$ODD_CLIENT_ID\",\"name\":\"tower-auth odd client\",\"confidential\":true,\"client_secret\":\"$ODD_CLIENT_SECRET\",\"enabled\":true,\"scope\":[\"$SCOPE\"],\"authorization_type\":[\"client_credentials\"],\"token_endpoint_auth_method\":[\"client_secret_basic\",\"client_secret_post\"],\"redirect_uri\":[]}"
    admin_post user/ "{\"username\":\"$USERNAME\",\"name\":\"Alice\",\"password\":\"$PASSWORD\",\"enabled\":true,\"scope\":[\"$SCOPE\",\"openid\"]}"
    # Log the admin session out; the cookie file goes.
    http -o /dev/null -b "$DIR/run/admin.cookies" -X DELETE "$BASE/api/auth/" >/dev/null 2>&1 || true
    rm -f "$DIR/run/admin.cookies"
}

print_env() {
    cat "$DIR/env"
}

# ------------------------------------------------------------------ start ---

do_start() {
    local attempt port pid i status tmp_env
    STARTED=0
    if running_pid >/dev/null && healthy &&
        [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        print_env
        return 0
    fi
    stop_instance

    [ -x "$GLEWLWYD_BIN" ] || die "$GLEWLWYD_BIN not found: install Glewlwyd with
    $INSTALL_HINT"
    [ -f "$INIT_SQL" ] || die "$INIT_SQL not found: install Glewlwyd with
    $INSTALL_HINT"
    [ -f "$MODULES/plugin/libprotocol_oidc.so" ] || die "$MODULES/plugin/libprotocol_oidc.so not found: install Glewlwyd with
    $INSTALL_HINT"
    command -v sqlite3 >/dev/null 2>&1 || die "sqlite3 not found: apt-get install sqlite3"
    command -v curl >/dev/null 2>&1 || die "curl not found: apt-get install curl"

    mkdir -p "$DIR/logs" "$DIR/run"
    chmod 700 "$DIR/logs" "$DIR/run"

    for attempt in 1 2 3 4 5; do
        # A fresh database every time: Debian's initial schema (admin user,
        # database user and client backends), then the API calls below.
        rm -f "$DIR/glewlwyd.db"
        (umask 077 && zcat "$INIT_SQL" | sqlite3 "$DIR/glewlwyd.db") ||
            die "could not create $DIR/glewlwyd.db from $INIT_SQL"
        # Write-ahead logging (kept in the file): with the default rollback
        # journal, a token request that writes while another request reads
        # fails with "Error executing sql query" and a bare 500 (about one
        # run in six of the peer tests, which send token requests in parallel).
        sqlite3 "$DIR/glewlwyd.db" 'PRAGMA journal_mode=WAL;' >/dev/null ||
            die "could not switch $DIR/glewlwyd.db to write-ahead logging"
        copy_webapp
        port=$(pick_port)
        BASE="http://127.0.0.1:$port"
        write_config "$port"
        : >"$DIR/logs/glewlwyd.log"
        rm -f "$DIR/run/glewlwyd.pid"
        # Own session, no inherited descriptors that tie it to the caller (the
        # lock on fd 9, the caller's stdout pipe).
        setsid "$GLEWLWYD_BIN" --config-file="$DIR/glewlwyd.conf" \
            </dev/null >"$DIR/logs/stdout.log" 2>&1 9>&- &
        pid=$!
        printf '%s\n' "$pid" >"$DIR/run/glewlwyd.pid"

        # Wait (up to 15 s) until it answers.
        status=
        for i in $(seq 1 150); do
            if ! alive "$pid"; then
                break
            fi
            status=$(http -o /dev/null "$BASE/config" 2>/dev/null | tail -n 1) || true
            [ "$status" = 200 ] && break
            sleep 0.1
        done
        if [ "$status" != 200 ]; then
            # Glewlwyd does not say why its webservice did not start; a port that
        # something else holds is taken as a clash.
        if grep -qiE 'address already in use' \
                "$DIR/logs/stdout.log" "$DIR/logs/glewlwyd.log" 2>/dev/null ||
                { ! alive "$pid" && port_in_use "$port"; }; then
                say "port clash on $port (attempt $attempt), retrying with another port"
                stop_instance
                continue
            fi
            stop_instance
            {
                printf -- '--- %s\n' "$DIR/logs/stdout.log"
                cat "$DIR/logs/stdout.log"
                printf -- '--- %s\n' "$DIR/logs/glewlwyd.log"
                tail -n 30 "$DIR/logs/glewlwyd.log"
            } >&2 2>/dev/null || true
            die "Glewlwyd in $DIR did not come up (GET $BASE/config: ${status:-no answer})"
        fi

        configure

        tmp_env="$DIR/env.tmp"
        (
            umask 077
            exec >"$tmp_env"
            printf 'TOWER_AUTH_GLEWLWYD_URL=%s\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_ISSUER=%s/api/oidc\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_DISCOVERY_URL=%s/api/oidc/.well-known/openid-configuration\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_TOKEN_URL=%s/api/oidc/token\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_TOKEN_LIFETIME=%s\n' "$TOKEN_LIFETIME"
            printf 'TOWER_AUTH_GLEWLWYD_SHORT_ISSUER=%s/api/oidc-short\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_URL=%s/api/oidc-short/token\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_SHORT_TOKEN_LIFETIME=%s\n' "$SHORT_TOKEN_LIFETIME"
            printf 'TOWER_AUTH_GLEWLWYD_CLIENT_ID=%s\n' "$CLIENT_ID"
            printf 'TOWER_AUTH_GLEWLWYD_CLIENT_SECRET=%s\n' "$CLIENT_SECRET"
            printf 'TOWER_AUTH_GLEWLWYD_ODD_CLIENT_ID=%s\n' "$ODD_CLIENT_ID"
            printf 'TOWER_AUTH_GLEWLWYD_ODD_CLIENT_SECRET=%s\n' "$ODD_CLIENT_SECRET"
            printf 'TOWER_AUTH_GLEWLWYD_SCOPE=%s\n' "$SCOPE"
            printf 'TOWER_AUTH_GLEWLWYD_USERNAME=%s\n' "$USERNAME"
            printf 'TOWER_AUTH_GLEWLWYD_PASSWORD=%s\n' "$PASSWORD"
            printf 'TOWER_AUTH_GLEWLWYD_AUTH_URL=%s/api/oidc/auth\n' "$BASE"
            printf 'TOWER_AUTH_GLEWLWYD_PUBLIC_CLIENT_ID=%s\n' "$PUBLIC_CLIENT_ID"
            printf 'TOWER_AUTH_GLEWLWYD_REDIRECT_PORTS=%s\n' "${REDIRECT_PORTS// /,}"
        )
        mv -f "$tmp_env" "$DIR/env"

        if ! healthy; then
            stop_instance
            tail -n 30 "$DIR/logs/glewlwyd.log" >&2 2>/dev/null || true
            die "Glewlwyd in $DIR is up but a client credentials request to $BASE/api/oidc/token fails (see $DIR/logs/setup.log)"
        fi
        printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
        STARTED=1
        print_env
        return 0
    done
    die "could not start Glewlwyd on a free port after 5 attempts"
}

# ------------------------------------------------------------------- main ---

SCRIPT_MD5=$(md5sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)

peer_main
