/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small stand-in for tools/testing/selftests/kselftest_harness.h, enough to compile and
 * run the files `memfail selftest` writes outside a kernel tree (the tests compile each one
 * against it). It implements the subset those files use: TEST(), TEST_SIGNAL(),
 * TEST_HARNESS_MAIN, SKIP() and the ASSERT_* comparisons, with the same argument order
 * (expected, seen). As in the real harness, the test runs in a child process.
 */
#ifndef MEMFAIL_KSELFTEST_HARNESS_SHIM_H
#define MEMFAIL_KSELFTEST_HARNESS_SHIM_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

struct __test_metadata { const char *name; int skipped; };
typedef void (*__test_fn_t)(struct __test_metadata *);
static __test_fn_t __test_fn;
static const char *__test_name;
static int __test_signal;

#define TEST(name) TEST_SIGNAL(name, 0)

#define TEST_SIGNAL(name, sig)                                                 \
	static void name(struct __test_metadata *_metadata);                   \
	__attribute__((constructor)) static void __register_##name(void)       \
	{                                                                      \
		__test_fn = name;                                              \
		__test_name = #name;                                           \
		__test_signal = sig;                                           \
	}                                                                      \
	static void name(struct __test_metadata *_metadata)

#define SKIP(statement, ...)                                                   \
	do {                                                                   \
		_metadata->skipped = 1;                                        \
		printf("# SKIP " __VA_ARGS__);                                 \
		printf("\n");                                                  \
		statement;                                                     \
	} while (0)

#define __ASSERT(expected, seen, op)                                           \
	do {                                                                   \
		intmax_t __e = (intmax_t)(intptr_t)(expected);                 \
		intmax_t __s = (intmax_t)(intptr_t)(seen);                     \
		if (!(__e op __s)) {                                           \
			printf("# %s:%d: %s %s %s (%jd vs %jd)\n", __FILE__,   \
			       __LINE__, #expected, #op, #seen, __e, __s);     \
			printf("not ok 1 %s\n", _metadata->name);              \
			exit(1);                                               \
		}                                                              \
	} while (0)

#define ASSERT_EQ(expected, seen) __ASSERT(expected, seen, ==)
#define ASSERT_NE(expected, seen) __ASSERT(expected, seen, !=)
#define ASSERT_LT(expected, seen) __ASSERT(expected, seen, <)
#define ASSERT_LE(expected, seen) __ASSERT(expected, seen, <=)
#define ASSERT_GT(expected, seen) __ASSERT(expected, seen, >)
#define ASSERT_GE(expected, seen) __ASSERT(expected, seen, >=)
#define EXPECT_EQ ASSERT_EQ

#define TEST_HARNESS_MAIN                                                      \
	int main(void)                                                         \
	{                                                                      \
		struct __test_metadata m = { __test_name, 0 };                 \
		int status = 0;                                                \
		pid_t child;                                                   \
		printf("TAP version 13\n1..1\n");                              \
		fflush(stdout);                                                \
		child = fork();                                                \
		if (child == 0) {                                              \
			__test_fn(&m);                                         \
			exit(m.skipped ? 4 : 0);                               \
		}                                                              \
		waitpid(child, &status, 0);                                    \
		if (__test_signal ? WIFSIGNALED(status) &&                     \
				    WTERMSIG(status) == __test_signal          \
				  : WIFEXITED(status) &&                       \
				    (WEXITSTATUS(status) == 0 ||               \
				     WEXITSTATUS(status) == 4)) {              \
			printf("ok 1 %s%s\n", __test_name,                     \
			       WIFEXITED(status) && WEXITSTATUS(status) == 4 ? \
			       " # SKIP" : "");                                \
			return 0;                                              \
		}                                                              \
		printf("not ok 1 %s\n", __test_name);                          \
		return 1;                                                      \
	}

#endif
