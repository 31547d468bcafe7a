#!/usr/bin/env bash
# Headless Chromium, driven by puppeteer-core, as the user of the interactive
# OAuth2 flows in tower-auth's tests (tests/oauth2_chromium.rs): it opens the
# authorization URL, signs in on Glewlwyd's login page, grants the consent
# and follows the redirect to the crate's loopback listener
# (tests/peers/chromium/login.cjs).
#
#   tests/peers/chromium.sh install DIR
#       installs puppeteer-core (pinned, from the npm registry; it downloads
#       no browser) into DIR/node_modules unless that version is there, checks
#       Debian's Chromium (/usr/bin/chromium) starts headless, and prints
#           TOWER_AUTH_CHROMIUM_NODE_PATH=DIR/node_modules
#       on stdout. Idempotent; about 3 s the first time, instant after.
#
# Needs: apt-get install chromium (Debian's, /usr/bin/chromium) and Node.js
# with npm (the machine's). No server is started: each test run launches its
# own Chromium with a fresh profile and stops it.

set -euo pipefail

readonly PUPPETEER_VERSION=25.16.0
readonly CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

die() {
    printf 'chromium.sh: error: %s\n' "$*" >&2
    exit 1
}

[ $# -eq 2 ] && [ "$1" = install ] || {
    printf 'usage: %s install DIR\n' "$0" >&2
    exit 2
}
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)

[ -x "$CHROMIUM" ] || die "$CHROMIUM not found: apt-get install chromium"
command -v node >/dev/null 2>&1 || die "node not found: install Node.js (with npm)"
command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js (with npm)"

exec 9>>"$DIR/lock"
flock -w 300 9 || die "timed out waiting for the lock $DIR/lock"

installed=$(node -p "require('$DIR/node_modules/puppeteer-core/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$PUPPETEER_VERSION" ]; then
    # puppeteer-core never downloads a browser; the engines warning (it asks
    # for Node 22, launching by executablePath works on 20) is harmless.
    (cd "$DIR" && npm install --no-audit --no-fund --no-save --loglevel=error \
        "puppeteer-core@$PUPPETEER_VERSION" >"$DIR/npm.log" 2>&1) ||
        { cat "$DIR/npm.log" >&2; die "npm install puppeteer-core@$PUPPETEER_VERSION failed (see above)"; }
fi

# Chromium must start headless here (as root it needs --no-sandbox).
profile=$(mktemp -d)
if ! timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --dump-dom 'data:text/html,<p>ok</p>' 2>"$DIR/chromium-check.log" | grep -q '<p>ok</p>'; then
    rm -rf "$profile"
    tail -n 20 "$DIR/chromium-check.log" >&2 || true
    die "$CHROMIUM did not render a page headless (see above)"
fi
rm -rf "$profile"

printf 'TOWER_AUTH_CHROMIUM_NODE_PATH=%s\n' "$DIR/node_modules"
