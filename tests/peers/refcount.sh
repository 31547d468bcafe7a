# shellcheck shell=bash
# Shared by the peer scripts (apache, glewlwyd, redis, squid, oauthlib, ntlm, kerberos .sh), sourced, never run: process
# liveness, free ports, and the reference-counted commands
#
#   start DIR | stop DIR | acquire DIR PID | release DIR PID | release-on-eof DIR PID
#
# described at the top of apache.sh. The sourcing script calls peer_args "$@" (which sets cmd,
# dir_arg and pid_arg), defines do_start (which sets STARTED=1 when it started an instance
# rather than reusing a live one) and stop_instance, and ends with peer_main.

PEER_NAME=$(basename "$0")

die() {
    printf '%s: error: %s\n' "$PEER_NAME" "$*" >&2
    exit 1
}
say() { printf '%s: %s\n' "$PEER_NAME" "$*" >&2; }

usage() {
    printf 'usage: %s start|stop DIR\n       %s acquire|release|release-on-eof DIR PID\n' "$0" "$0" >&2
    exit 2
}

peer_args() {
    [ $# -eq 2 ] || [ $# -eq 3 ] || usage
    cmd=$1
    dir_arg=$2
    pid_arg=${3:-}
    [ -n "$dir_arg" ] || usage
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A random free port in the kernel's ephemeral range, not among "$@". There
# is still a window between picking and binding, so start retries on a clash.
pick_port() {
    local lo hi port taken tries=0
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { lo=32768; hi=60999; }
    while :; do
        tries=$((tries + 1))
        [ "$tries" -le 200 ] || die "could not find a free port on 127.0.0.1"
        port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        taken=0
        for p in "$@"; do [ "$p" = "$port" ] && taken=1; done
        [ "$taken" = 0 ] || continue
        # Skip ports held by any TCP socket, TIME_WAIT included: a client
        # socket lingering on the port makes a server's bind() fail even with
        # SO_REUSEADDR. (Matches remote ports too, which is harmless.)
        grep -q -- ":$(printf '%04X' "$port") " /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
        port_in_use "$port" && continue
        printf '%s\n' "$port"
        return 0
    done
}

# True if process $1 exists and is not a zombie (PID 1 in containers does
# not always reap a daemonized server).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)
    [ "$state" != Z ] && [ "$state" != X ]
}

# Stops process $1 ($2 says what it is): TERM, up to 5 s, then KILL.
terminate() {
    say "stopping $2 (pid $1) in $DIR"
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do
        alive "$1" || return 0
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
}

# True if the peer on 127.0.0.1:$1 answers GET /health (with $PYTHON, the peer's own Python).
health_ok() {
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=5).read()
PY
}

# Registered users (test process ids) that are still alive; the dead ones are
# removed.
live_users() {
    local f pid
    mkdir -p "$DIR/users"
    for f in "$DIR/users"/*; do
        [ -e "$f" ] || continue
        pid=${f##*/}
        case $pid in '' | *[!0-9]*) rm -f -- "$f"; continue ;; esac
        if alive "$pid"; then printf '%s\n' "$pid"; else rm -f -- "$f"; fi
    done
}

# A CA and a certificate for localhost and 127.0.0.1 signed by it (rustls refuses a self-signed
# CA as the server's certificate), SHA-256 (channel bindings hash the certificate with SHA-256),
# in $1: ca.pem (+ ca.key), tls.pem and tls.key; nothing if they are there. $2: the CA's name;
# $3: openssl's log.
make_test_pki() {
    local dir=$1 name=$2 log=$3
    [ -s "$dir/ca.pem" ] && [ -s "$dir/tls.pem" ] && [ -s "$dir/tls.key" ] && return 0
    (
        set -e
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 30 -subj "/CN=$name" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -sha256 -nodes -subj /CN=localhost -keyout tls.key -out tls.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >tls.ext
        openssl x509 -req -sha256 -days 30 -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile tls.ext -out tls.pem
    ) >"$log" 2>&1 || die "openssl could not make the certificates (see $log)"
}

lock_dir() { # $1 dir; sets DIR and holds DIR/lock on fd 9
    mkdir -p "$1"
    DIR=$(cd "$1" && pwd -P)
    exec 9>>"$DIR/lock"
    flock -w 120 9 || die "timed out waiting for the lock $DIR/lock"
}

valid_pid() {
    case $1 in '' | *[!0-9]*) usage ;; esac
}

do_release() { # $1 pid
    rm -f -- "$DIR/users/$1"
    if [ -n "$(live_users)" ]; then
        return 0
    fi
    if [ -e "$DIR/run/tests-own" ]; then
        stop_instance
    fi
}

peer_main() {
    case $cmd in
    start)
        [ -z "$pid_arg" ] || usage
        lock_dir "$dir_arg"
        do_start
        # Started or reused by hand: it runs until `stop`, whoever started it.
        rm -f "$DIR/run/tests-own"
        ;;
    acquire)
        valid_pid "$pid_arg"
        lock_dir "$dir_arg"
        do_start
        if [ "$STARTED" = 1 ]; then
            mkdir -p "$DIR/run"
            : >"$DIR/run/tests-own"
        fi
        mkdir -p "$DIR/users"
        : >"$DIR/users/$pid_arg"
        ;;
    release)
        valid_pid "$pid_arg"
        [ -d "$dir_arg" ] || exit 0
        lock_dir "$dir_arg"
        do_release "$pid_arg"
        ;;
    release-on-eof)
        valid_pid "$pid_arg"
        # Not under the lock while waiting: only once the test process is gone.
        cat >/dev/null || true
        [ -d "$dir_arg" ] || exit 0
        lock_dir "$dir_arg"
        do_release "$pid_arg"
        ;;
    stop)
        [ -z "$pid_arg" ] || usage
        [ -d "$dir_arg" ] || exit 0
        lock_dir "$dir_arg"
        stop_instance
        ;;
    *)
        usage
        ;;
    esac
}
