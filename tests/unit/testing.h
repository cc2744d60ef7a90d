/* tests/unit/testing.h - the few helpers every C unit test uses.
 * A failed EXPECT records the failure and the test goes on; test_finish() prints
 * "N passed, N failed" and returns the exit status (non-zero on any failure). */
#ifndef DSTRAIN_TESTING_H
#define DSTRAIN_TESTING_H

#include <stdio.h>
#include <stdlib.h>
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

#endif
