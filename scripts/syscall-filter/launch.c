// Runs a program under the system call filter that deploy/sessionmirror.service asks systemd for,
// on a machine where systemd is not PID 1 (a container, CI): every call named in ALLOWED_FILE is
// allowed, every other fails with EPERM (SystemCallErrorNumber=EPERM), and memory can never be
// made writable and executable (MemoryDenyWriteExecute=yes: no mmap with both PROT_WRITE and
// PROT_EXEC, no mprotect adding PROT_EXEC, as systemd's filter does it).
//
//   launch ALLOWED_FILE PROGRAM [ARGUMENT...]
//
// Built and used by scripts/syscall-filter/check; needs libseccomp-dev.
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: launch ALLOWED_FILE PROGRAM [ARGUMENT...]\n");
        return 2;
    }
    scmp_filter_ctx filter = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (filter == NULL) {
        fprintf(stderr, "launch: seccomp_init failed\n");
        return 1;
    }
    FILE *allowed = fopen(argv[1], "r");
    if (allowed == NULL) {
        perror(argv[1]);
        return 1;
    }
    char name[128];
    while (fscanf(allowed, "%127s", name) == 1) {
        int number = seccomp_syscall_resolve_name(name);
        if (number == __NR_SCMP_ERROR) continue;  // Not a call on this architecture.
        int status;
        if (strcmp(name, "mmap") == 0) {
            // Allowed when not executable, or when not writable.
            status = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
            if (status == 0)
                status = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_WRITE, 0));
        } else if (strcmp(name, "mprotect") == 0 || strcmp(name, "pkey_mprotect") == 0) {
            status = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
        } else {
            status = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 0);
        }
        if (status != 0) {
            fprintf(stderr, "launch: seccomp_rule_add %s: %s\n", name, strerror(-status));
            return 1;
        }
    }
    fclose(allowed);
    int status = seccomp_load(filter);
    if (status != 0) {
        fprintf(stderr, "launch: seccomp_load: %s\n", strerror(-status));
        return 1;
    }
    execv(argv[2], argv + 2);
    perror(argv[2]);
    return 1;
}
