#!/usr/bin/env bash
# Real Apache httpd peer for tower-auth's integration tests.
#
#   tests/peers/apache.sh start DIR   start (or reuse) an Apache rooted in DIR,
#                                     print its KEY=VALUE env lines on stdout;
#                                     it runs until `stop`
#   tests/peers/apache.sh stop DIR    stop it (idempotent)
#
# For test processes (tests/support/peers.rs), with reference counting:
#
#   tests/peers/apache.sh acquire DIR PID
#       like `start`, and registers process PID as a user (DIR/users/PID). An
#       instance this starts is owned by the tests (DIR/run/tests-own); one
#       started by `start` is not, and is never stopped by `release`.
#   tests/peers/apache.sh release DIR PID
#       unregisters PID (and users no longer alive); the last user out stops
#       an instance the tests own.
#   tests/peers/apache.sh release-on-eof DIR PID
#       waits until its standard input is closed (the test process holds the
#       other end of a pipe: it is closed when that process exits, however it
#       exits), then runs `release DIR PID`.
#
# Everything lives in DIR: httpd.conf (generated, self-contained: it never
# reads /etc/apache2), logs/, run/ (pid, shm, scoreboard, tests-own), www/
# (documents, CGI script, password files), env (the lines printed by `start`),
# script.md5 (a live instance is reused only if this script is unchanged),
# users/ (one empty file per test process using the instance) and lock
# (flock(1) file serialising every command from several test processes). Apache listens on 127.0.0.1 only, on three free ephemeral ports.
#
# Credentials everywhere: alice / s3cret and bob / hunter2.
#
# TOWER_AUTH_APACHE_URL (origin server):
#   /public/hello.txt         no auth                      "hello public\n"
#   /public/echo              no auth, CGI echo (see below)
#   /basic/hello.txt          Basic,  realm "basic-realm"  "hello basic\n"
#   /basic-post/echo          Basic,  realm "basic-realm", CGI echo
#   /digest/hello.txt         Digest, realm "digest-realm" "hello digest\n"
#   /digest-stale/hello.txt   Digest, realm "stale-realm", nonce lifetime 1 s
#                             (a nonce older than 1 s gets 401 + stale=true)
#                             "hello stale\n"
#   /digest-post/echo         Digest, realm "post-realm", CGI echo
#   /digest-nc/hello.txt      Digest, realm "nc-realm", AuthDigestNcCheck On:
#                             challenges carry opaque="N" (must be echoed) and
#                             a reused nonce needs a higher nc; "hello nc\n"
#   All Digest locations: algorithm MD5, qop "auth", domain="/<location>/".
#
#   CGI echo: 200, Content-Type: text/plain, body = "<METHOD>\n" followed by
#   the request body byte for byte; headers X-Echo-Method, X-Echo-Content-Length
#   (empty for a chunked request) and X-Echo-Remote-User.
#
# TOWER_AUTH_APACHE_PROXY_BASIC_URL:  forward proxy, Basic proxy auth,
#   realm "proxy-basic" (407 + Proxy-Authenticate without credentials).
# TOWER_AUTH_APACHE_PROXY_DIGEST_URL: forward proxy, Digest proxy auth (MD5,
#   qop auth), realm "proxy-digest".
#   Both only proxy to http://127.0.0.1:PORT/... ; any other target is 403
#   (no CONNECT: mod_proxy_connect is not loaded), so they never reach out.
#
# What Debian's mod_auth_digest (2.4.71, bookworm) supports, checked with
# `apache2 -t` and by hand against the running server:
#   - AuthDigestAlgorithm: only MD5. "MD5-sess", "SHA-256", "SHA-512-256" are
#     config errors ("Unsupported algorithm in AuthDigestAlgorithm").
#   - AuthDigestQop: only "auth". "auth-int" and "none" are config errors
#     ("AuthDigestQop is deprecated: only 'auth' is supported"), and a request
#     without qop (RFC 2069 style) is refused ("RFC 2069 is no longer
#     supported"). So auth-int and SHA-256 cannot be tested against Apache.
#   - Challenges carry realm, nonce, algorithm=MD5, domain (from
#     AuthDigestDomain), qop="auth"; opaque only with AuthDigestNcCheck On
#     (or AuthDigestNonceLifetime 0), see /digest-nc.
#   - A "uri" parameter that does not match the request target gives 400, not
#     401. Through the forward proxies, Proxy-Authorization is accepted with
#     uri= either the path ("/public/hello.txt", what curl sends) or the
#     absolute URL.
#   - stale=true is sent when a nonce outlives AuthDigestNonceLifetime.
#   - Successful responses carry Authentication-Info with rspauth, cnonce, nc,
#     qop; "nextnonce" is added only when the nonce is about to expire
#     (nonce older than lifetime - 30 s), i.e. on every answer under
#     /digest-stale (lifetime 1 s), never under the 300 s default lifetime.
#   - Nonce-count checking (AuthDigestNcCheck) is off (the default) except
#     under /digest-nc.
#
# User/Group: started as root, Apache's children switch to www-data (the
# Debian apache2 package creates it; falls back to nobody/nogroup). DIR, its
# subdirectories and every file the children read are made world-readable
# (a+rX); nothing is writable by www-data. If www-data
# cannot reach DIR (e.g. DIR is under /root, mode 700), the files the
# children read (www/) are put in a private mode-755 directory under /tmp
# instead, recorded in DIR/www-dir and removed by `stop`. Config, logs and
# the pid file are only touched by the root parent, so they stay in DIR.
# Started as a normal user, no User/Group lines are written (Apache keeps the
# caller's identity).

set -euo pipefail
# runuser lives in /usr/sbin, which a non-login PATH may lack.
PATH=$PATH:/usr/sbin:/sbin

readonly APACHE_BIN=/usr/sbin/apache2
readonly MODULES=/usr/lib/apache2/modules

# die, say, usage, the arguments (cmd, dir_arg, pid_arg), port_in_use, pick_port, alive and the
# reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"

# ---------------------------------------------------------------- helpers ---

# HTTP/1.0 request over bash's /dev/tcp; prints the status code (e.g. 200).
# $1 port, $2 request target (origin-form or absolute-form).
probe() {
    local port=$1 target=$2
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$target" "$port" >&3
        IFS=' ' read -r -t 3 _ code _ <&3 || exit 1
        printf '%s\n' "$code"
    ) 2>/dev/null
}

# Pid of the Apache parent started from $DIR, if it is alive.
running_pid() {
    local pid
    [ -s "$DIR/run/httpd.pid" ] || return 1
    read -r pid <"$DIR/run/httpd.pid" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    # Make sure the pid was not recycled by something else.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/httpd.conf" || return 1
    printf '%s\n' "$pid"
}

# Value of KEY in $DIR/env.
env_value() {
    sed -n "s/^$1=//p" "$DIR/env" 2>/dev/null | head -n 1
}

port_of() { printf '%s\n' "${1##*:}"; }

# Is the instance described by $DIR/env answering as expected?
healthy() {
    local url pb pd
    url=$(env_value TOWER_AUTH_APACHE_URL)
    pb=$(env_value TOWER_AUTH_APACHE_PROXY_BASIC_URL)
    pd=$(env_value TOWER_AUTH_APACHE_PROXY_DIGEST_URL)
    [ -n "$url" ] && [ -n "$pb" ] && [ -n "$pd" ] || return 1
    [ "$(probe "$(port_of "$url")" /public/hello.txt)" = 200 ] || return 1
    [ "$(probe "$(port_of "$pb")" "$url/public/hello.txt")" = 407 ] || return 1
    [ "$(probe "$(port_of "$pd")" "$url/public/hello.txt")" = 407 ] || return 1
}

md5_hex() { printf '%s' "$1" | md5sum | cut -d' ' -f1; }

stop_instance() {
    local pid i
    if pid=$(running_pid); then
        say "stopping Apache (pid $pid) in $DIR"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            alive "$pid" || break
            [ "$i" = 100 ] && { say "Apache did not stop after 10 s, killing it"; kill -KILL "$pid" 2>/dev/null || true; }
            sleep 0.1
        done
    fi
    rm -f "$DIR/env" "$DIR/run/httpd.pid" "$DIR/script.md5" "$DIR/run/tests-own"
    if [ -s "$DIR/www-dir" ]; then
        local www
        www=$(cat "$DIR/www-dir")
        case $www in /tmp/tower-auth-apache.*) rm -rf -- "$www" ;; esac
        rm -f "$DIR/www-dir"
    fi
}

# ------------------------------------------------------------ write files ---

write_content() { # $1: www dir
    local www=$1 u r
    rm -rf -- "$www"
    mkdir -p "$www/htdocs/public" "$www/htdocs/basic" "$www/htdocs/digest" \
        "$www/htdocs/digest-stale" "$www/htdocs/empty" "$www/cgi-bin" "$www/auth"
    printf 'hello public\n' >"$www/htdocs/public/hello.txt"
    printf 'hello basic\n' >"$www/htdocs/basic/hello.txt"
    printf 'hello digest\n' >"$www/htdocs/digest/hello.txt"
    printf 'hello stale\n' >"$www/htdocs/digest-stale/hello.txt"
    mkdir -p "$www/htdocs/digest-nc"
    printf 'hello nc\n' >"$www/htdocs/digest-nc/hello.txt"

    cat >"$www/cgi-bin/echo" <<'EOF'
#!/bin/sh
# CGI echo: "<METHOD>\n" then the request body verbatim (read to EOF, so a
# chunked request body works too: Apache closes the pipe after the body).
printf 'Content-Type: text/plain\r\n'
printf 'X-Echo-Method: %s\r\n' "$REQUEST_METHOD"
printf 'X-Echo-Content-Length: %s\r\n' "${CONTENT_LENGTH:-}"
printf 'X-Echo-Remote-User: %s\r\n' "${REMOTE_USER:-}"
printf '\r\n'
printf '%s\n' "$REQUEST_METHOD"
exec cat
EOF
    chmod 755 "$www/cgi-bin/echo"

    # Basic: htpasswd (apr1 MD5 hashes, cheap to verify).
    : >"$www/auth/htpasswd"
    htpasswd -b -m "$www/auth/htpasswd" alice s3cret 2>/dev/null
    htpasswd -b -m "$www/auth/htpasswd" bob hunter2 2>/dev/null
    # Digest: htdigest format, user:realm:MD5(user:realm:password).
    : >"$www/auth/htdigest"
    for r in digest-realm stale-realm post-realm nc-realm proxy-digest; do
        for u in alice:s3cret bob:hunter2; do
            printf '%s:%s:%s\n' "${u%%:*}" "$r" "$(md5_hex "${u%%:*}:$r:${u#*:}")" >>"$www/auth/htdigest"
        done
    done
    chmod -R a+rX "$www"
}

write_config() { # $1 www dir, $2 $3 $4 ports
    local www=$1 p1=$2 p2=$3 p3=$4 user_lines=""
    if [ "$(id -u)" = 0 ]; then
        user_lines="User $RUN_USER
Group $RUN_GROUP"
    fi
    cat >"$DIR/httpd.conf" <<EOF
# Generated by tests/peers/apache.sh on every start; edit that script instead.
# Self-contained: nothing from /etc/apache2 is read.
ServerRoot "$DIR"
ServerName 127.0.0.1
PidFile "$DIR/run/httpd.pid"
DefaultRuntimeDir "$DIR/run"
ErrorLog "$DIR/logs/error.log"
LogLevel warn auth_digest:info auth_basic:info proxy:warn
LogFormat "%a %u %t \"%r\" %>s %b %Dus" peers
CustomLog "$DIR/logs/access.log" peers
$user_lines

LoadModule mpm_event_module   $MODULES/mod_mpm_event.so
LoadModule authz_core_module  $MODULES/mod_authz_core.so
LoadModule authz_host_module  $MODULES/mod_authz_host.so
LoadModule authz_user_module  $MODULES/mod_authz_user.so
LoadModule authn_core_module  $MODULES/mod_authn_core.so
LoadModule authn_file_module  $MODULES/mod_authn_file.so
LoadModule auth_basic_module  $MODULES/mod_auth_basic.so
LoadModule auth_digest_module $MODULES/mod_auth_digest.so
LoadModule mime_module        $MODULES/mod_mime.so
LoadModule alias_module       $MODULES/mod_alias.so
LoadModule cgid_module        $MODULES/mod_cgid.so
LoadModule proxy_module       $MODULES/mod_proxy.so
LoadModule proxy_http_module  $MODULES/mod_proxy_http.so

# Event MPM: up to 4 x 25 concurrent connections.
StartServers        2
ServerLimit         4
ThreadsPerChild     25
MaxRequestWorkers   100
MinSpareThreads     25
MaxSpareThreads     75
Timeout             30
KeepAlive           On
KeepAliveTimeout    5
MaxKeepAliveRequests 1000

# mod_cgid's daemon socket. Unix socket paths are limited to ~107 bytes, so
# it lives next to the documents (short /tmp path when DIR is not reachable).
ScriptSock "$CGISOCK"
# Room for many Digest clients (nonce counts / opaque) in shared memory.
AuthDigestShmemSize 1048576

TypesConfig /dev/null
AddType text/plain .txt
AddDefaultCharset Off
ServerTokens Prod
ServerSignature Off
TraceEnable Off

DocumentRoot "$www/htdocs/empty"
<Directory />
    Options None
    AllowOverride None
    Require all denied
</Directory>
<Directory "$www/htdocs">
    Options None
    Require all granted
</Directory>
<Directory "$www/cgi-bin">
    Options None
    Require all granted
</Directory>

Listen 127.0.0.1:$p1
Listen 127.0.0.1:$p2
Listen 127.0.0.1:$p3

# ------------------------------------------------------------------ origin --
<VirtualHost 127.0.0.1:$p1>
    DocumentRoot "$www/htdocs"
    ScriptAlias /public/echo      "$www/cgi-bin/echo"
    ScriptAlias /basic-post/echo  "$www/cgi-bin/echo"
    ScriptAlias /digest-post/echo "$www/cgi-bin/echo"

    <Location "/basic/">
        AuthType Basic
        AuthName "basic-realm"
        AuthBasicProvider file
        AuthUserFile "$www/auth/htpasswd"
        Require valid-user
    </Location>
    <Location "/basic-post/">
        AuthType Basic
        AuthName "basic-realm"
        AuthBasicProvider file
        AuthUserFile "$www/auth/htpasswd"
        Require valid-user
    </Location>
    <Location "/digest/">
        AuthType Digest
        AuthName "digest-realm"
        AuthDigestProvider file
        AuthUserFile "$www/auth/htdigest"
        AuthDigestAlgorithm MD5
        AuthDigestQop auth
        AuthDigestDomain /digest/
        Require valid-user
    </Location>
    <Location "/digest-stale/">
        AuthType Digest
        AuthName "stale-realm"
        AuthDigestProvider file
        AuthUserFile "$www/auth/htdigest"
        AuthDigestAlgorithm MD5
        AuthDigestQop auth
        AuthDigestNonceLifetime 1
        AuthDigestDomain /digest-stale/
        Require valid-user
    </Location>
    <Location "/digest-post/">
        AuthType Digest
        AuthName "post-realm"
        AuthDigestProvider file
        AuthUserFile "$www/auth/htdigest"
        AuthDigestAlgorithm MD5
        AuthDigestQop auth
        AuthDigestDomain /digest-post/
        Require valid-user
    </Location>
    <Location "/digest-nc/">
        AuthType Digest
        AuthName "nc-realm"
        AuthDigestProvider file
        AuthUserFile "$www/auth/htdigest"
        AuthDigestAlgorithm MD5
        AuthDigestQop auth
        AuthDigestNcCheck On
        AuthDigestDomain /digest-nc/
        Require valid-user
    </Location>
</VirtualHost>

# ------------------------------------------------ forward proxy, Basic auth --
<VirtualHost 127.0.0.1:$p2>
    DocumentRoot "$www/htdocs/empty"
    ProxyRequests On
    ProxyVia Off
    # Deny everything, then allow (with proxy auth) http://127.0.0.1:PORT/ only.
    <Proxy "*">
        Require all denied
    </Proxy>
    <ProxyMatch "^http://127\.0\.0\.1:[0-9]+/">
        AuthType Basic
        AuthName "proxy-basic"
        AuthBasicProvider file
        AuthUserFile "$www/auth/htpasswd"
        Require valid-user
    </ProxyMatch>
</VirtualHost>

# ----------------------------------------------- forward proxy, Digest auth --
<VirtualHost 127.0.0.1:$p3>
    DocumentRoot "$www/htdocs/empty"
    ProxyRequests On
    ProxyVia Off
    <Proxy "*">
        Require all denied
    </Proxy>
    <ProxyMatch "^http://127\.0\.0\.1:[0-9]+/">
        AuthType Digest
        AuthName "proxy-digest"
        AuthDigestProvider file
        AuthUserFile "$www/auth/htdigest"
        AuthDigestAlgorithm MD5
        AuthDigestQop auth
        Require valid-user
    </ProxyMatch>
</VirtualHost>
EOF
    chmod 644 "$DIR/httpd.conf"
}

print_env() {
    cat "$DIR/env"
}

# ------------------------------------------------------------------ start ---

do_start() {
    local www attempt p1 p2 p3 i status tmp_env
    STARTED=0
    # Reuse a live instance, unless it was configured by another version of
    # this script.
    if running_pid >/dev/null && healthy &&
        [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        print_env
        return 0
    fi
    # Dead, half-started, outdated or unhealthy instance: start anew.
    stop_instance

    [ -x "$APACHE_BIN" ] || die "$APACHE_BIN not found: install Apache with
    apt-get install apache2 apache2-utils"
    for m in mpm_event authz_core authz_host authz_user authn_core authn_file \
        auth_basic auth_digest mime alias cgid proxy proxy_http; do
        [ -f "$MODULES/mod_$m.so" ] || die "$MODULES/mod_$m.so not found: install Apache with
    apt-get install apache2 apache2-utils"
    done
    command -v htpasswd >/dev/null 2>&1 || die "htpasswd not found: install it with
    apt-get install apache2 apache2-utils"
    command -v md5sum >/dev/null 2>&1 || die "md5sum (coreutils) not found"

    RUN_USER=
    RUN_GROUP=
    if [ "$(id -u)" = 0 ]; then
        if id -u www-data >/dev/null 2>&1; then
            RUN_USER="www-data"
            RUN_GROUP=$(id -gn www-data)
        else
            RUN_USER=nobody
            RUN_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)
        fi
    fi

    mkdir -p "$DIR/logs" "$DIR/run"
    chmod 755 "$DIR" "$DIR/logs" "$DIR/run"

    # Where the children read documents, password files and the CGI socket.
    www="$DIR/www"
    if [ -n "$RUN_USER" ]; then
        if ! command -v runuser >/dev/null 2>&1 ||
            ! runuser -u "$RUN_USER" -- test -x "$DIR" 2>/dev/null; then
            www=
        fi
    fi
    # ScriptSock must fit in sun_path (108 bytes incl. NUL).
    if [ -n "$www" ] && [ ${#www} -gt 90 ]; then
        www=
    fi
    if [ -z "$www" ]; then
        www=$(mktemp -d /tmp/tower-auth-apache.XXXXXXXX)
        chmod 755 "$www"
        printf '%s\n' "$www" >"$DIR/www-dir"
        say "$DIR is not reachable by $RUN_USER (or too long a path); serving files from $www"
    fi
    CGISOCK="$www/cgisock"
    write_content "$www"

    for attempt in 1 2 3 4 5; do
        p1=$(pick_port)
        p2=$(pick_port "$p1")
        p3=$(pick_port "$p1" "$p2")
        write_config "$www" "$p1" "$p2" "$p3"
        : >"$DIR/logs/error.log"
        rm -f "$DIR/run/httpd.pid"
        if ! "$APACHE_BIN" -f "$DIR/httpd.conf" -k start >"$DIR/logs/start.log" 2>&1 9>&- </dev/null; then
            if grep -q 'Address already in use' "$DIR/logs/start.log" "$DIR/logs/error.log" 2>/dev/null; then
                say "port clash (attempt $attempt): $(grep -h 'could not bind' "$DIR/logs/start.log" "$DIR/logs/error.log" 2>/dev/null | head -n 1); retrying with other ports"
                continue
            fi
            cat "$DIR/logs/start.log" >&2
            die "$APACHE_BIN -f $DIR/httpd.conf -k start failed (see above and $DIR/logs/error.log)"
        fi

        tmp_env="$DIR/env.tmp"
        {
            printf 'TOWER_AUTH_APACHE_URL=http://127.0.0.1:%s\n' "$p1"
            printf 'TOWER_AUTH_APACHE_PROXY_BASIC_URL=http://127.0.0.1:%s\n' "$p2"
            printf 'TOWER_AUTH_APACHE_PROXY_DIGEST_URL=http://127.0.0.1:%s\n' "$p3"
        } >"$tmp_env"
        mv -f "$tmp_env" "$DIR/env"
        chmod 644 "$DIR/env"

        # Wait (up to 15 s) until all three ports answer as they should.
        for i in $(seq 1 150); do
            if running_pid >/dev/null && healthy; then
                printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
                STARTED=1
                print_env
                return 0
            fi
            if [ "$i" -gt 20 ] && ! running_pid >/dev/null; then
                break
            fi
            sleep 0.1
        done
        if grep -q 'Address already in use' "$DIR/logs/error.log" 2>/dev/null; then
            say "port clash (attempt $attempt): $(grep -h 'could not bind' "$DIR/logs/error.log" 2>/dev/null | head -n 1); retrying with other ports"
            stop_instance
            continue
        fi
        status=$(probe "$p1" /public/hello.txt || true)
        stop_instance
        {
            printf -- '--- %s\n' "$DIR/logs/start.log"
            cat "$DIR/logs/start.log"
            printf -- '--- %s\n' "$DIR/logs/error.log"
            tail -n 30 "$DIR/logs/error.log"
        } >&2 2>/dev/null || true
        die "Apache in $DIR did not come up (GET /public/hello.txt on port $p1: ${status:-no answer})"
    done
    die "could not start Apache on free ports after 5 attempts"
}

# ------------------------------------------------------------------- main ---

SCRIPT_MD5=$(md5sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)

peer_main
