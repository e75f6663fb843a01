#!/bin/bash
#
# bench/ai.sh: the AI participant benchmark of issue 9.
#
# Does a reply being streamed cost the chat anything?  STREAMS (50)
# replies are streamed at once from a mock provider while CONNS (1,000)
# connections chat in SESSIONS (100) other sessions at RATE msg/s in
# total (open loop, bench/wsload --mode chat); the chat's send->ack
# p50/p99/max is measured without AI streams (phase A) and with them
# (phase B), alternating A B A B (REPS rounds) on the same nginx so that
# drift of the machine hits both alike.  Target: the streams add at most
# 1 ms to the chat p99.
#
# Started here, all on 127.0.0.1 and stopped on exit (also on failure or
# ^C): a PostgreSQL of its own (initdb in a temp dir, run as user
# postgres when root, sql/migrate applied); the mock provider
# bench/aimock (C, one epoll loop: each reply CHUNKS content deltas
# INTERVAL ms apart, 40 x 50 ms = 2 s by default, any number at once);
# one nginx (the distro /usr/sbin/nginx loading
# build/ngx_collab_module.so, WORKERS workers, "listen ... reuseport" so
# the connections spread over them, collab_redis to a Redis of its own
# unless REDIS=0) with collab_ai_* pointing at the mock,
# collab_ai_concurrency 64 per worker and collab_rate_ai out of the way.
#
# In phase B bench/aidrive (C) holds STREAMS connections, each in a session
# of its own, and asks "@ai ..." again as soon as the previous reply's
# final message arrives: about STREAMS replies are in flight all the
# time.  The first questions are spread over SPREAD s (by default one
# reply's length: CHUNKS x INTERVAL), so that replies start and end at
# different times as independent users' would; SPREAD=0 asks all at once
# and the replies then come in waves, every one starting (context read,
# request) and ending (stored) together.  The chat starts RAMP s after
# the last first question went out, and the driver's counters are read
# when the chat run starts and ends: the ai_delta events and final ai
# messages it received meanwhile, ai_error events (any is a failure) and
# the replies in flight (sampled every 50 ms: average and minimum).
# After phase B the next phase A waits COOL s for the replies the driver
# left to end.  The CPU time nginx's workers, PostgreSQL's backends, the
# mock and the driver, and wsload used during each chat run is printed
# too (from /proc).
#
# The mock and the driver stand for machines elsewhere (the provider, 50
# remote clients) but share this one's cores with nginx, PostgreSQL and
# wsload; so they are in C (together about 0.3 CPU s per 10 s run; the
# Perl versions used 5 CPU s per 20 s run, more than nginx's own extra
# cost) and run at "nice AI_NICE" (19) so that their own CPU time delays
# nginx as little as it can.  AI_NICE=0 measures them at the same
# priority as the rest.
#
# Prints one line per run, then a markdown table: p50/p99/max per phase
# and round, the medians and the p99 difference.  Exit status 1 when a
# run failed (wsload's checks: errors, missing acks, seq gaps), the AI
# streams did not run (no completed reply, any ai_error), or error.log
# has an [alert]/[crit]/[emerg] line.
#
# Environment: CONNS (1000), SESSIONS (100), RATE (500 msg/s), DUR (20 s),
# STREAMS (50), CHUNKS (40), INTERVAL (50 ms), REPS (2), WORKERS (2),
# RAMP (3 s), COOL (3 s), REDIS (1), AI_NICE (19), SPREAD (CHUNKS x
# INTERVAL), MODULE, NGINX, PG_BIN, KEEP=dir (keep the logs there).
# About 100 s with the defaults.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
CONNS=${CONNS:-1000}
SESSIONS=${SESSIONS:-100}
RATE=${RATE:-500}
DUR=${DUR:-20}
STREAMS=${STREAMS:-50}
CHUNKS=${CHUNKS:-40}
INTERVAL=${INTERVAL:-50}
REPS=${REPS:-2}
WORKERS=${WORKERS:-2}
RAMP=${RAMP:-3}
COOL=${COOL:-3}
REDIS=${REDIS:-1}
AI_NICE=${AI_NICE:-19}
SPREAD=${SPREAD:-$(awk -v c="$CHUNKS" -v i="$INTERVAL" \
                       'BEGIN { print c * i / 1000 }')}

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=ai.sh    # for its messages

bench_tmp ai
bench_module

make -s -C "$here" wsload aimock aidrive
wsload=$here/wsload

mock_pid=
drive_pid=

# KEEP gets the logs; on failure, the ends of them
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    bench_keep "$tmp"/nginx "$tmp"/run-* "$tmp"/*.log
    [ "$1" -eq 0 ] || bench_tail_logs 20 "$tmp/nginx/error.log" \
        "$tmp/pg.log" "$tmp/mock.log"
}

# --- PostgreSQL --------------------------------------------------------

pg_start "$tmp/pg" "$(free_port)" -c max_connections=100 \
    -c shared_buffers=256MB -c autovacuum=off
dsn=$pg_dsn

# the relay between the workers (ai_delta events go through it too), as
# the README asks for with more than one worker
redis_line=
if [ "$REDIS" = 1 ]; then
    redis_port=$(free_port)
    redis_start "$redis_port" "$tmp/redis.log"
    redis_line="collab_redis     127.0.0.1:$redis_port;"
fi

# --- the mock provider ---------------------------------------------------

mock_port=$(free_port)
nice -n "$AI_NICE" "$here/aimock" "$mock_port" "$CHUNKS" "$INTERVAL" \
    > "$tmp/mock.log" 2>&1 &
mock_pid=$!
bench_track "$mock_pid"
wait_for "$tmp/mock.log" '^listening' 20 \
    || { echo "ai.sh: the mock provider did not start" >&2; exit 1; }

# --- nginx -------------------------------------------------------------

port=$(free_port)
dir=$tmp/nginx
mkdir -p "$dir/tmp"
echo "sk-bench-not-a-key" > "$dir/ai.key"

{
    nginx_conf_head "$dir" "$MODULE" "$WORKERS" 8192 4096
    cat <<CONF
    collab_postgres  "$dsn" pool=4;
    collab_zone      bench 64m;
    $redis_line

    collab_ai_endpoint     http://127.0.0.1:$mock_port/v1;
    collab_ai_key_file     $dir/ai.key;
    collab_ai_model        bench/mock;
    collab_ai_timeout      120s;
    collab_ai_concurrency  64;
    collab_ai_trigger      mention;
    collab_rate_ai         6000r/m burst=1000;

    server {
        listen  127.0.0.1:$port backlog=4096 reuseport;

        location = /ws {
            collab_websocket;
            collab_user  \$arg_user;
            collab_send_queue_size  4m;
        }
    }
}
CONF
} > "$dir/nginx.conf"

nginx_start "$dir"
sleep 0.5

url=ws://127.0.0.1:$port/ws

# --- the runs ------------------------------------------------------------

# mark_of FILE N: the Nth "mark" line of the driver's output
mark_of() {
    awk -v n="$2" '$1 == "mark" && ++i == n' "$1"
}

# field LINE KEY: the value after KEY in a "key value ..." line
field() {
    awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' \
        <<< "$1"
}

# the nginx workers and the PostgreSQL backends (children of the master
# and the postmaster, listed anew: workers and backends are started late)
nginx_procs() { pgrep -P "$nginx_pid" | tr '\n' ' '; }
pg_procs() { pgrep -P "$(head -n 1 "$tmp/pg/postmaster.pid")" | tr '\n' ' '; }

# cpu_diff A B: B - A
cpu_diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

declare -A res
failed=0

# run PHASE ROUND
run() {
    local phase=$1 round=$2 rdir=$tmp/run-$1-$2 rc=0 m1 m2 k
    mkdir -p "$rdir"

    if [ "$phase" = B ]; then
        nice -n "$AI_NICE" "$here/aidrive" "$url" "$STREAMS" "$SPREAD" \
            > "$rdir/drive.out" 2> "$rdir/drive.err" &
        drive_pid=$!
        bench_track "$drive_pid"
        if ! wait_for "$rdir/drive.out" '^streaming' 60; then
            echo "ai.sh: the AI driver did not start:" >&2
            cat "$rdir/drive.err" >&2
            exit 1
        fi
        sleep "$RAMP"
        kill -USR1 "$drive_pid"
    fi

    local np pp ai ng0 pg0 ai0
    np=$(nginx_procs) pp=$(pg_procs) ai="$mock_pid ${drive_pid:-}"
    # shellcheck disable=SC2086
    ng0=$(cpu_secs $np) pg0=$(cpu_secs $pp) ai0=$(cpu_secs $ai)

    # in the background: "wait" lets a signal's trap run at once
    "$wsload" --mode chat --url "$url" --conns "$CONNS" \
        --sessions "$SESSIONS" --rate "$RATE" --duration "$DUR" \
        > "$rdir/wsload.out" 2>&1 &
    wsload_pid=$!
    bench_track "$wsload_pid"
    wait "$wsload_pid" || rc=$?
    bench_untrack pid "$wsload_pid"

    # shellcheck disable=SC2086
    res[$phase,$round,cpu]="$(cpu_diff "$ng0" "$(cpu_secs $np)") / $(cpu_diff \
        "$pg0" "$(cpu_secs $pp)") / $(cpu_diff "$ai0" "$(cpu_secs $ai)") / $(awk \
        '$1 == "wsload" && $2 == "cpu" { printf "%.1f", $3 }' \
        "$rdir/wsload.out")"

    if [ "$phase" = B ]; then
        kill -USR1 "$drive_pid"
        sleep 0.3
        if ! kill -0 "$drive_pid" 2>/dev/null; then
            echo "ai.sh: the AI driver died:" >&2
            cat "$rdir/drive.err" >&2
            failed=1
        fi
        stop_pid "$drive_pid"
        drive_pid=
        m1=$(mark_of "$rdir/drive.out" 1)
        m2=$(mark_of "$rdir/drive.out" 2)
        if [ -z "$m1" ] || [ -z "$m2" ]; then
            echo "ai.sh: no counters from the AI driver" >&2
            failed=1
            m1="mark 0" m2="mark 0"
        fi
        for k in deltas replies errors questions samples inflight_sum; do
            res[B,$round,$k]=$(( $(field "$m2" $k || echo 0) \
                                 - $(field "$m1" $k || echo 0) ))
        done
        res[B,$round,secs]=$(awk -v a="$(field "$m1" mark)" \
            -v b="$(field "$m2" mark)" 'BEGIN { printf "%.1f", b - a }')
        res[B,$round,inflight_min]=$(field "$m2" inflight_min)
        res[B,$round,inflight_avg]=$(awk \
            -v s="${res[B,$round,inflight_sum]}" \
            -v n="${res[B,$round,samples]}" \
            'BEGIN { printf "%.1f", n ? s / n : 0 }')
        if [ "${res[B,$round,replies]}" -eq 0 ] \
           || [ "${res[B,$round,errors]}" -ne 0 ]
        then
            echo "ai.sh: B round $round: ${res[B,$round,replies]} replies," \
                 "${res[B,$round,errors]} ai_errors:" >&2
            sort "$rdir/drive.err" | uniq -c | head >&2
            failed=1
        fi
    fi

    for k in p50 p99 max; do
        res[$phase,$round,$k]=$(awk -v k="$k" \
            '$1 == "latency" && $2 == k { print $3 }' "$rdir/wsload.out")
        res[$phase,$round,$k]=${res[$phase,$round,$k]:-?}
    done
    res[$phase,$round,acks]=$(awk '$1 == "acks/s" { print $2 }' \
                                  "$rdir/wsload.out")

    if [ "$rc" -ne 0 ]; then
        echo "ai.sh: phase $phase round $round: wsload failed ($rc):" >&2
        cat "$rdir/wsload.out" >&2
        failed=1
    fi

    printf '%s round %s: chat p50 %s p99 %s max %s ms, %s acks/s,' \
        "$phase" "$round" "${res[$phase,$round,p50]}" \
        "${res[$phase,$round,p99]}" "${res[$phase,$round,max]}" \
        "${res[$phase,$round,acks]:-?}"
    printf ' CPU s nginx / postgres / mock+driver / wsload %s' \
        "${res[$phase,$round,cpu]}"
    if [ "$phase" = B ]; then
        printf '; AI in %s s: %s ai_delta, %s replies, %s ai_errors,' \
            "${res[B,$round,secs]}" "${res[B,$round,deltas]}" \
            "${res[B,$round,replies]}" "${res[B,$round,errors]}"
        printf ' in flight avg %s min %s' "${res[B,$round,inflight_avg]}" \
            "${res[B,$round,inflight_min]}"
    fi
    printf '\n'
}

t_start=$SECONDS
for round in $(seq "$REPS"); do
    [ "$round" -eq 1 ] || sleep "$COOL"
    run A "$round"
    run B "$round"
done

if grep -E '\[(alert|crit|emerg)\]' "$dir/error.log" >&2; then
    failed=1
fi

# --- the table -------------------------------------------------------------

median() {
    tr ' ' '\n' | grep -v '^?*$' | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR == 0) print "?";
               else if (NR % 2) print v[(NR + 1) / 2];
               else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2;
                      if (m == int(m)) print m; else printf "%.3f\n", m } }'
}

declare -A med
for phase in A B; do
    for k in p50 p99 max; do
        med[$phase,$k]=$(for r in $(seq "$REPS"); do
                             echo "${res[$phase,$r,$k]}"
                         done | median)
    done
done
for k in deltas replies; do
    med[B,$k]=$(for r in $(seq "$REPS"); do echo "${res[B,$r,$k]}"; done |
                median | awk '{ printf "%.0f", $1 }')
done

echo
echo "$CONNS chat connections in $SESSIONS sessions, $RATE msg/s in total" \
     "(open loop, ${DUR}s per run), send->ack latency in ms; phase B adds" \
     "$STREAMS AI replies streamed at once ($CHUNKS chunks ${INTERVAL} ms" \
     "apart from the mock); nginx $("$NGINX" -v 2>&1 | sed 's/.*\///')," \
     "$WORKERS workers, $(nproc) cores; $REPS rounds A B alternating," \
     "$((SECONDS - t_start)) s"
echo
echo "| round | p50 A | p50 B | p99 A | p99 B | p99 B - A | max A | max B |" \
     "ai_delta (B) | AI replies (B) | replies in flight avg / min (B) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" \
     "---: |"
for r in $(seq "$REPS") median; do
    if [ "$r" = median ]; then
        a50=${med[A,p50]} b50=${med[B,p50]} a99=${med[A,p99]}
        b99=${med[B,p99]} amax=${med[A,max]} bmax=${med[B,max]}
        del=${med[B,deltas]} rep=${med[B,replies]} fl="—"
    else
        a50=${res[A,$r,p50]} b50=${res[B,$r,p50]} a99=${res[A,$r,p99]}
        b99=${res[B,$r,p99]} amax=${res[A,$r,max]} bmax=${res[B,$r,max]}
        del=${res[B,$r,deltas]} rep=${res[B,$r,replies]}
        fl="${res[B,$r,inflight_avg]} / ${res[B,$r,inflight_min]}"
    fi
    d=$(awk -v a="$a99" -v b="$b99" 'BEGIN { if (a == "?" || b == "?")
            print "?"; else printf "%+.3f", b - a }')
    echo "| $r | $a50 | $b50 | $a99 | $b99 | $d | $amax | $bmax | $del |" \
         "$rep | $fl |"
done

echo
echo "CPU seconds used during each chat run (of $(nproc) cores x the run's" \
     "wall time, the setup of the $CONNS connections included):"
echo
echo "| round | phase | nginx workers | postgres | mock + AI driver | wsload |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for r in $(seq "$REPS"); do
    for phase in A B; do
        echo "| $r | $phase | ${res[$phase,$r,cpu]// \/ / | } |"
    done
done

d=$(awk -v a="${med[A,p99]}" -v b="${med[B,p99]}" 'BEGIN {
        if (a == "?" || b == "?") print "?"; else printf "%.3f", b - a }')
verdict=$(awk -v d="$d" 'BEGIN { if (d != "?" && d <= 1) print "met";
                                  else print "NOT met" }')
echo
echo "target: AI streams add <= 1 ms to the chat p99; difference of the" \
     "medians $d ms: $verdict"

[ "$failed" -eq 0 ]
