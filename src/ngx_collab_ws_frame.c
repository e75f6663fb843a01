
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The RFC 6455 frame parser is a resumable state machine in the manner of
 * ngx_http_parse.c: the state lives in ngx_collab_ws_parser_t, input may
 * stop at any byte, and every call consumes what it can and says what it
 * found.  Payload is never copied: it is unmasked in the caller's buffer
 * and handed out as chunks, so the caller decides whether a message is
 * delivered straight from its read buffer or assembled somewhere.
 *
 * Everything the protocol lets a server reject is rejected here, as soon
 * as the offending byte is seen: a text message with invalid UTF-8 fails
 * inside the chunk that carries the bad byte, not at the end of the frame
 * or message, and an oversized message fails on the header that makes it
 * too long, before its payload is read.
 */


#include <string.h>

#include "ngx_collab_ws_frame.h"


enum {
    sw_start = 0,
    sw_length,
    sw_length_ext,
    sw_mask,
    sw_payload,
    sw_end
};


static int ngx_collab_ws_fail(ngx_collab_ws_parser_t *p, uint16_t code,
    const char *reason);
static int ngx_collab_ws_header_done(ngx_collab_ws_parser_t *p);
static void ngx_collab_ws_unmask(ngx_collab_ws_parser_t *p, u_char *data,
    size_t len);


int
ngx_collab_ws_parse(ngx_collab_ws_parser_t *p, u_char **pos, u_char *last)
{
    u_char  *b, ch;
    size_t   n;

    b = *pos;

    for ( ;; ) {

        switch (p->state) {

        case sw_start:

            if (b == last) {
                goto again;
            }

            ch = *b++;

            if (ch & 0x70) {
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                          "reserved bits set");
            }

            p->fin = (ch & 0x80) ? 1 : 0;
            p->opcode = ch & 0x0f;
            p->control = (ch & 0x08) ? 1 : 0;

            switch (p->opcode) {

            case NGX_COLLAB_WS_OP_CONT:
                if (!p->in_message) {
                    return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                              "continuation without start");
                }
                break;

            case NGX_COLLAB_WS_OP_TEXT:
            case NGX_COLLAB_WS_OP_BINARY:
                if (p->in_message) {
                    return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                              "data frame inside "
                                              "fragmented message");
                }
                break;

            case NGX_COLLAB_WS_OP_CLOSE:
            case NGX_COLLAB_WS_OP_PING:
            case NGX_COLLAB_WS_OP_PONG:
                if (!p->fin) {
                    return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                              "fragmented control frame");
                }
                break;

            default:
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                          "unknown opcode");
            }

            p->state = sw_length;

            /* fall through */

        case sw_length:

            if (b == last) {
                goto again;
            }

            ch = *b++;

            if (!(ch & 0x80)) {
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                          "unmasked client frame");
            }

            ch &= 0x7f;

            if (p->control && ch > NGX_COLLAB_WS_MAX_CONTROL) {
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                          "control frame too long");
            }

            p->frame_len = 0;
            p->header_left = 4;

            if (ch == 126) {
                p->header_left = 2;
                p->state = sw_length_ext;
                break;
            }

            if (ch == 127) {
                p->header_left = 8;
                p->state = sw_length_ext;
                break;
            }

            p->frame_len = ch;
            p->state = sw_mask;
            break;

        case sw_length_ext:

            if (b == last) {
                goto again;
            }

            ch = *b++;

            if (p->header_left == 8 && (ch & 0x80)) {
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_PROTOCOL,
                                          "frame length above 2^63");
            }

            p->frame_len = (p->frame_len << 8) | ch;

            if (--p->header_left == 0) {
                p->header_left = 4;
                p->state = sw_mask;
            }

            break;

        case sw_mask:

            if (b == last) {
                goto again;
            }

            p->mask[4 - p->header_left] = *b++;

            if (--p->header_left) {
                break;
            }

            *pos = b;

            return ngx_collab_ws_header_done(p);

        case sw_payload:

            if (p->left == 0) {
                p->state = sw_end;
                break;
            }

            if (b == last) {
                goto again;
            }

            n = (size_t) (last - b);

            if ((uint64_t) n > p->left) {
                n = (size_t) p->left;
            }

            ngx_collab_ws_unmask(p, b, n);

            if (!p->control
                && p->message_opcode == NGX_COLLAB_WS_OP_TEXT
                && ngx_collab_utf8_feed(&p->utf8, b, n) != 0)
            {
                *pos = b + n;
                return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_INVALID,
                                          "invalid UTF-8 in text message");
            }

            p->data = b;
            p->len = n;
            p->left -= n;

            *pos = b + n;

            return NGX_COLLAB_WS_DATA;

        case sw_end:

            p->state = sw_start;
            *pos = b;

            if (!p->control && p->fin) {

                if (p->message_opcode == NGX_COLLAB_WS_OP_TEXT
                    && !ngx_collab_utf8_complete(&p->utf8))
                {
                    return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_INVALID,
                                              "truncated UTF-8 at end of "
                                              "text message");
                }

                p->in_message = 0;
            }

            return NGX_COLLAB_WS_FRAME_END;

        default:
            return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_INTERNAL,
                                      "parser used after error");
        }
    }

again:

    *pos = b;

    return NGX_COLLAB_WS_AGAIN;
}


static int
ngx_collab_ws_header_done(ngx_collab_ws_parser_t *p)
{
    if (!p->control) {

        if (p->opcode != NGX_COLLAB_WS_OP_CONT) {
            p->in_message = 1;
            p->message_opcode = p->opcode;
            p->message_len = 0;
            p->utf8.need = 0;
        }

        if (p->max_message
            && (p->frame_len > p->max_message
                || p->message_len + p->frame_len > p->max_message))
        {
            return ngx_collab_ws_fail(p, NGX_COLLAB_WS_CLOSE_TOO_BIG,
                                      "message too big");
        }

        p->message_len += p->frame_len;
    }

    p->left = p->frame_len;
    p->mask_off = 0;
    p->state = sw_payload;

    return NGX_COLLAB_WS_FRAME;
}


static int
ngx_collab_ws_fail(ngx_collab_ws_parser_t *p, uint16_t code,
    const char *reason)
{
    p->error = code;
    p->reason = reason;
    p->state = sw_end + 1;

    return NGX_COLLAB_WS_ERROR;
}


static void
ngx_collab_ws_unmask(ngx_collab_ws_parser_t *p, u_char *data, size_t len)
{
    u_char    *last;
    uint64_t   w, m;
    unsigned   i;

    last = data + len;

    while (p->mask_off && data < last) {
        *data++ ^= p->mask[p->mask_off++];
    }

    if ((size_t) (last - data) >= 8) {

        for (i = 0; i < 8; i++) {
            ((u_char *) &m)[i] = p->mask[i & 3];
        }

        while ((size_t) (last - data) >= 8) {
            memcpy(&w, data, 8);
            w ^= m;
            memcpy(data, &w, 8);
            data += 8;
        }
    }

    while (data < last) {
        *data++ ^= p->mask[p->mask_off++];
    }
}


size_t
ngx_collab_ws_frame_header(u_char *buf, unsigned opcode, unsigned fin,
    uint64_t len)
{
    unsigned  i;

    buf[0] = (u_char) ((fin ? 0x80 : 0) | (opcode & 0x0f));

    if (len < 126) {
        buf[1] = (u_char) len;
        return 2;
    }

    if (len <= 0xffff) {
        buf[1] = 126;
        buf[2] = (u_char) (len >> 8);
        buf[3] = (u_char) len;
        return 4;
    }

    buf[1] = 127;

    for (i = 0; i < 8; i++) {
        buf[2 + i] = (u_char) (len >> (56 - 8 * i));
    }

    return 10;
}


uint16_t
ngx_collab_ws_close_check(const u_char *data, size_t len, uint16_t *code)
{
    uint16_t           c;
    ngx_collab_utf8_t  u;

    if (len == 0) {
        *code = NGX_COLLAB_WS_CLOSE_NO_STATUS;
        return 0;
    }

    if (len == 1) {
        return NGX_COLLAB_WS_CLOSE_PROTOCOL;
    }

    c = (uint16_t) ((data[0] << 8) | data[1]);

    /*
     * 1004-1006 and 1015 are reserved and must not be sent; 1016-2999 are
     * for future protocol use; 3000-4999 belong to libraries and
     * applications (RFC 6455, 7.4).
     */

    if (!((c >= 1000 && c <= 1003)
          || (c >= 1007 && c <= 1014)
          || (c >= 3000 && c <= 4999)))
    {
        return NGX_COLLAB_WS_CLOSE_PROTOCOL;
    }

    memset(&u, 0, sizeof(ngx_collab_utf8_t));

    if (ngx_collab_utf8_feed(&u, data + 2, len - 2) != 0
        || !ngx_collab_utf8_complete(&u))
    {
        return NGX_COLLAB_WS_CLOSE_INVALID;
    }

    *code = c;

    return 0;
}


int
ngx_collab_utf8_feed(ngx_collab_utf8_t *u, const u_char *p, size_t len)
{
    u_char         ch;
    uint64_t       w;
    const u_char  *last;

    last = p + len;

    while (p < last) {

        if (u->need == 0) {

            /* ASCII runs, eight bytes at a time */

            while ((size_t) (last - p) >= 8) {
                memcpy(&w, p, 8);

                if (w & 0x8080808080808080ULL) {
                    break;
                }

                p += 8;
            }

            if (p == last) {
                break;
            }

            ch = *p++;

            if (ch < 0x80) {
                continue;
            }

            u->lo = 0x80;
            u->hi = 0xbf;

            if (ch >= 0xc2 && ch <= 0xdf) {
                u->need = 1;

            } else if (ch >= 0xe0 && ch <= 0xef) {
                u->need = 2;

                if (ch == 0xe0) {
                    u->lo = 0xa0;       /* overlong */

                } else if (ch == 0xed) {
                    u->hi = 0x9f;       /* surrogates */
                }

            } else if (ch >= 0xf0 && ch <= 0xf4) {
                u->need = 3;

                if (ch == 0xf0) {
                    u->lo = 0x90;       /* overlong */

                } else if (ch == 0xf4) {
                    u->hi = 0x8f;       /* above U+10FFFF */
                }

            } else {
                return -1;
            }

            continue;
        }

        ch = *p++;

        if (ch < u->lo || ch > u->hi) {
            return -1;
        }

        u->need--;
        u->lo = 0x80;
        u->hi = 0xbf;
    }

    return 0;
}
