#!/usr/bin/env bash
# oauthlib (Debian package `python3-oauthlib`, 3.2.2) OAuth 1.0a verifier peer for
# tower-auth's integration tests: tests/peers/oauthlib_verifier.py, oauthlib's server
# endpoints behind a small http.server front end (what it serves and the credentials it knows
# are described at the top of that file).
#
#   tests/peers/oauthlib.sh start DIR   start (or reuse) a verifier rooted in DIR, print
#                                       TOWER_AUTH_OAUTHLIB_URL=http://127.0.0.1:PORT
#   tests/peers/oauthlib.sh stop DIR    stop it (idempotent)
#
# For test processes (tests/support/peers.rs), the contract of tests/peers/apache.sh:
#
#   tests/peers/oauthlib.sh acquire DIR PID         like `start`, and registers PID as a user
#                                                   (an instance this starts is owned by the tests)
#   tests/peers/oauthlib.sh release DIR PID         unregisters PID (and dead users); the last
#                                                   user out stops an instance the tests own
#   tests/peers/oauthlib.sh release-on-eof DIR PID  waits for EOF on stdin, then `release`
#
# Needs: apt-get install python3-oauthlib (with python3-jwt and python3-cryptography for the
# RSA methods, which Debian's package recommends). Uses /usr/bin/python3, Debian's, never pip.
# DIR holds run/ (pid, tests-own), users/, port, env, verifier.log, script.md5 and lock.

set -euo pipefail

readonly PYTHON=/usr/bin/python3
readonly INSTALL_HINT="apt-get install python3-oauthlib python3-jwt python3-cryptography"

# die, say, usage, alive, lock_dir, live_users and the reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_MD5=$(cat "${BASH_SOURCE[0]}" "$HERE/oauthlib_verifier.py" | md5sum | cut -d' ' -f1)

running_pid() {
    local pid
    [ -s "$DIR/run/pid" ] || return 1
    read -r pid <"$DIR/run/pid" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "oauthlib_verifier.py --dir $DIR " || return 1
    printf '%s\n' "$pid"
}

healthy() {
    local port
    [ -s "$DIR/port" ] || return 1
    read -r port <"$DIR/port"
    health_ok "$port"
}

stop_instance() {
    local pid
    if pid=$(running_pid); then
        terminate "$pid" "the verifier"
    fi
    rm -f "$DIR/env" "$DIR/port" "$DIR/run/pid" "$DIR/script.md5" "$DIR/run/tests-own"
}

do_start() {
    local pid i
    STARTED=0
    if running_pid >/dev/null && healthy && [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        cat "$DIR/env"
        return 0
    fi
    stop_instance
    [ -x "$PYTHON" ] || die "$PYTHON not found: $INSTALL_HINT"
    "$PYTHON" -c 'import oauthlib, jwt, cryptography' 2>/dev/null ||
        die "Debian's python3-oauthlib (with jwt and cryptography) is not importable by $PYTHON: $INSTALL_HINT"
    mkdir -p "$DIR/run" "$DIR/users"
    setsid "$PYTHON" "$HERE/oauthlib_verifier.py" --dir "$DIR" --rsa-public-key "$HERE/../data/test-rsa-pub.pem" \
        </dev/null >>"$DIR/verifier.log" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/run/pid"
    for i in $(seq 1 100); do
        alive "$pid" || die "the verifier exited at start (see $DIR/verifier.log)"
        [ -s "$DIR/port" ] && healthy && break
        [ "$i" = 100 ] && die "the verifier did not answer within 10 s (see $DIR/verifier.log)"
        sleep 0.1
    done
    printf 'TOWER_AUTH_OAUTHLIB_URL=http://127.0.0.1:%s\n' "$(cat "$DIR/port")" >"$DIR/env"
    printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
    STARTED=1
    cat "$DIR/env"
}

peer_main
