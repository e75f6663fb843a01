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

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=presence.sh    # for its messages

bench_module
bench_nofile

bench_tmp pbench
load=$tmp/presence_load
nginx_pid=

# on failure, the end of nginx's log
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    if [ "$1" -ne 0 ] && [ -s "$tmp/error.log" ]; then
        echo "--- tail of nginx error.log" >&2
        tail -n 20 "$tmp/error.log" >&2
    fi
}

cc -O2 -Wall -Wextra -Werror -o "$load" "$here/presence_load.c"

# --- PostgreSQL ------------------------------------------------------------

# a throwaway database: no fsync
PG_BIN=$PGBIN
pg_start "$tmp/pg" "$(free_port)" -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off
dsn=$pg_dsn

# --- nginx -------------------------------------------------------------------

port=$(free_port)

start_nginx() {
    local zone=$1
    mkdir -p "$tmp/tmp"
    : > "$tmp/error.log"
    {
        nginx_conf_head "$tmp" "$MODULE" "$WORKERS" "$nofile" 20000
        cat <<EOF
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
    } > "$tmp/nginx.conf"
    nginx_start "$tmp"
    wait_port "$port" || true
    sleep 0.3
}

echo "== presence benchmark: $WORKERS workers, $(nproc) cores"

# (a) updates per second with CONNS participants
start_nginx 64m
"$load" load "$port" "$CONNS" "$ACTIVE" "$SECS"
nginx_stop "$nginx_pid"

# (b) bytes per entry
fill() {
    start_nginx "$1"
    "$load" fill "$port" 100000 | sed -n 's/^joined //p'
    nginx_stop "$nginx_pid"
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
