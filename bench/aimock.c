
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * aimock: the mock AI provider of bench/ai.sh.
 *
 *   aimock PORT CHUNKS INTERVAL_MS
 *
 * An OpenAI-compatible streaming endpoint on 127.0.0.1:PORT: every POST
 * to /v1/chat/completions is answered with a 200 text/event-stream of
 * CHUNKS content deltas INTERVAL_MS apart, then finish_reason "stop" and
 * [DONE]; anything else gets a 404 with a JSON body.  It stands for a
 * remote service (STYLE.md, item 10), so it should cost this machine as
 * little CPU as it can: one process, one epoll loop, edge-triggered
 * non-blocking sockets, no library beyond libc.  t/lib/Collab/MockAI.pm
 * is the tests' own, with fault modes.
 *
 * HTTP/1.1 with keep-alive (libcurl in nginx reuses its connections):
 * each connection reads a request head, then its body (Content-Length or
 * chunked; "Expect: 100-continue" is answered at once) and discards it,
 * writes the response and goes back to reading the next request.  The
 * response is chunked, one HTTP chunk per SSE event, as the Mojolicious
 * version (bench/aimock.pl, before this file) wrote it: the role delta
 * at once, then each content delta INTERVAL_MS after the previous event
 * was written to the socket, then the "stop" event with "data: [DONE]",
 * then the last chunk.
 *
 * A connection has at most one stream, so at most one timer: the next
 * delta's time.  The timers are a binary min-heap of connections; the
 * epoll_wait() timeout is the earliest one, rounded up to a millisecond.
 *
 * Prints "listening PORT" once it accepts connections, and on SIGTERM or
 * SIGINT a line "requests N completed N max_streams N" before it exits.
 */


#define _GNU_SOURCE

#include <errno.h>
#include <signal.h>
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
#include <sys/socket.h>

#include "benchutil.h"


const char  bench_name[] = "aimock";


#define HEAD_MAX      65536


typedef enum {
    sw_head = 0,                /* reading a request head */
    sw_body,                    /* discarding a Content-Length body */
    sw_chunk_size,              /* discarding a chunked body: */
    sw_chunk_ext,
    sw_chunk_data,
    sw_chunk_data_cr,
    sw_chunk_data_lf,
    sw_trailer,
    sw_trailer_line,
    sw_deltas,                  /* streaming: the role and content deltas */
    sw_stop,                    /* the "stop" event and [DONE] written */
    sw_last,                    /* the last chunk written */
    sw_plain                    /* a 404 written */
} conn_state_e;


typedef struct {
    int            fd;
    conn_state_e   state;

    u_char        *in;
    size_t         in_len;
    size_t         in_cap;

    bench_buf_t    out;
    size_t         out_pos;

    uint64_t       body_left;   /* of a Content-Length body or a chunk */
    unsigned       stream:1;    /* the request is a chat completion */
    unsigned       last:1;      /* no keep-alive after this response */
    unsigned       writable:1;  /* the last send() did not hit EAGAIN */

    unsigned       sent;        /* content deltas written */
    uint64_t       at;          /* the next delta's time, us */
    ssize_t        heap;        /* index in the timer heap, or -1 */
} conn_t;


static void conn_close(conn_t *c);
static void conn_read(conn_t *c);
static int conn_parse(conn_t *c);
static int conn_head(conn_t *c, size_t hlen);
static int conn_body(conn_t *c);
static void conn_respond(conn_t *c);
static void conn_write(conn_t *c);
static void conn_written(conn_t *c);
static void out_chunk(conn_t *c, const char *data, size_t len);
static void sse_delta(conn_t *c, unsigned i);
static void timer_add(conn_t *c, uint64_t at);
static void timer_del(conn_t *c);
static void timer_up(size_t i);
static void timer_down(size_t i);
static void timer_expire(void);
static uint64_t now_us(void);


static int        ep;
static unsigned   chunks;
static uint64_t   interval;     /* us */

static uint64_t   n_requests, n_completed, n_streams, n_max_streams;

static conn_t   **heap;
static size_t     heap_len, heap_cap;


/* the events, as Mojo::JSON encoded them (sorted keys, "\/") */

#define SSE_PREFIX                                                          \
    "data: {\"choices\":[{\"delta\":"

#define SSE_SUFFIX                                                          \
    ",\"index\":0}],\"id\":\"gen-bench\",\"model\":\"bench\\/mock\","       \
    "\"object\":\"chat.completion.chunk\"}\n\n"

static const char  sse_role[] =
    SSE_PREFIX "{\"role\":\"assistant\"},\"finish_reason\":null" SSE_SUFFIX;

static const char  sse_stop[] =
    SSE_PREFIX "{},\"finish_reason\":\"stop\"" SSE_SUFFIX
    "data: [DONE]\n\n";

static const char  head_stream[] =
    "HTTP/1.1 200 OK\r\n"
    "Cache-Control: no-cache\r\n"
    "Content-Type: text/event-stream\r\n"
    "Server: aimock\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n";

static const char  head_404[] =
    "HTTP/1.1 404 Not Found\r\n"
    "Content-Length: 21\r\n"
    "Content-Type: application/json;charset=UTF-8\r\n"
    "Server: aimock\r\n"
    "\r\n"
    "{\"error\":\"not found\"}";


int
main(int argc, char **argv)
{
    int                  lfd, sfd, fd, one, n, i, timeout;
    char                *end;
    long                 port, ms;
    conn_t              *c;
    uint64_t             t;
    struct sockaddr_in   sin;
    struct epoll_event   ev, evs[256];

    static conn_t        listener, signals;

    if (argc != 4) {
        goto usage;
    }

    port = strtol(argv[1], &end, 10);

    if (*end != '\0' || port <= 0 || port > 65535) {
        goto usage;
    }

    chunks = (unsigned) strtoul(argv[2], &end, 10);

    if (*end != '\0') {
        goto usage;
    }

    ms = strtol(argv[3], &end, 10);

    if (*end != '\0' || ms < 0) {
        goto usage;
    }

    interval = (uint64_t) ms * 1000;

    /* SIGTERM and SIGINT are read from a signalfd in the loop */

    sfd = bench_signalfd(SIGTERM, SIGINT, 0);

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (lfd == -1) {
        bench_die("socket: %s", strerror(errno));
    }

    one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(int));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t) port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (bind(lfd, (struct sockaddr *) &sin, sizeof(sin)) == -1) {
        bench_die("bind 127.0.0.1:%ld: %s", port, strerror(errno));
    }

    if (listen(lfd, 4096) == -1) {
        bench_die("listen: %s", strerror(errno));
    }

    ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep == -1) {
        bench_die("epoll_create1: %s", strerror(errno));
    }

    listener.fd = lfd;
    signals.fd = sfd;

    ev.events = EPOLLIN;
    ev.data.ptr = &listener;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }

    ev.data.ptr = &signals;

    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) == -1) {
        bench_die("epoll_ctl: %s", strerror(errno));
    }

    printf("listening %ld\n", port);
    fflush(stdout);

    for ( ;; ) {
        timeout = -1;

        if (heap_len) {
            t = now_us();
            timeout = heap[0]->at <= t
                      ? 0 : (int) ((heap[0]->at - t + 999) / 1000);
        }

        n = bench_epoll_wait(ep, evs, 256, timeout);

        for (i = 0; i < n; i++) {
            c = evs[i].data.ptr;

            if (c == &signals) {
                printf("requests %llu completed %llu max_streams %llu\n",
                       (unsigned long long) n_requests,
                       (unsigned long long) n_completed,
                       (unsigned long long) n_max_streams);
                fflush(stdout);
                exit(0);
            }

            if (c == &listener) {
                for ( ;; ) {
                    fd = accept4(lfd, NULL, NULL,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);

                    if (fd == -1) {
                        if (errno == EAGAIN || errno == EINTR
                            || errno == ECONNABORTED)
                        {
                            break;
                        }

                        bench_die("accept4: %s", strerror(errno));
                    }

                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
                               sizeof(int));

                    c = calloc(1, sizeof(conn_t));

                    if (c == NULL) {
                        bench_die("out of memory");
                    }

                    c->fd = fd;
                    c->state = sw_head;
                    c->heap = -1;
                    c->writable = 1;

                    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
                    ev.data.ptr = c;

                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
                        bench_die("epoll_ctl: %s", strerror(errno));
                    }
                }

                continue;
            }

            if (evs[i].events & EPOLLOUT) {
                c->writable = 1;
                conn_write(c);

                if (c->fd == -1) {
                    free(c);
                    continue;
                }
            }

            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            {
                conn_read(c);
            }

            if (c->fd == -1) {
                free(c);
            }
        }

        timer_expire();
    }

usage:

    fprintf(stderr, "usage: aimock PORT CHUNKS INTERVAL_MS\n");

    return 2;
}


/*
 * Closes the connection; c->fd is -1 afterwards and the caller frees c
 * (once the epoll events of this round that name it are past).
 */

static void
conn_close(conn_t *c)
{
    if (c->state == sw_deltas || c->state == sw_stop
        || c->state == sw_last)
    {
        n_streams--;
    }

    timer_del(c);
    close(c->fd);
    c->fd = -1;

    free(c->in);
    free(c->out.p);
    c->in = NULL;
    c->out.p = NULL;
}


/* reads until EAGAIN (edge-triggered), parses what it can */

static void
conn_read(conn_t *c)
{
    ssize_t  n;

    for ( ;; ) {
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 16384;
            c->in = realloc(c->in, c->in_cap);

            if (c->in == NULL) {
                bench_die("out of memory");
            }
        }

        n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN) {
                break;
            }

            conn_close(c);
            return;
        }

        if (n == 0) {
            conn_close(c);
            return;
        }

        c->in_len += (size_t) n;

        if (conn_parse(c) == -1) {
            conn_close(c);
            return;
        }

        if (c->fd == -1) {
            return;
        }
    }
}


/*
 * Consumes the buffered input while a request is being read: 0 when it
 * needs more (or a response is being written: the rest waits), -1 to
 * close the connection.
 */

static int
conn_parse(conn_t *c)
{
    u_char  *end;
    size_t   hlen;

    while (c->state <= sw_trailer_line) {

        if (c->state == sw_head) {
            if (c->in_len == 0) {
                return 0;
            }

            end = memmem(c->in, c->in_len, "\r\n\r\n", 4);

            if (end == NULL) {
                return c->in_len > HEAD_MAX ? -1 : 0;
            }

            hlen = (size_t) (end + 4 - c->in);

            if (conn_head(c, hlen) == -1) {
                return -1;
            }

            if (c->fd == -1) {
                return 0;       /* the 100 Continue failed */
            }

            memmove(c->in, c->in + hlen, c->in_len - hlen);
            c->in_len -= hlen;

        } else if (conn_body(c) == 0) {
            return 0;
        }

        if (c->state == sw_body && c->body_left == 0) {
            conn_respond(c);
            return 0;
        }
    }

    return 0;
}


/*
 * The request head in c->in[0 .. hlen): the request line and the few
 * headers that matter; sets the body state.  -1 on a malformed head.
 */

static int
conn_head(conn_t *c, size_t hlen)
{
    int      chunked, cont, http10, keepalive, closing;
    char    *line, *next, *v, *sp;
    size_t   mlen;

    c->in[hlen - 2] = '\0';         /* the last CRLF of the head */

    line = (char *) c->in;
    next = strstr(line, "\r\n");

    if (next == NULL) {
        return -1;
    }

    *next = '\0';

    /* "POST /v1/chat/completions HTTP/1.1", the query string ignored */

    sp = strchr(line, ' ');

    if (sp == NULL) {
        return -1;
    }

    mlen = (size_t) (sp - line);
    v = sp + 1;
    sp = strchr(v, ' ');

    if (sp == NULL) {
        return -1;
    }

    *sp = '\0';
    http10 = strcmp(sp + 1, "HTTP/1.0") == 0;

    if (strchr(v, '?')) {
        *strchr(v, '?') = '\0';
    }

    c->stream = mlen == 4 && memcmp(line, "POST", 4) == 0
                && strcmp(v, "/v1/chat/completions") == 0;

    c->body_left = 0;
    chunked = 0;
    cont = 0;
    keepalive = 0;
    closing = 0;

    for (line = next + 2; *line; line = next + 2) {
        next = strstr(line, "\r\n");

        if (next == NULL) {
            return -1;
        }

        *next = '\0';

        v = strchr(line, ':');

        if (v == NULL) {
            return -1;
        }

        *v++ = '\0';

        while (*v == ' ' || *v == '\t') {
            v++;
        }

        if (strcasecmp(line, "Content-Length") == 0) {
            c->body_left = strtoull(v, NULL, 10);

        } else if (strcasecmp(line, "Transfer-Encoding") == 0) {
            chunked = strcasestr(v, "chunked") != NULL;

        } else if (strcasecmp(line, "Expect") == 0) {
            cont = strcasecmp(v, "100-continue") == 0;

        } else if (strcasecmp(line, "Connection") == 0) {
            closing = strcasestr(v, "close") != NULL;
            keepalive = strcasestr(v, "keep-alive") != NULL;
        }
    }

    c->last = closing || (http10 && !keepalive);

    if (chunked) {
        c->body_left = 0;
        c->state = sw_chunk_size;

    } else {
        c->state = sw_body;
    }

    /* the body is not here yet: libcurl waits for this (or 1 s) */

    if (cont && (chunked || c->in_len - hlen < c->body_left)) {
        bench_buf_add(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        conn_write(c);
    }

    return 0;
}


/*
 * Discards the body bytes buffered: returns 1 when the body is complete
 * (the state is sw_body with body_left 0 then), 0 when more is needed.
 */

static int
conn_body(conn_t *c)
{
    u_char   ch;
    size_t   i, n;

    i = 0;

    while (i < c->in_len) {

        switch (c->state) {

        case sw_body:
        case sw_chunk_data:
            n = c->in_len - i;

            if (n > c->body_left) {
                n = (size_t) c->body_left;
            }

            i += n;
            c->body_left -= n;

            if (c->state == sw_body) {
                goto done;
            }

            if (c->body_left == 0) {
                c->state = sw_chunk_data_cr;
            }

            /* body_left is 0 for the next chunk size */

            continue;

        default:
            break;
        }

        ch = c->in[i++];

        switch (c->state) {

        case sw_chunk_size:
            if (ch >= '0' && ch <= '9') {
                c->body_left = c->body_left * 16 + (ch - '0');

            } else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f') {
                c->body_left = c->body_left * 16 + ((ch | 0x20) - 'a' + 10);

            } else if (ch == '\n') {
                c->state = c->body_left ? sw_chunk_data : sw_trailer;

            } else {
                c->state = sw_chunk_ext;
            }

            break;

        case sw_chunk_ext:
            if (ch == '\n') {
                c->state = c->body_left ? sw_chunk_data : sw_trailer;
            }

            break;

        case sw_chunk_data_cr:
            /* the CRLF after the data; a bare LF is taken too */
            c->state = ch == '\r' ? sw_chunk_data_lf : sw_chunk_size;
            break;

        case sw_chunk_data_lf:
            c->state = sw_chunk_size;
            break;

        case sw_trailer:
            if (ch == '\n') {
                /* the empty line: the end of the body */
                c->state = sw_body;
                c->body_left = 0;
                goto done;
            }

            if (ch != '\r') {
                c->state = sw_trailer_line;
            }

            break;

        case sw_trailer_line:
            if (ch == '\n') {
                c->state = sw_trailer;
            }

            break;

        default:
            break;
        }
    }

done:

    memmove(c->in, c->in + i, c->in_len - i);
    c->in_len -= i;

    return c->state == sw_body && c->body_left == 0;
}


/* a complete request: the response starts */

static void
conn_respond(conn_t *c)
{
    if (!c->stream) {
        c->state = sw_plain;
        bench_buf_add(&c->out, head_404, sizeof(head_404) - 1);
        conn_write(c);
        return;
    }

    n_requests++;
    n_streams++;

    if (n_streams > n_max_streams) {
        n_max_streams = n_streams;
    }

    c->state = sw_deltas;
    c->sent = 0;

    bench_buf_add(&c->out, head_stream, sizeof(head_stream) - 1);
    out_chunk(c, sse_role, sizeof(sse_role) - 1);
    conn_write(c);
}


/* writes the output; when all of it is out, the stream goes on */

static void
conn_write(conn_t *c)
{
    ssize_t  n;

    while (c->writable && c->out_pos < c->out.len) {
        n = send(c->fd, c->out.p + c->out_pos, c->out.len - c->out_pos,
                 MSG_NOSIGNAL);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            if (errno == EAGAIN) {
                c->writable = 0;
                return;
            }

            conn_close(c);
            return;
        }

        c->out_pos += (size_t) n;

        if (c->out_pos == c->out.len) {
            c->out_pos = 0;
            c->out.len = 0;
            conn_written(c);

            if (c->fd == -1) {
                return;
            }
        }
    }
}


/*
 * All output written: the next step of the response, as aimock.pl's
 * write_chunk() callbacks took it.
 */

static void
conn_written(conn_t *c)
{
    switch (c->state) {

    case sw_deltas:
        if (c->sent < chunks) {
            timer_add(c, now_us() + interval);
            return;
        }

        c->state = sw_stop;
        out_chunk(c, sse_stop, sizeof(sse_stop) - 1);
        return;

    case sw_stop:
        n_completed++;
        c->state = sw_last;
        bench_buf_add(&c->out, "0\r\n\r\n", 5);
        return;

    case sw_last:
        n_streams--;
        c->state = sw_plain;
        /* fall through */

    case sw_plain:
        if (c->last) {
            conn_close(c);
            return;
        }

        c->state = sw_head;

        /* a request that came early */

        if (conn_parse(c) == -1) {
            conn_close(c);
        }

        return;

    default:
        return;
    }
}


/* one HTTP chunk */

static void
out_chunk(conn_t *c, const char *data, size_t len)
{
    int   n;
    char  size[20];

    n = snprintf(size, sizeof(size), "%zx\r\n", len);

    bench_buf_add(&c->out, size, (size_t) n);
    bench_buf_add(&c->out, data, len);
    bench_buf_add(&c->out, "\r\n", 2);
}


/* content delta i: "w<i> " */

static void
sse_delta(conn_t *c, unsigned i)
{
    int   n;
    char  buf[sizeof(SSE_PREFIX SSE_SUFFIX) + 64];

    n = snprintf(buf, sizeof(buf),
                 SSE_PREFIX "{\"content\":\"w%u \"},\"finish_reason\":null"
                 SSE_SUFFIX, i);

    out_chunk(c, buf, (size_t) n);
}


/* the timer heap: heap[0] is the earliest; c->heap is c's index */

static void
timer_add(conn_t *c, uint64_t at)
{
    timer_del(c);

    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 256;
        heap = realloc(heap, heap_cap * sizeof(conn_t *));

        if (heap == NULL) {
            bench_die("out of memory");
        }
    }

    c->at = at;
    c->heap = (ssize_t) heap_len;
    heap[heap_len++] = c;

    timer_up(heap_len - 1);
}


static void
timer_del(conn_t *c)
{
    size_t   i;
    conn_t  *last;

    if (c->heap == -1) {
        return;
    }

    i = (size_t) c->heap;
    c->heap = -1;
    last = heap[--heap_len];

    if (i == heap_len) {
        return;
    }

    heap[i] = last;
    last->heap = (ssize_t) i;

    timer_up(i);
    timer_down((size_t) last->heap);
}


static void
timer_up(size_t i)
{
    size_t   p;
    conn_t  *c;

    c = heap[i];

    while (i > 0) {
        p = (i - 1) / 2;

        if (heap[p]->at <= c->at) {
            break;
        }

        heap[i] = heap[p];
        heap[i]->heap = (ssize_t) i;
        i = p;
    }

    heap[i] = c;
    c->heap = (ssize_t) i;
}


static void
timer_down(size_t i)
{
    size_t   k;
    conn_t  *c;

    c = heap[i];

    for ( ;; ) {
        k = 2 * i + 1;

        if (k >= heap_len) {
            break;
        }

        if (k + 1 < heap_len && heap[k + 1]->at < heap[k]->at) {
            k++;
        }

        if (c->at <= heap[k]->at) {
            break;
        }

        heap[i] = heap[k];
        heap[i]->heap = (ssize_t) i;
        i = k;
    }

    heap[i] = c;
    c->heap = (ssize_t) i;
}


/* the deltas that are due */

static void
timer_expire(void)
{
    conn_t    *c;
    uint64_t   t;

    t = now_us();

    while (heap_len && heap[0]->at <= t) {
        c = heap[0];
        timer_del(c);

        sse_delta(c, c->sent);
        c->sent++;
        conn_write(c);

        if (c->fd == -1) {
            free(c);
        }
    }
}


static uint64_t
now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}
