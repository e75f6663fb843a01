
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * A reference UTF-8 checker for the fuzzers, deliberately unlike the
 * codec's table of byte ranges: it works on code point arithmetic.  A
 * prefix of a sequence is still viable when the code points it can
 * complete to (the bits still missing all zero, or all one) overlap the
 * scalar values of that sequence length, surrogates excluded.  The first
 * byte that leaves no viable completion is the bad one.
 */


#ifndef _NGX_COLLAB_REF_UTF8_H_INCLUDED_
#define _NGX_COLLAB_REF_UTF8_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define REF_UTF8_VALID  ((size_t) -1)


static int
ref_utf8_viable(uint32_t cp, unsigned len, unsigned have)
{
    uint32_t  lo, hi, min, max, missing;

    static const uint32_t  low[] = { 0, 0, 0x80, 0x800, 0x10000 };
    static const uint32_t  high[] = { 0, 0x7f, 0x7ff, 0xffff, 0x10ffff };

    /* cp holds the bits seen so far; each missing byte adds 6 bits */
    missing = 6 * (len - have);
    min = cp << missing;
    max = min | ((1u << missing) - 1);

    lo = min > low[len] ? min : low[len];
    hi = max < high[len] ? max : high[len];

    if (lo > hi) {
        return 0;
    }

    /* the overlap must not lie wholly among the surrogates */
    if (lo >= 0xd800 && hi <= 0xdfff) {
        return 0;
    }

    return 1;
}


/*
 * Returns the index of the first invalid byte, n when the input ends
 * inside a sequence, or REF_UTF8_VALID.
 */

static size_t
ref_utf8(const unsigned char *s, size_t n)
{
    size_t    i;
    uint32_t  cp;
    unsigned  len, have, c;

    len = 0;
    have = 0;
    cp = 0;

    for (i = 0; i < n; i++) {
        c = s[i];

        if (have == len) {
            /* a lead byte */

            if (c < 0x80) {
                continue;
            }

            if ((c & 0xe0) == 0xc0) {
                len = 2;
                cp = c & 0x1f;

            } else if ((c & 0xf0) == 0xe0) {
                len = 3;
                cp = c & 0x0f;

            } else if ((c & 0xf8) == 0xf0) {
                len = 4;
                cp = c & 0x07;

            } else {
                return i;
            }

            have = 1;

        } else {
            if ((c & 0xc0) != 0x80) {
                return i;
            }

            cp = (cp << 6) | (c & 0x3f);
            have++;
        }

        if (!ref_utf8_viable(cp, len, have)) {
            return i;
        }

        if (have == len) {
            len = 0;
            have = 0;
        }
    }

    return have ? n : REF_UTF8_VALID;
}


#endif /* _NGX_COLLAB_REF_UTF8_H_INCLUDED_ */
