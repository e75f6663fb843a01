# shellcheck shell=bash disable=SC2154  # bench_name, PG_BIN, NGINX, MODULE: the script's
# bench/lib.sh: what the bench scripts share, sourced by them
# (". "$here/lib.sh""): functions only, nothing runs when it is sourced.
#
# A script sets bench_name (its messages start with it) and calls
# bench_tmp before it starts anything: it makes the temp dir ($tmp) and
# sets the traps; every process started through these functions (or handed to
# bench_track) is then stopped on exit, newest first, also on failure or
# ^C, and the temp dir removed.  The list of what runs is a file in the
# temp dir, so that processes started in a subshell ($(...)) are stopped
# too.  A script may define bench_on_exit, called with the exit status
# after everything is stopped and before the temp dir goes (to tail logs
# on failure, bench_tail_logs, or to keep them, bench_keep).
#
# Uses from the script: PG_BIN (pg_start, pg_stop), NGINX (nginx_start).

# bench_tmp PREFIX: $tmp = a new /tmp/collab-PREFIX.XXXXXX; sets the traps
bench_tmp() {
    tmp=$(mktemp -d "/tmp/collab-$1.XXXXXX")
    bench_dir=$tmp
    chmod 755 "$tmp"                # PostgreSQL's user reaches its dir
    : > "$tmp/.running"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# bench_cleanup: the EXIT trap: stops what runs, calls bench_on_exit, removes $tmp
bench_cleanup() {
    local rc=$? kind arg sig secs
    trap - EXIT INT TERM
    if [ -f "$bench_dir/.running" ]; then
        while read -r kind arg sig secs; do
            case $kind in
            pid) stop_pid "$arg" "$sig" "$secs" ;;
            pg)  pg_stop "$arg" ;;
            esac
        done < <(tac "$bench_dir/.running")
    fi
    if declare -F bench_on_exit > /dev/null; then
        bench_on_exit "$rc" || true
    fi
    rm -rf "$bench_dir"
    exit "$rc"
}

# bench_track PID [SIGNAL [SECONDS]]: stop PID on exit (SIGNAL, TERM; KILL after SECONDS, 5)
bench_track() {
    echo "pid $1 ${2:-TERM} ${3:-5}" >> "$bench_dir/.running"
}

# bench_untrack KIND ARG: forget a process (pid PID) or a PostgreSQL (pg DIR)
bench_untrack() {
    local f=$bench_dir/.running
    [ -f "$f" ] || return 0
    awk -v k="$1" -v a="$2" '!($1 == k && $2 == a)' "$f" > "$f.new"
    mv "$f.new" "$f"
}

# stop_pid PID [SIGNAL [SECONDS]]: SIGNAL (TERM), KILL after SECONDS (5), then its leftover children
stop_pid() {
    local pid=$1 sig=${2:-TERM} secs=${3:-5} kids
    bench_untrack pid "$pid"
    kids=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [ -z "$kids" ] || kill -KILL $kids 2>/dev/null || true
}

# bench_tail_logs N FILE...: the last N lines of each non-empty FILE, to stderr
bench_tail_logs() {
    local n=$1 f
    shift
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "--- tail of $f" >&2
        tail -n "$n" "$f" >&2
    done
}

# bench_keep PATH...: copy the PATHs that exist into $KEEP when KEEP is set
bench_keep() {
    [ -n "${KEEP:-}" ] || return 0
    mkdir -p "$KEEP"
    cp -r "$@" "$KEEP"/ 2>/dev/null || true
}

# bench_module: exit 2 unless $MODULE exists; makes it an absolute path
bench_module() {
    if [ ! -f "$MODULE" ]; then
        echo "$bench_name: $MODULE is missing: run 'make build' first" >&2
        exit 2
    fi
    MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")
}

# bench_nofile: raise ulimit -n (to 65536 or the hard limit); $nofile = the limit, at most 65536
bench_nofile() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    nofile=$(ulimit -n)
    [ "$nofile" = unlimited ] && nofile=65536
    [ "$nofile" -gt 65536 ] && nofile=65536
    return 0
}

# free_port: a loopback port from 20000-29999 nothing listens on (and not handed out before)
free_port() {
    local p used=${bench_dir:-/nonexistent}/.ports
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 10000))
        grep -qx "$p" "$used" 2>/dev/null && continue
        if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
            [ ! -d "${bench_dir:-}" ] || echo "$p" >> "$used"
            echo "$p"
            return
        fi
    done
    echo "$bench_name: no free port" >&2
    exit 2
}

# wait_port PORT [SECONDS]: until something listens on PORT (10 s); status 1 if not
wait_port() {
    for _ in $(seq $((${2:-10} * 10))); do
        [ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ] || return 0
        sleep 0.1
    done
    return 1
}

# wait_for FILE PATTERN SECONDS: until a line of FILE matches; status 1 if none
wait_for() {
    for _ in $(seq $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# as_pg CMD...: run CMD as user postgres when root, else as is
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pg_start DIR PORT [-c NAME=VALUE...]: a PostgreSQL in DIR on 127.0.0.1:PORT, database collab migrated; sets pg_dsn, pg_psql
pg_start() {
    local dir=$1 port=$2 migrate
    shift 2
    migrate=$(dirname "${BASH_SOURCE[0]}")/../sql/migrate
    mkdir -p "$dir" "$dir.sock"
    chmod 700 "$dir"
    touch "$dir.log"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir" "$dir.sock" "$dir.log"
    as_pg "$PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 --no-sync > "$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log" >&2; exit 1; }
    echo "pg $dir" >> "$bench_dir/.running"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -w -l "$dir.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir.sock $*" \
        start > /dev/null
    pg_psql=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port"
             -U postgres)
    "${pg_psql[@]}" -d postgres -c "CREATE DATABASE collab" > /dev/null
    pg_dsn="host=127.0.0.1 port=$port dbname=collab user=postgres"
    "$migrate" "$pg_dsn" > "$dir.migrate.log"
}

# pg_stop DIR: stop the PostgreSQL of DIR at once (its data is thrown away)
pg_stop() {
    bench_untrack pg "$1"
    as_pg "$PG_BIN/pg_ctl" -D "$1" -m immediate -w stop > /dev/null 2>&1 \
        || true
}

# redis_start PORT LOG: a redis-server on 127.0.0.1:PORT, no persistence, logging to LOG; sets redis_pid
redis_start() {
    redis-server --bind 127.0.0.1 --port "$1" --save '' --appendonly no \
        --daemonize no --dir "$(dirname "$2")" --logfile "$2" &
    redis_pid=$!
    bench_track "$redis_pid" TERM
    wait_port "$1" || {
        echo "$bench_name: redis did not listen on $1" >&2
        exit 1
    }
}

# nginx_conf_head DIR MODULE WORKERS NOFILE CONNECTIONS: nginx.conf up to inside "http {", all files in DIR
nginx_conf_head() {
    cat <<EOF
load_module $2;

worker_processes      $3;
worker_rlimit_nofile  $4;
error_log             $1/error.log warn;
pid                   $1/nginx.pid;
lock_file             $1/nginx.lock;

events {
    worker_connections  $5;
}

http {
    access_log  off;

    client_body_temp_path  $1/tmp/body;
    proxy_temp_path        $1/tmp/proxy;
    fastcgi_temp_path      $1/tmp/fastcgi;
    uwsgi_temp_path        $1/tmp/uwsgi;
    scgi_temp_path         $1/tmp/scgi;

EOF
}

# nginx_start DIR: $NGINX with DIR/nginx.conf, DIR as prefix; sets nginx_pid (the master)
nginx_start() {
    local dir=$1
    rm -f "$dir/nginx.pid"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    for _ in $(seq 100); do
        [ -s "$dir/nginx.pid" ] && break
        sleep 0.1
    done
    if [ ! -s "$dir/nginx.pid" ]; then
        echo "$bench_name: nginx did not start" >&2
        exit 1
    fi
    nginx_pid=$(cat "$dir/nginx.pid")
    bench_track "$nginx_pid" QUIT 10
}

# nginx_stop PID: graceful stop of the nginx master PID (and its workers)
nginx_stop() {
    stop_pid "$1" QUIT 10
}

# cpu_secs [-c] PID...: CPU seconds (user + system; with -c, of reaped children too) used so far
cpu_secs() {
    local p all=0
    [ "${1:-}" != -c ] || { all=1; shift; }
    for p in "$@"; do
        awk -v all="$all" '{ sub(/.*\) /, "");
                             print $12 + $13 + (all ? $14 + $15 : 0) }' \
            "/proc/$p/stat" 2>/dev/null || true
    done | awk -v hz="$(getconf CLK_TCK)" '{ t += $1 }
                                          END { printf "%.2f", t / hz }'
}

# rss_kb PID...: the sum of the processes' VmRSS, in KiB
rss_kb() {
    local pid sum=0 kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
        sum=$((sum + ${kb:-0}))
    done
    echo "$sum"
}
