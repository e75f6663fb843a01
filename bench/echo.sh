#!/bin/bash
#
# bench/echo.sh: the echo benchmark of issue 2.
#
# Starts its own nginx (the distro /usr/sbin/nginx loading
# build/ngx_collab_module.so) in a temp dir on a free loopback port, with
# WORKERS worker processes (2 by default, one per core of the reference
# machine) and worker_connections 20000, and runs bench/wsload against
# its collab_echo location:
#
#   (a) idle: IDLE_CONNS (10000) connections opened and held; the RSS of
#       the workers (sum of VmRSS) before and while they are held,
#       divided by the connections, is the memory per idle connection;
#   (b) echo: ECHO_CONNS (1000) connections doing round trips of
#       SIZE-byte (32) text messages for ECHO_SECS (10) seconds.
#
# The idle run goes first so that its "before" is a fresh worker.  Client
# and server share the machine, so round-trips/s is a lower bound.  nginx
# (and a wsload still running) is stopped on exit, also on failure or ^C.
# Exit status 1 when a run reported errors.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
WORKERS=${WORKERS:-2}
ECHO_CONNS=${ECHO_CONNS:-1000}
ECHO_SECS=${ECHO_SECS:-10}
SIZE=${SIZE:-32}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-10}
SRC_IPS=${SRC_IPS:-4}

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=echo.sh    # for its messages

bench_module

make -s -C "$here" wsload
wsload=$here/wsload

# file descriptors: 10000 connections on each side; without
# CAP_SYS_RESOURCE the hard limit is the ceiling, for nginx as well
bench_nofile
if [ "$nofile" -lt $((IDLE_CONNS + 100)) ]; then
    echo "echo.sh: ulimit -n is $nofile, $IDLE_CONNS connections need more" >&2
    exit 2
fi

bench_tmp bench

# on failure, the end of nginx's log
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    if [ "$1" -ne 0 ] && [ -s "$tmp/error.log" ]; then
        echo "--- tail of nginx error.log" >&2
        tail -n 20 "$tmp/error.log" >&2
    fi
}

# a free port below the ephemeral range, so clients cannot take it
port=$(free_port)

mkdir -p "$tmp/tmp"
{
    nginx_conf_head "$tmp" "$MODULE" "$WORKERS" "$nofile" 20000
    cat <<EOF
    server {
        listen  127.0.0.1:$port backlog=4096;

        location = /echo {
            collab_echo;
        }

        location = /up {
            return 204;
        }
    }
}
EOF
} > "$tmp/nginx.conf"

nginx_start "$tmp"

workers() {
    pgrep -P "$nginx_pid" -d ' ' || true
}

# sum of the workers' VmRSS, in KiB
worker_rss() {
    # shellcheck disable=SC2046
    rss_kb $(workers)
}

for _ in $(seq 50); do
    [ "$(echo $(workers) | wc -w)" -eq "$WORKERS" ] && break
    sleep 0.1
done

url=ws://127.0.0.1:$port/echo
failed=0

# (a) idle connections
sleep 1
rss_before=$(worker_rss)

"$wsload" --mode idle --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" \
    --src-ips "$SRC_IPS" --url "$url" > "$tmp/idle.out" 2>&1 &
idle_pid=$!
bench_track "$idle_pid"

held=0
for _ in $(seq 1200); do
    if grep -q '^holding' "$tmp/idle.out"; then
        held=1
        break
    fi
    kill -0 "$idle_pid" 2>/dev/null || break
    sleep 0.1
done

if [ "$held" -eq 1 ]; then
    sleep 2
    rss_during=$(worker_rss)
fi

wait "$idle_pid" || failed=1
cat "$tmp/idle.out" | sed 's/^/  idle: /'

if [ "$held" -ne 1 ]; then
    echo "echo.sh: the idle connections were never all established" >&2
    exit 1
fi

established=$(awk '/^holding/ { print $2 }' "$tmp/idle.out")
if [ "${established:-0}" -eq 0 ]; then
    echo "echo.sh: no idle connection was established" >&2
    exit 1
fi
sleep 1
rss_after_close=$(worker_rss)

# (b) echo round trips
"$wsload" --mode echo --conns "$ECHO_CONNS" --duration "$ECHO_SECS" \
    --size "$SIZE" --url "$url" > "$tmp/echo.out" 2>&1 || failed=1
cat "$tmp/echo.out" | sed 's/^/  echo: /'

field() {
    awk -v k="$1" -v n="$2" 'index($0, k) == 1 { print $(NF - n) }' \
        "$tmp/echo.out"
}

rt=$(field 'round trips/s' 0)
p50=$(field 'latency p50' 1)
p99=$(field 'latency p99' 1)
max=$(field 'latency max' 1)
per_conn=$(( (rss_during - rss_before) * 1024 / established ))

echo
echo "ngx_collab echo benchmark: nginx $("$NGINX" -v 2>&1 | sed 's|.*/||'), \
$WORKERS workers, $(nproc) cores shared with the load generator"
echo
printf '| %-44s | %-24s |\n' "measure" "result"
printf '|%s|%s|\n' "----------------------------------------------" \
    "--------------------------"
printf '| %-44s | %-24s |\n' \
    "echo round trips/s ($ECHO_CONNS conns, ${SIZE} B, ${ECHO_SECS} s)" "$rt"
printf '| %-44s | %-24s |\n' "echo latency p50 / p99 / max (ms)" \
    "$p50 / $p99 / $max"
printf '| %-44s | %-24s |\n' "idle connections held" "$established"
printf '| %-44s | %-24s |\n' "worker RSS before / held / closed (KiB)" \
    "$rss_before / $rss_during / $rss_after_close"
printf '| %-44s | %-24s |\n' "RSS per idle connection" "$per_conn bytes"
echo

if grep -q -E '\[(alert|crit|emerg)\]|Sanitizer' "$tmp/error.log"; then
    echo "echo.sh: nginx logged alerts:" >&2
    grep -E '\[(alert|crit|emerg)\]|Sanitizer' "$tmp/error.log" | head >&2
    failed=1
fi

exit "$failed"
