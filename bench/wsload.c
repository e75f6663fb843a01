
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * wsload: a WebSocket load generator for the ngx_collab echo endpoint.
 *
 * One process, one epoll loop, non-blocking sockets, and its own client
 * side of RFC 6455 (handshake with a checked Sec-WebSocket-Accept, masked
 * frames, unmasked server frames, ping answered with pong, close
 * handshake; bench/wsclient.c, shared with bench/fanload.c), so that it
 * measures nginx and not a library.
 *
 *   wsload --mode echo --conns N --duration S --size B --url ws://H:P/path
 *       N connections each send a text message of B bytes, wait for the
 *       echo, compare it byte for byte and send the next; prints
 *       round-trips/s, p50/p99/max latency and errors.
 *
 *   wsload --mode idle --conns N --hold S --url ...
 *       opens N connections, completes the handshakes, prints
 *       "established N" and holds them idle for S seconds, then closes.
 *
 *   wsload --mode chat --conns N --sessions S --window W --duration D
 *          [--rate R] [--subscribers K] [--size B] --url ws://H:P/path
 *       the collab.v1 chat protocol (subprotocol "collab.v1"; the user
 *       is passed as ?user=..., one user per connection).  The first S
 *       senders create one public session each; every sender joins
 *       session (id % S), and K subscribers per session join too.  Then
 *       for D seconds each sender keeps W sends unacked (closed loop) or
 *       the senders together send R messages/s spread evenly (open loop,
 *       at most 256 unacked per connection, latency counted from the
 *       scheduled send time).  After D the senders stop and the acks in
 *       flight are awaited.  Prints acks/s, send->ack p50/p99/max, errors
 *       by code, message events received, and checks that every ack
 *       answers a send in flight, that each connection's acks have
 *       increasing seqs per session and that the acked seqs of a session
 *       are unique and exactly 1..max ("seq check").
 *
 * Connections are opened at most --inflight at a time so the listen
 * queue does not overflow; --src-ips K binds them round-robin to
 * 127.0.0.2 .. 127.0.0.(K+1) for more ephemeral ports.  The exit status
 * is 1 when any connection failed or any echo was wrong, and in chat mode
 * also when an error reply came, an ack was missing or a check failed.
 */


#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "wsclient.h"


const char  bench_name[] = "wsload";


/* chat: sends in flight per connection (the module allows 256) */
#define CHAT_UNACKED   256
#define CHAT_SLOTS     512
#define CHAT_CODES     16



enum {
    st_connecting = 0,
    st_handshake,
    st_open,
    st_closing,
    st_done
};


typedef struct {
    int            fd;
    int            state;
    unsigned       id;

    char           key[25];

    /* output not yet written */
    bench_buf_t    out;
    int            want_write;

    /* input not yet parsed */
    u_char        *in;
    size_t         in_len;
    size_t         in_cap;

    /* echo: the message in flight */
    int            waiting;
    uint32_t       seq;
    uint64_t       sent_at;
    size_t         got;         /* bytes of the echo compared so far */
    int            in_message;

    /* chat */
    int            subscriber;
    unsigned       session;
    int            setup;       /* a create or join awaits its reply */
    u_char        *msg;         /* a fragmented text message */
    size_t         msg_len;
    size_t         msg_cap;
    unsigned       unacked;
    uint64_t       next_k;      /* number (and ref) of the next send */
    uint64_t      *slot_at;     /* send time of ref k at k % CHAT_SLOTS */
    uint64_t      *slot_k;
    int64_t        last_ack_seq;
    int64_t        last_event_seq;
} conn_t;


typedef struct {
    char           slug[80];
    int            created;
    uint8_t       *seen;        /* acked seqs */
    size_t         seen_cap;
    int64_t        max_seq;
    uint64_t       acked;
    uint64_t       dup_seq;
} session_t;


typedef struct {
    const char    *mode;
    unsigned       conns;
    double         duration;
    double         hold;
    size_t         size;
    unsigned       src_ips;
    unsigned       inflight;
    int            chat;
    unsigned       sessions;
    unsigned       window;
    double         rate;
    unsigned       subscribers;
    double         warmup;
    double         drain;
    const char    *user_prefix;
    char           host[256];
    char           hostport[300];
    char           path[1024];
    struct sockaddr_in  addr;
} opts_t;


static opts_t     opt;
static conn_t    *conns;
static int        ep;
static uint32_t   rng = 0x9e3779b9;
static volatile sig_atomic_t  stop;

static unsigned   n_started, n_established, n_closed;
static unsigned   n_connect_err, n_handshake_err, n_proto_err, n_mismatch;
static unsigned   n_server_close, n_unclean;
static uint64_t   n_roundtrips;
static int        measuring;

static uint64_t   hist[WS_HIST_BUCKETS];
static uint64_t   lat_max, lat_count;

static unsigned   total_conns;

/* the loop calls tick (if set) at least every millisecond */
static void     (*tick)(void);

/* chat */
static session_t *sessions;
static char      *chat_body;
static int        sending;
static uint64_t   t_send, t_start, t_end;
static uint64_t   n_sent, n_acks, n_acks_window, n_events, n_events_window;
static uint64_t   n_scheduled, n_backlog;
static uint64_t   n_bad_ack, n_ack_order, n_dup_flag, n_event_order;
static uint64_t   n_other, n_err_replies;
static unsigned   n_created, n_joined, n_setup_err;
static char       err_code[CHAT_CODES][32];
static uint64_t   err_count[CHAT_CODES];


static uint64_t
hist_percentile(double pct)
{
    return ws_hist_percentile(hist, lat_count, lat_max, pct);
}


/* a masked client frame */

static void
send_frame(conn_t *c, unsigned opcode, const u_char *payload, size_t len)
{
    ws_frame_add(&c->out, opcode, payload, len, ws_rnd(&rng));
}


/* the echo payload of message "seq" on connection "id": printable ASCII */

static u_char
payload_byte(unsigned id, uint32_t seq, size_t i)
{
    return (u_char) ('!' + (id * 7 + seq * 13 + i * 31 + (i >> 7)) % 94);
}


static void
send_message(conn_t *c)
{
    size_t   i;
    u_char  *buf;

    buf = malloc(opt.size ? opt.size : 1);
    if (buf == NULL) {
        bench_die("out of memory");
    }

    for (i = 0; i < opt.size; i++) {
        buf[i] = payload_byte(c->id, c->seq, i);
    }

    send_frame(c, 0x1, buf, opt.size);
    free(buf);

    c->waiting = 1;
    c->got = 0;
    c->in_message = 0;
    c->sent_at = ws_now_us();
}


static void
conn_update(conn_t *c)
{
    struct epoll_event  ev;
    int                 want;

    want = c->out.len > 0;

    if (want == c->want_write) {
        return;
    }

    c->want_write = want;

    ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0);
    ev.data.ptr = c;

    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }
}


static void
conn_free(conn_t *c)
{
    if (c->fd != -1) {
        close(c->fd);
        c->fd = -1;
    }

    if (c->state == st_open || c->state == st_closing) {
        n_established--;
    }

    c->state = st_done;
    n_closed++;

    free(c->out.p);
    free(c->in);
    free(c->msg);
    c->out.p = NULL;
    c->in = NULL;
    c->msg = NULL;
    c->out.len = c->out.cap = c->in_len = c->in_cap = 0;
    c->msg_len = c->msg_cap = 0;
}


static void
conn_fail(conn_t *c, unsigned *counter, const char *what)
{
    static unsigned  reported;

    (*counter)++;

    if (reported++ < 5) {
        fprintf(stderr, "wsload: connection %u: %s\n", c->id, what);
    }

    conn_free(c);
}


static int
conn_flush(conn_t *c)
{
    ssize_t  n;

    while (c->out.len) {
        n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);

        if (n == -1) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }

            return -1;
        }

        memmove(c->out.p, c->out.p + n, c->out.len - (size_t) n);
        c->out.len -= (size_t) n;
    }

    conn_update(c);

    return 0;
}


static void
conn_start(unsigned id)
{
    int                  fd;
    conn_t              *c;
    struct epoll_event   ev;

    c = &conns[id];

    {
        uint64_t  *slot_at = c->slot_at, *slot_k = c->slot_k;

        memset(c, 0, sizeof(conn_t));
        c->slot_at = slot_at;
        c->slot_k = slot_k;
    }

    c->id = id;
    c->fd = -1;
    n_started++;

    if (opt.chat) {
        c->subscriber = id >= opt.conns;
        c->session = c->subscriber ? (id - opt.conns) % opt.sessions
                                   : id % opt.sessions;
        c->next_k = 1;
    }


    fd = ws_connect(&opt.addr, opt.src_ips, id);

    if (fd == -1) {
        conn_fail(c, &n_connect_err, strerror(errno));
        return;
    }

    c->fd = fd;

    ws_key(c->key, &rng);

    c->state = st_connecting;

    {
        char  req[1800], user[160];
        int   n;

        user[0] = '\0';

        if (opt.chat) {
            snprintf(user, sizeof(user), "%cuser=%s%u",
                     strchr(opt.path, '?') ? '&' : '?', opt.user_prefix, id);
        }

        n = ws_request(req, sizeof(req), opt.path, user, opt.hostport, c->key,
                       opt.chat ? "Sec-WebSocket-Protocol: collab.v1\r\n"
                                : "");

        bench_buf_add(&c->out, req, (size_t) n);
    }

    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.ptr = c;
    c->want_write = 1;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }
}


static int
handshake(conn_t *c)
{
    ssize_t  hlen;

    hlen = ws_reply(c->in, c->in_len, c->key);

    if (hlen <= 0) {
        return (int) hlen;
    }

    memmove(c->in, c->in + hlen, c->in_len - (size_t) hlen);
    c->in_len -= (size_t) hlen;

    c->state = st_open;
    n_established++;

    return 1;
}


/* chat: a few JSON fields of the server's flat, compact replies */

static const u_char *
json_field(const u_char *m, size_t len, const char *key)
{
    int            n;
    char           pat[48];
    const u_char  *p, *end;

    n = snprintf(pat, sizeof(pat), "\"%s\":", key);
    p = memmem(m, len, pat, (size_t) n);

    if (p == NULL) {
        return NULL;
    }

    end = m + len;

    for (p += n; p < end && (*p == ' ' || *p == '\t'); p++) {
        /* void */
    }

    return p < end ? p : NULL;
}


static int
json_str(const u_char *m, size_t len, const char *key, const u_char **v,
    size_t *vlen)
{
    const u_char  *p, *end;

    p = json_field(m, len, key);

    if (p == NULL || *p != '"') {
        return -1;
    }

    end = m + len;
    *v = ++p;

    while (p < end && *p != '"') {
        p += *p == '\\' ? 2 : 1;
    }

    if (p >= end) {
        return -1;
    }

    *vlen = (size_t) (p - *v);

    return 0;
}


static int
json_int(const u_char *m, size_t len, const char *key, int64_t *v)
{
    int            neg, digits;
    int64_t        n;
    const u_char  *p, *end;

    p = json_field(m, len, key);

    if (p == NULL) {
        return -1;
    }

    end = m + len;
    neg = *p == '-';
    p += neg;
    n = 0;
    digits = 0;

    while (p < end && *p >= '0' && *p <= '9') {
        n = n * 10 + (*p++ - '0');
        digits++;
    }

    if (digits == 0) {
        return -1;
    }

    *v = neg ? -n : n;

    return 0;
}


static int
is(const u_char *v, size_t len, const char *s)
{
    return strlen(s) == len && memcmp(v, s, len) == 0;
}


static void
chat_request(conn_t *c, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ws_text_add(&c->out, ws_rnd(&rng), fmt, args);
    va_end(args);
}


/* a send with ref k, timed from "at"; -1 when the connection is full */

static int
chat_send(conn_t *c, uint64_t at)
{
    int        n;
    char      *buf;
    size_t     size;
    uint64_t   k;
    unsigned   slot;

    k = c->next_k;
    slot = (unsigned) (k % CHAT_SLOTS);

    if (c->state != st_open || c->unacked >= CHAT_UNACKED
        || c->slot_at[slot] != 0)
    {
        return -1;
    }

    size = strlen(chat_body) + strlen(sessions[c->session].slug) + 128;
    buf = malloc(size);

    if (buf == NULL) {
        bench_die("out of memory");
    }

    n = snprintf(buf, size,
                 "{\"op\":\"send\",\"session\":\"%s\",\"body\":\"%s\","
                 "\"clientMsgId\":\"m%llu\",\"ref\":%llu}",
                 sessions[c->session].slug, chat_body,
                 (unsigned long long) k, (unsigned long long) k);

    send_frame(c, 0x1, (u_char *) buf, (size_t) n);
    free(buf);

    c->slot_at[slot] = at ? at : 1;
    c->slot_k[slot] = k;
    c->next_k++;
    c->unacked++;
    n_sent++;

    return 0;
}


static void
session_ack(session_t *s, int64_t seq)
{
    size_t  cap;

    s->acked++;

    if (seq <= 0) {
        s->dup_seq++;
        return;
    }

    if ((size_t) seq >= s->seen_cap) {
        cap = s->seen_cap ? s->seen_cap : 4096;

        while (cap <= (size_t) seq) {
            cap *= 2;
        }

        s->seen = realloc(s->seen, cap);

        if (s->seen == NULL) {
            bench_die("out of memory");
        }

        memset(s->seen + s->seen_cap, 0, cap - s->seen_cap);
        s->seen_cap = cap;
    }

    if (s->seen[seq]) {
        s->dup_seq++;
    }

    s->seen[seq] = 1;

    if (seq > s->max_seq) {
        s->max_seq = seq;
    }
}


/* the send of ref "ref" is answered (ack or error): its send time, or 0 */

static uint64_t
chat_release(conn_t *c, int64_t ref)
{
    unsigned  slot;
    uint64_t  at;

    if (ref <= 0 || c->slot_at == NULL) {
        return 0;
    }

    slot = (unsigned) ((uint64_t) ref % CHAT_SLOTS);

    if (c->slot_at[slot] == 0 || c->slot_k[slot] != (uint64_t) ref) {
        return 0;
    }

    at = c->slot_at[slot];
    c->slot_at[slot] = 0;
    c->unacked--;

    return at;
}


static void
chat_ack(conn_t *c, const u_char *m, size_t len)
{
    int64_t    ref, seq;
    uint64_t   at, now, lat;
    const u_char  *v;
    static unsigned  reported;

    if (json_int(m, len, "ref", &ref) == -1
        || json_int(m, len, "seq", &seq) == -1)
    {
        n_bad_ack++;
        return;
    }

    at = chat_release(c, ref);

    if (at == 0) {
        if (reported++ < 5) {
            fprintf(stderr, "wsload: connection %u: ack of ref %lld that "
                    "is not in flight\n", c->id, (long long) ref);
        }

        n_bad_ack++;
        return;
    }

    now = ws_now_us();
    n_acks++;

    if (now >= t_start && now <= t_end) {
        n_acks_window++;
    }

    if (at >= t_start) {
        lat = now > at ? now - at : 0;
        hist[ws_hist_index(lat)]++;
        lat_count++;

        if (lat > lat_max) {
            lat_max = lat;
        }
    }

    v = json_field(m, len, "duplicate");

    if (v && *v == 't') {
        n_dup_flag++;
    }

    if (seq <= c->last_ack_seq) {
        n_ack_order++;
    }

    c->last_ack_seq = seq;
    session_ack(&sessions[c->session], seq);

    if (sending && opt.rate == 0) {
        chat_send(c, ws_now_us());
    }
}


static void
chat_error(conn_t *c, const u_char *m, size_t len)
{
    int            i;
    size_t         vlen;
    int64_t        ref;
    const u_char  *v;
    static unsigned  reported;

    n_err_replies++;

    if (reported++ < 5) {
        fprintf(stderr, "wsload: connection %u: %.*s\n", c->id,
                (int) (len > 300 ? 300 : len), m);
    }

    if (json_str(m, len, "code", &v, &vlen) == -1) {
        v = (const u_char *) "?";
        vlen = 1;
    }

    if (vlen >= sizeof(err_code[0])) {
        vlen = sizeof(err_code[0]) - 1;
    }

    for (i = 0; i < CHAT_CODES - 1; i++) {
        if (err_code[i][0] == '\0') {
            memcpy(err_code[i], v, vlen);
            err_code[i][vlen] = '\0';
            break;
        }

        if (is(v, vlen, err_code[i])) {
            break;
        }
    }

    err_count[i]++;

    if (c->setup) {
        c->setup = 0;
        n_setup_err++;
        return;
    }

    if (json_int(m, len, "ref", &ref) == 0 && chat_release(c, ref)
        && sending && opt.rate == 0)
    {
        chat_send(c, ws_now_us());
    }
}


static void
chat_event(conn_t *c, const u_char *m, size_t len)
{
    int64_t   seq;
    uint64_t  now;

    if (json_int(m, len, "seq", &seq) == -1) {
        n_other++;
        return;
    }

    n_events++;
    now = ws_now_us();

    if (now >= t_start && now <= t_end) {
        n_events_window++;
    }

    if (seq <= c->last_event_seq) {
        n_event_order++;
    }

    c->last_event_seq = seq;
}


static void
chat_created(conn_t *c, const u_char *m, size_t len)
{
    size_t         vlen;
    session_t     *s;
    const u_char  *v, *p;

    s = &sessions[c->session];
    p = json_field(m, len, "session");

    if (!c->setup || p == NULL
        || json_str(p, len - (size_t) (p - m), "id", &v, &vlen) == -1
        || vlen == 0 || vlen >= sizeof(s->slug))
    {
        fprintf(stderr, "wsload: unexpected reply: %.*s\n",
                (int) (len > 300 ? 300 : len), m);
        n_setup_err++;
        c->setup = 0;
        return;
    }

    memcpy(s->slug, v, vlen);
    s->slug[vlen] = '\0';
    s->created = 1;
    c->setup = 0;
    n_created++;
}


/* a text message from the server, or -1 to drop the connection */

static int
chat_text(conn_t *c, const u_char *m, size_t len)
{
    size_t         vlen;
    const u_char  *v;

    if (json_str(m, len, "op", &v, &vlen) == -1) {
        conn_fail(c, &n_proto_err, "a reply without \"op\"");
        return -1;
    }

    if (is(v, vlen, "ack")) {
        chat_ack(c, m, len);

    } else if (is(v, vlen, "message")) {
        chat_event(c, m, len);

    } else if (is(v, vlen, "error")) {
        chat_error(c, m, len);

    } else if (is(v, vlen, "created")) {
        chat_created(c, m, len);

    } else if (is(v, vlen, "joined") && c->setup) {
        c->setup = 0;
        n_joined++;

    } else {
        n_other++;
    }

    return 0;
}


static int
chat_data(conn_t *c, unsigned op, unsigned fin, u_char *payload, size_t len)
{
    int  rc;

    if (op == 0x2 || (op == 0) != c->in_message) {
        conn_fail(c, &n_proto_err, "unexpected data frame");
        return -1;
    }

    if (fin && !c->in_message) {
        return chat_text(c, payload, len);
    }

    if (c->msg_len + len > c->msg_cap) {
        c->msg_cap = (c->msg_len + len) * 2;
        c->msg = realloc(c->msg, c->msg_cap);

        if (c->msg == NULL) {
            bench_die("out of memory");
        }
    }

    memcpy(c->msg + c->msg_len, payload, len);
    c->msg_len += len;
    c->in_message = !fin;

    if (!fin) {
        return 0;
    }

    rc = chat_text(c, c->msg, c->msg_len);
    c->msg_len = 0;

    return rc;
}


/* server frames in c->in: returns -1 to drop the connection */

static int
frames(conn_t *c)
{
    u_char      *p, *payload;
    size_t       i, h, avail;
    uint64_t     len, lat;
    unsigned     op, fin;
    ws_frame_t   f;

    p = c->in;
    avail = c->in_len;

    while (avail >= 2) {
        h = ws_frame_parse(p, avail, &f);
        fin = f.fin;
        op = f.opcode;

        if (f.rsv || f.masked) {
            conn_fail(c, &n_proto_err, "reserved bits or mask from server");
            return -1;
        }

        if (h == 0) {
            break;
        }

        len = f.len;

        if (len > (1 << 26)) {
            conn_fail(c, &n_proto_err, "frame too big");
            return -1;
        }

        if (avail < h + len) {
            break;
        }

        payload = p + h;

        switch (op) {

        case 0x0:
        case 0x1:
        case 0x2:
            if (opt.chat) {
                if (chat_data(c, op, fin, payload, (size_t) len) == -1) {
                    return -1;
                }

                break;
            }

            if (!c->waiting || (op == 0) != c->in_message || op == 0x2) {
                conn_fail(c, &n_mismatch, "unexpected data frame");
                return -1;
            }

            if (c->got + len > opt.size) {
                conn_fail(c, &n_mismatch, "echo too long");
                return -1;
            }

            for (i = 0; i < len; i++) {
                if (payload[i] != payload_byte(c->id, c->seq, c->got + i)) {
                    conn_fail(c, &n_mismatch, "echo differs");
                    return -1;
                }
            }

            c->got += len;
            c->in_message = !fin;

            if (fin) {
                if (c->got != opt.size) {
                    conn_fail(c, &n_mismatch, "echo too short");
                    return -1;
                }

                c->waiting = 0;
                c->seq++;
                lat = ws_now_us() - c->sent_at;

                if (measuring) {
                    n_roundtrips++;
                    hist[ws_hist_index(lat)]++;
                    lat_count++;

                    if (lat > lat_max) {
                        lat_max = lat;
                    }
                }

                if (measuring && c->state == st_open) {
                    send_message(c);
                }
            }

            break;

        case 0x8:
            if (c->state != st_closing) {
                n_server_close++;
                send_frame(c, 0x8, payload, len >= 2 ? 2 : 0);
                conn_flush(c);
                fprintf(stderr, "wsload: connection %u: server closed "
                        "(%u)\n", c->id,
                        len >= 2 ? (unsigned) (payload[0] << 8 | payload[1])
                                 : 1005);
            }

            conn_free(c);
            return -1;

        case 0x9:
            send_frame(c, 0xa, payload, len);
            break;

        case 0xa:
            break;

        default:
            conn_fail(c, &n_proto_err, "unknown opcode from server");
            return -1;
        }

        p += h + len;
        avail -= h + len;
    }

    memmove(c->in, p, avail);
    c->in_len = avail;

    return 0;
}


static void
conn_read(conn_t *c)
{
    ssize_t  n;
    int      rc;

    for ( ;; ) {
        if (c->in_cap - c->in_len < 4096 + 1) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 8192;
            c->in = realloc(c->in, c->in_cap);

            if (c->in == NULL) {
                bench_die("out of memory");
            }
        }

        n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, 0);

        if (n == -1) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }

            conn_fail(c, c->state == st_open ? &n_proto_err
                                             : &n_handshake_err,
                      strerror(errno));
            return;
        }

        if (n == 0) {
            if (c->state == st_closing) {
                n_unclean++;
                conn_free(c);

            } else {
                conn_fail(c, c->state == st_open ? &n_proto_err
                                                 : &n_handshake_err,
                          "connection closed by server");
            }

            return;
        }

        c->in_len += (size_t) n;

        if (c->state == st_connecting || c->state == st_handshake) {
            rc = handshake(c);

            if (rc == -1) {
                conn_fail(c, &n_handshake_err, "handshake failed");
                return;
            }

            if (rc == 0) {
                continue;
            }

            if (measuring && !opt.chat) {
                send_message(c);
            }
        }

        if (frames(c) == -1) {
            return;
        }
    }

    if (c->fd != -1 && conn_flush(c) == -1) {
        conn_fail(c, &n_proto_err, strerror(errno));
    }
}


static void
loop(uint64_t until, int (*done)(void))
{
    int                  n, i, timeout;
    conn_t              *c;
    uint64_t             t;
    struct epoll_event   evs[512];

    for ( ;; ) {
        t = ws_now_us();

        if (stop || t >= until || (done && done())) {
            return;
        }

        timeout = (int) ((until - t) / 1000) + 1;

        if (timeout > 100) {
            timeout = 100;
        }

        if (tick) {
            tick();
            timeout = 1;
        }

        n = bench_epoll_wait(ep, evs, 512, timeout);

        for (i = 0; i < n; i++) {
            c = evs[i].data.ptr;

            if (c->fd == -1) {
                continue;
            }

            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            {
                if (c->state == st_connecting
                    && (evs[i].events & EPOLLERR))
                {
                    int        err;
                    socklen_t  len = sizeof(int);

                    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                    conn_fail(c, &n_connect_err, strerror(err));
                    continue;
                }

                conn_read(c);

                if (c->fd == -1) {
                    continue;
                }
            }

            if (evs[i].events & EPOLLOUT) {
                if (c->state == st_connecting) {
                    c->state = st_handshake;
                }

                if (conn_flush(c) == -1) {
                    conn_fail(c, c->state == st_open ? &n_proto_err
                                                     : &n_connect_err,
                              strerror(errno));
                }
            }
        }
    }
}


static unsigned  next_conn;


static unsigned
n_failed(void)
{
    return n_connect_err + n_handshake_err + n_proto_err + n_mismatch
           + n_server_close;
}


static int
all_opened(void)
{
    unsigned  pending;

    /* keep at most opt.inflight handshakes in progress */
    pending = n_started - n_closed - n_established;

    while (next_conn < total_conns && pending < opt.inflight) {
        conn_start(next_conn++);
        pending++;
    }

    return next_conn == total_conns
           && n_established + n_closed == n_started;
}


static int
all_closed(void)
{
    return n_closed == n_started;
}


static void
open_all(double timeout)
{
    uint64_t  t0, t;

    t0 = ws_now_us();
    loop(t0 + (uint64_t) (timeout * 1e6), all_opened);
    t = ws_now_us();

    printf("established %u of %u connections in %.2f s", n_established,
           total_conns, (double) (t - t0) / 1e6);

    if (n_failed()) {
        printf(" (failed: connect %u, handshake %u)", n_connect_err,
               n_handshake_err);
    }

    printf("\n");
    fflush(stdout);
}


static void
close_all(void)
{
    unsigned  i;
    conn_t   *c;
    u_char    code[2] = { 0x03, 0xe8 };

    for (i = 0; i < next_conn; i++) {
        c = &conns[i];

        if (c->state == st_open) {
            c->state = st_closing;
            send_frame(c, 0x8, code, 2);

            if (conn_flush(c) == -1) {
                conn_fail(c, &n_proto_err, strerror(errno));
            }

        } else if (c->state != st_done) {
            conn_free(c);
        }
    }

    loop(ws_now_us() + 5000000, all_closed);

    for (i = 0; i < next_conn; i++) {
        if (conns[i].state != st_done) {
            n_unclean++;
            conn_free(&conns[i]);
        }
    }
}


static void
raise_nofile(unsigned need)
{
    struct rlimit  rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
        bench_die("getrlimit: %s", strerror(errno));
    }

    if (rl.rlim_cur >= need) {
        return;
    }

    if (rl.rlim_max < need) {
        rl.rlim_max = need;     /* works as root */
    }

    rl.rlim_cur = rl.rlim_max;

    if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    getrlimit(RLIMIT_NOFILE, &rl);

    if (rl.rlim_cur < need) {
        bench_die("RLIMIT_NOFILE is %lu, %u needed",
                  (unsigned long) rl.rlim_cur, need);
    }
}


static void
on_signal(int signo)
{
    (void) signo;
    stop = 1;
}

/* chat: the open loop; sends are due at t_send + i / rate */

static void
rate_tick(void)
{
    unsigned  tried;
    uint64_t  due, at;
    conn_t   *c;
    static unsigned  rr;

    if (!sending) {
        return;
    }

    due = (uint64_t) ((double) (ws_now_us() - t_send) * opt.rate / 1e6) + 1;

    while (n_scheduled < due) {
        at = t_send + (uint64_t) ((double) n_scheduled * 1e6 / opt.rate);

        for (tried = 0; tried < opt.conns; tried++) {
            c = &conns[rr++ % opt.conns];

            if (chat_send(c, at) == 0) {
                break;
            }
        }

        if (tried == opt.conns) {
            n_backlog++;        /* every sender is full: try again later */
            return;
        }

        n_scheduled++;

        if (conn_flush(c) == -1) {
            conn_fail(c, &n_proto_err, strerror(errno));
        }
    }
}


static int
chat_created_all(void)
{
    return n_created + n_setup_err >= opt.sessions;
}


static unsigned  chat_joining;

static int
chat_joined_all(void)
{
    return n_joined + n_setup_err >= chat_joining;
}


static int
chat_drained(void)
{
    unsigned  i;

    for (i = 0; i < opt.conns; i++) {
        if (conns[i].state == st_open && conns[i].unacked) {
            return 0;
        }
    }

    return 1;
}


static void
flush_or_fail(conn_t *c)
{
    if (conn_flush(c) == -1) {
        conn_fail(c, &n_proto_err, strerror(errno));
    }
}


/* returns the number of failed checks */

static unsigned
chat_run(void)
{
    unsigned   i, j, failed, bad_sessions, unacked;
    uint64_t   gaps, dups, acked, seqs;
    double     secs;
    conn_t    *c;
    session_t *s;

    chat_body = malloc(opt.size + 1);

    if (chat_body == NULL) {
        bench_die("out of memory");
    }

    for (i = 0; i < opt.size; i++) {
        chat_body[i] = (char) ('a' + i % 26);
    }

    chat_body[opt.size] = '\0';

    /* the first sender of each session creates it */
    for (i = 0; i < opt.sessions; i++) {
        c = &conns[i];

        if (c->state != st_open) {
            n_setup_err++;
            continue;
        }

        c->setup = 1;
        chat_request(c, "{\"op\":\"create\",\"title\":\"bench %u\","
                     "\"isPublic\":true,\"ref\":\"create\"}", i);
        flush_or_fail(c);
    }

    loop(ws_now_us() + 30000000, chat_created_all);

    if (n_created < opt.sessions) {
        printf("created %u of %u sessions\n", n_created, opt.sessions);
        return 1;
    }

    for (i = 0; i < total_conns; i++) {
        c = &conns[i];

        if (c->state != st_open) {
            continue;
        }

        c->setup = 1;
        chat_joining++;
        chat_request(c, "{\"op\":\"join\",\"session\":\"%s\","
                     "\"ref\":\"join\"}", sessions[c->session].slug);
        flush_or_fail(c);
    }

    loop(ws_now_us() + 60000000, chat_joined_all);

    printf("sessions          %u created, %u connections joined "
           "(%u senders, %u subscribers)\n", n_created, n_joined,
           opt.conns, total_conns - opt.conns);
    fflush(stdout);

    if (n_setup_err || n_joined < chat_joining) {
        printf("setup failed: %u errors, %u of %u joins\n", n_setup_err,
               n_joined, chat_joining);
        return 1;
    }

    /* send */
    sending = 1;
    t_send = ws_now_us();
    t_start = t_send + (uint64_t) (opt.warmup * 1e6);
    t_end = t_start + (uint64_t) (opt.duration * 1e6);

    if (opt.rate > 0) {
        tick = rate_tick;

    } else {
        for (i = 0; i < opt.conns; i++) {
            c = &conns[i];

            for (j = 0; j < opt.window; j++) {
                if (chat_send(c, t_send) == -1) {
                    break;
                }
            }

            flush_or_fail(c);
        }
    }

    loop(t_end, NULL);

    sending = 0;
    tick = NULL;
    secs = (double) (t_end - t_start) / 1e6;

    loop(ws_now_us() + (uint64_t) (opt.drain * 1e6), chat_drained);

    unacked = 0;

    for (i = 0; i < opt.conns; i++) {
        unacked += conns[i].unacked;
    }

    /* the acked seqs of each session: unique and exactly 1..max */
    bad_sessions = 0;
    gaps = dups = acked = seqs = 0;

    for (i = 0; i < opt.sessions; i++) {
        s = &sessions[i];
        acked += s->acked;
        dups += s->dup_seq;
        seqs += (uint64_t) s->max_seq;

        for (j = 1; j <= (unsigned) s->max_seq; j++) {
            if (!s->seen[j]) {
                gaps++;
            }
        }

        if (s->dup_seq || (uint64_t) s->max_seq != s->acked) {
            bad_sessions++;
        }
    }

    printf("mode              %s\n",
           opt.rate > 0 ? "open loop" : "closed loop");

    if (opt.rate > 0) {
        printf("target rate       %.0f msg/s\n", opt.rate);

    } else {
        printf("window            %u sends in flight per sender\n",
               opt.window);
    }

    printf("body size         %zu bytes\n", opt.size);
    printf("duration          %.2f s (after %.2f s warm-up)\n", secs,
           opt.warmup);
    printf("sent              %llu\n", (unsigned long long) n_sent);
    printf("acked             %llu\n", (unsigned long long) n_acks);
    printf("acks/s            %.0f\n", (double) n_acks_window / secs);
    printf("latency p50       %.3f ms\n", (double) hist_percentile(50) / 1000);
    printf("latency p99       %.3f ms\n", (double) hist_percentile(99) / 1000);
    printf("latency max       %.3f ms\n", (double) lat_max / 1000);
    printf("message events    %llu (%.0f/s)\n", (unsigned long long) n_events,
           (double) n_events_window / secs);

    printf("error replies     %llu", (unsigned long long) n_err_replies);

    for (i = 0; i < CHAT_CODES && err_code[i][0]; i++) {
        printf("%s%s %llu", i ? ", " : " (", err_code[i],
               (unsigned long long) err_count[i]);
    }

    printf("%s\n", err_code[0][0] ? ")" : "");

    if (n_backlog) {
        printf("open loop stalls  %llu (every sender had %d unacked)\n",
               (unsigned long long) n_backlog, CHAT_UNACKED);
    }

    printf("seq check         %s: %llu acked, %llu distinct seqs, max seqs "
           "summed %llu, %llu gaps, %llu duplicates, %u bad sessions\n",
           (bad_sessions || gaps || dups || n_bad_ack || n_ack_order
            || n_dup_flag || unacked) ? "FAILED" : "ok",
           (unsigned long long) acked, (unsigned long long) (acked - dups),
           (unsigned long long) seqs, (unsigned long long) gaps,
           (unsigned long long) dups, bad_sessions);

    failed = 0;

    if (n_bad_ack || n_ack_order || n_dup_flag) {
        printf("bad acks          %llu not in flight, %llu out of order, "
               "%llu flagged duplicate\n", (unsigned long long) n_bad_ack,
               (unsigned long long) n_ack_order,
               (unsigned long long) n_dup_flag);
        failed++;
    }

    if (n_event_order) {
        printf("events out of order %llu\n",
               (unsigned long long) n_event_order);
        failed++;
    }

    if (unacked) {
        printf("unacked           %u sends got no answer within %.0f s\n",
               unacked, opt.drain);
        failed++;
    }

    if (bad_sessions || gaps || dups || n_err_replies) {
        failed++;
    }

    return failed;
}


static void
usage(void)
{
    fprintf(stderr,
        "usage: wsload --url ws://HOST:PORT/PATH [--mode echo|idle|chat]\n"
        "              [--conns N] [--duration S] [--size B] [--hold S]\n"
        "              [--src-ips K] [--inflight N]\n"
        "       chat:  [--sessions S] [--window W | --rate R]\n"
        "              [--subscribers K] [--warmup S] [--drain S]\n"
        "              [--user-prefix P]\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int        ch;
    char       accept[40];
    uint64_t   t0, t1;
    double     secs;
    unsigned   i, chat_failed;
    const char *url;

    static const struct option  longopts[] = {
        { "mode", required_argument, NULL, 'm' },
        { "conns", required_argument, NULL, 'c' },
        { "duration", required_argument, NULL, 'd' },
        { "size", required_argument, NULL, 's' },
        { "url", required_argument, NULL, 'u' },
        { "hold", required_argument, NULL, 'H' },
        { "src-ips", required_argument, NULL, 'S' },
        { "inflight", required_argument, NULL, 'i' },
        { "sessions", required_argument, NULL, 'n' },
        { "window", required_argument, NULL, 'w' },
        { "rate", required_argument, NULL, 'r' },
        { "subscribers", required_argument, NULL, 'k' },
        { "warmup", required_argument, NULL, 'W' },
        { "drain", required_argument, NULL, 'D' },
        { "user-prefix", required_argument, NULL, 'p' },
        { NULL, 0, NULL, 0 }
    };

    /* the RFC 6455, 1.3 example */
    ws_accept("dGhlIHNhbXBsZSBub25jZQ==", accept);

    if (strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != 0) {
        bench_die("SHA-1 self test failed: %s", accept);
    }

    chat_failed = 0;
    opt.mode = "echo";
    opt.conns = 100;
    opt.duration = 10;
    opt.hold = 10;
    opt.size = 32;
    opt.inflight = 256;
    opt.sessions = 1;
    opt.window = 16;
    opt.warmup = 0.5;
    opt.drain = 10;
    opt.user_prefix = NULL;
    url = NULL;

    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm': opt.mode = optarg; break;
        case 'c': opt.conns = (unsigned) atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 's': opt.size = (size_t) atol(optarg); break;
        case 'u': url = optarg; break;
        case 'H': opt.hold = atof(optarg); break;
        case 'S': opt.src_ips = (unsigned) atoi(optarg); break;
        case 'i': opt.inflight = (unsigned) atoi(optarg); break;
        case 'n': opt.sessions = (unsigned) atoi(optarg); break;
        case 'w': opt.window = (unsigned) atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'k': opt.subscribers = (unsigned) atoi(optarg); break;
        case 'W': opt.warmup = atof(optarg); break;
        case 'D': opt.drain = atof(optarg); break;
        case 'p': opt.user_prefix = optarg; break;
        default: usage();
        }
    }

    if (url == NULL || opt.conns == 0 || opt.inflight == 0
        || (strcmp(opt.mode, "echo") != 0 && strcmp(opt.mode, "idle") != 0
            && strcmp(opt.mode, "chat") != 0))
    {
        usage();
    }

    opt.chat = strcmp(opt.mode, "chat") == 0;
    total_conns = opt.conns;

    if (opt.chat) {
        if (opt.sessions == 0 || opt.sessions > opt.conns
            || opt.window == 0 || opt.window > CHAT_UNACKED
            || opt.rate < 0)
        {
            bench_die("chat needs 1 <= --sessions <= --conns and "
                "1 <= --window <= %d", CHAT_UNACKED);
        }

        total_conns += opt.subscribers * opt.sessions;
    }

    bench_parse_url(url, &opt.addr, opt.host, sizeof(opt.host),
                    opt.hostport, sizeof(opt.hostport),
                    opt.path, sizeof(opt.path));
    raise_nofile(total_conns + 64);

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    conns = calloc(total_conns, sizeof(conn_t));
    ep = epoll_create1(EPOLL_CLOEXEC);

    if (conns == NULL || ep == -1) {
        bench_die("cannot allocate %u connections", total_conns);
    }

    rng ^= (uint32_t) getpid() ^ (uint32_t) ws_now_us();

    if (opt.chat) {
        static char  prefix[32];

        if (opt.user_prefix == NULL) {
            snprintf(prefix, sizeof(prefix), "wsload-%08x-", ws_rnd(&rng));
            opt.user_prefix = prefix;
        }

        sessions = calloc(opt.sessions, sizeof(session_t));

        if (sessions == NULL) {
            bench_die("out of memory");
        }

        for (i = 0; i < opt.conns; i++) {
            conns[i].slot_at = calloc(CHAT_SLOTS, sizeof(uint64_t));
            conns[i].slot_k = calloc(CHAT_SLOTS, sizeof(uint64_t));

            if (conns[i].slot_at == NULL || conns[i].slot_k == NULL) {
                bench_die("out of memory");
            }
        }
    }

    open_all(60);

    if (opt.chat) {
        chat_failed = n_established < total_conns ? 1 : chat_run();

    } else if (strcmp(opt.mode, "idle") == 0) {
        printf("holding %u idle connections for %.0f s\n", n_established,
               opt.hold);
        fflush(stdout);

        loop(ws_now_us() + (uint64_t) (opt.hold * 1e6), NULL);

        printf("still open after the hold: %u\n", n_established);

    } else {
        measuring = 1;
        t0 = ws_now_us();

        for (i = 0; i < opt.conns; i++) {
            if (conns[i].state == st_open) {
                send_message(&conns[i]);

                if (conn_flush(&conns[i]) == -1) {
                    conn_fail(&conns[i], &n_proto_err, strerror(errno));
                }
            }
        }

        loop(t0 + (uint64_t) (opt.duration * 1e6), NULL);

        measuring = 0;
        t1 = ws_now_us();
        secs = (double) (t1 - t0) / 1e6;

        printf("connections       %u\n", opt.conns);
        printf("message size      %zu bytes\n", opt.size);
        printf("duration          %.2f s\n", secs);
        printf("round trips       %llu\n", (unsigned long long) n_roundtrips);
        printf("round trips/s     %.0f\n", (double) n_roundtrips / secs);
        printf("latency p50       %.3f ms\n",
               (double) hist_percentile(50) / 1000);
        printf("latency p99       %.3f ms\n",
               (double) hist_percentile(99) / 1000);
        printf("latency max       %.3f ms\n", (double) lat_max / 1000);
    }

    close_all();

    printf("errors            %u (connect %u, handshake %u, protocol %u, "
           "echo mismatch %u, closed by server %u)\n",
           n_failed(), n_connect_err, n_handshake_err, n_proto_err,
           n_mismatch, n_server_close);

    if (n_unclean) {
        printf("closes without the server's close frame: %u\n", n_unclean);
    }

    {
        struct rusage  ru;

        if (getrusage(RUSAGE_SELF, &ru) == 0) {
            printf("wsload cpu        %.3f s (user %.3f, sys %.3f)\n",
                   (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
                   + (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec)
                     / 1e6,
                   (double) ru.ru_utime.tv_sec
                   + (double) ru.ru_utime.tv_usec / 1e6,
                   (double) ru.ru_stime.tv_sec
                   + (double) ru.ru_stime.tv_usec / 1e6);
        }
    }

    return (n_failed() || chat_failed) ? 1 : 0;
}
