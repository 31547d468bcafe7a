#!/usr/bin/env bash
# PROBE ONLY (not wired into .ci/run or the tests): start a throw-away
# Glewlwyd 2.7.5 on 127.0.0.1 configured for the authorization code grant
# with PKCE, serving its login webapp, for driving with headless Chromium.
#
#   tests/peers/chromium/glewlwyd-code.sh DIR [REDIRECT_URI...]
#
# Prints KEY=VALUE lines; Glewlwyd keeps running (pid in DIR/glewlwyd.pid).
# Stop it with: kill "$(cat DIR/glewlwyd.pid)"
# Default REDIRECT_URI: http://127.0.0.1:47123/ (see the notes file).
set -euo pipefail
DIR=$1; shift
[ $# -gt 0 ] || set -- "http://127.0.0.1:47123/"
mkdir -p "$DIR/logs"
DIR=$(cd "$DIR" && pwd)
MODULES=/usr/lib/glewlwyd
# Glewlwyd's static-file handler answers 404 for symlinks that leave the
# webapp root, and Debian's webapp is mostly symlinks (js/ -> libjs-jquery,
# fonts/, config.json -> /etc/glewlwyd/config-2.7.json): serve a dereferenced
# copy (4.5 MB, cp takes ~20 ms).
WEBAPP=$DIR/webapp
http() { curl --noproxy '*' -s -S --max-time 10 -w '\n%{http_code}' "$@"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$port"
rm -rf "$WEBAPP" && cp -rL /usr/share/glewlwyd/webapp "$WEBAPP"
# On this Debian install /etc/glewlwyd/config-2.7.json is a DIRECTORY holding
# config.json, so webapp/config.json resolves to a directory; Glewlwyd hangs
# (no answer) on a request for a directory. Put the real file in place.
if [ -d "$WEBAPP/config.json" ]; then
    rm -rf "$WEBAPP/config.json"
    cp /etc/glewlwyd/config-2.7.json/config.json "$WEBAPP/config.json"
fi
rm -f "$DIR/glewlwyd.db"
(umask 077 && zcat /usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz | sqlite3 "$DIR/glewlwyd.db")

cat >"$DIR/glewlwyd.conf" <<CONF
port=$port
bind_address="127.0.0.1"
external_url="$BASE"
login_url="login.html"
api_prefix="api"
# The login webapp, served by Glewlwyd itself at / (login.html, config.json...)
static_files_path="$WEBAPP/"
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
log_mode="file"
log_level="DEBUG"
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
admin_scope="g_admin"
profile_scope="g_profile"
user_module_path="$MODULES/user"
client_module_path="$MODULES/client"
user_auth_scheme_module_path="$MODULES/scheme"
plugin_module_path="$MODULES/plugin"
hash_algorithm="SHA512"
database = { type = "sqlite3" path = "$DIR/glewlwyd.db" };
CONF

setsid /usr/bin/glewlwyd --config-file="$DIR/glewlwyd.conf" </dev/null >"$DIR/logs/stdout.log" 2>&1 &
echo $! >"$DIR/glewlwyd.pid"
for i in $(seq 1 150); do
    [ "$(http -o /dev/null "$BASE/config" 2>/dev/null | tail -n1)" = 200 ] && break; sleep 0.1
done

post() { # path json
    local out; out=$(http -b "$DIR/cookies" -H 'Content-Type: application/json' --data-binary "$2" "$BASE/api/$1")
    [ "${out##*$'\n'}" = 200 ] || { echo "POST /api/$1 -> $out" >&2; exit 1; }
}
http -c "$DIR/cookies" -H 'Content-Type: application/json' \
    --data-binary '{"username":"admin","password":"password"}' "$BASE/api/auth/" >/dev/null
key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
post scope/ '{"name":"scope1","display_name":"scope1","description":"tower-auth test scope","password_required":false,"password_max_age":0,"scheme":{}}'
post mod/plugin/ "{\"module\":\"oidc\",\"name\":\"oidc\",\"display_name\":\"oidc\",\"parameters\":{
 \"iss\":\"$BASE/api/oidc\",\"jwt-type\":\"sha\",\"jwt-key-size\":\"256\",\"key\":\"$key\",
 \"access-token-duration\":60,\"refresh-token-duration\":3600,\"code-duration\":600,
 \"refresh-token-rolling\":false,\"allow-non-oidc\":true,
 \"auth-type-code-enabled\":true,\"auth-type-token-enabled\":false,\"auth-type-none-enabled\":false,
 \"auth-type-device-enabled\":false,\"auth-type-password-enabled\":true,
 \"auth-type-client-enabled\":true,\"auth-type-refresh-enabled\":true,
 \"pkce-allowed\":true,\"pkce-method-plain-allowed\":false,\"scope\":[]}}"
uris=$(printf '"%s",' "$@"); uris="[${uris%,}]"
post client/ "{\"client_id\":\"tower-client\",\"name\":\"tower-auth test client\",\"confidential\":true,\"client_secret\":\"tower-secret-0123\",\"enabled\":true,\"scope\":[\"scope1\"],\"authorization_type\":[\"code\",\"client_credentials\",\"password\",\"refresh_token\"],\"token_endpoint_auth_method\":[\"client_secret_basic\",\"client_secret_post\"],\"redirect_uri\":$uris}"
post client/ "{\"client_id\":\"tower-public\",\"name\":\"tower-auth public client\",\"confidential\":false,\"enabled\":true,\"scope\":[\"scope1\"],\"authorization_type\":[\"code\",\"refresh_token\"],\"redirect_uri\":$uris}"
post user/ '{"username":"alice","name":"Alice","password":"s3cret","enabled":true,"scope":["scope1"]}'
http -o /dev/null -b "$DIR/cookies" -X DELETE "$BASE/api/auth/" >/dev/null || true
rm -f "$DIR/cookies"
echo "GLEWLWYD_URL=$BASE"
echo "GLEWLWYD_AUTH_URL=$BASE/api/oidc/auth"
echo "GLEWLWYD_TOKEN_URL=$BASE/api/oidc/token"
