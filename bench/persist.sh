#!/bin/bash
#
# bench/persist.sh: the persistence benchmark of issue 3.
#
# Starts its own PostgreSQL (initdb in a temp dir, run as user postgres
# when root, 127.0.0.1 on a free port, sql/migrate applied) and two nginx
# (the distro /usr/sbin/nginx loading build/ngx_collab_module.so, WORKERS
# workers, collab_postgres pool=POOL), identical but for the batch window:
#
#   A: collab_batch_window 2ms        B: collab_batch_window 0
#
# and measures, alternating A B A B (REPS rounds, each run DUR seconds
# after a half-second warm-up) so that drift of the machine hits all alike:
#
#   1. persisted messages/s, closed loop (bench/wsload --mode chat):
#      one session (ONE_CONNS senders x ONE_WINDOW sends in flight) and
#      MANY sessions (one sender each, MANY_WINDOW in flight);
#   2. the ceiling: pgbench on the same database, WORKERS x POOL clients
#      (the module's connection count), each transaction the module's
#      append_one statement (the UPDATE of last_seq and the INSERT in one
#      statement) into one session / into MANY sessions;
#   3. send->ack p50/p99/max at a fixed RATE msg/s (open loop) into MANY
#      sessions, for A and B.
#
# After every run the rows are checked: chat_messages holds exactly the
# acked count (pgbench: the transactions it counted), and each session
# has seqs 1..last_seq with no gap.  Prints the tables (markdown) at the
# end; the raw wsload/pgbench output of each run is in $KEEP/ if KEEP is
# set.  Everything started is stopped on exit, also on failure or ^C.
# Exit status 1 when a run failed or a check did not hold.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
WORKERS=${WORKERS:-2}
POOL=${POOL:-4}
DUR=${DUR:-4}
REPS=${REPS:-2}
SIZE=${SIZE:-100}
ONE_CONNS=${ONE_CONNS:-4}
ONE_WINDOW=${ONE_WINDOW:-256}
MANY=${MANY:-100}
MANY_WINDOW=${MANY_WINDOW:-32}
RATE=${RATE:-1000}
SCEN=${SCEN:-one many rate rate1}
WINDOW_A=${WINDOW_A:-2ms}
WINDOW_B=${WINDOW_B:-0}

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=persist.sh    # for its messages

bench_tmp persist
bench_module

make -s -C "$here" wsload
wsload=$here/wsload

# on failure, the ends of the logs
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    [ "$1" -eq 0 ] || bench_tail_logs 20 "$tmp"/nginx-*/error.log "$tmp/pg.log"
}

# --- PostgreSQL --------------------------------------------------------

# the defaults (fsync, synchronous_commit on: a message acked is durable),
# room for the clients, and no autovacuum run landing in one run only
pg_port=$(free_port)
pg_start "$tmp/pg" "$pg_port" -c max_connections=100 \
    -c shared_buffers=256MB -c autovacuum=off
dsn=$pg_dsn
sql() {
    "${pg_psql[@]}" -d collab -tAF ' ' -c "$1"
}

# --- nginx A and B -----------------------------------------------------

nginx_pids=()

start_nginx() {
    local name=$1 window=$2 port=$3 dir=$tmp/nginx-$1
    mkdir -p "$dir/tmp"
    {
        nginx_conf_head "$dir" "$MODULE" "$WORKERS" 8192 4096
        cat <<EOF
    collab_postgres      "$dsn" pool=$POOL;
    collab_batch_window  $window;

    server {
        listen  127.0.0.1:$port backlog=4096;

        location = /ws {
            collab_websocket;
            collab_user  \$arg_user;
        }
    }
}
EOF
    } > "$dir/nginx.conf"
    nginx_start "$dir"
    nginx_pids+=("$nginx_pid")
}

port_a=$(free_port)
start_nginx A "$WINDOW_A" "$port_a"
port_b=$(free_port)
start_nginx B "$WINDOW_B" "$port_b"
sleep 0.5

# --- runs ----------------------------------------------------------------

failed=0
declare -A results     # "<scenario> <system>" -> space-separated figures

mkdir -p "$tmp/out"

# the newest session id: a run's sessions are the ones above it
last_session() {
    sql "SELECT coalesce(max(id), 0) FROM chat_sessions"
}

# check the sessions above $1: each holds seqs 1..last_seq with no gap,
# and together exactly $2 messages
check_rows() {
    local since=$1 want=$2 what=$3 r
    # a transaction's rows share created_at (now() is its start time),
    # so the distinct (session, created_at) pairs count the commits
    r=$(sql "SELECT count(*), coalesce(sum(n), 0),
                    count(*) FILTER (WHERE n <> last_seq OR mx <> last_seq
                                     OR (n > 0 AND mn <> 1)),
                    coalesce(sum(tx), 0)
             FROM (SELECT s.id, s.last_seq, count(m.seq) AS n,
                          min(m.seq) AS mn, max(m.seq) AS mx,
                          count(DISTINCT m.created_at) AS tx
                   FROM chat_sessions s
                   LEFT JOIN chat_messages m ON m.session_id = s.id
                   WHERE s.id > $since
                   GROUP BY s.id, s.last_seq) x")
    set -- $r
    if [ "$2" != "$want" ] || [ "$3" != 0 ]; then
        echo "persist.sh: $what: CHECK FAILED: $1 sessions hold $2" \
             "messages (acked $want), $3 sessions with a seq gap" >&2
        echo "FAILED"
    else
        echo "ok $(awk -v n="$2" -v t="$4" \
                   'BEGIN { printf "%.1f", t ? n / t : 0 }')"
    fi
}

field() {       # field FILE "label" N-from-end
    awk -v k="$2" -v n="$3" 'index($0, k) == 1 { print $(NF - n); exit }' "$1"
}

# CPU seconds (user + sys, with reaped children) of the PostgreSQL
# processes and of the nginx workers
pg_cpu() {
    local pm
    pm=$(head -n 1 "$tmp/pg/postmaster.pid")
    cpu_secs -c "$pm" $(pgrep -P "$pm" || true)
}

nginx_cpu() {
    local m
    cpu_secs -c $(for m in "${nginx_pids[@]}"; do pgrep -P "$m" || true; done)
}

# microseconds of CPU per message: seconds $2 - $1, messages $3
us_per() {
    awk -v a="$1" -v b="$2" -v n="$3" \
        'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1e6 / n; else print "?" }'
}

run_id=0

# wsload run on nginx $1 (A|B); scenario $2; more wsload args after
ws_run() {
    local scen=$1 sys=$2 port since out acked rate p50 p99 max chk rc
    shift 2
    port=$port_a
    [ "$sys" = B ] && port=$port_b
    run_id=$((run_id + 1))
    out=$tmp/out/$run_id-$scen-$sys.out
    since=$(last_session)
    rc=0
    ng0=$(nginx_cpu)
    pg0=$(pg_cpu)
    "$wsload" --mode chat --url "ws://127.0.0.1:$port/ws" --size "$SIZE" \
        --duration "$DUR" "$@" > "$out" 2>&1 || rc=$?
    ng1=$(nginx_cpu)
    pg1=$(pg_cpu)
    acked=$(field "$out" "acked " 0)
    wcpu=$(field "$out" "wsload cpu" 5)
    chk=$(check_rows "$since" "${acked:-0}" "$scen $sys")
    [ "$chk" != FAILED ] || failed=1
    cpu_ng=$(us_per "$ng0" "$ng1" "${acked:-0}")
    cpu_pg=$(us_per "$pg0" "$pg1" "${acked:-0}")
    cpu_ws=$(us_per 0 "${wcpu:-0}" "${acked:-0}")
    per_tx=${chk#ok }
    rate=$(field "$out" "acks/s" 0)
    p50=$(field "$out" "latency p50" 1)
    p99=$(field "$out" "latency p99" 1)
    max=$(field "$out" "latency max" 1)
    if [ "$rc" -ne 0 ]; then
        echo "persist.sh: $scen $sys: wsload failed ($rc):" >&2
        sed 's/^/    /' "$out" >&2
        failed=1
    fi
    printf '  %-5s %-2s %6s msg/s  p50 %7s p99 %7s max %7s ms  rows %s' \
        "$scen" "$sys" "${rate:-?}" "${p50:-?}" "${p99:-?}" "${max:-?}" \
        "$( [ "$chk" = FAILED ] && echo FAILED || echo "ok, $per_tx/commit")"
    printf '  cpu us/msg nginx %s pg %s wsload %s%s\n' "$cpu_ng" "$cpu_pg" \
        "$cpu_ws" "$( [ "$rc" -eq 0 ] || echo ", wsload FAILED")"
    results["$scen $sys"]+="$rate/$p50/$p99/$max/$per_tx"
    results["$scen $sys"]+="/$cpu_ng/$cpu_pg/$cpu_ws "
}

# pgbench: the module's append_one per transaction; $2 sessions
user_id=$(sql "INSERT INTO users (external_id) VALUES ('pgbench')
               RETURNING id" | head -n 1)
body=$(printf 'abcdefghijklmnopqrstuvwxyz%.0s' $(seq $((SIZE / 26 + 1))) \
       | cut -c1-"$SIZE")

cat > "$tmp/append_one.sql" <<EOF
\set sid random(:lo, :hi)
\set cmid random(1, 9000000000000000000)
WITH dup AS (
    SELECT seq, created_at FROM chat_messages
    WHERE session_id = :sid AND user_id = $user_id
      AND client_msg_id = 'p' || CAST(:cmid AS text)
),
bump AS (
    UPDATE chat_sessions
    SET last_seq = last_seq + 1,
        last_activity = CASE WHEN last_activity < now() - interval '1 s'
                             THEN now() ELSE last_activity END
    WHERE id = :sid AND NOT EXISTS (SELECT 1 FROM dup)
    RETURNING last_seq
),
ins AS (
    INSERT INTO chat_messages (session_id, seq, user_id, kind, body,
                               client_msg_id, metadata)
    SELECT :sid, last_seq, $user_id, 'user', '$body',
           'p' || CAST(:cmid AS text), NULL
    FROM bump
    RETURNING seq, created_at
)
SELECT seq, created_at, true AS created FROM ins
UNION ALL
SELECT seq, created_at, false FROM dup;
EOF

pg_run() {
    local scen=$1 n=$2 since lo hi out tps done_tx lat chk rc clients
    run_id=$((run_id + 1))
    out=$tmp/out/$run_id-$scen-pgbench.out
    since=$(last_session)
    sql "INSERT INTO chat_sessions (title, owner_id, is_public)
         SELECT 'pgbench', $user_id, true FROM generate_series(1, $n)" \
         > /dev/null
    lo=$((since + 1))
    hi=$(last_session)
    clients=$((WORKERS * POOL))
    rc=0
    pg0=$(pg_cpu)
    as_pg "$PG_BIN/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres \
        -n -M prepared -c "$clients" -j "$WORKERS" -T "$DUR" \
        -D lo="$lo" -D hi="$hi" -f "$tmp/append_one.sql" collab \
        > "$out" 2>&1 || rc=$?
    tps=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$out")
    done_tx=$(awk -F': ' '/number of transactions actually processed/ \
                          { split($2, a, "/"); print a[1]; exit }' "$out")
    lat=$(awk '/^latency average = / { print $4; exit }' "$out")
    pg1=$(pg_cpu)
    chk=$(check_rows "$since" "${done_tx:-0}" "$scen pgbench")
    [ "$chk" != FAILED ] || failed=1
    cpu_pg=$(us_per "$pg0" "$pg1" "${done_tx:-0}")
    if [ "$rc" -ne 0 ]; then
        echo "persist.sh: $scen pgbench failed ($rc):" >&2
        sed 's/^/    /' "$out" >&2
        failed=1
    fi
    printf '  %-5s %-2s %6s msg/s  avg latency %s ms, %d clients, rows %s' \
        "$scen" "pg" "${tps:-?}" "${lat:-?}" "$clients" \
        "$( [ "$chk" = FAILED ] && echo FAILED || echo "ok")"
    printf '  cpu us/msg pg %s\n' "$cpu_pg"
    results["$scen pg"]+="$tps/-/-/-/1/-/$cpu_pg/- "
}

t_begin=$(date +%s)

echo "persist.sh: PostgreSQL $("$PG_BIN/postgres" -V | awk '{ print $3 }')" \
     "on 127.0.0.1:$pg_port, nginx A (window $WINDOW_A) :$port_a," \
     "B (window $WINDOW_B) :$port_b, $WORKERS workers, pool=$POOL," \
     "$DUR s per run, $REPS rounds"

for rep in $(seq "$REPS"); do
    echo "round $rep"
    if [[ " $SCEN " == *" one "* ]]; then
        for sys in A B; do
            ws_run one "$sys" --conns "$ONE_CONNS" --sessions 1 \
                --window "$ONE_WINDOW"
        done
        pg_run one 1
    fi
    if [[ " $SCEN " == *" many "* ]]; then
        for sys in A B; do
            ws_run many "$sys" --conns "$MANY" --sessions "$MANY" \
                --window "$MANY_WINDOW"
        done
        pg_run many "$MANY"
    fi
    if [[ " $SCEN " == *" rate "* ]]; then
        for sys in A B; do
            ws_run rate "$sys" --conns "$MANY" --sessions "$MANY" \
                --rate "$RATE"
        done
    fi
    if [[ " $SCEN " == *" rate1 "* ]]; then
        for sys in A B; do
            ws_run rate1 "$sys" --conns "$ONE_CONNS" --sessions 1 \
                --rate "$RATE"
        done
    fi
done

t_end=$(date +%s)

# --- tables ----------------------------------------------------------------

# median of the runs' field $2 (1 rate, 2 p50, 3 p99, 4 max) of key $1
med() {
    echo "${results[$1]-}" | tr ' ' '\n' | awk -F/ -v f="$2" \
        'NF && $f != "" { print $f }' | sort -g | awk '
        { v[++n] = $1 }
        END { if (n == 0) print "?";
              else if (n % 2) print v[(n + 1) / 2];
              else printf "%g\n", (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

runs() {
    echo "${results[$1]-}" | tr ' ' '\n' | awk -F/ -v f="$2" \
        'NF { printf "%s%s", sep, $f; sep = ", " }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (b + 0 > 0) printf "%.2f", a / b; else print "?" }'
}

echo
echo "### Persisted messages/s (closed loop, median of $REPS runs of ${DUR} s)"
echo
echo "| scenario | A: window $WINDOW_A | B: window $WINDOW_B |" \
     "pgbench ceiling |" \
     "A / pgbench | B / pgbench | A / B |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for scen in one many; do
    a=$(med "$scen A" 1); b=$(med "$scen B" 1); p=$(med "$scen pg" 1)
    if [ "$scen" = one ]; then
        label="1 session, $ONE_CONNS senders x $ONE_WINDOW in flight"
    else
        label="$MANY sessions, 1 sender each x $MANY_WINDOW in flight"
    fi
    echo "| $label | $a | $b | $p | $(ratio "$a" "$p") |" \
         "$(ratio "$b" "$p") | $(ratio "$a" "$b") |"
done
echo
echo "Each run: one A ($(runs "one A" 1); $(runs "many A" 1))," \
     "B ($(runs "one B" 1); $(runs "many B" 1)), pgbench" \
     "($(runs "one pg" 1); $(runs "many pg" 1))."
echo
echo "### Send->ack latency at $RATE msg/s (open loop, ms, median of" \
     "$REPS runs)"
echo
echo "| sessions | configuration | p50 | p99 | max | acks/s | p99 of each run |"
echo "|---|---|---:|---:|---:|---:|---|"
for scen in rate rate1; do
    if [ "$scen" = rate ]; then
        label="$MANY sessions, 1 sender each"
    else
        label="1 session, $ONE_CONNS senders"
    fi
    for sys in A B; do
        w=$WINDOW_A
        [ "$sys" = B ] && w=$WINDOW_B
        echo "| $label | $sys: window $w | $(med "$scen $sys" 2) |" \
             "$(med "$scen $sys" 3) | $(med "$scen $sys" 4) |" \
             "$(med "$scen $sys" 1) | $(runs "$scen $sys" 3) |"
    done
done
echo
echo "### Rows per commit and CPU per persisted message (us, median)"
echo
echo "| run | rows/commit | nginx | postgres | wsload |"
echo "|---|---:|---:|---:|---:|"
for key in "one A" "one B" "one pg" "many A" "many B" "many pg" \
           "rate A" "rate B" "rate1 A" "rate1 B"; do
    [ -n "${results[$key]-}" ] || continue
    echo "| $key | $(med "$key" 5) | $(med "$key" 6) | $(med "$key" 7) |" \
         "$(med "$key" 8) |"
done
echo
echo "Row checks: $([ "$failed" -eq 0 ] && echo "all passed" || echo FAILED)" \
     "(chat_messages = acked count, seqs 1..N per session, no gap)." \
     "Total time $((t_end - t_begin)) s."

bench_keep "$tmp"/out/*

if grep -q -E '\[(alert|crit|emerg)\]|Sanitizer' "$tmp"/nginx-*/error.log; then
    echo "persist.sh: nginx logged alerts:" >&2
    grep -h -E '\[(alert|crit|emerg)\]|Sanitizer' "$tmp"/nginx-*/error.log \
        | head >&2
    failed=1
fi

exit "$failed"
