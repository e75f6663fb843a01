#!/bin/bash
#
# bench/presence.sh: the presence benchmark of issue 4.
#
# Starts its own PostgreSQL (initdb in a temp dir, migrated with
# sql/migrate) and nginx (the distro /usr/sbin/nginx loading
# build/ngx_collab_module.so, WORKERS workers, 2 by default), builds
# bench/presence_load (C) and measures:
#
#   (a) updates: CONNS (1000) connections join one session; ACTIVE (100) of
#       them send typing on/off and presence away/online as fast as they
#       can for SECS (10) seconds, in windows of 16 ops and a ping (the
#       rate limits are raised to 100000r/s so that they do not cut in);
#       printed: ops applied per second (sent minus RATE_LIMITED: a
#       presence/typing op has no reply on success), and the typing and
#       presence events all connections received per second (fan-out);
#   (b) bytes per (session, user) entry: users join one session until
#       the zone refuses one, with collab_zone of FILL_SMALL (64k) and
#       then FILL_LARGE (256k); the extra size divided by the extra
#       entries is the zone's cost of one entry, without the fixed part
#       (slab pool header, page table, worker table).  User ids are 8
#       bytes and names 8 bytes ("f0000001").
#
# Client and server share the machine (2 cores): the figures are lower
# bounds of what the server alone would do.  Everything started is
# stopped on exit, also on failure or ^C.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-1000}
ACTIVE=${ACTIVE:-100}
SECS=${SECS:-10}
FILL_SMALL=${FILL_SMALL:-64k}
FILL_LARGE=${FILL_LARGE:-256k}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}

if [ ! -f "$MODULE" ]; then
    echo "presence.sh: $MODULE is missing: run 'make build' first" >&2
    exit 2
fi

MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=65536
[ "$nofile" -gt 65536 ] && nofile=65536

tmp=$(mktemp -d /tmp/collab-pbench.XXXXXX)
chmod 755 "$tmp"
load=$tmp/presence_load
nginx_pid=
pg_started=

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

stop_nginx() {
    if [ -n "$nginx_pid" ] && kill -0 "$nginx_pid" 2>/dev/null; then
        kill -QUIT "$nginx_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$nginx_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$nginx_pid" 2>/dev/null || true
    fi
    nginx_pid=
}

cleanup() {
    local rc=$?
    stop_nginx
    if [ -n "$pg_started" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -m fast -w stop >/dev/null 2>&1 \
            || true
    fi
    if [ "$rc" -ne 0 ] && [ -s "$tmp/error.log" ]; then
        echo "--- tail of nginx error.log" >&2
        tail -n 20 "$tmp/error.log" >&2
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 10000))
        if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
            echo "$p"
            return
        fi
    done
    echo "presence.sh: no free port" >&2
    exit 2
}

cc -O2 -Wall -Wextra -Werror -o "$load" "$here/presence_load.c"

# --- PostgreSQL ------------------------------------------------------------

pg_port=$(free_port)
mkdir -p "$tmp/pg" "$tmp/pg-run"
chmod 700 "$tmp/pg"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$tmp/pg" "$tmp/pg-run"
as_pg "$PGBIN/initdb" -D "$tmp/pg" -U postgres -A trust -E UTF8 \
    --locale=C.UTF-8 --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$tmp/pg" -w -l "$tmp/pg-run/postgres.log" \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $tmp/pg-run -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
pg_started=1
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
    -c "CREATE ROLE collab LOGIN SUPERUSER" \
    -c "CREATE DATABASE collab OWNER collab"
dsn="host=127.0.0.1 port=$pg_port dbname=collab user=collab"
"$root/sql/migrate" "$dsn" >/dev/null

# --- nginx -------------------------------------------------------------------

port=$(free_port)

start_nginx() {
    local zone=$1
    mkdir -p "$tmp/tmp"
    : > "$tmp/error.log"
    cat > "$tmp/nginx.conf" <<EOF
load_module $MODULE;

worker_processes      $WORKERS;
worker_rlimit_nofile  $nofile;
error_log             $tmp/error.log warn;
pid                   $tmp/nginx.pid;
lock_file             $tmp/nginx.lock;

events {
    worker_connections  20000;
}

http {
    access_log  off;

    client_body_temp_path  $tmp/tmp/body;
    proxy_temp_path        $tmp/tmp/proxy;
    fastcgi_temp_path      $tmp/tmp/fastcgi;
    uwsgi_temp_path        $tmp/tmp/uwsgi;
    scgi_temp_path         $tmp/tmp/scgi;

    collab_postgres          "$dsn" pool=8;
    collab_zone              bench $zone;
    collab_presence_batch    100ms;
    collab_rate_presence     100000r/s burst=100000;
    collab_rate_messages     100000r/s burst=100000;

    server {
        listen  127.0.0.1:$port backlog=4096;

        location /chat {
            collab_websocket;
            collab_user \$arg_user;
            collab_user_name \$arg_name;
            collab_send_queue_size 16m;
        }
    }
}
EOF
    "$NGINX" -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log"
    for _ in $(seq 100); do
        [ -s "$tmp/nginx.pid" ] && break
        sleep 0.1
    done
    nginx_pid=$(cat "$tmp/nginx.pid")
    for _ in $(seq 100); do
        ss -Htln "sport = :$port" | grep -q . && break
        sleep 0.1
    done
    sleep 0.3
}

echo "== presence benchmark: $WORKERS workers, $(nproc) cores"

# (a) updates per second with CONNS participants
start_nginx 64m
"$load" load "$port" "$CONNS" "$ACTIVE" "$SECS"
stop_nginx

# (b) bytes per entry
fill() {
    start_nginx "$1"
    "$load" fill "$port" 100000 | sed -n 's/^joined //p'
    stop_nginx
}

bytes() {
    local s=$1
    case $s in
        *k) echo $(( ${s%k} * 1024 )) ;;
        *m) echo $(( ${s%m} * 1024 * 1024 )) ;;
        *) echo "$s" ;;
    esac
}

n_small=$(fill "$FILL_SMALL")
n_large=$(fill "$FILL_LARGE")
b_small=$(bytes "$FILL_SMALL")
b_large=$(bytes "$FILL_LARGE")

echo "zone: $FILL_SMALL holds $n_small entries, $FILL_LARGE holds $n_large"
if [ "$n_large" -gt "$n_small" ]; then
    echo "  bytes per (session, user) entry: $(( (b_large - b_small)
                                               / (n_large - n_small) ))"
fi
