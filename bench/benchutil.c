
/*
 * Copyright (C) ngx_collab authors
 */


#define _GNU_SOURCE

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>

#include "benchutil.h"


/* "NAME: message" on stderr and exit 2: the tool could not run */

void
bench_die(const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    fprintf(stderr, "%s: ", bench_name);
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);

    exit(2);
}


/* appends data[0 .. len), growing the buffer to twice what it needs */

void
bench_buf_add(bench_buf_t *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        b->cap = (b->len + len + 1) * 2;
        b->p = realloc(b->p, b->cap);

        if (b->p == NULL) {
            bench_die("out of memory");
        }
    }

    memcpy(b->p + b->len, data, len);
    b->len += len;
}


/*
 * Blocks the signals of the 0-terminated list and returns a non-blocking
 * signalfd that reads them instead, for the tool's epoll loop; SIGPIPE
 * is ignored (a peer's close is seen as EPIPE).
 */

int
bench_signalfd(int signo, ...)
{
    int       fd;
    va_list   args;
    sigset_t  sigs;

    sigemptyset(&sigs);

    va_start(args, signo);

    for ( /* void */ ; signo != 0; signo = va_arg(args, int)) {
        sigaddset(&sigs, signo);
    }

    va_end(args);

    if (sigprocmask(SIG_BLOCK, &sigs, NULL) == -1) {
        bench_die("sigprocmask: %s", strerror(errno));
    }

    fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);

    if (fd == -1) {
        bench_die("signalfd: %s", strerror(errno));
    }

    signal(SIGPIPE, SIG_IGN);

    return fd;
}


/* epoll_wait(): the events, 0 when a signal interrupted it; dies on errors */

int
bench_epoll_wait(int ep, struct epoll_event *evs, int max, int timeout)
{
    int  n;

    n = epoll_wait(ep, evs, max, timeout);

    if (n == -1) {
        if (errno == EINTR) {
            return 0;
        }

        bench_die("epoll_wait: %s", strerror(errno));
    }

    return n;
}


/*
 * ws://HOST[:PORT][/PATH] into addr (resolved, IPv4), host, hostport
 * ("HOST[:PORT]", for the Host header) and path ("/" when none); dies
 * on a URL that is not ws:// or does not fit.
 */

void
bench_parse_url(const char *url, struct sockaddr_in *addr, char *host,
    size_t host_size, char *hostport, size_t hostport_size, char *path,
    size_t path_size)
{
    char              port[16];
    size_t            n, hlen;
    const char       *p, *slash, *colon;
    struct addrinfo   hints, *res;

    if (strncmp(url, "ws://", 5) != 0) {
        bench_die("only ws:// URLs: %s", url);
    }

    p = url + 5;
    slash = strchr(p, '/');

    if (slash == NULL) {
        slash = p + strlen(p);
    }

    n = (size_t) (slash - p);
    colon = memchr(p, ':', n);
    hlen = colon ? (size_t) (colon - p) : n;

    if (n == 0 || n >= hostport_size || hlen >= host_size
        || strlen(slash) >= path_size)
    {
        bench_die("bad URL: %s", url);
    }

    memcpy(hostport, p, n);
    hostport[n] = '\0';

    memcpy(host, p, hlen);
    host[hlen] = '\0';

    if (colon) {
        snprintf(port, sizeof(port), "%.*s", (int) (slash - colon - 1),
                 colon + 1);

    } else {
        strcpy(port, "80");
    }

    snprintf(path, path_size, "%s", *slash ? slash : "/");

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;

    if (getaddrinfo(host, port, &hints, &res) != 0) {
        bench_die("cannot resolve %s", host);
    }

    memcpy(addr, res->ai_addr, sizeof(struct sockaddr_in));
    freeaddrinfo(res);
}
