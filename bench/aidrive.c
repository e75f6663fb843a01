
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * aidrive: the AI load of bench/ai.sh.
 *
 *   aidrive URL STREAMS [SPREAD]
 *
 * Opens STREAMS collab.v1 connections to URL (ws://H:P/ws; user
 * "aidrive-<pid>-<i>" as ?user=), each creates its own public session,
 * joins it and asks "@ai ..." there; whenever the reply's final message
 * (kind "ai") or an ai_error arrives it asks again at once (after an
 * error, 100 ms later), so about STREAMS replies are being streamed all
 * the time.  The first questions are spread evenly over SPREAD seconds
 * (0: all at once), so that replies of equal length keep starting and
 * ending at different times, as independent users' would; with 0 they
 * come in waves.  Prints "streaming" once every session has its first
 * question out.
 *
 * SIGUSR1 prints a mark, the counters since the start:
 *
 *   mark T deltas D replies R errors E questions Q samples S
 *        inflight_sum I inflight_min M
 *
 * T the monotonic time, D ai_delta events received, R final ai messages,
 * E ai_error events (their codes go to stderr), Q questions sent; every
 * 50 ms the number of replies in flight (question sent, no final yet) is
 * sampled: S samples, I their sum, M the smallest since the last mark
 * (-1: none).  SIGTERM exits 0.  Exit status 1 if a connection fails or
 * closes.
 *
 * It stands for 50 remote clients, so it should cost this machine as
 * little CPU as it can: one process, one epoll loop, edge-triggered
 * non-blocking sockets, the client side of RFC 6455 from wsclient.c, no
 * JSON parser: the ai_delta events, most of what arrives, are counted by
 * the substring "op":"ai_delta", and the few fields the rest needs are
 * found by their key in the server's compact JSON.  Messages up to 1 MiB
 * are taken (more closes the connection with 1009, as the Mojolicious
 * version, bench/aidrive.pl before this file, did).
 *
 * The timers (a session's next question, the 50 ms sampling) are few:
 * the epoll_wait() timeout is the earliest of them, found by a scan.
 */


#define _GNU_SOURCE

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>

#include "wsclient.h"


const char  bench_name[] = "aidrive";


#define MESSAGE_MAX     (1 << 20)
#define SAMPLE_US       50000
#define RETRY_US        100000


typedef enum {
    st_connecting = 0,
    st_handshake,
    st_open
} sess_state_e;


typedef struct {
    int            fd;
    unsigned       id;
    sess_state_e   state;
    char           key[25];

    u_char        *in;
    size_t         in_len;
    size_t         in_cap;

    bench_buf_t    out;
    size_t         out_pos;

    u_char        *msg;         /* a fragmented message */
    size_t         msg_len;
    size_t         msg_cap;

    char           slug[128];

    uint64_t       ask_at;      /* the next question's time, or 0 */
    unsigned       first:1;     /* ask_at is the first question's */
    unsigned       joined:1;
    unsigned       waiting:1;   /* a question is out, no final yet */
    unsigned       in_message:1;
    unsigned       writable:1;
} sess_t;


static void sess_connect(sess_t *s);
static void sess_read(sess_t *s);
static void sess_frames(sess_t *s);
static void sess_message(sess_t *s, const u_char *m, size_t len);
static void sess_ask(sess_t *s);
static void sess_send(sess_t *s, const char *fmt, ...);
static void sess_frame(sess_t *s, unsigned opcode, const u_char *data,
    size_t len);
static void sess_write(sess_t *s);
static void sess_closed(sess_t *s, unsigned code)
    __attribute__((noreturn));
static void sess_failed(sess_t *s, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));
static int json_str(const u_char *m, size_t len, const u_char *from,
    const char *key, const u_char **v, size_t *vlen);
static void timers(void);
static int timeout_ms(void);
static void mark(void);


static int          ep;
static sess_t      *sess;
static unsigned     n_sess;
static double       spread;
static uint32_t     rng;

static struct sockaddr_in  addr;
static char         host[256];
static char         hostport[256];
static char         path[1024];

static unsigned     ready;
static uint64_t     inflight, next_sample;
static int64_t      inflight_min = -1;
static uint64_t     n_deltas, n_replies, n_errors, n_questions;
static uint64_t     n_samples, inflight_sum;


int
main(int argc, char **argv)
{
    int                  sfd, n, i;
    char                *end;
    sess_t              *s;
    unsigned             k;
    struct epoll_event   ev, evs[256];

    struct signalfd_siginfo  si;
    static sess_t            signals;

    if (argc != 3 && argc != 4) {
        goto usage;
    }

    n_sess = (unsigned) strtoul(argv[2], &end, 10);

    if (*end != '\0' || argv[2][0] == '\0') {
        goto usage;
    }

    if (argc == 4) {
        spread = strtod(argv[3], &end);

        if (*end != '\0' || spread < 0) {
            goto usage;
        }
    }

    bench_parse_url(argv[1], &addr, host, sizeof(host),
                    hostport, sizeof(hostport), path, sizeof(path));

    /* SIGUSR1, SIGTERM and SIGINT are read from a signalfd in the loop */

    sfd = bench_signalfd(SIGUSR1, SIGTERM, SIGINT, 0);

    ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep == -1) {
        bench_die("epoll_create1: %s", strerror(errno));
    }

    signals.fd = sfd;
    ev.events = EPOLLIN;
    ev.data.ptr = &signals;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }

    rng = (uint32_t) getpid() ^ (uint32_t) ws_now_us();
    rng = rng ? rng : 1;

    sess = calloc(n_sess ? n_sess : 1, sizeof(sess_t));

    if (sess == NULL) {
        bench_die("out of memory");
    }

    for (k = 0; k < n_sess; k++) {
        sess[k].id = k;
        sess_connect(&sess[k]);
    }

    if (n_sess == 0) {
        next_sample = ws_now_us() + SAMPLE_US;
    }

    for ( ;; ) {
        n = bench_epoll_wait(ep, evs, 256, timeout_ms());

        for (i = 0; i < n; i++) {
            s = evs[i].data.ptr;

            if (s == &signals) {
                while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                    if (si.ssi_signo == SIGUSR1) {
                        mark();
                        continue;
                    }

                    fflush(stdout);
                    _exit(0);
                }

                continue;
            }

            if (s->state == st_connecting
                && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            {
                int        err;
                socklen_t  len = sizeof(int);

                err = 0;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);

                if (err) {
                    sess_failed(s, "handshake failed (%s)", strerror(err));
                }

                s->state = st_handshake;
            }

            if (evs[i].events & EPOLLOUT) {
                s->writable = 1;
                sess_write(s);
            }

            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            {
                sess_read(s);
            }
        }

        timers();
    }

usage:

    fprintf(stderr, "usage: aidrive URL STREAMS [SPREAD]\n");

    return 2;
}


/* a non-blocking connect and the handshake request, queued */

static void
sess_connect(sess_t *s)
{
    int                 n;
    char                req[2048], query[64];
    struct epoll_event  ev;

    s->fd = ws_connect(&addr, 0, s->id);

    if (s->fd == -1) {
        sess_failed(s, "handshake failed (%s)", strerror(errno));
    }

    s->state = st_connecting;
    ws_key(s->key, &rng);

    snprintf(query, sizeof(query), "%cuser=aidrive-%d-%u",
             strchr(path, '?') ? '&' : '?', (int) getpid(), s->id);

    n = ws_request(req, sizeof(req), path, query, hostport, s->key,
                   "Sec-WebSocket-Protocol: collab.v1\r\n");

    if (n < 0 || (size_t) n >= sizeof(req)) {
        bench_die("URL too long");
    }

    bench_buf_add(&s->out, req, (size_t) n);

    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = s;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }
}


/* reads until EAGAIN (edge-triggered) and handles what came */

static void
sess_read(sess_t *s)
{
    ssize_t  n, hlen;

    if (s->state == st_connecting) {
        return;
    }

    for ( ;; ) {
        if (s->in_cap - s->in_len < 16384 + 1) {
            s->in_cap = s->in_cap ? s->in_cap * 2 : 65536;
            s->in = realloc(s->in, s->in_cap);

            if (s->in == NULL) {
                bench_die("out of memory");
            }
        }

        n = recv(s->fd, s->in + s->in_len, s->in_cap - s->in_len - 1, 0);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN) {
                return;
            }

            if (s->state == st_open) {
                sess_failed(s, "%s", strerror(errno));
            }

            sess_failed(s, "handshake failed (%s)", strerror(errno));
        }

        if (n == 0) {
            if (s->state != st_open) {
                sess_failed(s, "handshake failed (closed by the server)");
            }

            sess_closed(s, 1006);
        }

        s->in_len += (size_t) n;

        if (s->state == st_handshake) {
            hlen = ws_reply(s->in, s->in_len, s->key);

            if (hlen == -1) {
                sess_failed(s, "handshake failed (not a 101 with the right "
                            "Sec-WebSocket-Accept)");
            }

            if (hlen == 0) {
                continue;
            }

            memmove(s->in, s->in + hlen, s->in_len - (size_t) hlen);
            s->in_len -= (size_t) hlen;
            s->state = st_open;

            sess_send(s, "{\"isPublic\":true,\"op\":\"create\","
                      "\"ref\":\"c%u\",\"title\":\"ai bench %u\"}",
                      s->id, s->id);
        }

        sess_frames(s);
    }
}


/* the complete frames in s->in */

static void
sess_frames(sess_t *s)
{
    u_char      *p, *payload;
    size_t       h, avail;
    ws_frame_t   f;

    p = s->in;
    avail = s->in_len;

    while (avail >= 2) {
        h = ws_frame_parse(p, avail, &f);

        if (f.rsv || f.masked) {
            sess_failed(s, "reserved bits or mask from the server");
        }

        if (h == 0) {
            break;
        }

        if (f.len > MESSAGE_MAX) {
            sess_closed(s, 1009);
        }

        if (avail < h + f.len) {
            break;
        }

        payload = p + h;

        switch (f.opcode) {

        case 0x0:
        case 0x1:
        case 0x2:
            if ((f.opcode == 0) != s->in_message) {
                sess_failed(s, "unexpected continuation frame");
            }

            if (f.fin && !s->in_message) {
                sess_message(s, payload, (size_t) f.len);
                break;
            }

            if (s->msg_len + f.len > MESSAGE_MAX) {
                sess_closed(s, 1009);
            }

            if (s->msg_len + f.len > s->msg_cap) {
                s->msg_cap = s->msg_len + (size_t) f.len;
                s->msg = realloc(s->msg, s->msg_cap);

                if (s->msg == NULL) {
                    bench_die("out of memory");
                }
            }

            memcpy(s->msg + s->msg_len, payload, (size_t) f.len);
            s->msg_len += (size_t) f.len;
            s->in_message = !f.fin;

            if (f.fin) {
                sess_message(s, s->msg, s->msg_len);
                s->msg_len = 0;
            }

            break;

        case 0x8:
            sess_closed(s, f.len >= 2 ? (unsigned) (payload[0] << 8
                                                    | payload[1])
                                      : 1005);
            break;

        case 0x9:
            sess_frame(s, 0xa, payload, (size_t) f.len);
            break;

        case 0xa:
            break;

        default:
            sess_failed(s, "unknown opcode from the server");
        }

        p += h + f.len;
        avail -= h + f.len;
    }

    memmove(s->in, p, avail);
    s->in_len = avail;
}


/* one message from the server: by its op */

static void
sess_message(sess_t *s, const u_char *m, size_t len)
{
    size_t         oplen, vlen;
    const u_char  *op, *v;

    /* most of what arrives: counted, not looked at */

    if (memmem(m, len, "\"op\":\"ai_delta\"", 15)) {
        n_deltas++;
        return;
    }

    if (json_str(m, len, m, "op", &op, &oplen) == -1) {
        return;
    }

#define is_op(name)                                                         \
    (oplen == sizeof(name) - 1 && memcmp(op, name, oplen) == 0)

    if (is_op("created")) {
        if (json_str(m, len, op, "id", &v, &vlen) == -1
            || vlen >= sizeof(s->slug))
        {
            fprintf(stderr, "aidrive: no session id: %.*s\n",
                    (int) len, m);
            return;
        }

        /* the raw JSON string: it goes back into JSON as it is */

        memcpy(s->slug, v, vlen);
        s->slug[vlen] = '\0';

        sess_send(s, "{\"op\":\"join\",\"ref\":\"j%u\","
                  "\"session\":\"%s\"}", s->id, s->slug);

    } else if (is_op("joined")) {
        if (s->joined) {
            return;
        }

        s->joined = 1;
        s->first = 1;
        s->ask_at = ws_now_us()
                    + (uint64_t) (spread * s->id / n_sess * 1e6) + 1;

    } else if (is_op("message")) {
        if (json_str(m, len, op, "kind", &v, &vlen) == -1
            || vlen != 2 || memcmp(v, "ai", 2) != 0)
        {
            return;
        }

        n_replies++;

        if (s->waiting) {
            s->waiting = 0;
            inflight--;
        }

        sess_ask(s);

    } else if (is_op("ai_error")) {
        n_errors++;

        if (json_str(m, len, op, "code", &v, &vlen) == -1) {
            v = (const u_char *) "";
            vlen = 0;
        }

        fprintf(stderr, "aidrive: ai_error %.*s\n", (int) vlen, v);

        if (s->waiting) {
            s->waiting = 0;
            inflight--;
        }

        if (!s->first) {
            s->ask_at = ws_now_us() + RETRY_US;
        }

    } else if (is_op("error")) {
        fprintf(stderr, "aidrive: error reply: %.*s\n", (int) len, m);
    }

#undef is_op
}


static void
sess_ask(sess_t *s)
{
    if (s->state != st_open || s->waiting) {
        return;
    }

    s->waiting = 1;
    inflight++;
    n_questions++;

    sess_send(s, "{\"body\":\"@ai question %llu: what is next?\","
              "\"clientMsgId\":\"q%llu\",\"op\":\"send\","
              "\"session\":\"%s\"}",
              (unsigned long long) n_questions,
              (unsigned long long) n_questions, s->slug);
}


/* a text frame */

static void
sess_send(sess_t *s, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ws_text_add(&s->out, ws_rnd(&rng), fmt, args);
    va_end(args);

    sess_write(s);
}


/* a masked frame, written at once as far as the socket takes it */

static void
sess_frame(sess_t *s, unsigned opcode, const u_char *data, size_t len)
{
    ws_frame_add(&s->out, opcode, data, len, ws_rnd(&rng));

    sess_write(s);
}


static void
sess_write(sess_t *s)
{
    ssize_t  n;

    if (s->state == st_connecting) {
        return;
    }

    while (s->writable && s->out_pos < s->out.len) {
        n = send(s->fd, s->out.p + s->out_pos, s->out.len - s->out_pos,
                 MSG_NOSIGNAL);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN) {
                s->writable = 0;
                return;
            }

            sess_failed(s, "%s", strerror(errno));
        }

        s->out_pos += (size_t) n;
    }

    if (s->out_pos == s->out.len) {
        s->out_pos = 0;
        s->out.len = 0;
    }
}


/* the connection is gone: the benchmark is void */

static void
sess_closed(sess_t *s, unsigned code)
{
    fprintf(stderr, "aidrive: connection %u closed (%u)\n", s->id, code);
    exit(1);
}


static void
sess_failed(sess_t *s, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    fprintf(stderr, "aidrive: connection %u: ", s->id);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);

    exit(1);
}


/*
 * The string value of "key" in m[0 .. len), the first occurrence after
 * "from": *v and *vlen are the raw bytes between the quotes (escapes
 * left as they are).  -1 if there is none.
 */

static int
json_str(const u_char *m, size_t len, const u_char *from, const char *key,
    const u_char **v, size_t *vlen)
{
    int            n;
    char           pat[32];
    const u_char  *p, *end;

    n = snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    end = m + len;
    p = memmem(from, (size_t) (end - from), pat, (size_t) n);

    if (p == NULL) {
        return -1;
    }

    p += n;
    *v = p;

    while (p < end && *p != '"') {
        p += *p == '\\' ? 2 : 1;
    }

    if (p >= end) {
        return -1;
    }

    *vlen = (size_t) (p - *v);

    return 0;
}


/* the questions that are due, and the sampling */

static void
timers(void)
{
    sess_t    *s;
    uint64_t   now;
    unsigned   k;

    now = ws_now_us();

    for (k = 0; k < n_sess; k++) {
        s = &sess[k];

        if (s->ask_at == 0 || s->ask_at > now) {
            continue;
        }

        s->ask_at = 0;
        sess_ask(s);

        if (s->first) {
            s->first = 0;

            if (++ready == n_sess) {
                printf("streaming\n");
                fflush(stdout);
                next_sample = now + SAMPLE_US;
            }
        }
    }

    if (ready == n_sess && now >= next_sample) {
        n_samples++;
        inflight_sum += inflight;

        if (inflight_min == -1 || (int64_t) inflight < inflight_min) {
            inflight_min = (int64_t) inflight;
        }

        next_sample += SAMPLE_US;

        if (next_sample <= now) {
            next_sample = now + SAMPLE_US;
        }
    }
}


/* until the earliest timer, rounded up; -1: none */

static int
timeout_ms(void)
{
    uint64_t   at, now;
    unsigned   k;

    at = ready == n_sess ? next_sample : 0;

    for (k = 0; k < n_sess; k++) {
        if (sess[k].ask_at && (at == 0 || sess[k].ask_at < at)) {
            at = sess[k].ask_at;
        }
    }

    if (at == 0) {
        return -1;
    }

    now = ws_now_us();

    return at <= now ? 0 : (int) ((at - now + 999) / 1000);
}


static void
mark(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    printf("mark %.3f deltas %llu replies %llu errors %llu questions %llu "
           "samples %llu inflight_sum %llu inflight_min %lld\n",
           (double) ts.tv_sec + (double) ts.tv_nsec / 1e9,
           (unsigned long long) n_deltas, (unsigned long long) n_replies,
           (unsigned long long) n_errors, (unsigned long long) n_questions,
           (unsigned long long) n_samples,
           (unsigned long long) inflight_sum, (long long) inflight_min);
    fflush(stdout);

    inflight_min = -1;
}
