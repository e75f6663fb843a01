#!/bin/bash
#
# bench/relay.sh: the fan-out benchmark of issue 5.
#
# 1 session x CONNS connections (default 1000), one sender among them
# sending RATE messages/s (open loop) for DUR seconds after a warm-up;
# every connection, the sender's included, receives every message.
# Measured by a small C client (embedded below, built with cc into the
# temp dir): fan-out deliveries/s (message events received by all
# connections, per second of the run) and the send->receipt latency
# p50/p99/max over every delivery (each body carries its send time,
# CLOCK_MONOTONIC; the scheduled send time, so a late sender counts).
#
# Two configurations on one PostgreSQL, run alternately REPS times:
#
#   single: worker_processes 1, no collab_redis
#   relay:  worker_processes 2, collab_redis (a Redis it starts), and
#           "listen ... reuseport" so the kernel spreads the connections
#           over both workers; about half of them get each message
#           through Redis
#
# Checks after each run: every connection got every message sent in the
# run exactly once (deliveries = sent x CONNS, no duplicate, seqs
# increasing per connection); exit status 1 otherwise.  Prints a
# markdown table.  Everything started is stopped on exit.
#
# Environment: CONNS (1000), RATE (200 msg/s), DUR (10 s), WARMUP (1 s),
# REPS (2), MODULE, NGINX, PG_BIN, KEEP=dir (keep logs there).

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

MODULE=${MODULE:-$root/build/ngx_collab_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
CONNS=${CONNS:-1000}
RATE=${RATE:-200}
DUR=${DUR:-10}
WARMUP=${WARMUP:-1}
REPS=${REPS:-2}

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_name=relay.sh    # for its messages

bench_tmp relay
bench_module

# KEEP gets the runs' logs; on failure, the ends of them
# shellcheck disable=SC2317  # called by bench_cleanup
bench_on_exit() {
    bench_keep "$tmp"/run-*
    [ "$1" -eq 0 ] || bench_tail_logs 20 "$tmp"/run-*/error.log "$tmp/pg.log"
}

# --- the client ----------------------------------------------------------

cat > "$tmp/relayc.c" <<'EOF'
/*
 * relayc: CONNS collab.v1 connections join one session; connection 0
 * sends RATE messages/s for DUR s after WARMUP s; every connection
 * records each message event's send->receipt latency.
 *
 *   relayc PORT CONNS RATE DUR WARMUP
 *
 * Prints "key value" lines.  Exit 1 on any connection failure or a
 * delivery check that does not hold.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF    (1 << 17)
#define NB      200000          /* 10 us buckets: up to 2 s */

typedef struct {
    int        fd;
    int        state;           /* 0 connecting, 1 handshake, 2 open,
                                   3 join sent, 4 joined */
    size_t     rlen;
    char      *rbuf;
    long       got;             /* message events in the measured run */
    long       last_seq;
    long       bad_order;
} conn_t;

static conn_t    *conns;
static int        nconns, ep, port;
static char       slug[128];
static uint64_t   hist[NB + 1];
static uint64_t   lat_max;
static uint64_t   run_start, run_end;
static long       sent_run, acks, errors;
static char       first_reply[512];

static uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void
die(const char *what)
{
    perror(what);
    exit(1);
}

static void
send_all(conn_t *c, const char *buf, size_t len)
{
    ssize_t  n;

    while (len) {
        n = write(c->fd, buf, len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;       /* small frames: spin, rarely happens */
            }
            die("write");
        }
        buf += n;
        len -= n;
    }
}

/* a masked text frame (mask key 0: the payload goes as it is) */
static void
send_text(conn_t *c, const char *text)
{
    char    frame[1024];
    size_t  len = strlen(text), h;

    frame[0] = (char) 0x81;
    if (len < 126) {
        frame[1] = (char) (0x80 | len);
        h = 2;
    } else {
        frame[1] = (char) (0x80 | 126);
        frame[2] = (char) (len >> 8);
        frame[3] = (char) (len & 0xff);
        h = 4;
    }
    memset(frame + h, 0, 4);
    memcpy(frame + h + 4, text, len);
    send_all(c, frame, h + 4 + len);
}

static void
open_conn(int i)
{
    struct sockaddr_in  sa;
    struct epoll_event  ev;
    conn_t             *c = &conns[i];
    int                 one = 1;
    char                req[512];

    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        die("socket");
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
        die("connect");
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    snprintf(req, sizeof(req),
             "GET /ws?user=r%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: collab.v1\r\n\r\n", i);
    send_all(c, req, strlen(req));
    c->state = 1;
    c->rbuf = malloc(RBUF);
    if (c->rbuf == NULL) {
        die("malloc");
    }
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

static long
json_int(const char *p, const char *key)
{
    const char  *q = strstr(p, key);

    return q ? strtol(q + strlen(key), NULL, 10) : -1;
}

static void
on_text(conn_t *c, char *p, size_t len, uint64_t now)
{
    char      *q, *e;
    uint64_t   t, d;
    long       seq;

    p[len] = '\0';              /* a copy, with room for it */

    if (c == &conns[0] && slug[0] == '\0') {
        snprintf(first_reply, sizeof(first_reply), "%.500s", p);
    }

    if (strncmp(p, "{\"op\":\"message\"", 15) == 0
        || strstr(p, "\"op\":\"message\""))
    {
        q = strstr(p, "\"body\":\"");
        if (q == NULL) {
            return;
        }
        t = strtoull(q + 8, NULL, 10);
        seq = json_int(p, "\"seq\":");
        if (seq <= c->last_seq) {
            c->bad_order++;
        }
        c->last_seq = seq;
        if (t < run_start || t >= run_end) {
            return;             /* warm-up or drain */
        }
        c->got++;
        d = (now - t) / 1000;   /* us */
        if (d > lat_max) {
            lat_max = d;
        }
        hist[d / 10 < NB ? d / 10 : NB]++;
        return;
    }

    if (strstr(p, "\"op\":\"ack\"")) {
        acks++;
    } else if (strstr(p, "\"op\":\"error\"")) {
        errors++;
        if (errors < 5) {
            fprintf(stderr, "relayc: %s\n", p);
        }
    } else if (strstr(p, "\"op\":\"created\"")) {
        q = strstr(p, "\"session\":{\"id\":\"");
        if (q) {
            q += 17;
            e = strchr(q, '"');
            if (e && (size_t) (e - q) < sizeof(slug)) {
                memcpy(slug, q, e - q);
                slug[e - q] = '\0';
            }
        }
    } else if (strstr(p, "\"op\":\"joined\"")) {
        c->state = 4;
    }
}

static void
on_read(conn_t *c, uint64_t now)
{
    ssize_t   n;
    size_t    off, len, h;
    unsigned  char *b;
    char     *end;

    n = read(c->fd, c->rbuf + c->rlen, RBUF - 1 - c->rlen);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        fprintf(stderr, "relayc: connection closed\n");
        exit(1);
    }
    c->rlen += n;

    if (c->state == 1) {
        c->rbuf[c->rlen] = '\0';
        end = strstr(c->rbuf, "\r\n\r\n");
        if (end == NULL) {
            return;
        }
        if (strncmp(c->rbuf, "HTTP/1.1 101", 12) != 0) {
            fprintf(stderr, "relayc: handshake: %.40s\n", c->rbuf);
            exit(1);
        }
        off = end + 4 - c->rbuf;
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
        c->state = 2;
    }

    off = 0;
    while (c->rlen - off >= 2) {
        b = (unsigned char *) c->rbuf + off;
        len = b[1] & 0x7f;
        h = 2;
        if (len == 126) {
            if (c->rlen - off < 4) {
                break;
            }
            len = (b[2] << 8) | b[3];
            h = 4;
        } else if (len == 127) {
            fprintf(stderr, "relayc: huge frame\n");
            exit(1);
        }
        if (c->rlen - off < h + len) {
            break;
        }
        if ((b[0] & 0x0f) == 1) {
            static char  text[RBUF];
            memcpy(text, b + h, len);
            on_text(c, text, len, now);
        } else if ((b[0] & 0x0f) == 9) {
            /* ping: a pong with the same (short) payload */
            char  pong[136];
            pong[0] = (char) 0x8a;
            pong[1] = (char) (0x80 | len);
            memset(pong + 2, 0, 4);
            memcpy(pong + 6, b + h, len);
            send_all(c, pong, 6 + len);
        }
        off += h + len;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
}

static void
pump(int ms)
{
    struct epoll_event  evs[256];
    int                 n, i;
    uint64_t            now;

    n = epoll_wait(ep, evs, 256, ms);
    now = now_ns();
    for (i = 0; i < n; i++) {
        on_read(&conns[evs[i].data.u32], now);
    }
}

static uint64_t
percentile(double p)
{
    uint64_t  total = 0, want, acc = 0;
    int       i;

    for (i = 0; i <= NB; i++) {
        total += hist[i];
    }
    want = (uint64_t) (total * p / 100.0);
    for (i = 0; i <= NB; i++) {
        acc += hist[i];
        if (acc > want) {
            return (uint64_t) i * 10 + 5;
        }
    }
    return lat_max;
}

int
main(int argc, char **argv)
{
    int        i, joined, rate, dur, warmup, bad;
    long       k, sent, expect;
    char       buf[256];
    uint64_t   t0, next, step, deadline, total;

    if (argc != 6) {
        fprintf(stderr, "usage: relayc PORT CONNS RATE DUR WARMUP\n");
        return 2;
    }
    port = atoi(argv[1]);
    nconns = atoi(argv[2]);
    rate = atoi(argv[3]);
    dur = atoi(argv[4]);
    warmup = atoi(argv[5]);

    conns = calloc(nconns, sizeof(conn_t));
    ep = epoll_create1(0);
    if (conns == NULL || ep < 0) {
        die("init");
    }

    open_conn(0);
    while (conns[0].state < 2) {
        pump(100);
    }
    send_text(&conns[0], "{\"op\":\"create\",\"ref\":\"c\",\"title\":\"relay\","
                         "\"isPublic\":true}");
    deadline = now_ns() + 10000000000ULL;
    while (slug[0] == '\0' && now_ns() < deadline) {
        pump(100);
    }
    if (slug[0] == '\0') {
        fprintf(stderr, "relayc: no session created: %s\n", first_reply);
        return 1;
    }

    snprintf(buf, sizeof(buf), "{\"op\":\"join\",\"ref\":\"j\","
             "\"session\":\"%s\"}", slug);

    for (i = 1; i < nconns; i++) {
        open_conn(i);
        if (i % 50 == 0) {
            pump(0);
        }
    }

    deadline = now_ns() + 60000000000ULL;
    for ( ;; ) {
        joined = 0;
        for (i = 0; i < nconns; i++) {
            if (conns[i].state == 2) {
                send_text(&conns[i], buf);
                conns[i].state = 3;
            }
            joined += conns[i].state == 4;
        }
        if (joined == nconns) {
            break;
        }
        if (now_ns() > deadline) {
            fprintf(stderr, "relayc: %d of %d joined\n", joined, nconns);
            return 1;
        }
        pump(10);
    }

    /* warm-up, the measured run, then a drain of up to 5 s */

    step = 1000000000ULL / rate;
    t0 = now_ns();
    run_start = t0 + (uint64_t) warmup * 1000000000ULL;
    run_end = run_start + (uint64_t) dur * 1000000000ULL;
    next = t0;
    sent = 0;
    sent_run = 0;

    while (now_ns() < run_end) {
        while (next <= now_ns() && next < run_end) {
            snprintf(buf, sizeof(buf), "{\"op\":\"send\",\"session\":\"%s\","
                     "\"body\":\"%llu\",\"clientMsgId\":\"m%ld\"}", slug,
                     (unsigned long long) next, sent);
            send_text(&conns[0], buf);
            sent++;
            if (next >= run_start) {
                sent_run++;
            }
            next += step;
        }
        pump(1);
    }

    expect = sent_run * nconns;
    deadline = now_ns() + 5000000000ULL;
    for ( ;; ) {
        total = 0;
        for (i = 0; i < nconns; i++) {
            total += conns[i].got;
        }
        if ((long) total >= expect || now_ns() > deadline) {
            break;
        }
        pump(10);
    }
    pump(200);

    total = 0;
    bad = 0;
    for (i = 0; i < nconns; i++) {
        total += conns[i].got;
        if (conns[i].got != sent_run || conns[i].bad_order) {
            bad++;
        }
    }

    printf("conns %d\n", nconns);
    printf("sent %ld\n", sent_run);
    printf("acks %ld\n", acks);
    printf("errors %ld\n", errors);
    printf("deliveries %llu\n", (unsigned long long) total);
    printf("expected %ld\n", expect);
    printf("deliveries_per_s %.0f\n", (double) total / dur);
    printf("p50_ms %.3f\n", percentile(50) / 1000.0);
    printf("p99_ms %.3f\n", percentile(99) / 1000.0);
    printf("max_ms %.3f\n", lat_max / 1000.0);
    printf("bad_conns %d\n", bad);

    for (k = 0; k < nconns; k++) {
        close(conns[k].fd);
    }

    return (errors || bad || (long) total != expect) ? 1 : 0;
}
EOF

cc -O2 -Wall -o "$tmp/relayc" "$tmp/relayc.c"

# --- PostgreSQL and Redis --------------------------------------------------

pg_start "$tmp/pg" "$(free_port)" -c max_connections=100 -c autovacuum=off
dsn=$pg_dsn

redis_port=$(free_port)
redis_start "$redis_port" "$tmp/redis.log"

# --- one run ---------------------------------------------------------------

# run NAME WORKERS REDIS_LINE REUSEPORT: prints the client's output
run() {
    local name=$1 workers=$2 redis=$3 reuse=$4 dir port
    dir=$tmp/run-$name-$rep
    port=$(free_port)
    mkdir -p "$dir/tmp"
    {
        nginx_conf_head "$dir" "$MODULE" "$workers" 8192 4096
        cat <<CONF
    collab_postgres  "$dsn" pool=2;
    $redis

    server {
        listen  127.0.0.1:$port backlog=4096 $reuse;

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

    # which worker holds how many connections, sampled during the run
    ( sleep "$((WARMUP + 1))"
      ss -Htnp state established "( sport = :$port )" > "$dir/ss.out" ) &

    local rc=0
    "$tmp/relayc" "$port" "$CONNS" "$RATE" "$DUR" "$WARMUP" \
        > "$dir/client.out" 2> "$dir/client.err" || rc=$?
    wait "$!"
    echo "per_worker $(grep -o 'pid=[0-9]*' "$dir/ss.out" | sort | uniq -c |
                       awk '{ printf "%s%s", s, $1; s = "+" }')" \
        >> "$dir/client.out"
    nginx_stop "$nginx_pid"
    if [ "$rc" -ne 0 ]; then
        echo "relay.sh: $name run failed:" >&2
        cat "$dir/client.out" "$dir/client.err" >&2
        touch "$tmp/failed"
    fi
    if grep -E '\[(alert|crit|emerg)\]' "$dir/error.log" >&2; then
        touch "$tmp/failed"
    fi
    cat "$dir/client.out"
}

declare -A res
for rep in $(seq "$REPS"); do
    for cfg in single relay; do
        if [ "$cfg" = single ]; then
            out=$(run single 1 "" "")
        else
            out=$(run relay 2 "collab_redis 127.0.0.1:$redis_port;" reuseport)
        fi
        for k in deliveries_per_s p50_ms p99_ms max_ms sent deliveries \
                 expected bad_conns per_worker
        do
            v=$(awk -v k="$k" '$1 == k { print $2 }' <<< "$out")
            res[$cfg,$rep,$k]=${v:-?}
        done
    done
done

echo
echo "1 session x $CONNS connections, 1 sender at $RATE msg/s," \
     "${DUR}s per run, $REPS runs each (nginx $("$NGINX" -v 2>&1 |
     sed 's/.*\///'), $(nproc) cores)"
echo
echo "| config | run | conns per worker | deliveries/s | p50 ms | p99 ms |" \
     "max ms | delivered / expected |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
for cfg in single relay; do
    for rep in $(seq "$REPS"); do
        case $cfg in
        single) label="1 worker, no Redis" ;;
        relay)  label="2 workers, Redis relay" ;;
        esac
        echo "| $label | $rep | ${res[$cfg,$rep,per_worker]} |" \
             "${res[$cfg,$rep,deliveries_per_s]} |" \
             "${res[$cfg,$rep,p50_ms]} | ${res[$cfg,$rep,p99_ms]} |" \
             "${res[$cfg,$rep,max_ms]} |" \
             "${res[$cfg,$rep,deliveries]} / ${res[$cfg,$rep,expected]} |"
    done
done

[ ! -e "$tmp/failed" ]
