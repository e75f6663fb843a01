
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_IMAGE_H_INCLUDED_
#define _NGX_COLLAB_IMAGE_H_INCLUDED_


/*
 * The pictures users attach to messages: "data:image/png;base64,...",
 * image/jpeg or image/webp, strict base64 (the RFC 4648 alphabet, length
 * a multiple of 4, at most two "=" at the end, no spaces), at least one
 * byte.  Nothing else is a picture here: the server never fetches a URL
 * a user gave it.  Pure C over bytes, for unit tests and the fuzzer.
 */


#include <stddef.h>
#include <sys/types.h>


typedef struct {
    const char                 *type;         /* "image/png", ... */
    const char                 *ext;          /* "png", "jpg", "webp" */
    const u_char               *b64;          /* the base64 text */
    size_t                      b64_len;
    size_t                      size;         /* decoded, in bytes */
} ngx_collab_image_t;


/*
 * Checks that the len bytes at p are such a data: URL and fills img.
 * Returns 0, or -1 when they are not (img then says nothing).
 */
int ngx_collab_image_parse(const u_char *p, size_t len,
    ngx_collab_image_t *img);

/* decodes img's base64 into dst (img->size bytes); returns img->size */
size_t ngx_collab_image_decode(const ngx_collab_image_t *img, u_char *dst);


#endif /* _NGX_COLLAB_IMAGE_H_INCLUDED_ */
