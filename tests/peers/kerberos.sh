#!/usr/bin/env bash
# Kerberos peer for tower-auth's integration tests: MIT Kerberos (Debian krb5-kdc, krb5-user;
# krb5-admin-server's kadmin.local) with a realm made at start-up, Apache httpd with
# mod_auth_gssapi (Debian libapache2-mod-auth-gssapi) protecting /negotiate/ with Negotiate, and
# a Squid forward proxy (Debian squid) asking for Negotiate proxy auth, checked by its
# negotiate_kerberos_auth helper with the same HTTP/localhost keytab.
# Everything in DIR, on 127.0.0.1, nothing from /etc/krb5.conf, /etc/apache2 or /etc/squid is
# read.
#
# Realm TOWERAUTH.TEST; principals alice@TOWERAUTH.TEST (password Passw0rd!, also in
# DIR/alice.keytab) and HTTP/localhost@TOWERAUTH.TEST (DIR/http.keytab, Apache's). The KDC
# listens on TCP and UDP 127.0.0.1:KDC_PORT; Apache on 127.0.0.1:PORT serves
#   /health                 200 "ok", no authentication
#   /negotiate/hello.txt    Negotiate (krb5 only), 200 "hello kerberos", X-Remote-User header
# and the same over HTTPS on 127.0.0.1:HTTPS_PORT (mod_ssl; DIR/ports: "https PORT"; certificate
# for localhost signed by DIR/ca.pem; mod_auth_gssapi passes no channel bindings),
# and Squid on 127.0.0.1:SQUID_PORT (addressed as http://localhost:SQUID_PORT: its service
# principal is HTTP/localhost too) wants `Proxy-Authorization: Negotiate` (Kerberos only; an NTLM
# token inside SPNEGO is refused) for plain requests and CONNECT, to 127.0.0.1 (or localhost)
# only, any port; no cache; logs in DIR/squid/logs (access.log: user and status of each request).
# And tests/peers/kerberos_cbt.py (Debian python3-gssapi: MIT's acceptor, with the same keytab)
# serves Negotiate over HTTPS with channel binding required (RFC 5929 tls-server-end-point; a
# context that is not channel-bound is refused too) on https://localhost:HTTPS_PORT, and the same
# expecting another certificate's binding on https://localhost:BADCBT_PORT (mod_auth_gssapi 1.6.4
# cannot check channel bindings); its certificate (CN and SAN localhost) is signed by DIR/ca.pem.
#
#   tests/peers/kerberos.sh start DIR   start (or reuse) the peer, print
#                                       TOWER_AUTH_KERBEROS_URL=http://localhost:PORT
#                                       TOWER_AUTH_KERBEROS_KDC=tcp://127.0.0.1:KDC_PORT
#                                       TOWER_AUTH_KERBEROS_KRB5_CONFIG=DIR/krb5.conf
#                                       TOWER_AUTH_KERBEROS_PROXY_URL=http://localhost:SQUID_PORT
#                                       TOWER_AUTH_KERBEROS_HTTPS_URL=https://localhost:HTTPS_PORT
#                                       TOWER_AUTH_KERBEROS_HTTPS_BADCBT_URL=https://localhost:BADCBT_PORT
#                                       TOWER_AUTH_KERBEROS_CA=DIR/ca.pem
#   tests/peers/kerberos.sh stop DIR    stop it (idempotent)
#   tests/peers/kerberos.sh acquire|release|release-on-eof DIR PID   as tests/peers/apache.sh
#
# With Debian's faketime installed, a second KDC of the realm runs 2 h ahead on another port
# (DIR/ports: "skewed PORT"), for the clock skew tests.
#
# The URL names `localhost` (the service principal is HTTP/localhost); it resolves to 127.0.0.1.

set -euo pipefail
# runuser lives in /usr/sbin, which a non-login PATH may lack.
PATH=$PATH:/usr/sbin:/sbin

readonly REALM=TOWERAUTH.TEST
readonly USER_PASS='Passw0rd!'
readonly APACHE_BIN=/usr/sbin/apache2
readonly MODULES=/usr/lib/apache2/modules
readonly SQUID_BIN=/usr/sbin/squid
readonly SQUID_HELPER=/usr/lib/squid/negotiate_kerberos_auth
readonly INSTALL_HINT="apt-get install krb5-kdc krb5-admin-server krb5-user libapache2-mod-auth-gssapi apache2 squid python3-gssapi openssl"

# die, say, usage, alive, lock_dir, live_users and the reference-counted commands (peer_main).
# shellcheck source=tests/peers/refcount.sh
. "$(dirname "${BASH_SOURCE[0]}")/refcount.sh"
peer_args "$@"
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_MD5=$(cat "${BASH_SOURCE[0]}" "$HERE/kerberos_cbt.py" | md5sum | cut -d' ' -f1)
export KRB5_CONFIG=$DIR/krb5.conf KRB5_KDC_PROFILE=$DIR/kdc.conf

pid_of() { # $1 pid file
    local pid
    [ -s "$1" ] || return 1
    read -r pid <"$1" || return 1
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    alive "$pid" || return 1
    printf '%s\n' "$pid"
}

healthy() {
    local port squid
    [ -s "$DIR/ports" ] || return 1
    pid_of "$DIR/run/kdc.pid" >/dev/null || return 1
    pid_of "$DIR/run/httpd.pid" >/dev/null || return 1
    pid_of "$DIR/squid/run/squid.pid" >/dev/null || return 1
    pid_of "$DIR/run/cbt.pid" >/dev/null || return 1
    [ -s "$DIR/cbt-ports" ] || return 1
    port=$(awk '$1 == "http" { print $2 }' "$DIR/ports")
    squid=$(awk '$1 == "squid" { print $2 }' "$DIR/ports")
    /usr/bin/python3 - "$port" "$squid" "$DIR/cbt-ports" <<'EOF' 2>/dev/null
import http.client, ssl, sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=5).read()
# Squid: an unauthenticated CONNECT is answered 407 Negotiate.
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[2]), timeout=5)
c.request("CONNECT", "127.0.0.1:9", headers={"Host": "127.0.0.1:9"})
r = c.getresponse()
assert r.status == 407 and r.getheader("Proxy-Authenticate", "").startswith("Negotiate"), r.status
# kerberos_cbt.py: both HTTPS ports.
for line in open(sys.argv[3]):
    port = int(line.split()[1])
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ssl._create_unverified_context())
    c.request("GET", "/health")
    assert c.getresponse().status == 200
EOF
}

stop_instance() {
    local pid i f
    for f in "$DIR/run/cbt.pid" "$DIR/squid/run/squid.pid" "$DIR/run/httpd.pid" "$DIR/run/kdc.pid" "$DIR/run/kdc-skewed.pid"; do
        if pid=$(pid_of "$f"); then
            printf 'kerberos.sh: stopping pid %s (%s)\n' "$pid" "$(basename "$f")" >&2
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 1 50); do
                alive "$pid" || break
                sleep 0.1
            done
            alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    if [ -s "$DIR/pub-dir" ]; then
        f=$(cat "$DIR/pub-dir")
        case $f in /tmp/tower-auth-kerberos.*) rm -rf -- "$f" ;; esac
        rm -f "$DIR/pub-dir"
    fi
    rm -f "$DIR/env" "$DIR/ports" "$DIR/cbt-ports" "$DIR/script.md5" "$DIR/run/tests-own"
}

free_ports() {
    /usr/bin/python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

make_realm() { # $1 kdc port
    local kdc=$1
    rm -rf "$DIR/db" && mkdir -p "$DIR/db" "$DIR/logs"
    cat >"$DIR/krb5.conf" <<EOF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    ignore_acceptor_hostname = true
    udp_preference_limit = 1
[realms]
    $REALM = {
        kdc = 127.0.0.1:$kdc
    }
[domain_realm]
    localhost = $REALM
    127.0.0.1 = $REALM
EOF
    cat >"$DIR/kdc.conf" <<EOF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$kdc
    kdc_tcp_listen = 127.0.0.1:$kdc
[realms]
    $REALM = {
        database_name = $DIR/db/principal
        key_stash_file = $DIR/db/stash
        acl_file = $DIR/db/kadm5.acl
        kdc_listen = 127.0.0.1:$kdc
        kdc_tcp_listen = 127.0.0.1:$kdc
        max_life = 10h
        max_renewable_life = 1d
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }
[logging]
    kdc = FILE:$DIR/logs/kdc.log
EOF
    : >"$DIR/db/kadm5.acl"
    kdb5_util create -s -r "$REALM" -P "tower-auth-master-$RANDOM$RANDOM" >"$DIR/logs/kdb5_util.log" 2>&1 ||
        die "kdb5_util create failed (see $DIR/logs/kdb5_util.log)"
    kadmin.local -r "$REALM" -q "addprinc +requires_preauth -pw $USER_PASS alice" >>"$DIR/logs/kadmin.log" 2>&1
    kadmin.local -r "$REALM" -q "addprinc -randkey HTTP/localhost" >>"$DIR/logs/kadmin.log" 2>&1
    rm -f "$DIR/http.keytab" "$DIR/alice.keytab"
    kadmin.local -r "$REALM" -q "ktadd -k $DIR/http.keytab HTTP/localhost" >>"$DIR/logs/kadmin.log" 2>&1
    kadmin.local -r "$REALM" -q "ktadd -k $DIR/alice.keytab -norandkey alice" >>"$DIR/logs/kadmin.log" 2>&1
    [ -s "$DIR/http.keytab" ] || die "no keytab made (see $DIR/logs/kadmin.log)"
}

write_apache() { # $1 http port, $2 https port
    local port=$1 tls_port=$2 user_lines="" pub=$DIR
    mkdir -p "$DIR/www/negotiate" "$DIR/run" "$DIR/logs"
    printf 'ok\n' >"$DIR/www/health"
    printf 'hello kerberos\n' >"$DIR/www/negotiate/hello.txt"
    chmod -R a+rX "$DIR/www"
    if [ "$(id -u)" = 0 ]; then
        local u=www-data g=www-data
        id -u www-data >/dev/null 2>&1 || { u=nobody; g=nogroup; }
        user_lines="User $u
Group $g"
        # The children read the keytab and the documents.
        chmod 0644 "$DIR/http.keytab"
        chmod 0755 "$DIR"
        if ! runuser -u "$u" -- test -r "$DIR/http.keytab" 2>/dev/null; then
            # DIR is out of their reach (under /root, mode 700): a private mode-755 copy in /tmp,
            # removed by `stop`.
            pub=$(mktemp -d /tmp/tower-auth-kerberos.XXXXXX)
            chmod 0755 "$pub"
            cp -r "$DIR/www" "$DIR/http.keytab" "$DIR/krb5.conf" "$pub/"
            chmod -R a+rX "$pub"
            printf '%s\n' "$pub" >"$DIR/pub-dir"
        fi
    fi
    # The children's GSSAPI reads krb5.conf too.
    APACHE_KRB5_CONFIG=$pub/krb5.conf
    cat >"$DIR/httpd.conf" <<EOF
# Generated by tests/peers/kerberos.sh on every start; edit that script instead.
ServerRoot "$DIR"
ServerName localhost
PidFile "$DIR/run/httpd.pid"
DefaultRuntimeDir "$DIR/run"
ErrorLog "$DIR/logs/error.log"
LogLevel warn auth_gssapi:debug
LogFormat "%a %u %t \"%r\" %>s %b" peers
CustomLog "$DIR/logs/access.log" peers
$user_lines
LoadModule mpm_event_module   $MODULES/mod_mpm_event.so
LoadModule authz_core_module  $MODULES/mod_authz_core.so
LoadModule authz_user_module  $MODULES/mod_authz_user.so
LoadModule authn_core_module  $MODULES/mod_authn_core.so
LoadModule headers_module     $MODULES/mod_headers.so
LoadModule auth_gssapi_module $MODULES/mod_auth_gssapi.so
LoadModule socache_shmcb_module $MODULES/mod_socache_shmcb.so
LoadModule ssl_module         $MODULES/mod_ssl.so
Listen 127.0.0.1:$port
Listen 127.0.0.1:$tls_port
KeepAlive On
MaxKeepAliveRequests 1000
DocumentRoot "$pub/www"
<Directory "$pub/www">
    Require all granted
</Directory>
<Location /negotiate/>
    AuthType GSSAPI
    AuthName "Kerberos"
    GssapiCredStore keytab:$pub/http.keytab
    GssapiAllowedMech krb5
    GssapiBasicAuth Off
    GssapiConnectionBound On
    Require valid-user
    Header always set X-Remote-User "expr=%{REMOTE_USER}"
</Location>
# The same over HTTPS (mod_auth_gssapi 1.6.4 passes no channel bindings: it has no directive for
# them).
SSLSessionCache "shmcb:$DIR/run/ssl_scache(512000)"
<VirtualHost 127.0.0.1:$tls_port>
    SSLEngine on
    SSLCertificateFile "$DIR/tls.pem"
    SSLCertificateKeyFile "$DIR/tls.key"
</VirtualHost>
EOF
}

write_squid() { # $1 port
    local port=$1 d=$DIR/squid
    rm -rf "$d" && mkdir -p "$d/logs" "$d/run"
    # The helper runs as Squid's user (`proxy` when started as root): its own copies of the
    # keytab and krb5.conf, in a directory it owns.
    cp "$DIR/http.keytab" "$DIR/krb5.conf" "$d/"
    cat >"$d/squid.conf" <<EOF
# Generated by tests/peers/kerberos.sh on every start; edit that script instead.
http_port 127.0.0.1:$port
pid_filename $d/run/squid.pid
access_log stdio:$d/logs/access.log
cache_log $d/logs/cache.log
cache_store_log none
coredump_dir $d/run
netdb_filename none
pinger_enable off
cache deny all
cache_mem 8 MB
logfile_rotate 0
shutdown_lifetime 1 seconds
visible_hostname localhost
# -s: the keytab's principal; -t none: no replay cache (the tests send many AP-REQs a second).
auth_param negotiate program $SQUID_HELPER -s HTTP/localhost@$REALM -k $d/http.keytab -t none
auth_param negotiate children 4
auth_param negotiate keep_alive on
acl local_dst dst 127.0.0.1/32 ::1
acl authed proxy_auth REQUIRED
http_access deny !local_dst
http_access allow authed
http_access deny all
EOF
    chmod 0644 "$d/squid.conf" "$d/krb5.conf"
    chmod 0600 "$d/http.keytab"
    if [ "$(id -u)" = 0 ]; then
        printf 'cache_effective_user proxy\n' >>"$d/squid.conf"
        chown -R proxy:proxy "$d"
        chmod 0755 "$DIR"
    fi
}

make_certificates() {
    make_test_pki "$DIR" "tower-auth Kerberos peer CA" "$DIR/logs/openssl.log"
}

do_start() {
    local pid i kdc port skewed squid tls_port
    STARTED=0
    if healthy && [ "$(cat "$DIR/script.md5" 2>/dev/null)" = "$SCRIPT_MD5" ]; then
        cat "$DIR/env"
        return 0
    fi
    stop_instance
    for bin in /usr/sbin/krb5kdc /usr/sbin/kdb5_util /usr/sbin/kadmin.local "$APACHE_BIN"; do
        [ -x "$bin" ] || die "$bin not found: $INSTALL_HINT"
    done
    [ -e "$MODULES/mod_auth_gssapi.so" ] || die "mod_auth_gssapi not found: $INSTALL_HINT"
    mkdir -p "$DIR/run" "$DIR/users" "$DIR/logs"
    for bin in "$SQUID_BIN" "$SQUID_HELPER"; do
        [ -x "$bin" ] || die "$bin not found: $INSTALL_HINT"
    done
    /usr/bin/python3 -c 'import gssapi' 2>/dev/null || die "no python3-gssapi: $INSTALL_HINT"
    command -v openssl >/dev/null || die "no openssl: $INSTALL_HINT"
    read -r kdc port skewed squid tls_port <<<"$(free_ports)"
    make_realm "$kdc"
    setsid /usr/sbin/krb5kdc -n -P "$DIR/run/kdc.pid" </dev/null >>"$DIR/logs/krb5kdc.out" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/run/kdc.pid"
    # A second KDC of the same realm whose clock runs 2 h ahead (libfaketime, Debian faketime),
    # for the clock skew tests; only when faketime is installed (.ci/run installs it).
    if [ -x /usr/bin/faketime ]; then
        sed -e "s/127.0.0.1:$kdc/127.0.0.1:$skewed/g" -e "s|logs/kdc.log|logs/kdc-skewed.log|" \
            "$DIR/kdc.conf" >"$DIR/kdc-skewed.conf"
        # faketime runs the KDC as its child: the KDC writes its own pid (-P), which `stop` kills.
        KRB5_KDC_PROFILE=$DIR/kdc-skewed.conf setsid /usr/bin/faketime -f +2h /usr/sbin/krb5kdc -n \
            -P "$DIR/run/kdc-skewed.pid" </dev/null >>"$DIR/logs/krb5kdc-skewed.out" 2>&1 9>&- &
        for i in $(seq 1 50); do
            [ -s "$DIR/run/kdc-skewed.pid" ] && break
            sleep 0.1
        done
    fi
    make_certificates
    write_apache "$port" "$tls_port"
    "$APACHE_BIN" -t -f "$DIR/httpd.conf" >"$DIR/logs/configtest.log" 2>&1 ||
        die "Apache rejected its configuration (see $DIR/logs/configtest.log)"
    KRB5_CONFIG=$APACHE_KRB5_CONFIG "$APACHE_BIN" -f "$DIR/httpd.conf" -k start </dev/null >>"$DIR/logs/apache.out" 2>&1 9>&- ||
        die "Apache did not start (see $DIR/logs/)"
    write_squid "$squid"
    # The helper reads the realm's krb5.conf (KRB5_CONFIG, inherited); -k sets its keytab.
    KRB5_CONFIG=$DIR/squid/krb5.conf "$SQUID_BIN" -f "$DIR/squid/squid.conf" </dev/null >"$DIR/squid/logs/start.log" 2>&1 9>&- ||
        die "Squid did not start (see $DIR/squid/logs/)"
    rm -f "$DIR/cbt-ports"
    KRB5_CONFIG=$DIR/krb5.conf setsid /usr/bin/python3 "$HERE/kerberos_cbt.py" --keytab "$DIR/http.keytab" \
        --cert "$DIR/tls.pem" --key "$DIR/tls.key" --ports "$DIR/cbt-ports" </dev/null >>"$DIR/logs/cbt.log" 2>&1 9>&- &
    printf '%s\n' "$!" >"$DIR/run/cbt.pid"
    printf 'kdc %s\nhttp %s\nsquid %s\nhttps %s\n' "$kdc" "$port" "$squid" "$tls_port" >"$DIR/ports"
    [ -s "$DIR/run/kdc-skewed.pid" ] && printf 'skewed %s\n' "$skewed" >>"$DIR/ports"
    for i in $(seq 1 100); do
        healthy && break
        [ "$i" = 100 ] && die "the peer did not answer within 10 s (see $DIR/logs/)"
        sleep 0.1
    done
    {
        printf 'TOWER_AUTH_KERBEROS_URL=http://localhost:%s\n' "$port"
        printf 'TOWER_AUTH_KERBEROS_KDC=tcp://127.0.0.1:%s\n' "$kdc"
        printf 'TOWER_AUTH_KERBEROS_KRB5_CONFIG=%s\n' "$DIR/krb5.conf"
        printf 'TOWER_AUTH_KERBEROS_PROXY_URL=http://localhost:%s\n' "$squid"
        printf 'TOWER_AUTH_KERBEROS_HTTPS_URL=https://localhost:%s\n' "$(awk '$1 == "https" { print $2 }' "$DIR/cbt-ports")"
        printf 'TOWER_AUTH_KERBEROS_HTTPS_BADCBT_URL=https://localhost:%s\n' "$(awk '$1 == "https_badcbt" { print $2 }' "$DIR/cbt-ports")"
        printf 'TOWER_AUTH_KERBEROS_CA=%s\n' "$DIR/ca.pem"
    } >"$DIR/env"
    printf '%s\n' "$SCRIPT_MD5" >"$DIR/script.md5"
    STARTED=1
    cat "$DIR/env"
}

mkdir -p "$DIR/run" "$DIR/users"
peer_main
