/* The approved names: see approved.h. */
#include "approved.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void approved_init(struct approved *a)
{
    pthread_mutex_init(&a->lock, NULL);
    a->used = 0;
    a->slots = NULL;
}

void approved_destroy(struct approved *a)
{
    pthread_mutex_destroy(&a->lock);
    free(a->slots);
    a->slots = NULL;
}

/* The key of (name, dest) into k; -1 if it cannot be one. */
static int make_key(struct approval *k, const char *name, size_t namelen, const uint8_t *dest,
                    uint32_t destlen)
{
    uint16_t family;
    if (namelen == 0 || namelen > SANDLOCK_FIRST_NAME_MAX || destlen < 2)
        return -1;
    memset(k, 0, sizeof *k);
    memcpy(&family, dest, 2);
    if (family == AF_INET && destlen >= 8) {
        k->addr[10] = k->addr[11] = 0xff;
        memcpy(k->addr + 12, dest + 4, 4);
    } else if (family == AF_INET6 && destlen >= 24) {
        memcpy(k->addr, dest + 8, 16);
    } else {
        return -1;
    }
    k->port = (uint16_t)((dest[2] << 8) | dest[3]);
    k->namelen = (uint8_t)namelen;
    memcpy(k->name, name, namelen);
    k->used = 1;
    return 0;
}

static int same(const struct approval *a, const struct approval *b)
{
    return a->port == b->port && a->namelen == b->namelen && memcmp(a->addr, b->addr, 16) == 0 &&
           memcmp(a->name, b->name, a->namelen) == 0;
}

static unsigned int slot_of(const struct approval *k)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < 16; i++)
        h = (h ^ k->addr[i]) * 16777619u;
    h = (h ^ k->port) * 16777619u;
    for (size_t i = 0; i < k->namelen; i++)
        h = (h ^ (uint8_t)k->name[i]) * 16777619u;
    return h % APPROVED_SLOTS;
}

/* The slot holding k, or the empty slot where it would go. Lock held, slots allocated. */
static struct approval *find(struct approved *a, const struct approval *k)
{
    unsigned int i = slot_of(k);
    for (;;) {
        struct approval *s = &a->slots[i];
        if (!s->used || same(s, k))
            return s;
        i = (i + 1) % APPROVED_SLOTS;
    }
}

int approved_add(struct approved *a, const char *name, size_t namelen, const uint8_t *addr,
                 uint32_t addrlen, int port)
{
    /* (as a sockaddr, so that both ways to the key are one) */
    uint8_t dest[24] = {0};
    uint16_t family = addrlen == 4 ? AF_INET : AF_INET6;
    if ((addrlen != 4 && addrlen != 16) || port < 0 || port > 65535)
        return -EINVAL;
    memcpy(dest, &family, 2);
    dest[2] = (uint8_t)(port >> 8);
    dest[3] = (uint8_t)port;
    memcpy(dest + (addrlen == 4 ? 4 : 8), addr, addrlen);
    struct approval k;
    if (make_key(&k, name, namelen, dest, sizeof dest) < 0)
        return -EINVAL;
    int err = 0;
    pthread_mutex_lock(&a->lock);
    if (a->slots == NULL && (a->slots = calloc(APPROVED_SLOTS, sizeof *a->slots)) == NULL) {
        err = -ENOMEM;
    } else {
        struct approval *s = find(a, &k);
        if (!s->used) {
            if (a->used >= APPROVED_SLOTS * 3 / 4) { /* full enough: start over */
                memset(a->slots, 0, APPROVED_SLOTS * sizeof *a->slots);
                a->used = 0;
                s = find(a, &k);
            }
            *s = k;
            a->used++;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return err;
}

int approved_has(struct approved *a, const char *name, size_t namelen, const uint8_t *dest,
                 uint32_t destlen)
{
    struct approval k;
    if (make_key(&k, name, namelen, dest, destlen) < 0)
        return 0;
    pthread_mutex_lock(&a->lock);
    int hit = a->slots != NULL && find(a, &k)->used;
    pthread_mutex_unlock(&a->lock);
    return hit;
}

void approved_clear(struct approved *a)
{
    pthread_mutex_lock(&a->lock);
    if (a->slots != NULL)
        memset(a->slots, 0, APPROVED_SLOTS * sizeof *a->slots);
    a->used = 0;
    pthread_mutex_unlock(&a->lock);
}
