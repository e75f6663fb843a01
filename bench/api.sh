#!/bin/bash
#
# bench/api.sh: the HTTP JSON API benchmark of issue 6.
#
# Starts its own PostgreSQL (initdb in a temp dir, run as user postgres
# when root, 127.0.0.1 on a free port, sql/migrate applied) and one nginx
# (the distro /usr/sbin/nginx loading build/ngx_collab_module.so, WORKERS
# workers, collab_postgres pool=POOL, collab_rate_messages raised so that
# the benchmark is not rate limited), seeds a session with SEED messages of
# SIZE bytes through the API, and measures with wrk (THREADS threads, CONNS
# connections, DUR seconds after a one-second warm-up, REPS rounds taking
# the best):
#
#   1. GET  /collab/api/sessions/{id}/messages?limit=50   (LIMIT messages)
#   2. the ceiling of 1: the same nginx serving a static file holding the
#      exact bytes of that GET's response (sendfile off, open_file_cache)
#   3. POST /collab/api/sessions/{id}/messages, every request a new
#      clientMsgId (bench/api.sh writes the wrk Lua script), SIZE bytes
#   4. the ceiling of 3: a static file the size of the POST's answer (an
#      ack) served to a GET
#
# and prints requests/s, the ratio to the ceiling and wrk's latency
# percentiles as a markdown table.  Checks: every wrk run answered only
# 2xx (wrk's "Non-2xx" line absent), and after the POST runs the session
# holds the seeded messages plus at least every POST wrk counted, with
# seqs 1..last_seq and no gap.  Everything started is stopped on exit,
# also on failure or ^C; exit status 1 when a run or a check failed.
#
# Environment: WORKERS (2) POOL (4) THREADS (2) CONNS (64) DUR (5) REPS (1)
# SEED (60) LIMIT (50) SIZE (100) MODULE NGINX PG_BIN KEEP (a directory
# that receives the raw wrk outputs).

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
WORKERS=${WORKERS:-2}
POOL=${POOL:-4}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
DUR=${DUR:-5}
REPS=${REPS:-1}
SEED=${SEED:-60}
LIMIT=${LIMIT:-50}
SIZE=${SIZE:-100}
KEEP=${KEEP:-}

for tool in wrk curl jq psql; do
    command -v "$tool" > /dev/null \
        || { echo "api.sh: $tool is missing" >&2; exit 2; }
done

if [ "$SEED" -lt "$LIMIT" ]; then
    echo "api.sh: SEED ($SEED) must be at least LIMIT ($LIMIT)" >&2
    exit 2
fi

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=api.sh    # for its messages

bench_tmp api
bench_module

# on failure, the ends of the logs
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    [ "$1" -eq 0 ] || bench_tail_logs 20 "$tmp/nginx/error.log" "$tmp/pg.log"
}

# --- PostgreSQL --------------------------------------------------------

# the defaults (fsync, synchronous_commit on: an acked message is durable)
pg_start "$tmp/pg" "$(free_port)" -c max_connections=100 \
    -c shared_buffers=256MB -c autovacuum=off
dsn=$pg_dsn
sql() {
    "${pg_psql[@]}" -d collab -tAF ' ' -c "$1"
}

# --- nginx ---------------------------------------------------------------

port=$(free_port)
dir=$tmp/nginx
mkdir -p "$dir/tmp" "$dir/html"

{
    nginx_conf_head "$dir" "$MODULE" "$WORKERS" 8192 4096
    cat <<EOF
    keepalive_requests  1000000;
    collab_postgres       "$dsn" pool=$POOL;
    collab_zone           collab 16m;
    collab_rate_messages  1000000r/s burst=1000000;

    server {
        listen  127.0.0.1:$port backlog=4096;

        location /collab/api/ {
            collab_api;
            collab_user       \$http_x_user_id;
            collab_user_name  \$http_x_user_name;
        }

        # the ceilings: files of the size of the API's answers
        location /static/ {
            root             $dir/html;
            default_type     application/json;
            open_file_cache  max=16;
        }
    }
}
EOF
} > "$dir/nginx.conf"

nginx_start "$dir"

api=http://127.0.0.1:$port/collab/api
for _ in $(seq 100); do
    curl -fs -o /dev/null -H 'X-User-Id: bench' "$api/sessions" && break
    sleep 0.1
done

# --- seed ------------------------------------------------------------------

curl_api() {
    curl -fsS -H 'X-User-Id: bench' -H 'X-User-Name: Bench' "$@"
}

slug=$(curl_api -H 'Content-Type: application/json' \
           -d '{"title":"api benchmark"}' "$api/sessions" | jq -r .session.id)

body=$(head -c "$SIZE" /dev/zero | tr '\0' 'x')
for i in $(seq "$SEED"); do
    curl_api -o /dev/null -H 'Content-Type: application/json' \
        -d "{\"body\":\"$body\",\"clientMsgId\":\"seed-$i\"}" \
        "$api/sessions/$slug/messages"
done

get_path="/collab/api/sessions/$slug/messages?limit=$LIMIT"
curl_api -o "$dir/html/static/get.json" --create-dirs \
    "http://127.0.0.1:$port$get_path"
got=$(jq '.messages | length' "$dir/html/static/get.json")
if [ "$got" -ne "$LIMIT" ]; then
    echo "api.sh: the GET returned $got messages, not $LIMIT" >&2
    exit 1
fi
get_size=$(stat -c %s "$dir/html/static/get.json")

curl_api -o "$tmp/ack.json" -H 'Content-Type: application/json' \
    -d "{\"body\":\"$body\",\"clientMsgId\":\"seed-size\"}" \
    "$api/sessions/$slug/messages"
ack_size=$(stat -c %s "$tmp/ack.json")
head -c "$ack_size" /dev/zero | tr '\0' 'a' > "$dir/html/static/ack.json"
chmod -R a+rX "$dir/html"           # the workers' user reads them

# --- wrk -------------------------------------------------------------------

# unique clientMsgIds: the thread's number, the run's start and a counter
cat > "$tmp/post.lua" <<EOF
local n = 0
local threads = 0
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))

function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-User-Id"] = "bench"
wrk.headers["X-User-Name"] = "Bench"

local body = string.rep("x", $SIZE)

function request()
    n = n + 1
    local cmid = run .. "-" .. tostring(tid) .. "-" .. tostring(n)
    return wrk.format(nil, nil, nil,
                      '{"body":"' .. body .. '","clientMsgId":"' .. cmid
                      .. '"}')
end
EOF

# run_wrk NAME URL [wrk args...]: best requests/s of REPS runs, after a
# one-second warm-up; sets rps, p50, p99; fails on any non-2xx answer
run_wrk() {
    local name=$1 url=$2 rep out r best=0
    shift 2
    wrk -t "$THREADS" -c "$CONNS" -d 1s "$@" "$url" > /dev/null
    for rep in $(seq "$REPS"); do
        out=$tmp/wrk-$name-$rep.txt
        wrk -t "$THREADS" -c "$CONNS" -d "${DUR}s" --latency "$@" "$url" \
            > "$out"
        bench_keep "$out"
        if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then
            echo "api.sh: $name: errors" >&2
            cat "$out" >&2
            exit 1
        fi
        r=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
        total=$(awk '/requests in/ { print $1 }' "$out")
        posted=$((posted + total))
        if [ "$r" -gt "$best" ]; then
            best=$r
            p50=$(awk '$1 == "50%" { print $2 }' "$out")
            p99=$(awk '$1 == "99%" { print $2 }' "$out")
        fi
    done
    rps=$best
}

base=http://127.0.0.1:$port
hdr=(-H 'X-User-Id: bench')
posted=0

run_wrk get "$base$get_path" "${hdr[@]}"
get_rps=$rps get_p50=$p50 get_p99=$p99
run_wrk static-get "$base/static/get.json"
sget_rps=$rps sget_p50=$p50 sget_p99=$p99

before=$(sql "SELECT last_seq FROM chat_sessions WHERE slug = '$slug'")
posted=0
run_wrk post "$base/collab/api/sessions/$slug/messages" -s "$tmp/post.lua"
post_rps=$rps post_p50=$p50 post_p99=$p99
post_total=$posted
# the warm-up's posts are stored too: counted by the check below
run_wrk static-ack "$base/static/ack.json"
sack_rps=$rps sack_p50=$p50 sack_p99=$p99

# --- checks ------------------------------------------------------------------

read -r last count min max <<< "$(sql "SELECT s.last_seq, count(m.seq),
    min(m.seq), max(m.seq) FROM chat_sessions s JOIN chat_messages m
    ON m.session_id = s.id WHERE s.slug = '$slug' GROUP BY s.last_seq")"
if [ "$count" -ne "$last" ] || [ "$min" -ne 1 ] || [ "$max" -ne "$last" ]
then
    echo "api.sh: seqs are not 1..$last: $count rows, $min..$max" >&2
    exit 1
fi
if [ $((last - before)) -lt "$post_total" ]; then
    echo "api.sh: $post_total POSTs counted by wrk, $((last - before))" \
         "messages stored" >&2
    exit 1
fi
if grep -E '\[(alert|crit|emerg)\]' "$dir/error.log" >&2; then
    echo "api.sh: alerts in error.log" >&2
    exit 1
fi

# --- the table ---------------------------------------------------------------

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'
}

cat <<EOF

HTTP JSON API, nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), $WORKERS workers,\
 pool=$POOL, $(nproc) cores shared with wrk and PostgreSQL;
wrk -t$THREADS -c$CONNS -d${DUR}s (best of $REPS); bodies of $SIZE bytes.

| request | response bytes | requests/s | p50 | p99 | ceiling (static file) requests/s | ratio |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| \`GET .../messages?limit=$LIMIT\` | $get_size | $get_rps | $get_p50 | $get_p99 | $sget_rps ($sget_p50 / $sget_p99) | $(ratio "$get_rps" "$sget_rps") |
| \`POST .../messages\` | $ack_size | $post_rps | $post_p50 | $post_p99 | $sack_rps ($sack_p50 / $sack_p99) | $(ratio "$post_rps" "$sack_rps") |

$((last - before)) messages stored by the POST runs (wrk counted $post_total),
seqs 1..$last with no gap.
EOF
