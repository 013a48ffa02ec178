/*
 * Frames and TLV fields: building them into an output buffer and walking received ones.
 * Everything on the wire is little-endian (PROTOCOL.md).
 */
#include <stdlib.h>
#include <string.h>

#include "agent.h"

uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void set_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void set_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* ---- buffers ----------------------------------------------------------------------- */

int buf_reserve(struct buf *b, size_t more)
{
	if (b->failed)
		return -1;
	/* Slide pending bytes to the front before growing: the buffer is a queue. */
	if (b->off && b->len + more > b->cap) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p) {
		b->failed = 1;
		return -1;
	}
	b->data = p;
	b->cap = cap;
	return 0;
}

void buf_put(struct buf *b, const void *p, size_t n)
{
	if (buf_reserve(b, n) < 0)
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void buf_consumed(struct buf *b, size_t n)
{
	b->off += n;
	if (b->off == b->len)
		b->off = b->len = 0;
	/* Give memory back after a burst (50 MiB of output should not stay resident). */
	if (b->len == 0 && b->cap > (4u << 20)) {
		free(b->data);
		b->data = NULL;
		b->cap = 0;
	}
}

void buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* ---- building frames ------------------------------------------------------------------ */

void frame_header(uint8_t *h, uint32_t len, uint32_t session, uint16_t type)
{
	set_le32(h, len);
	set_le32(h + 4, session);
	set_le16(h + 8, type);
	set_le16(h + 10, 0);
}

size_t frame_begin(struct buf *b, uint32_t session, uint16_t type)
{
	uint8_t hdr[HDR_LEN];
	frame_header(hdr, 0, session, type);
	if (buf_reserve(b, HDR_LEN) < 0)
		return 0;
	/* Relative to b->off: a later buf_reserve may slide the queue to the front. */
	size_t start = b->len - b->off;
	buf_put(b, hdr, HDR_LEN);
	return start;
}

void frame_end(struct buf *b, size_t start)
{
	if (b->failed)
		return;
	set_le32(b->data + b->off + start, (uint32_t)(b->len - b->off - start - HDR_LEN));
}

void put_tlv(struct buf *b, uint16_t tag, const void *val, uint32_t len)
{
	uint8_t h[6];
	set_le16(h, tag);
	set_le32(h + 2, len);
	buf_put(b, h, sizeof(h));
	if (len)
		buf_put(b, val, len);
}

void put_u64(struct buf *b, uint16_t tag, uint64_t v)
{
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(v >> (8 * i));
	put_tlv(b, tag, le, 8);
}

void put_str(struct buf *b, uint16_t tag, const char *s)
{
	put_tlv(b, tag, s, (uint32_t)strlen(s));
}

/* ---- reading fields ------------------------------------------------------------------ */

int tlv_next(struct tlv *r, uint16_t *tag, const uint8_t **val, uint32_t *len)
{
	if (r->left == 0)
		return 0;
	if (r->left < 6)
		return -1;
	uint32_t l = get_le32(r->p + 2);
	if (l > r->left - 6)
		return -1;
	*tag = get_le16(r->p);
	*len = l;
	*val = r->p + 6;
	r->p += 6 + l;
	r->left -= 6 + l;
	return 1;
}

int tlv_u64(const uint8_t *val, uint32_t len, uint64_t *out)
{
	if (len != 8)
		return -1;
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | val[i];
	*out = v;
	return 0;
}

char *tlv_strdup(const uint8_t *val, uint32_t len)
{
	if (memchr(val, 0, len))
		return NULL;
	char *s = malloc((size_t)len + 1);
	if (!s)
		return NULL;
	memcpy(s, val, len);
	s[len] = 0;
	return s;
}
