#ifndef CSESSIONMIRROR_PROCESS_SHIM_H
#define CSESSIONMIRROR_PROCESS_SHIM_H
#include <sys/prctl.h>

/* prctl(2) is variadic, and Swift cannot call a variadic C function: one fixed wrapper per use. */

/* PR_SET_DUMPABLE 0: no core dump, no ptrace by other processes of the same user, /proc/<pid> owned by root. */
static inline int sessionmirror_prctl_set_not_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/* PR_GET_DUMPABLE: 0 when the process is not dumpable. */
static inline int sessionmirror_prctl_get_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

#endif
