/* ptrace_parent: try to PTRACE_ATTACH to a pid (the sandbox's supervisor, say).
 *
 *   ptrace_parent PID
 *
 * Prints "attach ok" (and detaches) or "attach errno=N"; exits 0 when attached. */
#include "common.c"

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        usage_exit("ptrace_parent PID");
    pid_t pid = (pid_t)strtol(argv[1], NULL, 10);
    if (ptrace(PTRACE_ATTACH, pid, 0, 0) < 0) {
        printf("attach errno=%d\n", errno);
        return 1;
    }
    waitpid(pid, NULL, __WALL);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    kill(pid, SIGCONT);
    printf("attach ok\n");
    return 0;
}
