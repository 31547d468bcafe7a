#!/usr/bin/env bash
# NTLM peer for tower-auth's integration tests: tests/peers/ntlm_server.py, pyspnego's NTLM (and
# Negotiate wrapping NTLM) acceptor behind a small HTTP/1.1 front end that keeps each connection
# authenticated after its handshake, as IIS does; a server port (401) and a proxy port (407,
# forwarding plain http and tunnelling CONNECT to 127.0.0.1). Users, paths and what each
# answers are described at the top of that file.
#
#   tests/peers/ntlm.sh start DIR   start (or reuse) the peer rooted in DIR, print
#                                   TOWER_AUTH_NTLM_URL=http://127.0.0.1:PORT
#                                   TOWER_AUTH_NTLM_PROXY_URL=http://127.0.0.1:PORT
#                                   TOWER_AUTH_NTLM_HTTPS_URL=https://localhost:PORT
#                                   TOWER_AUTH_NTLM_HTTPS_BADCBT_URL=https://localhost:PORT
#                                   TOWER_AUTH_NTLM_CA=DIR/ca.pem (the CA of its certificate)
#   tests/peers/ntlm.sh stop DIR    stop it (idempotent)
#
# For test processes (tests/support/peers.rs), the contract of tests/peers/apache.sh:
#
#   tests/peers/ntlm.sh acquire DIR PID         like `start`, and registers PID as a user
#                                               (an instance this starts is owned by the tests)
#   tests/peers/ntlm.sh release DIR PID         unregisters PID (and dead users); the last
#                                               user out stops an instance the tests own
#   tests/peers/ntlm.sh release-on-eof DIR PID  waits for EOF on stdin, then `release`
#
# Needs: python3 with venv (Debian: python3-venv) and PyPI reachable once: Debian has no
# python3-spnego, so pyspnego (pinned below) goes into DIR/venv with pip.
# DIR holds venv/, run/ (pid, tests-own), users/, ports, env, server.log, script.md5 and lock.

set -euo pipefail

readonly PYSPNEGO=pyspnego==0.12.4
readonly INSTALL_HINT="apt-get install python3-venv (and PyPI reachable for $PYSPNEGO)"

# die, say, usage, alive, lock_dir, live_users and the reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
SCRIPT_MD5=$(cat "${BASH_SOURCE[0]}" "$HERE/ntlm_server.py" | md5sum | cut -d' ' -f1)
PYTHON=$DIR/venv/bin/python

running_pid() {
    local pid
    [ -s "$DIR/run/pid" ] || return 1
    read -r pid <"$DIR/run/pid" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "ntlm_server.py --dir $DIR" || return 1
    printf '%s\n' "$pid"
}

healthy() {
    local port
    [ -s "$DIR/ports" ] || return 1
    port=$(awk '$1 == "server" { print $2 }' "$DIR/ports")
    health_ok "$port"
}

stop_instance() {
    local pid
    if pid=$(running_pid); then
        terminate "$pid" "the peer"
    fi
    rm -f "$DIR/env" "$DIR/ports" "$DIR/run/pid" "$DIR/script.md5" "$DIR/run/tests-own"
}

do_start() {
    local pid i
    STARTED=0
    if running_pid >/dev/null && healthy && [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        cat "$DIR/env"
        return 0
    fi
    stop_instance
    if ! "$PYTHON" -c 'import spnego' 2>/dev/null; then
        rm -rf "$DIR/venv"
        /usr/bin/python3 -m venv "$DIR/venv" >&2 || die "python3 -m venv failed: $INSTALL_HINT"
        "$DIR/venv/bin/pip" install --quiet --disable-pip-version-check "$PYSPNEGO" >&2 ||
            die "pip install $PYSPNEGO failed: $INSTALL_HINT"
    fi
    mkdir -p "$DIR/run" "$DIR/users"
    rm -f "$DIR/ports"
    make_test_pki "$DIR" "tower-auth NTLM peer CA" "$DIR/openssl.log"
    setsid "$PYTHON" "$HERE/ntlm_server.py" --dir "$DIR" --tls-cert "$DIR/tls.pem" --tls-key "$DIR/tls.key" </dev/null >>"$DIR/server.log" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/run/pid"
    for i in $(seq 1 100); do
        alive "$pid" || die "the peer exited at start (see $DIR/server.log)"
        [ -s "$DIR/ports" ] && healthy && break
        [ "$i" = 100 ] && die "the peer did not answer within 10 s (see $DIR/server.log)"
        sleep 0.1
    done
    {
        printf 'TOWER_AUTH_NTLM_URL=http://127.0.0.1:%s\n' "$(awk '$1 == "server" { print $2 }' "$DIR/ports")"
        printf 'TOWER_AUTH_NTLM_PROXY_URL=http://127.0.0.1:%s\n' "$(awk '$1 == "proxy" { print $2 }' "$DIR/ports")"
        printf 'TOWER_AUTH_NTLM_HTTPS_URL=https://localhost:%s\n' "$(awk '$1 == "https" { print $2 }' "$DIR/ports")"
        printf 'TOWER_AUTH_NTLM_HTTPS_BADCBT_URL=https://localhost:%s\n' "$(awk '$1 == "https_badcbt" { print $2 }' "$DIR/ports")"
        printf 'TOWER_AUTH_NTLM_CA=%s\n' "$DIR/ca.pem"
    } >"$DIR/env"
    printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
    STARTED=1
    cat "$DIR/env"
}

mkdir -p "$DIR/run" "$DIR/users"
peer_main
