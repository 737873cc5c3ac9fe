/* uring: a TCP connect through io_uring, with raw syscalls (no liburing).
 *
 *   uring TARGET
 *
 * io_uring_setup, then one IORING_OP_CONNECT to TARGET submitted with io_uring_enter:
 * the connect happens in the kernel without any connect syscall a filter could see.
 * Lines "setup ok ret=FD" / "setup errno=N", then "connect ok ret=0" / "connect errno=N"
 * (the CQE result).  Exit 0 iff the connect succeeded. */
#include "common.c"

#include <linux/io_uring.h>
#include <sys/syscall.h>

static const char *USAGE = "uring TARGET";

int main(int argc, char **argv)
{
    if (argc != 2)
        usage_exit(USAGE);
    struct sockaddr_storage sa;
    socklen_t len = parse_target(argv[1], &sa);

    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = (int)syscall(__NR_io_uring_setup, 4, &p);
    report("setup", ring, errno);
    if (ring < 0)
        return 1;

    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        sq_size = cq_size = sq_size > cq_size ? sq_size : cq_size;
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = sq;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP))
        cq = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                  IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
                                     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                                     IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        perror("mmap ring");
        return 2;
    }

    int fd = socket(sa.ss_family, SOCK_STREAM, 0);
    unsigned *sq_tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    unsigned *sq_array = (unsigned *)(sq + p.sq_off.array);
    unsigned tail = *sq_tail;
    unsigned idx = tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_CONNECT;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)&sa;
    sqe->off = len; /* addr2: the address length */
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);

    long n = syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (n < 0) {
        report("enter", -1, errno);
        return 1;
    }
    unsigned *cq_head = (unsigned *)(cq + p.cq_off.head);
    unsigned *cq_tail = (unsigned *)(cq + p.cq_off.tail);
    unsigned *cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    unsigned head = *cq_head;
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
        report("connect", -1, EAGAIN);
        return 1;
    }
    int res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    report("connect", res < 0 ? -1 : res, -res);
    close(fd);
    close(ring);
    return res < 0 ? 1 : 0;
}
