/* The relay's notes: see relaynotes.h. */
#include "relaynotes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

void relaynotes_init(struct relaynotes *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
}

void relaynotes_destroy(struct relaynotes *r)
{
    pthread_mutex_destroy(&r->lock);
    free(r->slots);
    r->slots = NULL;
}

int relaynotes_set_target(struct relaynotes *r, int domain, const void *addr, uint32_t len)
{
    if ((domain != AF_INET && domain != AF_INET6) || len > RELAYNOTES_NAME)
        return -EINVAL;
    int i = domain == AF_INET6;
    int err = 0;
    pthread_mutex_lock(&r->lock);
    if (len && r->slots == NULL &&
        (r->slots = calloc(RELAYNOTES_SLOTS, sizeof *r->slots)) == NULL)
        err = -ENOMEM;
    if (!err) {
        memcpy(r->target[i], addr, len);
        r->target_len[i] = len;
    }
    pthread_mutex_unlock(&r->lock);
    return err;
}

static unsigned int home(const uint8_t *local, int port)
{
    uint32_t h = 2166136261u; /* FNV-1a over the address, then the port */
    for (int i = 0; i < 16; i++)
        h = (h ^ local[i]) * 16777619u;
    h = (h ^ (uint32_t)(port & 0xff)) * 16777619u;
    h = (h ^ (uint32_t)(port >> 8)) * 16777619u;
    return h % RELAYNOTES_SLOTS;
}

/* The slot holding (local, port), or the empty slot where it would go (linear probing:
 * the table is never more than half full). Called with the lock held, slots allocated. */
static struct relaynote *find(struct relaynotes *r, const uint8_t *local, int port)
{
    unsigned int i = home(local, port);
    for (;;) {
        struct relaynote *s = &r->slots[i];
        if (!s->used || (s->port == port && memcmp(s->local, local, 16) == 0))
            return s;
        i = (i + 1) % RELAYNOTES_SLOTS;
    }
}

/* Empty slot i, moving back the notes after it that could not sit in their home slot,
 * so that every note stays reachable from its home without a gap (Knuth's algorithm R). */
static void remove_at(struct relaynotes *r, unsigned int i)
{
    unsigned int j = i;
    for (;;) {
        j = (j + 1) % RELAYNOTES_SLOTS;
        struct relaynote *s = &r->slots[j];
        if (!s->used)
            break;
        unsigned int k = home(s->local, s->port);
        /* s may move to i if its home is not cyclically within (i, j] */
        int between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!between) {
            r->slots[i] = *s;
            i = j;
        }
    }
    memset(&r->slots[i], 0, sizeof r->slots[i]);
    r->count--;
}

int relaynotes_take(struct relaynotes *r, const uint8_t *local, int port, uint8_t *name,
                    uint32_t *namelen, uint32_t *tid)
{
    int found = 0;
    pthread_mutex_lock(&r->lock);
    struct relaynote *s = r->slots != NULL ? find(r, local, port) : NULL;
    if (s != NULL && s->used) {
        memcpy(name, s->name, s->namelen);
        *namelen = s->namelen;
        *tid = s->tid;
        remove_at(r, (unsigned int)(s - r->slots));
        found = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

const uint8_t *relaynotes_target_locked(struct relaynotes *r, int domain, uint32_t *len)
{
    int i = domain == AF_INET6;
    if ((domain != AF_INET && domain != AF_INET6) || r->target_len[i] == 0)
        return NULL;
    *len = r->target_len[i];
    return r->target[i];
}

int relaynotes_note_locked(struct relaynotes *r, int fd, const uint8_t *name, uint32_t namelen,
                           uint32_t tid)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    uint8_t local[16] = {0};
    int port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        local[10] = local[11] = 0xff;
        memcpy(local + 12, &in->sin_addr, 4);
        port = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        memcpy(local, &in6->sin6_addr, 16);
        port = ntohs(in6->sin6_port);
    } else {
        return -1;
    }
    if (r->slots == NULL)
        return -1;
    struct relaynote *s = find(r, local, port);
    if (!s->used) {
        if (r->count >= RELAYNOTES_MAX)
            return -1;
        r->count++;
    }
    memcpy(s->local, local, 16);
    s->port = (uint16_t)port;
    s->used = 1;
    s->namelen = (uint8_t)(namelen < RELAYNOTES_NAME ? namelen : RELAYNOTES_NAME);
    memcpy(s->name, name, s->namelen);
    s->tid = tid;
    return 0;
}
