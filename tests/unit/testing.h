/* tests/unit/testing.h - the few helpers every C unit test uses.
 * A failed EXPECT records the failure and the test goes on; test_finish() prints
 * "N passed, N failed" and returns the exit status (non-zero on any failure). */
#ifndef DSTRAIN_TESTING_H
#define DSTRAIN_TESTING_H

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

static int test_passed, test_failed;

#define EXPECT(cond, ...) do { \
    if (cond) test_passed++; \
    else { test_failed++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static inline int test_finish(void)
{
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* Seed from DSTRAIN_TEST_SEED or the clock; printed so a failure can be replayed. */
static inline unsigned long long test_seed(void)
{
    const char *s = getenv("DSTRAIN_TEST_SEED");
    unsigned long long seed = s ? strtoull(s, NULL, 10) : (unsigned long long)time(NULL);
    printf("seed %llu (set DSTRAIN_TEST_SEED to replay)\n", seed);
    return seed;
}

/* Run fn(arg) in a forked child with its stderr captured into err (stdout discarded);
 * returns the child's exit status (-1 if a signal ended it). For DIE paths. */
static inline int test_run_child(void (*fn)(void *), void *arg, char *err, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0) abort();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        fn(arg);
        exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    for (ssize_t r; n + 1 < cap && (r = read(fds[0], err + n, cap - 1 - n)) > 0;) n += (size_t)r;
    err[n] = 0;
    close(fds[0]);
    int status;
    if (waitpid(pid, &status, 0) != pid) abort();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#endif
