/* The remembered destinations: see destset.h. */
#include "destset.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

/* The bytes that name a destination: everything before used (its kind). */
#define KEY_BYTES offsetof(struct dest, used)

static int make_dest(struct dest *d, int domain, int type, int protocol, const void *addr,
                     uint32_t addrlen, int port)
{
    if (addrlen != (domain == AF_INET ? 4u : 16u) || (domain != AF_INET && domain != AF_INET6))
        return -EINVAL;
    if (type < 0 || type > 255 || protocol < 0 || protocol > 255 || port < 0 || port > 65535)
        return -EINVAL;
    memset(d, 0, sizeof *d);
    memcpy(d->addr, addr, addrlen);
    d->port = (uint16_t)port;
    d->domain = (uint8_t)domain;
    d->type = (uint8_t)type;
    d->protocol = (uint8_t)protocol;
    d->used = 1;
    return 0;
}

static unsigned int slot_of(const struct dest *d)
{
    const uint8_t *p = (const uint8_t *)d;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < KEY_BYTES; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % DESTSET_SLOTS;
}

/* The slot holding d, or the empty slot where it would go. Called with the lock held. */
static struct dest *find(struct destset *s, const struct dest *d)
{
    unsigned int i = slot_of(d);
    for (;;) {
        struct dest *slot = &s->slots[i];
        if (!slot->used || memcmp(slot, d, KEY_BYTES) == 0)
            return slot;
        i = (i + 1) % DESTSET_SLOTS;
    }
}

void destset_init(struct destset *s)
{
    pthread_mutex_init(&s->lock, NULL);
    s->used = 0;
    memset(s->slots, 0, sizeof s->slots);
}

void destset_destroy(struct destset *s)
{
    pthread_mutex_destroy(&s->lock);
}

int destset_add(struct destset *s, int domain, int type, int protocol, const void *addr,
                uint32_t addrlen, int port, int kind)
{
    struct dest d;
    int err = make_dest(&d, domain, type, protocol, addr, addrlen, port);
    if (err < 0)
        return err;
    if (kind != DESTSET_DIRECT && kind != DESTSET_RELAY)
        return -EINVAL;
    d.used = (uint8_t)kind;
    pthread_mutex_lock(&s->lock);
    struct dest *slot = find(s, &d);
    if (!slot->used) {
        if (s->used >= DESTSET_SLOTS * 3 / 4) { /* full enough: start over */
            memset(s->slots, 0, sizeof s->slots);
            s->used = 0;
            slot = find(s, &d);
        }
        s->used++;
    }
    *slot = d; /* (the kind of one already there too: the latest decision's) */
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int destset_has(struct destset *s, int domain, int type, int protocol, const void *addr,
                uint32_t addrlen, int port)
{
    struct dest d;
    if (make_dest(&d, domain, type, protocol, addr, addrlen, port) < 0)
        return 0;
    pthread_mutex_lock(&s->lock);
    int kind = find(s, &d)->used;
    pthread_mutex_unlock(&s->lock);
    return kind;
}

void destset_clear(struct destset *s)
{
    pthread_mutex_lock(&s->lock);
    memset(s->slots, 0, sizeof s->slots);
    s->used = 0;
    pthread_mutex_unlock(&s->lock);
}
