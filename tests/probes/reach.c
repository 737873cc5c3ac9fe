/* reach: a neighbour process, and the attacks that reach into it from a sandbox.
 *
 *   reach serve TARGET
 *       The neighbour: a UDP socket connected to TARGET, then one line
 *       "pid=P fd=F addr=A" (A: the address of a 64-bit word), then for every line read
 *       on stdin one line "value=V" (the word, in hex). Exits at end of input.
 *   reach attack PID FD ADDR VECTOR...
 *       PID may be "ppid" (our parent: the supervisor). Each VECTOR is tried in order,
 *       one result line each:
 *         attach    ptrace(PTRACE_ATTACH), then detach          "attach"
 *         seize     ptrace(PTRACE_SEIZE)                        "seize"
 *         attach32  PTRACE_ATTACH through int 0x80 (i386 ptrace)  "attach32"
 *         mem       open /proc/PID/mem O_RDWR, pwrite at ADDR   "mem_open", "mem_write"
 *         vmwrite   process_vm_writev at ADDR                   "vm_write"
 *         vmread    process_vm_readv at ADDR                    "vm_read"
 *         getfd     pidfd_open, pidfd_getfd(FD), send on it     "pidfd_open", "getfd", "send"
 *         stop      kill(PID, SIGSTOP)                          "stop"
 *         term      kill(PID, SIGTERM)                          "term"
 *         pstop     pidfd_send_signal(SIGSTOP)                  "pidfd_stop"
 *         connect:T a TCP connect to T (is the supervisor alive?) "connect"
 *   What a successful attack writes into the neighbour's word is 0x5a5a5a5a5a5a5a5a.
 * Exit 0 when every vector was tried. */
#include "common.c"

#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

static const char *USAGE = "reach serve TARGET | reach attack PID FD ADDR VECTOR...";
static volatile uint64_t word = 0x1111111111111111ULL;
static const uint64_t STOLEN = 0x5a5a5a5a5a5a5a5aULL;

static int serve(const char *target)
{
    struct sockaddr_storage sa;
    socklen_t len = parse_target(target, &sa);
    int fd = socket(sa.ss_family, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, len) < 0) {
        perror("socket/connect");
        return 2;
    }
    printf("pid=%d fd=%d addr=%p\n", (int)getpid(), fd, (void *)&word);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("value=%016llx\n", (unsigned long long)word);
        fflush(stdout);
    }
    return 0;
}

static void try_attach(pid_t pid)
{
    long r = ptrace(PTRACE_ATTACH, pid, 0, 0);
    report("attach", r, errno);
    if (r == 0) {
        waitpid(pid, NULL, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
}

/* The IA-32 entry: i386 ptrace is 26, PTRACE_ATTACH 16; -errno comes back in eax. */
static void try_attach32(pid_t pid)
{
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(26L), "b"(16L), "c"((long)pid), "d"(0L),
                     "S"(0L) : "memory");
    report("attach32", r < 0 ? -1 : r, r < 0 ? (int)-r : 0);
    if (r == 0) {
        waitpid(pid, NULL, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
}

static void try_seize(pid_t pid)
{
    long r = ptrace(PTRACE_SEIZE, pid, 0, 0);
    report("seize", r, errno);
    /* a seized tracee keeps running; it is detached when we exit */
}

static void try_mem(pid_t pid, uint64_t addr)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    report("mem_open", fd, errno);
    if (fd < 0)
        return;
    ssize_t n = pwrite(fd, &STOLEN, sizeof STOLEN, (off_t)addr);
    report("mem_write", n, errno);
    close(fd);
}

static void try_vm(pid_t pid, uint64_t addr, int writing)
{
    uint64_t buf = STOLEN;
    struct iovec local = {.iov_base = &buf, .iov_len = sizeof buf};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = sizeof buf};
    ssize_t n = writing ? process_vm_writev(pid, &local, 1, &remote, 1, 0)
                        : process_vm_readv(pid, &local, 1, &remote, 1, 0);
    report(writing ? "vm_write" : "vm_read", n, errno);
}

static void try_getfd(pid_t pid, int fd)
{
    long pidfd = syscall(SYS_pidfd_open, pid, 0);
    report("pidfd_open", pidfd, errno);
    if (pidfd < 0)
        return;
    long dup = syscall(SYS_pidfd_getfd, (int)pidfd, fd, 0);
    report("getfd", dup, errno);
    if (dup >= 0) {
        ssize_t n = send((int)dup, "stolen", 6, 0);
        report("send", n, errno);
        close((int)dup);
    }
    close((int)pidfd);
}

static void try_kill(pid_t pid, const char *which)
{
    int r = kill(pid, strcmp(which, "stop") == 0 ? SIGSTOP : SIGTERM);
    report(which, r, errno);
}

static void try_pidfd_stop(pid_t pid)
{
    long pidfd = syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        report("pidfd_stop", -1, errno);
        return;
    }
    long r = syscall(SYS_pidfd_send_signal, (int)pidfd, SIGSTOP, NULL, 0);
    report("pidfd_stop", r, errno);
    close((int)pidfd);
}

static void try_connect(const char *target)
{
    struct sockaddr_storage sa;
    socklen_t len = parse_target(target, &sa);
    int fd = socket(sa.ss_family, SOCK_STREAM, 0);
    int r = connect(fd, (struct sockaddr *)&sa, len);
    report("connect", r, errno);
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2]);
    if (argc < 6 || strcmp(argv[1], "attack") != 0)
        usage_exit(USAGE);
    pid_t pid = strcmp(argv[2], "ppid") == 0 ? getppid() : (pid_t)parse_long(argv[2], USAGE);
    int fd = strcmp(argv[3], "-") == 0 ? -1 : (int)parse_long(argv[3], USAGE);
    uint64_t addr = strcmp(argv[4], "-") == 0 ? 0 : (uint64_t)strtoull(argv[4], NULL, 0);
    for (int i = 5; i < argc; i++) {
        const char *v = argv[i];
        if (strcmp(v, "attach") == 0)
            try_attach(pid);
        else if (strcmp(v, "seize") == 0)
            try_seize(pid);
        else if (strcmp(v, "attach32") == 0)
            try_attach32(pid);
        else if (strcmp(v, "mem") == 0)
            try_mem(pid, addr);
        else if (strcmp(v, "vmwrite") == 0)
            try_vm(pid, addr, 1);
        else if (strcmp(v, "vmread") == 0)
            try_vm(pid, addr, 0);
        else if (strcmp(v, "getfd") == 0)
            try_getfd(pid, fd);
        else if (strcmp(v, "stop") == 0 || strcmp(v, "term") == 0)
            try_kill(pid, v);
        else if (strcmp(v, "pstop") == 0)
            try_pidfd_stop(pid);
        else if (strncmp(v, "connect:", 8) == 0)
            try_connect(v + 8);
        else
            usage_exit(USAGE);
    }
    return 0;
}
