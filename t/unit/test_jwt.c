
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * Unit tests of the HS256 token verifier, src/ngx_collab_jwt.c.
 *
 * Most tokens are made here: header and payload JSON given as bytes,
 * encoded by a base64url encoder of this file and signed with OpenSSL's
 * HMAC, so a test states exactly the JSON it sends.  Two tokens come from
 * elsewhere as known answers, so that the encoder here and the verifier
 * cannot agree on a mistake: the HS256 example of RFC 7515, A.1, and one
 * made with Python's hmac and base64 modules.
 *
 * Every token is handed to the verifier in a heap block of exactly its
 * length (no NUL after it), so AddressSanitizer sees a read past the end.
 * Every check names the exact result code, and for a rejection that the
 * output holds no claims and an error string.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_collab_jwt.h"


#define NOW         1700000000
#define KEY         "unit-test key: 32 bytes or more!"

#define HDR         "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

#define OK          NGX_COLLAB_JWT_OK
#define MALFORMED   NGX_COLLAB_JWT_MALFORMED
#define BAD_ALG     NGX_COLLAB_JWT_BAD_ALG
#define BAD_SIG     NGX_COLLAB_JWT_BAD_SIGNATURE
#define EXPIRED     NGX_COLLAB_JWT_EXPIRED
#define NOT_YET     NGX_COLLAB_JWT_NOT_YET_VALID
#define WRONG_AUD   NGX_COLLAB_JWT_WRONG_AUDIENCE
#define WRONG_ISS   NGX_COLLAB_JWT_WRONG_ISSUER
#define NO_SUB      NGX_COLLAB_JWT_NO_SUBJECT


typedef struct {
    char          *p;
    size_t         len;
} tok_t;


static ngx_collab_jwt_conf_t  conf;
static ngx_collab_jwt_t       out;


static void
conf_reset(void)
{
    memset(&conf, 0, sizeof(conf));
    conf.key = (const u_char *) KEY;
    conf.key_len = sizeof(KEY) - 1;
    conf.now = NOW;
}


static size_t
b64url(char *dst, const u_char *src, size_t n)
{
    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t    i, len;
    uint32_t  v;

    len = 0;

    for (i = 0; i + 2 < n; i += 3) {
        v = (uint32_t) src[i] << 16 | (uint32_t) src[i + 1] << 8 | src[i + 2];
        dst[len++] = alphabet[v >> 18];
        dst[len++] = alphabet[(v >> 12) & 63];
        dst[len++] = alphabet[(v >> 6) & 63];
        dst[len++] = alphabet[v & 63];
    }

    if (n - i == 1) {
        v = (uint32_t) src[i] << 16;
        dst[len++] = alphabet[v >> 18];
        dst[len++] = alphabet[(v >> 12) & 63];

    } else if (n - i == 2) {
        v = (uint32_t) src[i] << 16 | (uint32_t) src[i + 1] << 8;
        dst[len++] = alphabet[v >> 18];
        dst[len++] = alphabet[(v >> 12) & 63];
        dst[len++] = alphabet[(v >> 6) & 63];
    }

    return len;
}


/* a token of three given segments: hdr.pl.sig, each base64url-encoded */

static tok_t
tok_raw(const u_char *hdr, size_t hlen, const u_char *pl, size_t plen,
    const u_char *sig, size_t slen)
{
    tok_t  t;

    t.p = malloc((hlen + plen + slen) * 4 / 3 + 16);
    assert_non_null(t.p);

    t.len = b64url(t.p, hdr, hlen);
    t.p[t.len++] = '.';
    t.len += b64url(t.p + t.len, pl, plen);
    t.p[t.len++] = '.';
    t.len += b64url(t.p + t.len, sig, slen);

    return t;
}


/* a token signed with md and key */

static tok_t
tok_md(const EVP_MD *md, const char *key, const char *hdr, size_t hlen,
    const char *pl, size_t plen)
{
    tok_t         t;
    unsigned int  n;
    u_char        mac[EVP_MAX_MD_SIZE];

    t = tok_raw((const u_char *) hdr, hlen, (const u_char *) pl, plen,
                (const u_char *) "", 0);

    /* t ends with the '.' of an empty signature: sign what precedes it */

    assert_non_null(HMAC(md, key, (int) strlen(key), (u_char *) t.p,
                         t.len - 1, mac, &n));

    t.p = realloc(t.p, t.len + n * 2);
    assert_non_null(t.p);
    t.len += b64url(t.p + t.len, mac, n);

    return t;
}


static tok_t
tok(const char *hdr, const char *pl)
{
    return tok_md(EVP_sha256(), KEY, hdr, strlen(hdr), pl, strlen(pl));
}


static tok_t
tok_str(const char *s)
{
    tok_t  t;

    t.len = strlen(s);
    t.p = malloc(t.len + 1);
    assert_non_null(t.p);
    memcpy(t.p, s, t.len);

    return t;
}


/* verifies len bytes of t from a heap block of exactly that size */

static int
verify_n(const tok_t *t, size_t len)
{
    int      rc;
    u_char  *copy;

    copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, t->p, len);

    memset(&out, 0xa5, sizeof(out));

    rc = ngx_collab_jwt_verify(&conf, copy, len, &out);

    free(copy);

    if (rc == OK) {
        assert_null(out.error);
        assert_true(out.sub_len >= 1 && out.sub_len <= 256);
        assert_int_equal(out.sub[out.sub_len], '\0');
        assert_int_equal(strlen((char *) out.sub), out.sub_len);
        assert_true(out.name_len <= 256);
        assert_int_equal(out.name[out.name_len], '\0');
        assert_int_equal(strlen((char *) out.name), out.name_len);

    } else {
        assert_non_null(out.error);
        assert_int_equal(out.sub_len, 0);
        assert_int_equal(out.name_len, 0);
        assert_int_equal(out.has_exp, 0);
    }

    return rc;
}


static int
verify(tok_t t)
{
    int  rc;

    rc = verify_n(&t, t.len);
    free(t.p);

    return rc;
}


#define check(expected, token)                                                \
    assert_int_equal(verify(token), expected)

#define check_error(expected, why, token)                                     \
    do {                                                                      \
        assert_int_equal(verify(token), expected);                            \
        assert_string_equal(out.error, why);                                  \
    } while (0)


static void
test_valid(void **state)
{
    (void) state;
    conf_reset();

    check(OK, tok(HDR, "{\"sub\":\"user-1\",\"name\":\"Ann\","
                       "\"exp\":1700000060,\"iat\":1699999990}"));
    assert_string_equal((char *) out.sub, "user-1");
    assert_int_equal(out.sub_len, 6);
    assert_string_equal((char *) out.name, "Ann");
    assert_int_equal(out.name_len, 3);
    assert_int_equal(out.has_exp, 1);
    assert_int_equal(out.exp, 1700000060);

    /* no typ, no name, no exp; unknown claims are ignored */

    check(OK, tok("{\"alg\":\"HS256\",\"kid\":\"k1\"}",
                  "{\"sub\":\"u\",\"role\":[1,{\"a\":null}]}"));
    assert_string_equal((char *) out.sub, "u");
    assert_int_equal(out.name_len, 0);
    assert_string_equal((char *) out.name, "");
    assert_int_equal(out.has_exp, 0);
    assert_int_equal(out.exp, 0);

    /* typ is a media type: case-insensitive, "application/" optional */

    check(OK, tok("{\"typ\":\"jwt\",\"alg\":\"HS256\"}", "{\"sub\":\"u\"}"));
    check(OK, tok("{\"typ\":\"application/JWT\",\"alg\":\"HS256\"}",
                  "{\"sub\":\"u\"}"));

    /* non-ASCII claims, raw and escaped, are copied byte for byte */

    check(OK, tok(HDR, "{\"sub\":\"Zo\xc3\xab \xf0\x9f\x98\x80\","
                       "\"name\":\"\\u65e5\\u672c \\ud83d\\ude00 '; --\"}"));
    assert_string_equal((char *) out.sub, "Zo\xc3\xab \xf0\x9f\x98\x80");
    assert_string_equal((char *) out.name,
                        "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 '; --");

    /* whitespace around JSON is JSON */

    check(OK, tok(" {\r\n\"alg\" : \"HS256\" } ", "\t{ \"sub\" : \"u\" }\n"));

    /* a key with NUL and high bytes */

    conf.key = (const u_char *) "\0\xff\x01";
    conf.key_len = 3;
    check(BAD_SIG, tok(HDR, "{\"sub\":\"u\"}"));
}


static void
test_known_answers(void **state)
{
    static const u_char  rfc7515_key[] = {
        3, 35, 53, 75, 43, 15, 165, 188, 131, 126, 6, 101, 119, 123, 166,
        143, 90, 179, 40, 230, 240, 84, 201, 40, 169, 15, 132, 178, 210, 80,
        46, 191, 211, 251, 90, 146, 210, 6, 71, 239, 150, 138, 180, 195, 119,
        98, 61, 34, 61, 46, 33, 114, 5, 46, 79, 8, 192, 205, 154, 245, 103,
        208, 128, 163
    };

    static const char  python_key[] = "python-made key \0\xff bytes";

    (void) state;

    /*
     * RFC 7515, A.1: its signature verifies, and the payload, which has
     * no sub, is looked at only after that
     */

    conf_reset();
    conf.key = rfc7515_key;
    conf.key_len = sizeof(rfc7515_key);
    conf.now = 1300819380;

#define RFC7515_A1                                                            \
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"                                \
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"      \
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"                                          \
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"

    check_error(NO_SUB, "no sub claim", tok_str(RFC7515_A1));

    conf.key_len--;
    check(BAD_SIG, tok_str(RFC7515_A1));

    /* made with Python's hmac, hashlib and base64 */

#define PYTHON_TOKEN                                                          \
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"                                    \
    ".eyJzdWIiOiJ1c2VyLcOpIDQyIiwibmFtZSI6Ilpvw6siLCJleHAiOjE3MDAwMDAw"      \
    "NjAsIm5iZiI6MTY5OTk5OTk5MCwiYXVkIjpbIngiLCJjaGF0Il0sImlzcyI6Imh0dH"     \
    "BzOi8vYXV0aC5leGFtcGxlIn0"                                               \
    ".S50Ydw72bR3BBjIYIVYJZdPt327s4znlhNkZ-j81_Kg"

    conf_reset();
    conf.key = (const u_char *) python_key;
    conf.key_len = sizeof(python_key) - 1;
    conf.audience = "chat";
    conf.issuer = "https://auth.example";

    check(OK, tok_str(PYTHON_TOKEN));
    assert_string_equal((char *) out.sub, "user-\xc3\xa9 42");
    assert_string_equal((char *) out.name, "Zo\xc3\xab");
    assert_int_equal(out.exp, 1700000060);

    conf.key = (const u_char *) KEY;
    conf.key_len = sizeof(KEY) - 1;
    check(BAD_SIG, tok_str(PYTHON_TOKEN));
}


static void
test_exp_nbf(void **state)
{
    (void) state;
    conf_reset();

    check_error(EXPIRED, "token expired",
                tok(HDR, "{\"sub\":\"u\",\"exp\":1699999999}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1700000000}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":0}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":-5}"));

    check_error(NOT_YET, "token not yet valid",
                tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000001}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000000}"));

    /* expired is reported before not yet valid */

    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":1,\"nbf\":1800000000}"));

    /* leeway, both ways, at its edge */

    conf.leeway = 30;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1699999970}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":1699999969}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000030}"));
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000031}"));

    conf.leeway = 29;
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":1699999970}"));
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000030}"));

    /* a negative leeway counts as none */

    conf.leeway = -100;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1700000000,"
                       "\"nbf\":1700000000}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":1699999999}"));
    conf.leeway = 0;

    /* NumericDate may have a fraction */

    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":1699999999.5}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1700000000.5}"));
    assert_int_equal(out.exp, 1700000000);
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":1700000000.25}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":1699999999.75}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":-0.5}"));

    /* below zero rounding down is not truncation */

    conf.now = 0;
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":-0.5}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":-0.5}"));
    conf.now = -3;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":-2.5}"));
    assert_int_equal(out.exp, -3);
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":-2.5}"));
    conf.now = NOW;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1.7e9}"));
    assert_int_equal(out.exp, 1700000000);

    /* extreme values neither overflow (UBSan watches) nor pass wrongly */

    conf.leeway = 60;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":9223372036854775807}"));
    assert_int_equal(out.exp, INT64_MAX);
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":1e300}"));
    assert_int_equal(out.exp, INT64_MAX);
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":-9223372036854775808}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":-1e300}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":-9223372036854775808}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":-1e300}"));
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":9223372036854775807}"));
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":1e300}"));

    /* jansson refuses numbers it cannot hold */

    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"exp\":9223372036854775808}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"exp\":1e400}"));

    conf.now = INT64_MAX;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"nbf\":9223372036854775807}"));
    check(EXPIRED, tok(HDR, "{\"sub\":\"u\",\"exp\":9223372036854775746}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":9223372036854775747}"));

    conf.now = INT64_MIN;
    conf.leeway = INT64_MAX;
    check(OK, tok(HDR, "{\"sub\":\"u\",\"exp\":-9223372036854775808,"
                       "\"nbf\":-1}"));
    check(NOT_YET, tok(HDR, "{\"sub\":\"u\",\"nbf\":0}"));
}


static void
test_claim_types(void **state)
{
    static const char  *bad[] = {
        "{\"sub\":\"u\",\"exp\":\"1700000060\"}",
        "{\"sub\":\"u\",\"exp\":true}",
        "{\"sub\":\"u\",\"exp\":null}",
        "{\"sub\":\"u\",\"exp\":[1700000060]}",
        "{\"sub\":\"u\",\"nbf\":\"0\"}",
        "{\"sub\":\"u\",\"nbf\":{}}",
        "{\"sub\":\"u\",\"iat\":\"now\"}",
        "{\"sub\":\"u\",\"iss\":1}",
        "{\"sub\":\"u\",\"iss\":null}",
        "{\"sub\":\"u\",\"aud\":1}",
        "{\"sub\":\"u\",\"aud\":{\"chat\":1}}",
        "{\"sub\":\"u\",\"aud\":[\"chat\",1]}",
        "{\"sub\":\"u\",\"name\":42}",
        "{\"sub\":\"u\",\"name\":null}",
        "{\"sub\":\"u\",\"name\":[\"Ann\"]}",
        NULL
    };

    const char  **p;

    (void) state;
    conf_reset();

    for (p = bad; *p; p++) {
        check(MALFORMED, tok(HDR, *p));
    }

    /* the types are checked even when the claim would not be */

    conf.audience = "chat";
    conf.issuer = "i";
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"aud\":[1,\"chat\"],"
                              "\"iss\":\"i\"}"));
}


static void
test_subject(void **state)
{
    char  pl[1024];

    (void) state;
    conf_reset();

    check_error(NO_SUB, "no sub claim", tok(HDR, "{\"name\":\"Ann\"}"));
    check(NO_SUB, tok(HDR, "{}"));
    check_error(NO_SUB, "sub is not a string", tok(HDR, "{\"sub\":42}"));
    check(NO_SUB, tok(HDR, "{\"sub\":null}"));
    check(NO_SUB, tok(HDR, "{\"sub\":true}"));
    check(NO_SUB, tok(HDR, "{\"sub\":[\"u\"]}"));
    check(NO_SUB, tok(HDR, "{\"sub\":{\"id\":\"u\"}}"));
    check_error(NO_SUB, "sub is empty", tok(HDR, "{\"sub\":\"\"}"));

    /* 256 bytes pass, 257 do not, also when a character straddles */

    snprintf(pl, sizeof(pl), "{\"sub\":\"%0256d\"}", 7);
    check(OK, tok(HDR, pl));
    assert_int_equal(out.sub_len, 256);
    assert_int_equal(out.sub[255], '7');

    snprintf(pl, sizeof(pl), "{\"sub\":\"%0257d\"}", 7);
    check_error(NO_SUB, "sub too long", tok(HDR, pl));

    snprintf(pl, sizeof(pl), "{\"sub\":\"%0254d\xc3\xa9\"}", 7);
    check(OK, tok(HDR, pl));
    assert_int_equal(out.sub_len, 256);

    snprintf(pl, sizeof(pl), "{\"sub\":\"%0255d\xc3\xa9\"}", 7);
    check(NO_SUB, tok(HDR, pl));

    /* escapes count as the bytes they stand for */

    snprintf(pl, sizeof(pl), "{\"sub\":\"%0250d\\u00e9\\u00e9\\u00e9\"}", 7);
    check(OK, tok(HDR, pl));
    assert_int_equal(out.sub_len, 256);

    /* the same limits for name, which is optional */

    snprintf(pl, sizeof(pl), "{\"sub\":\"u\",\"name\":\"%0256d\"}", 7);
    check(OK, tok(HDR, pl));
    assert_int_equal(out.name_len, 256);

    snprintf(pl, sizeof(pl), "{\"sub\":\"u\",\"name\":\"%0257d\"}", 7);
    check_error(MALFORMED, "name too long", tok(HDR, pl));

    check(OK, tok(HDR, "{\"sub\":\"u\",\"name\":\"\"}"));
    assert_int_equal(out.name_len, 0);

    /*
     * not UTF-8: jansson refuses the whole payload, so such a sub never
     * reaches the caller; nor does a NUL
     */

    check_error(MALFORMED, "payload is not JSON",
                tok(HDR, "{\"sub\":\"\xff\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"ab\x80\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\xc3\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\xc0\xaf\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\xe0\x80\xaf\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\xed\xa0\x80\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\xf4\x90\x80\x80\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\\ud800\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"\\udc00x\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"a\\u0000b\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"name\":\"\xfe\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"x\":\"\xff\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\"}\xff"));

    check(OK, tok(HDR, "{\"sub\":\"\xf4\x8f\xbf\xbf\"}"));
    assert_int_equal(out.sub_len, 4);
}


/*
 * Flips every bit of one segment's decoded bytes, re-encodes, verifies:
 * a bad signature for bytes [from, to) (only bit 0 of header bytes, which
 * keeps a letter or digit in a string one), refused for the rest.
 */

static void
flip_each_bit(const char *hdr, const char *pl, int segment, size_t from,
    size_t to)
{
    size_t        i, bit, n;
    tok_t         good, t;
    unsigned int  maclen;
    u_char        seg[3][256];
    size_t        len[3];
    u_char        mac[EVP_MAX_MD_SIZE];

    good = tok(hdr, pl);
    assert_int_equal(verify_n(&good, good.len), OK);

    len[0] = strlen(hdr);
    memcpy(seg[0], hdr, len[0]);
    len[1] = strlen(pl);
    memcpy(seg[1], pl, len[1]);

    t = tok_raw(seg[0], len[0], seg[1], len[1], (const u_char *) "", 0);
    HMAC(EVP_sha256(), KEY, sizeof(KEY) - 1, (u_char *) t.p, t.len - 1,
         mac, &maclen);
    free(t.p);
    len[2] = maclen;
    memcpy(seg[2], mac, maclen);

    n = 0;

    for (i = 0; i < len[segment]; i++) {
        for (bit = 0; bit < 8; bit++) {
            seg[segment][i] ^= 1 << bit;
            t = tok_raw(seg[0], len[0], seg[1], len[1], seg[2], len[2]);

            if (i >= from && i < to && (segment != 0 || bit == 0)) {
                assert_int_equal(verify(t), BAD_SIG);

            } else {
                assert_int_not_equal(verify(t), OK);
            }

            seg[segment][i] ^= 1 << bit;
            n++;
        }
    }

    assert_true(n >= 8 * 32);
    free(good.p);

    /* restored: verifies again */

    t = tok_raw(seg[0], len[0], seg[1], len[1], seg[2], len[2]);
    check(OK, t);
}


static void
test_bad_signature(void **state)
{
    tok_t        t;
    size_t       i, bit, kid;
    const char  *hdr, *pl;

    (void) state;
    conf_reset();

    hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"0123456789abcdef\"}";
    pl = "{\"sub\":\"user-1\",\"name\":\"Ann\",\"exp\":1700000060}";

    /*
     * any flip in the payload or in the signature is a bad signature, in
     * the header a flip inside the kid value too; any other header flip
     * is at least refused
     */

    kid = strstr(hdr, "0123") - hdr;

    flip_each_bit(hdr, pl, 1, 0, strlen(pl));
    flip_each_bit(hdr, pl, 2, 0, 32);
    flip_each_bit(hdr, pl, 0, kid, kid + 16);

    /* every bit of the token text: refused, whatever the reason */

    t = tok(hdr, pl);

    for (i = 0; i < t.len; i++) {
        for (bit = 0; bit < 8; bit++) {
            t.p[i] ^= 1 << bit;
            assert_int_not_equal(verify_n(&t, t.len), OK);
            t.p[i] ^= 1 << bit;
        }
    }

    assert_int_equal(verify(t), OK);

    /* another key, a key one byte short, one byte longer */

    check(BAD_SIG, tok_md(EVP_sha256(), "another key", HDR, sizeof(HDR) - 1,
                          "{\"sub\":\"u\"}", 11));

    conf.key_len--;
    check(BAD_SIG, tok(HDR, "{\"sub\":\"u\"}"));
    conf.key = (const u_char *) KEY "!";
    conf.key_len = sizeof(KEY);
    check(BAD_SIG, tok(HDR, "{\"sub\":\"u\"}"));
    conf_reset();

    /* a signature of the wrong length, and a truncated one */

    check_error(BAD_SIG, "signature of wrong length",
                tok_raw((u_char *) HDR, sizeof(HDR) - 1,
                        (u_char *) "{\"sub\":\"u\"}", 11,
                        (u_char *) "0123456789012345678901234567890", 31));
    check(BAD_SIG, tok_raw((u_char *) HDR, sizeof(HDR) - 1,
                           (u_char *) "{\"sub\":\"u\"}", 11,
                           (u_char *) "012345678901234567890123456789012",
                           33));

    t = tok(HDR, "{\"sub\":\"u\"}");
    t.len -= 3;
    check(BAD_SIG, t);

    /* the right signature with a byte more */

    {
        u_char        pl[] = "{\"sub\":\"u\"}";
        unsigned int  n;
        u_char        mac[EVP_MAX_MD_SIZE + 1];

        t = tok_raw((u_char *) HDR, sizeof(HDR) - 1, pl, sizeof(pl) - 1,
                    (u_char *) "", 0);
        HMAC(EVP_sha256(), KEY, sizeof(KEY) - 1, (u_char *) t.p, t.len - 1,
             mac, &n);
        free(t.p);

        check(OK, tok_raw((u_char *) HDR, sizeof(HDR) - 1, pl,
                          sizeof(pl) - 1, mac, n));

        mac[n] = 0;
        check(BAD_SIG, tok_raw((u_char *) HDR, sizeof(HDR) - 1, pl,
                               sizeof(pl) - 1, mac, n + 1));
        check(BAD_SIG, tok_raw((u_char *) HDR, sizeof(HDR) - 1, pl,
                               sizeof(pl) - 1, mac, n - 1));
    }

    /* HS384- and HS512-sized: refused on length before any decoding */

    check(BAD_SIG, tok_md(EVP_sha384(), KEY, HDR, sizeof(HDR) - 1,
                          "{\"sub\":\"u\"}", 11));

    check(BAD_SIG, tok_md(EVP_sha512(), KEY, HDR, sizeof(HDR) - 1,
                          "{\"sub\":\"u\"}", 11));

    /*
     * a spelling of the right signature with a set unused bit: 43
     * characters carry 258 bits, the last two must be zero
     */

    t = tok(HDR, "{\"sub\":\"u\"}");
    assert_int_equal(verify_n(&t, t.len), OK);
    t.p[t.len - 1] = t.p[t.len - 1] == 'A' ? 'B' : t.p[t.len - 1] + 1;
    check_error(MALFORMED, "signature is not base64url", t);

    /* an empty key is the configuration's fault, not the token's */

    conf.key_len = 0;
    check_error(NGX_COLLAB_JWT_ERROR, "empty key", tok(HDR, "{\"sub\":\"u\"}"));
    conf.key = NULL;
    conf.key_len = 5;
    check(NGX_COLLAB_JWT_ERROR, tok(HDR, "{\"sub\":\"u\"}"));
}


static void
test_alg(void **state)
{
    tok_t  t;

    (void) state;
    conf_reset();

    /* "alg":"none" with an empty signature, and with a valid HMAC */

    t = tok_raw((u_char *) "{\"alg\":\"none\",\"typ\":\"JWT\"}", 26,
                (u_char *) "{\"sub\":\"admin\"}", 15, (u_char *) "", 0);
    assert_int_equal(t.p[t.len - 1], '.');
    check_error(BAD_ALG, "alg is not HS256", t);

    check(BAD_ALG, tok("{\"alg\":\"none\"}", "{\"sub\":\"admin\"}"));

    /* none's empty signature under an HS256 header: malformed */

    check_error(MALFORMED, "signature is not base64url",
                tok_raw((u_char *) HDR, sizeof(HDR) - 1,
                        (u_char *) "{\"sub\":\"admin\"}", 15,
                        (u_char *) "", 0));

    check(BAD_ALG, tok("{\"alg\":\"None\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"NONE\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"hs256\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"HS256 \"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"RS256\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"ES256\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":\"HS512\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":null}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":256}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{\"alg\":[\"HS256\"]}", "{\"sub\":\"u\"}"));
    check_error(BAD_ALG, "no alg in header",
                tok("{\"typ\":\"JWT\"}", "{\"sub\":\"u\"}"));
    check(BAD_ALG, tok("{}", "{\"sub\":\"u\"}"));

    /* HS384, correctly signed with HS384 and the same key */

    check(BAD_ALG, tok_md(EVP_sha384(), KEY, "{\"alg\":\"HS384\"}", 15,
                          "{\"sub\":\"u\"}", 11));

    /* an HS256 signature does not make another alg acceptable */

    check(BAD_ALG, tok("{\"alg\":\"HS384\",\"typ\":\"JWT\"}",
                       "{\"sub\":\"u\"}"));

    /* a second alg is not a choice */

    check_error(MALFORMED, "header is not JSON",
                tok("{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"u\"}"));
    check(MALFORMED,
          tok("{\"alg\":\"none\",\"alg\":\"HS256\"}", "{\"sub\":\"u\"}"));

    /* typ and crit */

    check_error(MALFORMED, "typ is not JWT",
                tok("{\"alg\":\"HS256\",\"typ\":\"JWS\"}", "{\"sub\":\"u\"}"));
    check(MALFORMED, tok("{\"alg\":\"HS256\",\"typ\":\"\"}",
                         "{\"sub\":\"u\"}"));
    check(MALFORMED, tok("{\"alg\":\"HS256\",\"typ\":1}", "{\"sub\":\"u\"}"));
    check(MALFORMED, tok("{\"alg\":\"HS256\",\"typ\":null}",
                         "{\"sub\":\"u\"}"));
    check_error(MALFORMED, "crit header not supported",
                tok("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}",
                    "{\"sub\":\"u\"}"));
    check(MALFORMED, tok("{\"alg\":\"HS256\",\"b64\":false,\"crit\":[\"b64\"]}",
                         "{\"sub\":\"u\"}"));
}


static void
test_audience_issuer(void **state)
{
    (void) state;
    conf_reset();

    /* not configured: not checked */

    check(OK, tok(HDR, "{\"sub\":\"u\",\"aud\":\"other\",\"iss\":\"x\"}"));

    conf.audience = "chat";

    check(OK, tok(HDR, "{\"sub\":\"u\",\"aud\":\"chat\"}"));
    check_error(WRONG_AUD, "aud does not match",
                tok(HDR, "{\"sub\":\"u\",\"aud\":\"other\"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":\"Chat\"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":\"cha\"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":\"chat \"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":\"\"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\"}"));

    check(OK, tok(HDR, "{\"sub\":\"u\",\"aud\":[\"chat\"]}"));
    check(OK, tok(HDR, "{\"sub\":\"u\",\"aud\":[\"api\",\"web\",\"chat\"]}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":[\"api\",\"web\"]}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":[]}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":[\"chatx\"]}"));

    conf.audience = NULL;
    conf.issuer = "https://auth.example";

    check(OK, tok(HDR, "{\"sub\":\"u\",\"iss\":\"https://auth.example\"}"));
    check_error(WRONG_ISS, "iss does not match",
                tok(HDR, "{\"sub\":\"u\",\"iss\":\"https://evil.example\"}"));
    check(WRONG_ISS,
          tok(HDR, "{\"sub\":\"u\",\"iss\":\"https://auth.example/\"}"));
    check(WRONG_ISS, tok(HDR, "{\"sub\":\"u\",\"iss\":\"\"}"));
    check(WRONG_ISS, tok(HDR, "{\"sub\":\"u\"}"));

    /* both, each failing alone */

    conf.audience = "chat";

    check(OK, tok(HDR, "{\"sub\":\"u\",\"aud\":\"chat\","
                       "\"iss\":\"https://auth.example\"}"));
    check(WRONG_AUD, tok(HDR, "{\"sub\":\"u\",\"aud\":\"x\","
                              "\"iss\":\"https://auth.example\"}"));
    check(WRONG_ISS, tok(HDR, "{\"sub\":\"u\",\"aud\":\"chat\","
                              "\"iss\":\"x\"}"));
}


static void
test_malformed(void **state)
{
    tok_t   t, good;
    size_t  i;
    char    buf[512];

    static const char  *bad_char[] = { "=", "+", "/", " ", "\n", "\t", "%",
                                       "\\", "\"", "\x80", "\xff", "*", NULL };
    const char  **c;

    (void) state;
    conf_reset();

    check_error(MALFORMED, "empty token", tok_str(""));
    check_error(MALFORMED, "not three segments", tok_str("abc"));
    check(MALFORMED, tok_str("."));
    check(MALFORMED, tok_str(".."));
    check(MALFORMED, tok_str("..."));
    check(MALFORMED, tok_str("a.b"));

    good = tok(HDR, "{\"sub\":\"u\",\"exp\":1700000060}");
    assert_int_equal(verify_n(&good, good.len), OK);

    /* 0, 1, 2 and 4 dots around valid segments */

    {
        char  *d1, *d2;

        d1 = memchr(good.p, '.', good.len);
        d2 = memchr(d1 + 1, '.', good.p + good.len - d1 - 1);

        t.p = buf;

        /* no dot: the three segments glued */
        t.len = 0;
        memcpy(buf, good.p, d1 - good.p);
        t.len += d1 - good.p;
        memcpy(buf + t.len, d1 + 1, d2 - d1 - 1);
        t.len += d2 - d1 - 1;
        memcpy(buf + t.len, d2 + 1, good.p + good.len - d2 - 1);
        t.len += good.p + good.len - d2 - 1;
        assert_int_equal(verify_n(&t, t.len), MALFORMED);
        assert_string_equal(out.error, "not three segments");

        /* one dot: header.payload, and header.signature */
        assert_int_equal(verify_n(&good, d2 - good.p), MALFORMED);
        assert_string_equal(out.error, "not three segments");

        /* two dots: the token itself, cut after the second dot */
        assert_int_equal(verify_n(&good, d2 - good.p + 1), MALFORMED);
        assert_string_equal(out.error, "signature is not base64url");

        /* four dots: a fourth segment, empty or not, or a dot doubled */
        memcpy(buf, good.p, good.len);
        memcpy(buf + good.len, ".AAAA", 5);
        assert_int_equal(verify_n(&t, good.len + 5), MALFORMED);
        assert_string_equal(out.error, "not three segments");
        assert_int_equal(verify_n(&t, good.len + 1), MALFORMED);

        t.len = 0;
        memcpy(buf, good.p, d1 - good.p + 1);
        t.len = d1 - good.p + 1;
        buf[t.len++] = '.';
        memcpy(buf + t.len, d1 + 1, good.p + good.len - d1 - 1);
        t.len += good.p + good.len - d1 - 1;
        assert_int_equal(verify_n(&t, t.len), MALFORMED);
        assert_string_equal(out.error, "not three segments");

        /* empty header, empty payload */
        assert_int_equal(verify_n(&(tok_t) { d1, good.p + good.len - d1 },
                                  good.p + good.len - d1), MALFORMED);
        assert_string_equal(out.error, "header is not base64url");

        t.len = 0;
        memcpy(buf, good.p, d1 - good.p + 1);
        t.len = d1 - good.p + 1;
        memcpy(buf + t.len, d2, good.p + good.len - d2);
        t.len += good.p + good.len - d2;
        assert_int_equal(verify_n(&t, t.len), MALFORMED);

        /* a bad character at the start, middle and end of each segment,
           replacing one or inserted */

        for (c = bad_char; *c; c++) {
            size_t  pos[] = { 0, 5, (size_t) (d1 - good.p) - 1,
                              (size_t) (d1 - good.p) + 1,
                              (size_t) (d2 - good.p) - 1,
                              (size_t) (d2 - good.p) + 1,
                              good.len - 1 };

            for (i = 0; i < sizeof(pos) / sizeof(pos[0]); i++) {
                memcpy(buf, good.p, good.len);
                buf[pos[i]] = **c;
                assert_int_equal(verify_n(&t, good.len), MALFORMED);
                assert_non_null(strstr(out.error, "not base64url"));

                memcpy(buf, good.p, pos[i]);
                buf[pos[i]] = **c;
                memcpy(buf + pos[i] + 1, good.p + pos[i], good.len - pos[i]);
                assert_int_equal(verify_n(&t, good.len + 1), MALFORMED);
            }
        }
    }

    free(good.p);

    /* padding, where it would belong and where it would not */

    t = tok(HDR, "{\"sub\":\"abc\"}");      /* 13 bytes: 18 chars + "==" */
    assert_int_equal(verify_n(&t, t.len), OK);
    memcpy(buf, t.p, t.len);
    {
        char  *d1 = memchr(buf, '.', t.len);
        char  *d2 = memchr(d1 + 1, '.', buf + t.len - d1 - 1);
        tok_t  p;

        assert_int_equal(d2 - d1 - 1, 18);
        p.p = malloc(t.len + 2);
        memcpy(p.p, buf, d2 - buf);
        memcpy(p.p + (d2 - buf), "==", 2);
        memcpy(p.p + (d2 - buf) + 2, d2, buf + t.len - d2);
        p.len = t.len + 2;
        check_error(MALFORMED, "payload is not base64url", p);
    }
    free(t.p);

    /* a header of 28 bytes: 38 chars + "==" */
    t = tok(" " HDR, "{\"sub\":\"u\"}");
    assert_int_equal(verify_n(&t, t.len), OK);
    memcpy(buf, t.p, t.len);
    {
        char  *d1 = memchr(buf, '.', t.len);
        tok_t  p;

        assert_int_equal(d1 - buf, 38);
        p.p = malloc(t.len + 2);
        memcpy(p.p, buf, 38);
        memcpy(p.p + 38, "==", 2);
        memcpy(p.p + 40, d1, buf + t.len - d1);
        p.len = t.len + 2;
        check_error(MALFORMED, "header is not base64url", p);
    }
    free(t.p);

    /* signature with padding appended */
    t = tok(HDR, "{\"sub\":\"u\"}");
    t.p = realloc(t.p, t.len + 1);
    t.p[t.len++] = '=';
    check(MALFORMED, t);

    /* a segment of 1 mod 4 characters cannot be base64 */

    check_error(MALFORMED, "header is not base64url",
                tok_str("eyJhbGciOiJIUzI1NiJ9A.e30.AAAA"));

    /* not JSON, not an object, trailing bytes, duplicate keys */

    check_error(MALFORMED, "header is not JSON", tok("{\"alg\":", "{}"));
    check(MALFORMED, tok("alg=HS256", "{\"sub\":\"u\"}"));
    check(MALFORMED, tok(HDR "x", "{\"sub\":\"u\"}"));
    check(MALFORMED, tok(HDR HDR, "{\"sub\":\"u\"}"));
    check_error(MALFORMED, "header is not an object",
                tok("[\"HS256\"]", "{\"sub\":\"u\"}"));
    check(MALFORMED, tok("\"HS256\"", "{\"sub\":\"u\"}"));

    check_error(MALFORMED, "payload is not JSON",
                tok(HDR, "{\"sub\":\"u\""));
    check(MALFORMED, tok(HDR, "{\"sub\":'u'}"));
    check(MALFORMED, tok(HDR, "{sub:\"u\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\"}{}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\"} x"));
    check(MALFORMED, tok(HDR, "\"u\""));
    check(MALFORMED, tok(HDR, "42"));
    check(MALFORMED, tok(HDR, "null"));
    check_error(MALFORMED, "payload is not an object",
                tok(HDR, "[{\"sub\":\"u\"}]"));
    check_error(MALFORMED, "payload is not JSON",
                tok(HDR, "{\"sub\":\"u\",\"sub\":\"admin\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"admin\",\"sub\":\"admin\"}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"exp\":1,\"exp\":2}"));
    check(MALFORMED, tok(HDR, "{\"sub\":\"u\",\"x\":{\"a\":1,\"a\":1}}"));
}


/* a token of exactly len bytes, padded with a filler claim */

static tok_t
tok_of_len(size_t len)
{
    tok_t   t;
    char   *pl;
    size_t  n;

    pl = malloc(len + 64);
    assert_non_null(pl);

    for (n = 0; n < len; n++) {
        sprintf(pl, "{\"sub\":\"u\",\"x\":\"%0*d\"}", (int) n, 0);
        t = tok(HDR, pl);

        if (t.len == len) {
            free(pl);
            return t;
        }

        free(t.p);

        if (t.len > len) {
            break;
        }
    }

    free(pl);
    fail_msg("no token of %zu bytes", len);

    return t;
}


static void
test_too_long(void **state)
{
    tok_t  t;

    (void) state;
    conf_reset();

    check(OK, tok_of_len(NGX_COLLAB_JWT_MAX_LEN));
    check_error(MALFORMED, "token too long",
                tok_of_len(NGX_COLLAB_JWT_MAX_LEN + 1));

    /* the length is checked first: the rest need not even be a token */

    t.len = 1024 * 1024;
    t.p = malloc(t.len);
    memset(t.p, 'A', t.len);
    check_error(MALFORMED, "token too long", t);
}


static void
test_deep_json(void **state)
{
    char    *pl;
    size_t   depth, n;

    (void) state;
    conf_reset();

    /*
     * the deepest nesting an 8 KiB token carries is about 3000 levels;
     * jansson stops at 2048, which must be an error, not a crash
     */

    for (depth = 100; depth <= 3000; depth += 2900) {
        pl = malloc(2 * depth + 64);
        n = sprintf(pl, "{\"sub\":\"u\",\"x\":");
        memset(pl + n, '[', depth);
        memset(pl + n + depth, ']', depth);
        memcpy(pl + n + 2 * depth, "}", 2);

        check(depth < 2048 ? OK : MALFORMED, tok(HDR, pl));
        free(pl);
    }
}


static void
test_strerror(void **state)
{
    (void) state;

    assert_string_equal(ngx_collab_jwt_strerror(OK), "valid");
    assert_string_equal(ngx_collab_jwt_strerror(EXPIRED), "expired");
    assert_string_equal(ngx_collab_jwt_strerror(BAD_ALG),
                        "algorithm not allowed");
    assert_string_equal(ngx_collab_jwt_strerror(-100), "internal error");
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_known_answers),
        cmocka_unit_test(test_exp_nbf),
        cmocka_unit_test(test_claim_types),
        cmocka_unit_test(test_subject),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_alg),
        cmocka_unit_test(test_audience_issuer),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_deep_json),
        cmocka_unit_test(test_strerror),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
