/*
 * Copyright (C) ngx_collab authors
 */


/*
 * fanload: the fan-out load generator of issue 8, for ngx_collab and the
 * systems it is compared with.  One process, one epoll loop, its own
 * client side of RFC 6455 (bench/wsclient.c, shared with bench/wsload.c),
 * thousands of connections.
 *
 * R rooms ("sessions", "channels"), each with K subscriber connections
 * and P publishers.  With --shared the P publishers are the first P
 * subscribers of the room (everyone talks); without it they are extra
 * connections that do not count as subscribers.  The publishers together
 * send --rate messages/s (open loop, spread evenly); each body holds the
 * publisher, a sequence number and the time it was due:
 *
 *     p<publisher>s<seq>t<due, us>.xxxxxxx...   (--size bytes)
 *
 * Each receiver records due->received latency in a histogram (so that a
 * stalled server or client cannot hide its queueing) and checks, per
 * publisher of its room, that seqs arrive in order, once: "lost" is what
 * the publishers had confirmed but a subscriber never got, "dup" a seq
 * received again, "reorder" a seq older than one already received.
 *
 * Protocols (--proto):
 *   collab  collab.v1 (docs/PROTOCOL.md): the first connection of a room
 *           creates a public session, everyone joins it; a publisher's
 *           send is confirmed by its ack; "message" events are received.
 *   nchan   Nchan: subscribers are WebSocket connections to
 *           <url>?id=<room>; publishers POST the body to
 *           <pub-url>?id=<room> over a pool of keep-alive HTTP/1.1
 *           connections (pipelined); a 2xx reply confirms.
 *   sio     Socket.IO 4 (Engine.IO v4 over WebSocket only, no polling):
 *           "40" connects the main namespace, 42["j",room] joins (the
 *           server answers 42["joined"]), 42["p",room,body] publishes,
 *           42["m",body] is a delivery; pings ("2") are answered ("3").
 *   ws      the bare Node "ws" server of bench/peers/node/ws-server.js:
 *           "J<room>" joins (answered "J"), "P<room> <body>" publishes,
 *           a delivery is the body alone.
 * --url may be given several times (Socket.IO processes behind the
 * Redis adapter): connections are spread over them round-robin.
 *
 * --steps r1,r2,... runs the rates one after the other, --duration
 * seconds each after --settle seconds (saturation); --cpu-pids a,b,...
 * sums user+sys CPU of those processes and their children per step;
 * --stop-flat ends the steps when one brought < 5 % more deliveries/s.
 * --idle H: no publishing; once everyone joined print "ready" and hold
 * the connections H seconds (memory per connection).
 *
 * Output: "key value" lines; one "step" line per rate.  Exit status 1
 * when a connection failed, a delivery was lost, duplicated or
 * reordered, or a publish was refused.
 */


#define _GNU_SOURCE

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
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


const char  bench_name[] = "fanload";


#define MAX_URLS       8
#define MAX_STEPS      32
#define MAX_PIDS       16
#define COLLAB_UNACKED 256
#define HTTP_FIFO      65536



enum { P_COLLAB, P_NCHAN, P_SIO, P_WS };

enum { st_connecting = 0, st_handshake, st_open, st_done };


typedef struct {
    int            fd;
    int            state;
    int            http;        /* an Nchan publisher connection */
    int            want_write;
    unsigned       id;
    unsigned       room;
    unsigned       url;
    int            is_sub;
    int            joined;
    int            join_sent;
    int            pub;         /* its publisher index, or -1 */
    char           key[25];

    bench_buf_t    out;
    bench_buf_t    in;
    bench_buf_t    msg;         /* a fragmented message */
    unsigned       msg_op;

    uint32_t      *last;        /* per publisher of the room: last seq */
    unsigned       unacked;     /* collab */

    uint32_t      *fifo;        /* http: publisher of each request */
    size_t         fifo_head, fifo_tail;
} conn_t;


typedef struct {
    unsigned       room;
    conn_t        *c;
    uint32_t       seq;         /* last sent */
    uint64_t       confirmed;
    uint64_t       refused;
} pub_t;


typedef struct {
    char           slug[80];
    int            created;
    int            create_sent;
} room_t;


static struct {
    int            proto;
    unsigned       rooms, subs, pubs;
    int            shared;
    int            stop_flat;
    double         rate;
    double         steps[MAX_STEPS];
    unsigned       nsteps;
    double         duration, settle, drain, idle, setup_timeout;
    size_t         size;
    unsigned       src_ips, inflight, http_conns;
    unsigned       nurls;
    struct sockaddr_in  addr[MAX_URLS];
    char           hostport[MAX_URLS][300];
    char           path[MAX_URLS][1024];
    struct sockaddr_in  pub_addr;
    char           pub_hostport[300];
    char           pub_path[1024];
    int            npids;
    int            pids[MAX_PIDS];
    const char    *prefix;
} opt;


static conn_t    *conns;        /* WebSocket connections, then http */
static unsigned   n_ws, n_http, per_room;
static pub_t     *pubs;
static unsigned   n_pubs;
static room_t    *rooms;
static int        ep;
static uint32_t   rng = 0x2545f491;
static volatile sig_atomic_t  stop;

static unsigned   n_established, n_joined, n_need_join, n_started;
static unsigned   n_conn_fail, n_server_close;
static uint64_t   n_sent, n_skipped, n_refused, n_recv, n_recv_ok;
static uint64_t   n_dup, n_reorder, n_wrong, n_other;
static uint64_t   n_step_recv;
static uint64_t   t_window_start, t_window_end;

static uint64_t   hists[MAX_STEPS][WS_HIST_BUCKETS];
static uint64_t   lat_counts[MAX_STEPS], lat_maxs[MAX_STEPS];
static uint64_t  *hist, lat_count, lat_max;
static uint64_t   win_start[MAX_STEPS], win_end[MAX_STEPS];
static unsigned   n_windows;
static uint64_t   lag_hist_max, lag_over_1ms, lag_count;

static char      *pad;
static char       step_line[MAX_STEPS][512];


static double
hist_ms(double pct)
{
    return (double) ws_hist_percentile(hist, lat_count, lat_max, pct)
           / 1000.0;
}


static void
conn_update(conn_t *c)
{
    struct epoll_event  ev;
    int                 want;

    want = c->out.len > 0 || c->state == st_connecting;

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
conn_fail(conn_t *c, const char *what)
{
    static unsigned  reported;

    if (c->state == st_done) {
        return;
    }

    if (reported++ < 5) {
        fprintf(stderr, "fanload: connection %u: %s\n", c->id, what);
    }

    n_conn_fail++;

    if (c->state == st_open && !c->http) {
        n_established--;
    }

    if (c->fd != -1) {
        close(c->fd);
        c->fd = -1;
    }

    c->state = st_done;
}


static void
conn_flush(conn_t *c)
{
    ssize_t  n;
    size_t   off;

    off = 0;

    while (off < c->out.len) {
        n = send(c->fd, c->out.p + off, c->out.len - off, MSG_NOSIGNAL);

        if (n == -1) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }

            conn_fail(c, strerror(errno));
            return;
        }

        off += (size_t) n;
    }

    if (off) {
        memmove(c->out.p, c->out.p + off, c->out.len - off);
        c->out.len -= off;
    }

    conn_update(c);
}


/* a masked client frame */

static void
send_frame(conn_t *c, unsigned opcode, const u_char *payload, size_t len)
{
    ws_frame_add(&c->out, opcode, payload, len, ws_rnd(&rng));
}


static void
send_text(conn_t *c, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    ws_text_add(&c->out, ws_rnd(&rng), fmt, args);
    va_end(args);
}


static void
room_name(unsigned room, char *name, size_t size)
{
    snprintf(name, size, "%sr%u", opt.prefix, room);
}


/* --- connections ------------------------------------------------------ */

static void
conn_start(conn_t *c)
{
    int                  fd, n;
    char                 req[2048], room[64], query[160];
    const char          *path, *hostport;
    struct sockaddr_in  *dst;
    struct epoll_event   ev;

    n_started++;

    dst = c->http ? &opt.pub_addr : &opt.addr[c->url];

    fd = ws_connect(dst, opt.src_ips, c->id);

    if (fd == -1) {
        conn_fail(c, strerror(errno));
        return;
    }

    c->fd = fd;
    c->state = st_connecting;

    if (!c->http) {
        ws_key(c->key, &rng);

        path = opt.path[c->url];
        hostport = opt.hostport[c->url];
        room_name(c->room, room, sizeof(room));
        query[0] = '\0';

        if (opt.proto == P_COLLAB) {
            snprintf(query, sizeof(query), "%cuser=%su%u",
                     strchr(path, '?') ? '&' : '?', opt.prefix, c->id);

        } else if (opt.proto == P_NCHAN) {
            snprintf(query, sizeof(query), "%cid=%s",
                     strchr(path, '?') ? '&' : '?', room);
        }

        n = ws_request(req, sizeof(req), path, query, hostport, c->key,
                       opt.proto == P_COLLAB
                       ? "Sec-WebSocket-Protocol: collab.v1\r\n" : "");

        bench_buf_add(&c->out, req, (size_t) n);
    }

    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
    ev.data.ptr = c;
    c->want_write = 1;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }
}


static void
conn_joined(conn_t *c)
{
    if (!c->joined) {
        c->joined = 1;
        n_joined++;
    }
}


static void
collab_join(conn_t *c)
{
    if (c->state != st_open || c->join_sent || !rooms[c->room].created) {
        return;
    }

    c->join_sent = 1;
    send_text(c, "{\"op\":\"join\",\"ref\":\"j\",\"session\":\"%s\"}",
              rooms[c->room].slug);
    conn_flush(c);
}


/* the WebSocket is open: subscribe, the protocol's way */

static void
conn_opened(conn_t *c)
{
    char  room[64];

    room_name(c->room, room, sizeof(room));

    switch (opt.proto) {

    case P_COLLAB:
        if (c->id % per_room == 0 && !rooms[c->room].create_sent) {
            rooms[c->room].create_sent = 1;
            send_text(c, "{\"op\":\"create\",\"ref\":\"c\",\"title\":\"%s\","
                      "\"isPublic\":true}", room);

        } else {
            collab_join(c);
        }

        break;

    case P_NCHAN:
        /* subscribed by the upgrade itself */
        conn_joined(c);
        break;

    case P_SIO:
        /* waits for the Engine.IO open packet */
        break;

    case P_WS:
        if (c->is_sub) {
            send_text(c, "J%s", room);

        } else {
            conn_joined(c);
        }

        break;
    }

    conn_flush(c);
}


static int
handshake(conn_t *c)
{
    ssize_t  hlen;

    hlen = ws_reply(c->in.p, c->in.len, c->key);

    if (hlen <= 0) {
        return (int) hlen;
    }

    memmove(c->in.p, c->in.p + hlen, c->in.len - (size_t) hlen);
    c->in.len -= (size_t) hlen;
    c->state = st_open;
    n_established++;

    return 1;
}


/* --- deliveries --------------------------------------------------------- */

static void
delivery(conn_t *c, const u_char *b, size_t len)
{
    char          tmp[64];
    size_t        n;
    uint64_t      pub, seq, due, now, lat;
    unsigned      slot;
    unsigned long long  p, s, t;

    n_recv++;

    if (!c->is_sub) {
        return;
    }

    n = len < sizeof(tmp) - 1 ? len : sizeof(tmp) - 1;
    memcpy(tmp, b, n);
    tmp[n] = '\0';

    if (sscanf(tmp, "p%llus%llut%llu.", &p, &s, &t) != 3) {
        n_wrong++;
        return;
    }

    pub = p;
    seq = s;
    due = t;

    if (pub >= n_pubs || pubs[pub].room != c->room) {
        n_wrong++;
        return;
    }

    slot = (unsigned) (pub % opt.pubs);

    if (seq <= c->last[slot]) {
        if (seq == c->last[slot]) {
            n_dup++;

        } else {
            n_reorder++;
        }

        return;
    }

    c->last[slot] = (uint32_t) seq;
    n_recv_ok++;
    now = ws_now_us();

    if (now >= t_window_start && now < t_window_end) {
        n_step_recv++;
    }

    /* latency into the histogram of the step the message was due in */
    for (slot = 0; slot < n_windows; slot++) {
        if (due >= win_start[slot] && due < win_end[slot]) {
            lat = now > due ? now - due : 0;
            hists[slot][ws_hist_index(lat)]++;
            lat_counts[slot]++;

            if (lat > lat_maxs[slot]) {
                lat_maxs[slot] = lat;
            }

            break;
        }
    }
}


static void
collab_text(conn_t *c, const u_char *m, size_t len)
{
    const u_char  *p, *v, *end;
    size_t         vlen, head;
    int64_t        ref;
    static unsigned  reported;

    head = len < 40 ? len : 40;
    end = m + len;

    if (memmem(m, head, "\"op\":\"message\"", 14)) {
        p = memmem(m, len, "\"body\":\"", 8);

        if (p == NULL) {
            n_other++;
            return;
        }

        delivery(c, p + 8, (size_t) (end - p - 8));
        return;
    }

    if (memmem(m, head, "\"op\":\"ack\"", 10)) {
        p = memmem(m, len, "\"ref\":", 6);

        if (p == NULL || c->pub < 0) {
            n_other++;
            return;
        }

        ref = strtoll((const char *) p + 6, NULL, 10);
        (void) ref;
        c->unacked--;
        pubs[c->pub].confirmed++;
        return;
    }

    if (memmem(m, head, "\"op\":\"joined\"", 13)) {
        conn_joined(c);
        return;
    }

    if (memmem(m, head, "\"op\":\"created\"", 14)) {
        p = memmem(m, len, "\"id\":\"", 6);

        if (p == NULL) {
            bench_die("created without an id");
        }

        v = p + 6;
        vlen = 0;

        while (v + vlen < end && v[vlen] != '"'
               && vlen < sizeof(rooms[0].slug) - 1)
        {
            vlen++;
        }

        memcpy(rooms[c->room].slug, v, vlen);
        rooms[c->room].slug[vlen] = '\0';
        rooms[c->room].created = 1;

        {
            unsigned  i, first;

            first = c->room * per_room;

            for (i = first; i < first + per_room; i++) {
                collab_join(&conns[i]);
            }
        }

        return;
    }

    if (memmem(m, head, "\"op\":\"error\"", 12)) {
        if (reported++ < 5) {
            fprintf(stderr, "fanload: connection %u: %.*s\n", c->id,
                    (int) (len < 300 ? len : 300), m);
        }

        if (c->pub >= 0 && memmem(m, len, "\"ref\":\"", 7) == NULL) {
            c->unacked--;
            pubs[c->pub].refused++;
        }

        n_refused++;
        return;
    }

    /* presence, typing, pong */
    n_other++;
}


static void
sio_text(conn_t *c, const u_char *m, size_t len)
{
    char  room[64];

    if (len == 1 && m[0] == '2') {
        send_frame(c, 0x1, (u_char *) "3", 1);
        return;
    }

    if (len >= 1 && m[0] == '0') {
        send_frame(c, 0x1, (u_char *) "40", 2);
        return;
    }

    if (len >= 2 && m[0] == '4' && m[1] == '0') {
        if (c->is_sub) {
            room_name(c->room, room, sizeof(room));
            send_text(c, "42[\"j\",\"%s\"]", room);

        } else {
            conn_joined(c);
        }

        return;
    }

    if (len > 7 && memcmp(m, "42[\"m\",\"", 8) == 0) {
        delivery(c, m + 8, len - 8);
        return;
    }

    if (len >= 12 && memcmp(m, "42[\"joined\"", 11) == 0) {
        conn_joined(c);
        return;
    }

    n_other++;
}


static void
text_message(conn_t *c, const u_char *m, size_t len)
{
    switch (opt.proto) {

    case P_COLLAB:
        collab_text(c, m, len);
        break;

    case P_SIO:
        sio_text(c, m, len);
        break;

    case P_NCHAN:
        delivery(c, m, len);
        break;

    case P_WS:
        if (len == 1 && m[0] == 'J') {
            conn_joined(c);

        } else {
            delivery(c, m, len);
        }

        break;
    }
}


/* server frames (unmasked) in c->in */

static int
frames(conn_t *c)
{
    u_char      *p, *payload;
    size_t       avail, h, off;
    uint64_t     len;
    unsigned     op, fin;
    ws_frame_t   f;

    off = 0;

    for ( ;; ) {
        p = c->in.p + off;
        avail = c->in.len - off;

        if (avail < 2) {
            break;
        }

        h = ws_frame_parse(p, avail, &f);
        fin = f.fin;
        op = f.opcode;

        if (f.masked) {
            return -1;
        }

        if (h == 0) {
            break;
        }

        len = f.len;

        if (avail < h + len) {
            break;
        }

        payload = p + h;
        off += h + (size_t) len;

        switch (op) {

        case 0x0:
        case 0x1:
        case 0x2:
            if (op != 0) {
                c->msg.len = 0;
                c->msg_op = op;
            }

            if (fin && op != 0) {
                text_message(c, payload, (size_t) len);
                break;
            }

            bench_buf_add(&c->msg, payload, (size_t) len);

            if (fin) {
                text_message(c, c->msg.p, c->msg.len);
                c->msg.len = 0;
            }

            break;

        case 0x8:
            n_server_close++;

            {
                static unsigned  reported;

                if (reported++ < 5) {
                    fprintf(stderr, "fanload: connection %u: closed by "
                            "the server with %u\n", c->id,
                            len >= 2 ? (unsigned) payload[0] << 8
                                       | payload[1] : 1005);
                }
            }

            return -1;

        case 0x9:
            send_frame(c, 0xa, payload, (size_t) len);
            break;

        default:
            break;
        }

        if (c->state == st_done) {
            return -1;
        }
    }

    if (off) {
        memmove(c->in.p, c->in.p + off, c->in.len - off);
        c->in.len -= off;
    }

    return 0;
}


/* Nchan publisher replies: HTTP/1.1 responses with a Content-Length */

static int
http_replies(conn_t *c)
{
    char     *p, *end, *cl;
    size_t    off, hlen, blen;
    unsigned  status;
    uint32_t  pub;
    static unsigned  reported;

    off = 0;

    for ( ;; ) {
        p = (char *) c->in.p + off;
        c->in.p[c->in.len] = '\0';
        end = strstr(p, "\r\n\r\n");

        if (end == NULL) {
            break;
        }

        hlen = (size_t) (end + 4 - p);

        if (strncmp(p, "HTTP/1.1 ", 9) != 0) {
            return -1;
        }

        status = (unsigned) atoi(p + 9);
        cl = strcasestr(p, "\r\nContent-Length:");

        if (cl == NULL || cl > end) {
            return -1;
        }

        blen = (size_t) strtoul(cl + 17, NULL, 10);

        if (c->in.len - off < hlen + blen) {
            break;
        }

        if (c->fifo_head == c->fifo_tail) {
            return -1;
        }

        pub = c->fifo[c->fifo_head++ % HTTP_FIFO];

        if (status >= 200 && status < 300) {
            pubs[pub].confirmed++;

        } else {
            pubs[pub].refused++;
            n_refused++;

            if (reported++ < 5) {
                fprintf(stderr, "fanload: publish: HTTP %u\n", status);
            }
        }

        off += hlen + blen;
    }

    if (off) {
        memmove(c->in.p, c->in.p + off, c->in.len - off);
        c->in.len -= off;
    }

    return 0;
}


static void
conn_read(conn_t *c)
{
    ssize_t  n;
    int      rc;

    for ( ;; ) {
        if (c->in.cap - c->in.len < 65536 + 1) {
            c->in.cap = c->in.len + 65536 + 1;
            c->in.p = realloc(c->in.p, c->in.cap);

            if (c->in.p == NULL) {
                bench_die("out of memory");
            }
        }

        n = recv(c->fd, c->in.p + c->in.len, 65536, 0);

        if (n == 0) {
            if (c->state == st_open && !c->http) {
                n_server_close++;
            }

            conn_fail(c, "closed by the server");
            return;
        }

        if (n == -1) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }

            conn_fail(c, strerror(errno));
            return;
        }

        c->in.len += (size_t) n;

        if (c->http) {
            if (http_replies(c) == -1) {
                conn_fail(c, "bad HTTP reply to a publish");
                return;
            }

            continue;
        }

        if (c->state == st_handshake) {
            rc = handshake(c);

            if (rc == -1) {
                conn_fail(c, "handshake refused");
                return;
            }

            if (rc == 0) {
                continue;
            }

            conn_opened(c);

            if (c->state == st_done) {
                return;
            }
        }

        if (frames(c) == -1) {
            conn_fail(c, "protocol error or close");
            return;
        }

        if ((size_t) n < 65536) {
            break;
        }
    }

    if (c->out.len) {
        conn_flush(c);
    }
}


static void
conn_event(conn_t *c, uint32_t events)
{
    int        err;
    socklen_t  len;

    if (c->state == st_done) {
        return;
    }

    if (c->state == st_connecting) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }

        err = 0;
        len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);

        if (err) {
            conn_fail(c, strerror(err));
            return;
        }

        c->state = c->http ? st_open : st_handshake;
    }

    if (events & EPOLLOUT) {
        conn_flush(c);

        if (c->state == st_done) {
            return;
        }
    }

    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        conn_read(c);
    }
}


/* --- publishing ------------------------------------------------------- */

static void
publish(pub_t *pb, uint64_t due)
{
    int       n;
    char      body[64], room[64], hdr[512];
    size_t    blen;
    conn_t   *c;
    unsigned  idx;

    c = pb->c;
    idx = (unsigned) (pb - pubs);

    if (c == NULL || c->state != st_open
        || (opt.proto == P_COLLAB && c->unacked >= COLLAB_UNACKED)
        || (c->http && c->fifo_tail - c->fifo_head >= HTTP_FIFO))
    {
        n_skipped++;
        return;
    }

    pb->seq++;
    n = snprintf(body, sizeof(body), "p%us%ut%llu.", idx, pb->seq,
                 (unsigned long long) due);
    blen = opt.size > (size_t) n ? opt.size : (size_t) n;
    room_name(pb->room, room, sizeof(room));

    /* the body: the header above, padded with 'x' to --size bytes */
    memcpy(pad, body, (size_t) n);

    switch (opt.proto) {

    case P_COLLAB:
        n = snprintf(hdr, sizeof(hdr),
                     "{\"op\":\"send\",\"ref\":%u,\"session\":\"%s\","
                     "\"clientMsgId\":\"%u\",\"body\":\"", pb->seq,
                     rooms[pb->room].slug, pb->seq);
        {
            char  *f;

            f = malloc((size_t) n + blen + 4);
            if (f == NULL) {
                bench_die("out of memory");
            }

            memcpy(f, hdr, (size_t) n);
            memcpy(f + n, pad, blen);
            memcpy(f + n + blen, "\"}", 2);
            send_frame(c, 0x1, (u_char *) f, (size_t) n + blen + 2);
            free(f);
        }

        c->unacked++;
        break;

    case P_NCHAN:
        n = snprintf(hdr, sizeof(hdr),
                     "POST %s%cid=%s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     opt.pub_path, strchr(opt.pub_path, '?') ? '&' : '?',
                     room, opt.pub_hostport, blen);
        bench_buf_add(&c->out, hdr, (size_t) n);
        bench_buf_add(&c->out, pad, blen);
        c->fifo[c->fifo_tail++ % HTTP_FIFO] = idx;
        break;

    case P_SIO:
        n = snprintf(hdr, sizeof(hdr), "42[\"p\",\"%s\",\"", room);
        {
            char  *f;

            f = malloc((size_t) n + blen + 4);
            if (f == NULL) {
                bench_die("out of memory");
            }

            memcpy(f, hdr, (size_t) n);
            memcpy(f + n, pad, blen);
            memcpy(f + n + blen, "\"]", 2);
            send_frame(c, 0x1, (u_char *) f, (size_t) n + blen + 2);
            free(f);
        }

        pb->confirmed++;
        break;

    case P_WS:
        n = snprintf(hdr, sizeof(hdr), "P%s ", room);
        {
            char  *f;

            f = malloc((size_t) n + blen);
            if (f == NULL) {
                bench_die("out of memory");
            }

            memcpy(f, hdr, (size_t) n);
            memcpy(f + n, pad, blen);
            send_frame(c, 0x1, (u_char *) f, (size_t) n + blen);
            free(f);
        }

        pb->confirmed++;
        break;
    }

    n_sent++;
    conn_flush(c);
}


/* --- the loop --------------------------------------------------------- */

static void
loop_once(int timeout_ms)
{
    int                 i, n;
    uint64_t            t0, t1;
    struct epoll_event  evs[512];

    n = bench_epoll_wait(ep, evs, 512, timeout_ms);

    t0 = ws_now_us();

    for (i = 0; i < n; i++) {
        conn_event(evs[i].data.ptr, evs[i].events);
    }

    /* how long this batch kept the loop from anything else */
    t1 = ws_now_us();

    if (n > 0) {
        lag_count++;

        if (t1 - t0 > 1000) {
            lag_over_1ms++;
        }

        if (t1 - t0 > lag_hist_max) {
            lag_hist_max = t1 - t0;
        }
    }
}


static unsigned
total_conns(void)
{
    return n_ws + n_http;
}


static int
open_all(void)
{
    unsigned  next, i, live;
    uint64_t  deadline;

    next = 0;
    deadline = ws_now_us() + (uint64_t) (opt.setup_timeout * 1e6);

    while (!stop) {
        live = 0;

        for (i = 0; i < next; i++) {
            /* a connection is in setup until it joined */
            if (conns[i].state == st_connecting
                || conns[i].state == st_handshake
                || (conns[i].state == st_open && !conns[i].http
                    && !conns[i].joined))
            {
                live++;
            }
        }

        while (next < total_conns() && live < opt.inflight) {
            conn_start(&conns[next++]);
            live++;
        }

        if (next == total_conns() && n_joined >= n_need_join) {
            return 0;
        }

        if (n_conn_fail > 0 || ws_now_us() > deadline) {
            return -1;
        }

        loop_once(1);
    }

    return -1;
}


static uint64_t
clk_of(int pid)
{
    char                path[64], buf[1024], *p;
    FILE               *f;
    unsigned long long  ut, st;
    size_t              n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");

    if (f == NULL) {
        return 0;
    }

    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';

    p = strrchr(buf, ')');

    if (p == NULL) {
        return 0;
    }

    /* fields 3.. after ") ": state ppid ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
    {
        return 0;
    }

    return ut + st;
}


static int
ppid_of(int pid)
{
    char   path[64], buf[1024], *p;
    FILE  *f;
    int    pp;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");

    if (f == NULL) {
        return -1;
    }

    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');

    if (p == NULL || sscanf(p + 2, "%*c %d", &pp) != 1) {
        return -1;
    }

    return pp;
}


/* CPU seconds of the --cpu-pids processes and their children */

static double
server_cpu(void)
{
    DIR            *d;
    struct dirent  *e;
    int             i, pid, pp;
    uint64_t        ticks;

    ticks = 0;

    for (i = 0; i < opt.npids; i++) {
        ticks += clk_of(opt.pids[i]);
    }

    d = opendir("/proc");

    if (d == NULL) {
        return 0;
    }

    while ((e = readdir(d)) != NULL) {
        if (!isdigit((u_char) e->d_name[0])) {
            continue;
        }

        pid = atoi(e->d_name);
        pp = ppid_of(pid);

        for (i = 0; i < opt.npids; i++) {
            if (pp == opt.pids[i]) {
                ticks += clk_of(pid);
                break;
            }
        }
    }

    closedir(d);

    return (double) ticks / (double) sysconf(_SC_CLK_TCK);
}


static double
self_cpu(void)
{
    struct rusage  ru;

    getrusage(RUSAGE_SELF, &ru);

    return (double) ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
           + (double) ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}


static uint64_t
expected(void)
{
    unsigned  r, j, i;
    uint64_t  sum, per;

    sum = 0;

    for (r = 0; r < opt.rooms; r++) {
        per = 0;

        for (j = 0; j < opt.pubs; j++) {
            per += pubs[r * opt.pubs + j].confirmed;
        }

        /* the room's live subscribers */
        for (i = r * per_room; i < (r + 1) * per_room; i++) {
            if (conns[i].is_sub && conns[i].state == st_open) {
                sum += per;
            }
        }
    }

    return sum;
}


static void
run_steps(void)
{
    unsigned  s;
    uint64_t  k, t0, t_step, t_end, now, due, pending, dl;
    int       measuring;
    double    rate, c0, c1, w0, w1, secs, dps, best;

    k = 0;
    t0 = ws_now_us();
    t_step = t0;
    best = 0;

    for (s = 0; s < opt.nsteps && !stop; s++) {
        rate = opt.steps[s];
        t0 = t_step;
        k = 0;
        t_window_start = t_step + (uint64_t) (opt.settle * 1e6);
        t_window_end = t_window_start + (uint64_t) (opt.duration * 1e6);
        t_end = t_window_end;
        c0 = c1 = w0 = w1 = 0;
        n_step_recv = 0;
        win_start[s] = t_window_start;
        win_end[s] = t_window_end;
        n_windows = s + 1;
        lag_hist_max = lag_over_1ms = lag_count = 0;
        measuring = 0;

        while (!stop) {
            now = ws_now_us();

            if (!measuring && now >= t_window_start) {
                measuring = 1;
                c0 = server_cpu();
                w0 = self_cpu();
                lag_hist_max = lag_over_1ms = lag_count = 0;
            }

            if (now >= t_end) {
                break;
            }

            for ( ;; ) {
                due = t0 + (uint64_t) ((double) k * 1e6 / rate);

                if (due > now) {
                    break;
                }

                publish(&pubs[k % n_pubs], due);
                k++;
            }

            loop_once(1);
        }

        c1 = server_cpu();
        w1 = self_cpu();
        t_step = ws_now_us();

        secs = opt.duration;
        dps = (double) n_step_recv / secs;

        /* printed after the drain, when the late deliveries are in */
        snprintf(step_line[s], sizeof(step_line[s]),
               "step rate %.0f deliveries %llu deliveries/s %.0f "
               "server_cpu %.2f s "
               "cpu_s_per_M %.2f loader_cpu %.0f%% loop_batch_max %.2f ms "
               "batches_over_1ms %llu/%llu",
               rate, (unsigned long long) n_step_recv, dps,
               c1 - c0, n_step_recv ? (c1 - c0) * 1e6 / n_step_recv : 0.0,
               (w1 - w0) / secs * 100.0, (double) lag_hist_max / 1000.0,
               (unsigned long long) lag_over_1ms,
               (unsigned long long) lag_count);
        fprintf(stderr, "fanload: %s\n", step_line[s]);

        /* saturation: stop when a higher rate brought < 5 % more */
        if (opt.stop_flat && s > 0 && dps < best * 1.05) {
            break;
        }

        if (dps > best) {
            best = dps;
        }
    }

    /* drain: until every confirmed message reached every subscriber */
    dl = ws_now_us() + (uint64_t) (opt.drain * 1e6);

    while (!stop && ws_now_us() < dl) {
        pending = 0;

        for (k = 0; k < n_ws; k++) {
            if (conns[k].pub >= 0 && conns[k].unacked > 0
                && conns[k].state == st_open)
            {
                pending++;
            }
        }

        for (k = n_ws; k < total_conns(); k++) {
            if (conns[k].fifo_head != conns[k].fifo_tail
                && conns[k].state == st_open)
            {
                pending++;
            }
        }

        if (pending == 0 && n_recv_ok + n_dup >= expected()) {
            break;
        }

        loop_once(5);
    }

    /* latency of the messages due in each step's window, received by
     * the end of the drain (the rest are lost) */
    for (s = 0; s < n_windows; s++) {
        hist = hists[s];
        lat_count = lat_counts[s];
        lat_max = lat_maxs[s];
        printf("%s p50 %.2f p99 %.2f max %.2f ms latency_samples %llu\n",
               step_line[s], hist_ms(50), hist_ms(99),
               (double) lat_max / 1000.0, (unsigned long long) lat_count);
    }

    fflush(stdout);
}


static void
parse_url(const char *url, int ws, struct sockaddr_in *addr,
    char *hostport, char *path)
{
    const char  *p, *slash, *colon;
    char         host[256];
    unsigned     port;
    size_t       hl;

    p = url;

    if (ws && strncmp(p, "ws://", 5) == 0) {
        p += 5;

    } else if (!ws && strncmp(p, "http://", 7) == 0) {
        p += 7;

    } else {
        bench_die("bad url \"%s\"", url);
    }

    slash = strchr(p, '/');

    if (slash == NULL) {
        slash = p + strlen(p);
    }

    snprintf(hostport, 300, "%.*s", (int) (slash - p), p);
    snprintf(path, 1024, "%s", *slash ? slash : "/");

    colon = memchr(p, ':', (size_t) (slash - p));
    hl = colon ? (size_t) (colon - p) : (size_t) (slash - p);
    port = colon ? (unsigned) atoi(colon + 1) : 80;

    if (hl >= sizeof(host)) {
        bench_die("bad url \"%s\"", url);
    }

    memcpy(host, p, hl);
    host[hl] = '\0';

    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t) port);

    if (strcmp(host, "localhost") == 0) {
        snprintf(host, sizeof(host), "127.0.0.1");
    }

    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1) {
        bench_die("url host must be an IPv4 address: \"%s\"", url);
    }
}


static void
on_signal(int signo)
{
    (void) signo;
    stop = 1;
}


static void
usage(void)
{
    fprintf(stderr,
        "usage: fanload --proto collab|nchan|sio|ws --url ws://H:P/path "
        "[--url ...]\n"
        "         [--pub-url http://H:P/pub] --rooms R --subs K --pubs P "
        "[--shared]\n"
        "         (--rate N | --steps a,b,c | --idle S) [--duration S] "
        "[--settle S]\n"
        "         [--drain S] [--size B] [--src-ips N] [--inflight N]\n"
        "         [--http-conns N] [--cpu-pids a,b] [--prefix P]\n");
    exit(2);
}


int
main(int argc, char **argv)
{
    int              ch, rc, idx;
    unsigned         i, r, j, id;
    char            *s, *tok;
    conn_t          *c;
    struct rlimit    rl;
    uint64_t         lost, exp_d, dl;
    static char      prefix[64];
    static struct option  longopts[] = {
        { "proto", required_argument, NULL, 'P' },
        { "url", required_argument, NULL, 'u' },
        { "pub-url", required_argument, NULL, 'U' },
        { "rooms", required_argument, NULL, 'r' },
        { "subs", required_argument, NULL, 'k' },
        { "pubs", required_argument, NULL, 'p' },
        { "shared", no_argument, NULL, 'S' },
        { "rate", required_argument, NULL, 'R' },
        { "steps", required_argument, NULL, 'T' },
        { "idle", required_argument, NULL, 'I' },
        { "duration", required_argument, NULL, 'd' },
        { "settle", required_argument, NULL, 'w' },
        { "drain", required_argument, NULL, 'D' },
        { "size", required_argument, NULL, 's' },
        { "src-ips", required_argument, NULL, 'i' },
        { "inflight", required_argument, NULL, 'f' },
        { "http-conns", required_argument, NULL, 'H' },
        { "cpu-pids", required_argument, NULL, 'C' },
        { "prefix", required_argument, NULL, 'x' },
        { "setup-timeout", required_argument, NULL, 't' },
        { "stop-flat", no_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 }
    };

    opt.proto = -1;
    opt.rooms = 1;
    opt.subs = 100;
    opt.pubs = 1;
    opt.duration = 3;
    opt.settle = 1;
    opt.drain = 3;
    opt.size = 100;
    opt.inflight = 256;
    opt.http_conns = 0;
    opt.setup_timeout = 60;
    snprintf(prefix, sizeof(prefix), "f%lx", (long) getpid() ^ time(NULL));
    opt.prefix = prefix;

    while ((ch = getopt_long(argc, argv, "", longopts, &idx)) != -1) {
        switch (ch) {
        case 'P':
            opt.proto = strcmp(optarg, "collab") == 0 ? P_COLLAB
                        : strcmp(optarg, "nchan") == 0 ? P_NCHAN
                        : strcmp(optarg, "sio") == 0 ? P_SIO
                        : strcmp(optarg, "ws") == 0 ? P_WS : -2;
            break;
        case 'u':
            if (opt.nurls == MAX_URLS) {
                bench_die("too many --url");
            }

            parse_url(optarg, 1, &opt.addr[opt.nurls],
                      opt.hostport[opt.nurls], opt.path[opt.nurls]);
            opt.nurls++;
            break;
        case 'U':
            parse_url(optarg, 0, &opt.pub_addr, opt.pub_hostport,
                      opt.pub_path);
            break;
        case 'r': opt.rooms = (unsigned) atoi(optarg); break;
        case 'k': opt.subs = (unsigned) atoi(optarg); break;
        case 'p': opt.pubs = (unsigned) atoi(optarg); break;
        case 'S': opt.shared = 1; break;
        case 'R':
            opt.steps[0] = atof(optarg);
            opt.nsteps = 1;
            break;
        case 'T':
            s = strdup(optarg);
            opt.nsteps = 0;

            for (tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
                if (opt.nsteps == MAX_STEPS) {
                    bench_die("too many steps");
                }

                opt.steps[opt.nsteps++] = atof(tok);
            }

            break;
        case 'I': opt.idle = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.settle = atof(optarg); break;
        case 'D': opt.drain = atof(optarg); break;
        case 's': opt.size = (size_t) atol(optarg); break;
        case 'i': opt.src_ips = (unsigned) atoi(optarg); break;
        case 'f': opt.inflight = (unsigned) atoi(optarg); break;
        case 'H': opt.http_conns = (unsigned) atoi(optarg); break;
        case 'C':
            s = strdup(optarg);

            for (tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
                if (opt.npids == MAX_PIDS) {
                    bench_die("too many pids");
                }

                opt.pids[opt.npids++] = atoi(tok);
            }

            break;
        case 'x': opt.prefix = optarg; break;
        case 't': opt.setup_timeout = atof(optarg); break;
        case 'F': opt.stop_flat = 1; break;
        default:
            usage();
        }
    }

    if (opt.proto < 0 || opt.nurls == 0 || opt.rooms == 0 || opt.subs == 0
        || (opt.shared && opt.pubs > opt.subs)
        || (opt.nsteps == 0 && opt.idle == 0)
        || (opt.proto == P_NCHAN && opt.pub_addr.sin_port == 0
            && opt.idle == 0))
    {
        usage();
    }

    for (i = 0; i < opt.nsteps; i++) {
        if (opt.steps[i] <= 0) {
            bench_die("rates must be > 0");
        }
    }

    if (opt.idle > 0) {
        opt.pubs = opt.pubs ? opt.pubs : 1;
    }

    if (opt.pubs == 0) {
        bench_die("--pubs must be >= 1");
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    /* connections: per room (pubs that are not subscribers first) */
    per_room = opt.shared || opt.proto == P_NCHAN ? opt.subs
                                                  : opt.subs + opt.pubs;
    n_ws = opt.rooms * per_room;
    n_pubs = opt.rooms * opt.pubs;

    if (opt.proto == P_NCHAN && opt.idle == 0) {
        n_http = opt.http_conns ? opt.http_conns
                                : (n_pubs < 8 ? n_pubs : 8);
    }

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0
        && rl.rlim_cur < total_conns() + 64)
    {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);

        if (rl.rlim_cur < total_conns() + 64) {
            bench_die("ulimit -n is %llu, need %u",
                      (unsigned long long) rl.rlim_cur, total_conns() + 64);
        }
    }

    conns = calloc(total_conns(), sizeof(conn_t));
    pubs = calloc(n_pubs, sizeof(pub_t));
    rooms = calloc(opt.rooms, sizeof(room_t));
    pad = malloc(opt.size + 64);

    if (conns == NULL || pubs == NULL || rooms == NULL || pad == NULL) {
        bench_die("out of memory");
    }

    memset(pad, 'x', opt.size + 64);

    for (r = 0; r < opt.rooms; r++) {
        for (j = 0; j < per_room; j++) {
            id = r * per_room + j;
            c = &conns[id];
            c->id = id;
            c->fd = -1;
            c->room = r;
            c->url = id % opt.nurls;
            c->pub = -1;

            if (opt.shared || opt.proto == P_NCHAN) {
                c->is_sub = 1;

                if (opt.proto != P_NCHAN && j < opt.pubs) {
                    c->pub = (int) (r * opt.pubs + j);
                }

            } else {
                c->is_sub = j >= opt.pubs;

                if (j < opt.pubs) {
                    c->pub = (int) (r * opt.pubs + j);
                }
            }

            if (c->is_sub) {
                c->last = calloc(opt.pubs, sizeof(uint32_t));

                if (c->last == NULL) {
                    bench_die("out of memory");
                }
            }

            if (c->pub >= 0) {
                pubs[c->pub].c = c;
            }

            n_need_join++;
        }

        for (j = 0; j < opt.pubs; j++) {
            pubs[r * opt.pubs + j].room = r;
        }
    }

    for (i = 0; i < n_http; i++) {
        c = &conns[n_ws + i];
        c->id = n_ws + i;
        c->fd = -1;
        c->http = 1;
        c->pub = -1;
        c->fifo = malloc(HTTP_FIFO * sizeof(uint32_t));

        if (c->fifo == NULL) {
            bench_die("out of memory");
        }
    }

    if (opt.proto == P_NCHAN) {
        for (i = 0; i < n_pubs && n_http; i++) {
            pubs[i].c = &conns[n_ws + i % n_http];
        }
    }

    ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep == -1) {
        bench_die("epoll_create1: %s", strerror(errno));
    }

    {
        uint64_t  t0 = ws_now_us();

        rc = open_all();

        printf("setup %s: %u connections (%u subscribers), %u joined, "
               "%.1f s\n", rc == 0 ? "ok" : "FAILED", n_started,
               opt.rooms * opt.subs, n_joined,
               (double) (ws_now_us() - t0) / 1e6);
        fflush(stdout);
    }

    if (rc != 0) {
        printf("failed %u connections; established %u of %u\n",
               n_conn_fail, n_established, n_ws);
        return 1;
    }

    /* a subscription may take effect a little after its reply */
    dl = ws_now_us() + 300000;

    while (ws_now_us() < dl) {
        loop_once(5);
    }

    if (opt.idle > 0) {
        printf("ready %u\n", n_established);
        fflush(stdout);
        dl = ws_now_us() + (uint64_t) (opt.idle * 1e6);

        while (!stop && ws_now_us() < dl) {
            loop_once(20);
        }

        printf("held %u, failed %u\n", n_established, n_conn_fail);
        return n_conn_fail ? 1 : 0;
    }

    run_steps();

    exp_d = expected();
    lost = exp_d > n_recv_ok ? exp_d - n_recv_ok : 0;

    printf("total sent %llu skipped %llu refused %llu expected %llu "
           "received %llu lost %llu dup %llu reorder %llu wrong %llu "
           "conn_failed %u server_closed %u\n",
           (unsigned long long) n_sent, (unsigned long long) n_skipped,
           (unsigned long long) n_refused, (unsigned long long) exp_d,
           (unsigned long long) n_recv_ok, (unsigned long long) lost,
           (unsigned long long) n_dup, (unsigned long long) n_reorder,
           (unsigned long long) n_wrong, n_conn_fail, n_server_close);

    return lost || n_dup || n_reorder || n_wrong || n_refused
           || n_conn_fail ? 1 : 0;
}
