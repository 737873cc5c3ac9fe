/* The name a TLS ClientHello gives: see clienthello.h. Each step mirrors one of
 * firstbytes.py's (RFC 8446 4.1.2, RFC 6066 3), every length checked against what
 * remains of its enclosing vector. */
#include "clienthello.h"

#include <string.h>

#define HANDSHAKE 22
#define CLIENT_HELLO 1
#define EXT_SNI 0
#define EXT_ECH 0xfe0d
#define SNI_HOST 0

/* A bounded view: [pos, end) of the buffer. */
struct view {
    const uint8_t *p;
    size_t pos, end;
};

static int take(struct view *v, size_t n)
{
    if (n > v->end - v->pos)
        return -1;
    v->pos += n;
    return 0;
}

static int num(struct view *v, size_t n, uint32_t *out)
{
    if (n > v->end - v->pos)
        return -1;
    uint32_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = (x << 8) | v->p[v->pos + i];
    v->pos += n;
    *out = x;
    return 0;
}

/* The vector with an n-byte length at v's position, and v past it. */
static int vector(struct view *v, size_t n, struct view *out)
{
    uint32_t size;
    if (num(v, n, &size) < 0)
        return -1;
    out->p = v->p;
    out->pos = v->pos;
    out->end = v->pos + size;
    return take(v, size);
}

static int is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* firstbytes.host_name of ASCII text s[0, n): into name (lower case), its length; or -1.
 * Labels of 1-63 of letters, digits, '-' and '_' with at least one letter or digit, 253
 * at most, one trailing dot dropped, the last label not all digits. */
static int host_name(const uint8_t *s, size_t n, char *name, size_t *namelen)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > SANDLOCK_FIRST_NAME_MAX)
        return -1;
    size_t label = 0;
    int alnum = 0, digits = 1;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (label == 0 || label > 63 || !alnum)
                return -1;
            label = 0;
            alnum = 0;
            if (i < n) {
                name[i] = '.';
                digits = 1; /* (of the label that starts now) */
            }
            continue;
        }
        uint8_t c = s[i];
        if (c >= 0x80)
            return -1;
        if (is_alnum(c))
            alnum = 1;
        else if (c != '-' && c != '_')
            return -1;
        if (!(c >= '0' && c <= '9'))
            digits = 0;
        name[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
        label++;
    }
    if (digits)
        return -1; /* 127.0.0.1, or a name whose top label is numeric */
    *namelen = n;
    return 0;
}

/* The server_name extension: exactly one host_name, a valid one. */
static int sni(struct view *ext, char *name, size_t *namelen)
{
    struct view names;
    if (vector(ext, 2, &names) < 0 || ext->pos != ext->end || names.pos == names.end)
        return -1;
    int found = 0;
    while (names.pos < names.end) {
        uint32_t kind;
        struct view value;
        if (num(&names, 1, &kind) < 0 || vector(&names, 2, &value) < 0)
            return -1;
        if (kind != SNI_HOST)
            continue;
        if (found)
            return -1;
        if (host_name(value.p + value.pos, value.end - value.pos, name, namelen) < 0)
            return -1;
        found = 1;
    }
    return found ? 0 : -1;
}

/* The ClientHello that fills record: 1 named (no ECH), 0 anything else well formed,
 * -1 malformed. */
static int client_hello(struct view *record, char *name, size_t *namelen)
{
    uint32_t type;
    struct view body, skip, exts;
    if (num(record, 1, &type) < 0 || type != CLIENT_HELLO || vector(record, 3, &body) < 0 ||
        record->pos != record->end)
        return -1;
    if (take(&body, 2 + 32) < 0 || vector(&body, 1, &skip) < 0 || vector(&body, 2, &skip) < 0 ||
        vector(&body, 1, &skip) < 0)
        return -1;
    if (body.pos == body.end)
        return 0; /* no extensions: no SNI */
    if (vector(&body, 2, &exts) < 0 || body.pos != body.end)
        return -1;
    uint8_t seen[8192] = {0}; /* a bit per extension type: each at most once */
    int ech = 0, named = 0;
    while (exts.pos < exts.end) {
        uint32_t kind;
        struct view ext;
        if (num(&exts, 2, &kind) < 0 || vector(&exts, 2, &ext) < 0)
            return -1;
        if (seen[kind >> 3] & (1u << (kind & 7)))
            return -1;
        seen[kind >> 3] |= (uint8_t)(1u << (kind & 7));
        if (kind == EXT_ECH) {
            ech = 1;
        } else if (kind == EXT_SNI) {
            if (sni(&ext, name, namelen) < 0)
                return -1;
            named = 1;
        }
    }
    return named && !ech;
}

int sandlock_first_tls(const uint8_t *data, size_t len, char *name, size_t *namelen)
{
    if (len == 0)
        return SANDLOCK_FIRST_NEED_MORE;
    if (data[0] != HANDSHAKE)
        return SANDLOCK_FIRST_OTHER;
    if (len < 5)
        return len < 2 || data[1] == 3 ? SANDLOCK_FIRST_NEED_MORE : SANDLOCK_FIRST_OTHER;
    if (data[1] != 3)
        return SANDLOCK_FIRST_OTHER;
    size_t size = 5 + (((size_t)data[3] << 8) | data[4]);
    if (size > SANDLOCK_FIRST_MAX)
        return SANDLOCK_FIRST_OTHER;
    if (len < size)
        return SANDLOCK_FIRST_NEED_MORE;
    struct view record = {.p = data, .pos = 5, .end = size};
    return client_hello(&record, name, namelen) == 1 ? SANDLOCK_FIRST_NAMED
                                                     : SANDLOCK_FIRST_OTHER;
}
