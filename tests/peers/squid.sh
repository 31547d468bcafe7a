#!/usr/bin/env bash
# Real Squid proxies for tower-auth's integration tests (HTTPS through an
# authenticating proxy: CONNECT answered with Basic and with Digest).
#
#   tests/peers/squid.sh start DIR   start (or reuse) two Squids rooted in DIR,
#                                    print their KEY=VALUE env lines on stdout;
#                                    they run until `stop`
#   tests/peers/squid.sh stop DIR    stop them (idempotent)
#
# For test processes (tests/support/peers.rs), with reference counting, as
# apache.sh does:
#
#   tests/peers/squid.sh acquire DIR PID         like `start`, registers PID
#   tests/peers/squid.sh release DIR PID         the last user out stops
#                                                instances the tests started
#   tests/peers/squid.sh release-on-eof DIR PID  waits for stdin's EOF, then
#                                                `release DIR PID`
#
# Two Squid instances (one auth scheme each, so that a client's choice is
# never in doubt), each on one free port of 127.0.0.1:
#
# TOWER_AUTH_SQUID_BASIC_URL=http://127.0.0.1:P1   proxy auth Basic
#   (basic_ncsa_auth, realm "squid-basic")
# TOWER_AUTH_SQUID_DIGEST_URL=http://127.0.0.1:P2  proxy auth Digest
#   (digest_file_auth, MD5, qop auth, realm "squid-digest")
#
# Users: alice / s3cret and bob / hunter2. Both proxies allow CONNECT (and
# plain requests) to 127.0.0.1, any port, once authenticated, and nothing
# else: Squid's default SSL_ports rule (443 only) is not in this config, and
# no other destination is allowed, so they never reach out. No cache. Logs in
# DIR/{basic,digest}/logs. Squid drops root privileges to user `proxy` when
# started as root (CI): DIR/{basic,digest} are then owned by it.

set -euo pipefail

SQUID_BIN=${SQUID_BIN:-/usr/sbin/squid}
HELPERS=${SQUID_HELPERS:-/usr/lib/squid}

# die, say, usage, port_in_use, pick_port, alive, lock_dir, live_users and the
# reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"

KINDS=(basic digest)

# ---------------------------------------------------------------- helpers ---

# Status code of a request to proxy port $1 (absolute-form or CONNECT).
# $2 the request line's method, $3 its target.
probe() {
    local port=$1 method=$2 target=$3
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf '%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$method" "$target" "$target" >&3
        IFS=' ' read -r -t 3 _ code _ <&3 || exit 1
        printf '%s\n' "$code"
    ) 2>/dev/null
}

# Pid of the Squid master of kind $1, if it is alive.
running_pid() {
    local pid file="$DIR/$1/run/squid.pid"
    [ -s "$file" ] || return 1
    read -r pid <"$file" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    printf '%s\n' "$pid"
}

env_value() {
    sed -n "s/^$1=//p" "$DIR/env" 2>/dev/null | head -n 1
}

# Both proxies answer 407 to an unauthenticated CONNECT.
healthy() {
    local kind url
    for kind in "${KINDS[@]}"; do
        url=$(env_value "TOWER_AUTH_SQUID_${kind^^}_URL")
        [ -n "$url" ] || return 1
        [ "$(probe "${url##*:}" CONNECT 127.0.0.1:9)" = 407 ] || return 1
    done
}

stop_instance() {
    local kind pid i
    for kind in "${KINDS[@]}"; do
        if pid=$(running_pid "$kind"); then
            say "stopping Squid $kind (pid $pid) in $DIR"
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 1 100); do
                alive "$pid" || break
                [ "$i" = 100 ] && { say "Squid $kind did not stop after 10 s, killing it"; kill -KILL "$pid" 2>/dev/null || true; }
                sleep 0.1
            done
        fi
        rm -f "$DIR/$kind/run/squid.pid"
    done
    rm -f "$DIR/env" "$DIR/script.md5" "$DIR/run/tests-own"
}

write_config() { # $1 kind, $2 port
    local kind=$1 port=$2 d="$DIR/$1"
    mkdir -p "$d/logs" "$d/run"
    case $kind in
    basic)
        htpasswd -bc "$d/passwd" alice s3cret 2>/dev/null
        htpasswd -b "$d/passwd" bob hunter2 2>/dev/null
        ;;
    digest)
        printf 'alice:s3cret\nbob:hunter2\n' >"$d/passwd"
        ;;
    esac
    chmod 644 "$d/passwd"
    {
        printf 'http_port 127.0.0.1:%s\n' "$port"
        printf 'pid_filename %s/run/squid.pid\n' "$d"
        printf 'access_log stdio:%s/logs/access.log\n' "$d"
        printf 'cache_log %s/logs/cache.log\n' "$d"
        printf 'cache_store_log none\n'
        printf 'coredump_dir %s/run\n' "$d"
        printf 'netdb_filename none\n'
        printf 'pinger_enable off\n'
        printf 'cache deny all\n'
        printf 'cache_mem 8 MB\n'
        printf 'logfile_rotate 0\n'
        printf 'shutdown_lifetime 1 seconds\n'
        printf 'visible_hostname tower-auth-squid-%s\n' "$kind"
        if [ "$(id -u)" = 0 ]; then
            printf 'cache_effective_user proxy\n'
        fi
        case $kind in
        basic)
            printf 'auth_param basic program %s/basic_ncsa_auth %s/passwd\n' "$HELPERS" "$d"
            printf 'auth_param basic children 2\n'
            printf 'auth_param basic realm squid-basic\n'
            ;;
        digest)
            printf 'auth_param digest program %s/digest_file_auth %s/passwd\n' "$HELPERS" "$d"
            printf 'auth_param digest children 2\n'
            printf 'auth_param digest realm squid-digest\n'
            printf 'auth_param digest nonce_max_duration 30 minutes\n'
            printf 'auth_param digest nonce_max_count 1000\n'
            ;;
        esac
        printf 'acl local_dst dst 127.0.0.1/32\n'
        printf 'acl authed proxy_auth REQUIRED\n'
        printf 'http_access deny !local_dst\n'
        printf 'http_access allow authed\n'
        printf 'http_access deny all\n'
    } >"$d/squid.conf"
    chmod 644 "$d/squid.conf"
    if [ "$(id -u)" = 0 ]; then
        chown -R proxy:proxy "$d"
    fi
}

print_env() {
    cat "$DIR/env"
}

do_start() {
    local attempt kind port ports i started
    STARTED=0
    if running_pid basic >/dev/null && running_pid digest >/dev/null && healthy &&
        [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        print_env
        return 0
    fi
    stop_instance
    [ -x "$SQUID_BIN" ] || die "$SQUID_BIN not found: install Squid with
    apt-get install squid apache2-utils"
    for h in basic_ncsa_auth digest_file_auth; do
        [ -x "$HELPERS/$h" ] || die "$HELPERS/$h not found: install Squid with apt-get install squid"
    done
    command -v htpasswd >/dev/null 2>&1 || die "htpasswd not found: apt-get install apache2-utils"
    chmod 755 "$DIR"
    for attempt in 1 2 3 4 5; do
        ports=()
        started=1
        for kind in "${KINDS[@]}"; do
            port=$(pick_port "${ports[@]}")
            ports+=("$port")
            write_config "$kind" "$port"
            if ! "$SQUID_BIN" -f "$DIR/$kind/squid.conf" >"$DIR/$kind/logs/start.log" 2>&1 9>&- </dev/null; then
                cat "$DIR/$kind/logs/start.log" >&2
                die "$SQUID_BIN -f $DIR/$kind/squid.conf failed (see above and $DIR/$kind/logs/cache.log)"
            fi
        done
        {
            printf 'TOWER_AUTH_SQUID_BASIC_URL=http://127.0.0.1:%s\n' "${ports[0]}"
            printf 'TOWER_AUTH_SQUID_DIGEST_URL=http://127.0.0.1:%s\n' "${ports[1]}"
        } >"$DIR/env.tmp"
        mv -f "$DIR/env.tmp" "$DIR/env"
        chmod 644 "$DIR/env"
        for i in $(seq 1 150); do
            if running_pid basic >/dev/null && running_pid digest >/dev/null && healthy; then
                printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
                STARTED=1
                print_env
                return 0
            fi
            sleep 0.1
        done
        if grep -qs 'Address already in use' "$DIR"/*/logs/cache.log; then
            say "port clash (attempt $attempt); retrying with other ports"
            stop_instance
            continue
        fi
        started=0
        break
    done
    [ "$started" = 1 ] || {
        for kind in "${KINDS[@]}"; do
            printf -- '--- %s\n' "$DIR/$kind/logs/cache.log"
            tail -n 30 "$DIR/$kind/logs/cache.log" 2>/dev/null || true
        done >&2
        stop_instance
        die "Squid in $DIR did not come up"
    }
    die "could not start Squid on free ports after 5 attempts"
}

# ------------------------------------------------------------------- main ---

SCRIPT_MD5=$(md5sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)

peer_main
