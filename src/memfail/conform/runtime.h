/* memfail conform runtime: included by every program `memfail conform` generates.
 *
 * A controller process (a root shell) starts the scenario's processes, sends each step to the
 * process and thread that performs it over pipes, and prints one JSON line per fact on stdout,
 * each prefixed "@mf ": step results (return value, errno), SIGBUS signals as the handlers saw
 * them (thread, si_code, si_addr relative to its mapping, si_addr_lsb), process exits, kernel
 * log lines (/dev/kmsg), pagemap / kpageflags observations and /proc/meminfo before and after.
 * The generated part defines the tables (MF_NPROC, mf_proc_names, ...) and mf_do_step().
 */
#define _GNU_SOURCE
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << 26)
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 4U
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_KEEP_SIZE 1
#define FALLOC_FL_PUNCH_HOLE 2
#endif
#define MF_PAGE 4096UL
#define MF_MAXTHR 8
#define MF_MAXSIG 256

/* ------------------------------------------------------------------ tables (generated) */
static const char *const mf_proc_names[MF_NPROC];
static const char *const mf_map_names[MF_NMAPS];
static void mf_do_step(int step, long *ret, int *err);
static void mf_track_all(void);

/* ------------------------------------------------------------------ per-process state */
static int mf_me = -1;                     /* index of this scenario process; -1: controller */
static char *mf_map_addr[MF_NMAPS];        /* this process's mappings (copied by fork) */
static size_t mf_map_size[MF_NMAPS];
static int mf_fd[MF_NFDS + 1];
struct mf_thread {
	const char *name;
	pid_t tid;
	pthread_t pt;
	int cmd[2], ack[2];
};
static struct mf_thread mf_thr[MF_MAXTHR];
static int mf_nthr;
static __thread volatile int mf_in_access;
static __thread sigjmp_buf mf_jb;
struct mf_sig { pid_t tid; int code; uintptr_t addr; int lsb; };
static struct mf_sig mf_sigs[MF_MAXSIG];
static volatile int mf_nsig, mf_sig_printed;
static volatile int mf_exit_code = -1;      /* >= 0: the SIGBUS handler calls _exit(code) */

/* ------------------------------------------------------------------ output */
static void mf_out(const char *fmt, ...)
{
	char buf[8192];
	int n = snprintf(buf, sizeof(buf), "@mf ");
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 2, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0)
		_exit(99);
}

static void mf_json_str(char *dst, size_t cap, const char *s)
{
	size_t j = 0;
	dst[j++] = '"';
	for (; *s && j + 8 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			dst[j++] = '\\';
			dst[j++] = c;
		} else if (c < 0x20 || c >= 0x7f) {
			j += snprintf(dst + j, cap - j, "\\u%04x", c);
		} else {
			dst[j++] = c;
		}
	}
	dst[j++] = '"';
	dst[j] = 0;
}

static const char *mf_errname(int e)
{
	switch (e) {
	case 0: return NULL;
	case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case ESRCH: return "ESRCH";
	case EIO: return "EIO"; case EBADF: return "EBADF"; case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM"; case EFAULT: return "EFAULT"; case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST"; case EINVAL: return "EINVAL"; case ENOSPC: return "ENOSPC";
	case ENOSYS: return "ENOSYS"; case EOPNOTSUPP: return "EOPNOTSUPP";
	case EHWPOISON: return "EHWPOISON"; case ENODEV: return "ENODEV"; case EACCES: return "EACCES";
	case EFBIG: return "EFBIG"; case ENXIO: return "ENXIO"; case E2BIG: return "E2BIG";
	case ERANGE: return "ERANGE"; case EROFS: return "EROFS"; case ESPIPE: return "ESPIPE";
	default: return "EUNKNOWN";
	}
}

/* ------------------------------------------------------------------ SIGBUS */
static void mf_flush_signals(int step);

static void mf_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	int n = __atomic_fetch_add(&mf_nsig, 1, __ATOMIC_SEQ_CST);
	if (n < MF_MAXSIG) {
		mf_sigs[n].tid = (pid_t)syscall(SYS_gettid);
		mf_sigs[n].code = si->si_code;
		mf_sigs[n].addr = (uintptr_t)si->si_addr;
		mf_sigs[n].lsb = si->si_addr_lsb;
	}
	if (mf_exit_code >= 0) {
		/* the scenario's `exit` disposition: report the siginfo, then _exit(code). The
		 * signal may come while another process runs the step (an AO), so it is printed
		 * with step -1: the controller's exit record of this process gives the step */
		mf_flush_signals(-1);
		_exit(mf_exit_code);
	}
	if (mf_in_access) {
		mf_in_access = 0;
		siglongjmp(mf_jb, 1);
	}
}

static int mf_set_sigbus(const char *how, int exit_code)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	mf_exit_code = -1;
	if (!strcmp(how, "handler") || !strcmp(how, "exit")) {
		sa.sa_sigaction = mf_sigbus;
		sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
		if (!strcmp(how, "exit"))
			mf_exit_code = exit_code;
	} else {
		sa.sa_handler = !strcmp(how, "ignore") ? SIG_IGN : SIG_DFL;
	}
	return sigaction(SIGBUS, &sa, NULL);
}

static void mf_addr_rel(char *dst, size_t cap, uintptr_t a)
{
	for (int m = 0; m < MF_NMAPS; m++) {
		uintptr_t s = (uintptr_t)mf_map_addr[m];
		if (s && a >= s && a < s + mf_map_size[m]) {
			snprintf(dst, cap, "\"%s+0x%lx\"", mf_map_names[m], (unsigned long)(a - s));
			return;
		}
	}
	snprintf(dst, cap, "\"%#lx\"", (unsigned long)a);
}

/* Print the signals the handler recorded since the last flush, tagged with the step. */
static void mf_flush_signals(int step)
{
	int n = mf_nsig < MF_MAXSIG ? mf_nsig : MF_MAXSIG;
	for (; mf_sig_printed < n; mf_sig_printed++) {
		struct mf_sig *s = &mf_sigs[mf_sig_printed];
		const char *tname = "?";
		char rel[160];
		for (int t = 0; t < mf_nthr; t++)
			if (mf_thr[t].tid == s->tid)
				tname = mf_thr[t].name;
		mf_addr_rel(rel, sizeof(rel), s->addr);
		mf_out("{\"t\":\"sig\",\"i\":%d,\"proc\":\"%s\",\"thread\":\"%s\",\"code\":%d,"
		       "\"addr\":%s,\"lsb\":%d}", step, mf_proc_names[mf_me], tname, s->code, rel,
		       s->lsb);
	}
}

/* ------------------------------------------------------------------ memory access */
#define MF_ACCESS(body)                                                        \
	do {                                                                   \
		if (sigsetjmp(mf_jb, 1)) {                                     \
			*ret = -2; /* sigbus */                                \
			break;                                                 \
		}                                                              \
		mf_in_access = 1;                                              \
		body;                                                          \
		mf_in_access = 0;                                              \
	} while (0)

static long mf_mem_read(volatile unsigned char *p, size_t len, long *ret)
{
	long v = 0;
	*ret = 0;
	MF_ACCESS({
		v = p[0];
		for (size_t o = MF_PAGE - ((uintptr_t)p & (MF_PAGE - 1)); o < len; o += MF_PAGE)
			(void)p[o];
		*ret = v;
	});
	return *ret;
}

static long mf_mem_write(volatile unsigned char *p, size_t len, int value, long *ret)
{
	*ret = 0;
	MF_ACCESS({
		for (size_t o = 0; o < len; o++)
			p[o] = (unsigned char)value;
	});
	return *ret;
}

/* mmap at a 2 MiB-aligned address, as the model places every mapping. */
static void *mf_mmap(size_t size, int prot, int flags, int fd, off_t off)
{
	size_t align = 1UL << 21;
	if (flags & MAP_HUGETLB && (flags & MAP_HUGE_1GB) == MAP_HUGE_1GB)
		align = 1UL << 30;
	char *probe = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			   -1, 0);
	if (probe == MAP_FAILED)
		return mmap(NULL, size, prot, flags, fd, off);
	char *at = (char *)(((uintptr_t)probe + align - 1) & ~(align - 1));
	munmap(probe, size + align);
	return mmap(at, size, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
}

static int mf_drop_cap_sys_admin(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d))
		return -1;
	d[0].effective &= ~(1U << CAP_SYS_ADMIN);
	d[0].permitted &= ~(1U << CAP_SYS_ADMIN);
	d[0].inheritable &= ~(1U << CAP_SYS_ADMIN);
	return (int)syscall(SYS_capset, &h, d);
}

static long mf_write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	long r = write(fd, s, strlen(s));
	int e = errno;
	close(fd);
	errno = e;
	return r;
}

static long mf_read_long(const char *path)
{
	char b[64] = "";
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	long n = read(fd, b, sizeof(b) - 1);
	close(fd);
	return n > 0 ? strtol(b, NULL, 0) : -1;
}

/* ------------------------------------------------------------------ threads */
static void *mf_thread_loop(void *arg)
{
	struct mf_thread *t = arg;
	t->tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		int step;
		if (read(t->cmd[0], &step, sizeof(step)) != sizeof(step))
			return NULL;
		long r[2] = { 0, 0 };
		int err = 0;
		errno = 0;
		if (step >= 0) /* a negative step is a ping (see mf_settle_threads) */
			mf_do_step(step, &r[0], &err);
		r[1] = err;
		if (write(t->ack[1], r, sizeof(r)) != sizeof(r))
			return NULL;
	}
}

static int mf_add_thread(const char *name)
{
	if (mf_nthr == MF_MAXTHR)
		return -1;
	struct mf_thread *t = &mf_thr[mf_nthr];
	t->name = name;
	if (pipe(t->cmd) || pipe(t->ack))
		return -1;
	/* the new thread is cloned from the calling thread: it inherits PF_MCE_* (R10) */
	int rc = pthread_create(&t->pt, NULL, mf_thread_loop, t);
	if (rc)
		return -1;
	if (mf_me >= 0)
		pthread_setname_np(t->pt, mf_proc_names[mf_me]);
	mf_nthr++;
	while (!__atomic_load_n(&t->tid, __ATOMIC_SEQ_CST))
		usleep(100);
	return 0;
}

/* ------------------------------------------------------------------ processes */
enum { MF_CMD_STEP, MF_CMD_FLUSH, MF_CMD_QUIT };
struct mf_cmd { int kind, step, thread, arg; char str[48]; };
static char mf_arg[48];      /* controller: the string argument of the next command */
static char mf_cmd_str[48];  /* process: the string argument of the current command */
struct mf_ack { long ret; int err; int pad; };
static int mf_pcmd[MF_NPROC][2], mf_pack[MF_NPROC][2];
static pid_t mf_pid[MF_NPROC];
static int mf_alive[MF_NPROC];
static uintptr_t mf_ctl_map[MF_NPROC][MF_NMAPS];

/* A round trip with every other thread of this process. A signal queued to a thread during a
 * step (an early-kill AO from kill_procs() runs in the injector's context) is delivered when
 * that thread next returns to user space, which it must do before it can answer: after this,
 * every such handler has run, so its record belongs to the step that queued it. */
static void mf_settle_threads(void)
{
	for (int t = 1; t < mf_nthr; t++) {
		int ping = -1;
		long r[2];
		if (write(mf_thr[t].cmd[1], &ping, sizeof(ping)) != sizeof(ping) ||
		    read(mf_thr[t].ack[0], r, sizeof(r)) != sizeof(r))
			_exit(96);
	}
}

static void mf_process_loop(int me)
{
	mf_me = me;
	/* every thread's comm is the scenario process name, as the model names tasks */
	for (int t = 0; t < mf_nthr; t++)
		pthread_setname_np(mf_thr[t].pt, mf_proc_names[me]);
	prctl(PR_SET_NAME, mf_proc_names[me]);
	for (;;) {
		struct mf_cmd c;
		struct mf_ack a = { 0, 0, 0 };
		ssize_t n = read(mf_pcmd[me][0], &c, sizeof(c));
		if (n != sizeof(c))
			_exit(0);
		if (c.kind == MF_CMD_FLUSH) {
			mf_settle_threads();
			mf_flush_signals(c.step);
		} else if (c.kind == MF_CMD_QUIT) {
			_exit(c.arg);
		} else if ((memcpy(mf_cmd_str, c.str, sizeof(mf_cmd_str)), c.thread == 0)) {
			errno = 0;
			mf_do_step(c.step, &a.ret, &a.err);
		} else {
			long r[2];
			struct mf_thread *t = &mf_thr[c.thread];
			if (write(t->cmd[1], &c.step, sizeof(int)) != sizeof(int) ||
			    read(t->ack[0], r, sizeof(r)) != sizeof(r))
				_exit(98);
			a.ret = r[0];
			a.err = (int)r[1];
		}
		if (write(mf_pack[me][1], &a, sizeof(a)) != sizeof(a))
			_exit(97);
	}
}

/* Start scenario process `idx` (a fresh process from the controller) with its threads. */
static void mf_start_thread0(const char *name)
{
	mf_nthr = 0;
	mf_thr[0].pt = pthread_self();
	mf_thr[0].name = name;
	mf_thr[0].tid = (pid_t)syscall(SYS_gettid);
	mf_nthr = 1;
}

/* ------------------------------------------------------------------ controller */
static int mf_kmsg = -1;

static void mf_drain_kmsg(int step)
{
	char rec[4096];
	if (mf_kmsg < 0)
		return;
	for (;;) {
		ssize_t n = read(mf_kmsg, rec, sizeof(rec) - 1);
		if (n < 0) {
			if (errno == EPIPE)
				continue;
			return;
		}
		rec[n] = 0;
		char *msg = strchr(rec, ';');
		if (!msg)
			continue;
		msg++;
		char *nl = strchr(msg, '\n');
		if (nl)
			*nl = 0;
		char js[4200];
		mf_json_str(js, sizeof(js), msg);
		mf_out("{\"t\":\"log\",\"i\":%d,\"msg\":%s}", step, js);
	}
}

static void mf_note_exit(int p, int step)
{
	int st = 0;
	if (!mf_alive[p])
		return;
	if (waitpid(mf_pid[p], &st, 0) != mf_pid[p])
		return;
	mf_alive[p] = 0;
	if (WIFSIGNALED(st))
		mf_out("{\"t\":\"exit\",\"i\":%d,\"proc\":\"%s\",\"signal\":%d}", step,
		       mf_proc_names[p], WTERMSIG(st));
	else
		mf_out("{\"t\":\"exit\",\"i\":%d,\"proc\":\"%s\",\"code\":%d}", step,
		       mf_proc_names[p], WEXITSTATUS(st));
}

/* Send one command to process p and wait for its answer; 0, or -1 when it died. Every process
 * holds every pipe (they are made before the first fork), so a death is noticed with waitpid,
 * not by end of file. */
static int mf_send(int p, struct mf_cmd *c, struct mf_ack *a, int step)
{
	if (!mf_alive[p]) {
		a->ret = -1;
		a->err = ESRCH;
		return -1;
	}
	if (write(mf_pcmd[p][1], c, sizeof(*c)) == sizeof(*c)) {
		for (;;) {
			struct pollfd pfd = { mf_pack[p][0], POLLIN, 0 };
			int st = 0;
			if (poll(&pfd, 1, 20) > 0)
				return read(mf_pack[p][0], a, sizeof(*a)) == sizeof(*a) ? 0 : -1;
			if (waitpid(mf_pid[p], &st, WNOHANG) == mf_pid[p]) {
				mf_alive[p] = 0;
				if (WIFSIGNALED(st))
					mf_out("{\"t\":\"exit\",\"i\":%d,\"proc\":\"%s\",\"signal\":%d}",
					       step, mf_proc_names[p], WTERMSIG(st));
				else
					mf_out("{\"t\":\"exit\",\"i\":%d,\"proc\":\"%s\",\"code\":%d}",
					       step, mf_proc_names[p], WEXITSTATUS(st));
				break;
			}
		}
	}
	a->ret = -3; /* killed */
	a->err = 0;
	return -1;
}

static void mf_flush_all(int step)
{
	for (int p = 0; p < MF_NPROC; p++) {
		struct mf_cmd c = { MF_CMD_FLUSH, step, 0, 0, "" };
		struct mf_ack a;
		if (mf_alive[p])
			mf_send(p, &c, &a, step);
	}
	mf_drain_kmsg(step);
}


static void mf_print_result(int step, long ret, int err, const char *kind)
{
	const char *en = mf_errname(err);
	char e[32];
	snprintf(e, sizeof(e), en ? "\"%s\"" : "null", en);
	if (ret == -2)
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":\"sigbus\",\"errno\":null}", step);
	else if (ret == -3)
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":\"killed\",\"errno\":null}", step);
	else if (kind && ret >= 0)
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":\"%s\",\"errno\":%s}", step, kind, e);
	else
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":%ld,\"errno\":%s}", step, ret, e);
}

/* Run a step in process p, thread t; returns the answer. */
static struct mf_ack mf_run(int step, int p, int t)
{
	struct mf_cmd c = { MF_CMD_STEP, step, t, 0, "" };
	struct mf_ack a = { -1, ESRCH, 0 };
	memcpy(c.str, mf_arg, sizeof(c.str));
	mf_send(p, &c, &a, step);
	return a;
}

/* ------------------------------------------------------------------ observations */
static int mf_pagemap(int p, uintptr_t va, uint64_t *ent)
{
	char path[64];
	if (!mf_alive[p])
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", mf_pid[p]);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, ent, 8, (off_t)(va / MF_PAGE) * 8);
	close(fd);
	return n == 8 ? 0 : -1;
}

/* The real pfn behind a pagemap entry: a present page's frame, or a hwpoison entry's offset. */
static long mf_entry_pfn(uint64_t e)
{
	if (e >> 63 & 1)
		return (long)(e & ((1ULL << 55) - 1));
	if (e >> 62 & 1)
		return (long)((e & ((1ULL << 55) - 1)) >> 5);
	return -1;
}

static void mf_print_pagemap(int step, int p, uintptr_t va)
{
	uint64_t e = 0;
	if (mf_pagemap(p, va, &e)) {
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":-1,\"errno\":\"%s\"}", step,
		       mf_errname(errno ? errno : ESRCH));
		return;
	}
	int present = e >> 63 & 1, swapped = e >> 62 & 1;
	long pfn = mf_entry_pfn(e);
	/* no swap device in the guest: a swap entry in a user mapping is a hwpoison entry */
	mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":{\"present\":%s,\"swapped\":%s,\"pfn\":%ld,"
	       "\"hwpoison_entry\":%s},\"errno\":null}", step, present ? "true" : "false",
	       swapped ? "true" : "false", pfn, swapped ? "true" : "false");
}

static const char *const mf_kpf_names[] = {
	"LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB",
	"WRITEBACK", "RECLAIM", "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED",
	"COMPOUND_HEAD", "COMPOUND_TAIL", "HUGE", "UNEVICTABLE", "HWPOISON", "NOPAGE", "KSM",
	"THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE",
};

static int mf_kpageflags(long pfn, uint64_t *flags)
{
	int fd = open("/proc/kpageflags", O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = pread(fd, flags, 8, (off_t)pfn * 8);
	close(fd);
	return n == 8 ? 0 : -1;
}

static void mf_print_kpageflags(int step, long pfn)
{
	uint64_t f = 0;
	char out[1024];
	int j = 0;
	if (pfn < 0 || mf_kpageflags(pfn, &f)) {
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":-1,\"errno\":\"ENOENT\"}", step);
		return;
	}
	out[j++] = '[';
	for (unsigned b = 0; b < sizeof(mf_kpf_names) / sizeof(mf_kpf_names[0]); b++)
		if (f >> b & 1)
			j += snprintf(out + j, sizeof(out) - j, "%s\"%s\"", j > 1 ? "," : "",
				      mf_kpf_names[b]);
	out[j++] = ']';
	out[j] = 0;
	mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":%s,\"errno\":null,\"pfn\":%ld}", step, out, pfn);
}

/* First pfn whose kpageflags has every bit of `want` and none of `avoid` (and, for a free
 * HugeTLB head, no users). -1 when there is none. */
static long mf_scan_kpageflags(uint64_t want, uint64_t avoid, int unused_head)
{
	int fd = open("/proc/kpageflags", O_RDONLY), cfd = open("/proc/kpagecount", O_RDONLY);
	static uint64_t buf[4096];
	long found = -1;
	for (long base = 0; fd >= 0 && found < 0; base += 4096) {
		ssize_t n = pread(fd, buf, sizeof(buf), (off_t)base * 8);
		if (n <= 0)
			break;
		for (long i = 0; i < n / 8; i++) {
			if ((buf[i] & want) != want || buf[i] & avoid)
				continue;
			uint64_t cnt = 0, sub[512];
			if (unused_head && (pread(cfd, &cnt, 8, (off_t)(base + i) * 8) != 8 || cnt))
				continue;
			if (unused_head) {
				/* a free pool folio: no raw page of it is poisoned */
				int bad = pread(fd, sub, sizeof(sub), (off_t)(base + i) * 8) !=
					  (ssize_t)sizeof(sub);
				for (int j = 0; !bad && j < 512; j++)
					bad = sub[j] >> 19 & 1;
				if (bad)
					continue;
			}
			found = base + i;
			break;
		}
	}
	if (fd >= 0)
		close(fd);
	if (cfd >= 0)
		close(cfd);
	return found;
}

static long mf_zero_pfn(void)
{
	volatile char *p = mmap(NULL, MF_PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t e = 0;
	if (p == MAP_FAILED)
		return -1;
	(void)p[0];
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd >= 0 && pread(fd, &e, 8, (off_t)((uintptr_t)p / MF_PAGE) * 8) != 8)
		e = 0;
	if (fd >= 0)
		close(fd);
	munmap((void *)p, MF_PAGE);
	return mf_entry_pfn(e);
}

/* The pfn of a page-cache page of `path` at `off`, when it is cached (mincore), else -1. */
/* The pfn of the page cached at a file offset, found by mapping it and reading pagemap.
 * A poisoned page-cache page cannot be faulted in (__do_fault: VM_FAULT_HWPOISON, SIGBUS):
 * the read is guarded, and the page's pfn is then the one this controller last saw at that
 * offset (the page stays in the page cache, as the model's target does). */
#define MF_FILE_SEEN 64
static struct { char path[128]; off_t base; long pfn; } mf_file_seen[MF_FILE_SEEN];
static int mf_nfile_seen;
static sigjmp_buf mf_file_jb;

static void mf_file_sigbus(int sig)
{
	(void)sig;
	siglongjmp(mf_file_jb, 1);
}

static long mf_file_pfn(const char *path, off_t off)
{
	int fd = open(path, O_RDONLY);
	long pfn = -1;
	if (fd < 0)
		return -1;
	off_t base = off & ~(off_t)(MF_PAGE - 1);
	volatile char *p = mmap(NULL, MF_PAGE, PROT_READ, MAP_SHARED, fd, base);
	int resident = 0;
	if (p != MAP_FAILED) {
		unsigned char vec = 0;
		if (!mincore((void *)p, MF_PAGE, &vec) && (vec & 1)) {
			uint64_t e = 0;
			struct sigaction sa, old;
			resident = 1;
			memset(&sa, 0, sizeof(sa));
			sa.sa_handler = mf_file_sigbus;
			sigaction(SIGBUS, &sa, &old);
			if (!sigsetjmp(mf_file_jb, 1)) {
				(void)p[0];
				int pm = open("/proc/self/pagemap", O_RDONLY);
				if (pm >= 0 && pread(pm, &e, 8,
						     (off_t)((uintptr_t)p / MF_PAGE) * 8) == 8)
					pfn = mf_entry_pfn(e);
				if (pm >= 0)
					close(pm);
			}
			sigaction(SIGBUS, &old, NULL);
		}
		munmap((void *)p, MF_PAGE);
	}
	close(fd);
	int k;
	for (k = 0; k < mf_nfile_seen; k++)
		if (mf_file_seen[k].base == base && !strcmp(mf_file_seen[k].path, path))
			break;
	if (pfn > 0) {
		if (k == mf_nfile_seen && mf_nfile_seen < MF_FILE_SEEN)
			mf_nfile_seen++;
		if (k < MF_FILE_SEEN) {
			snprintf(mf_file_seen[k].path, sizeof(mf_file_seen[k].path), "%s", path);
			mf_file_seen[k].base = base;
			mf_file_seen[k].pfn = pfn;
		}
	} else if (resident && k < mf_nfile_seen) {
		pfn = mf_file_seen[k].pfn;  /* cached but not mappable: poisoned */
	}
	return pfn;
}

static const char *const mf_meminfo_keys[] = {
	"HardwareCorrupted", "HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
	"HugePages_Surp", "Shmem", "AnonHugePages",
};

static void mf_print_meminfo(int step, const char *when)
{
	char buf[8192], out[2048];
	int j = 0, fd = open("/proc/meminfo", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	j += snprintf(out + j, sizeof(out) - j, "{");
	for (unsigned k = 0; k < sizeof(mf_meminfo_keys) / sizeof(mf_meminfo_keys[0]); k++) {
		char key[64];
		snprintf(key, sizeof(key), "\n%s:", mf_meminfo_keys[k]);
		char *at = strstr(buf, key);
		if (at)
			j += snprintf(out + j, sizeof(out) - j, "%s\"%s\":%ld", j > 1 ? "," : "",
				      mf_meminfo_keys[k], strtol(at + strlen(key), NULL, 10));
	}
	static const char *const pool[] = { "nr", "free", "resv", "surplus" };
	for (unsigned k = 0; k < 4; k++) {
		char path[128];
		snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-2048kB/%s_hugepages",
			 pool[k]);
		j += snprintf(out + j, sizeof(out) - j, ",\"%s_hugepages_2M\":%ld", pool[k],
			      mf_read_long(path));
	}
	snprintf(out + j, sizeof(out) - j, "}");
	if (step >= 0)
		mf_out("{\"t\":\"step\",\"i\":%d,\"ret\":%s,\"errno\":null}", step, out);
	else
		mf_out("{\"t\":\"meminfo\",\"when\":\"%s\",\"v\":%s}", when, out);
}

/* Per-step bookkeeping of the controller: mapping addresses, remembered pfns. */
static long mf_last_pfn[MF_NTRACK > 0 ? MF_NTRACK : 1];
/* mf_hist[s][k]: the frame of tracked page k after step s (a literal pfn target of the scenario
 * names the page the model had there; the guest's page at the same place is used instead) */
static long mf_hist[MF_NSTEPS + 1][MF_NTRACK > 0 ? MF_NTRACK : 1];

static void mf_track(int k, int p, int m, unsigned long off)
{
	uint64_t e = 0;
	if (!mf_ctl_map[p][m] || mf_pagemap(p, mf_ctl_map[p][m] + off, &e))
		return;
	long pfn = mf_entry_pfn(e);
	if (pfn > 0)
		mf_last_pfn[k] = pfn;
}

static void mf_controller_init(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	mf_kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	if (mf_kmsg >= 0)
		lseek(mf_kmsg, 0, SEEK_END);
	for (int p = 0; p < MF_NPROC; p++)
		if (pipe(mf_pcmd[p]) || pipe(mf_pack[p]))
			_exit(96);
}

static void mf_finish(void)
{
	mf_flush_all(-1);
	mf_print_meminfo(-1, "after");
	for (int p = 0; p < MF_NPROC; p++) {
		if (mf_pid[p] && mf_alive[p]) {
			mf_out("{\"t\":\"final\",\"proc\":\"%s\",\"state\":\"running\"}", mf_proc_names[p]);
			kill(mf_pid[p], SIGKILL);
			waitpid(mf_pid[p], NULL, 0);
		}
	}
	mf_out("{\"t\":\"done\"}");
}

/* ------------------------------------------------------------------ process life */
static int mf_ctl_fd[MF_NPROC][MF_NFDS + 1];

static long mf_spawn(int p, const char *const *threads, int n, int caps)
{
	pid_t pid = fork();
	if (pid == 0) {
		mf_start_thread0(threads[0]);
		for (int t = 1; t < n; t++)
			if (mf_add_thread(threads[t]))
				_exit(95);
		if (!caps && mf_drop_cap_sys_admin())
			_exit(94);
		mf_process_loop(p);
	}
	if (pid > 0) {
		mf_pid[p] = pid;
		mf_alive[p] = 1;
	}
	return pid;
}

/* fork() in a scenario process: the child's parent is the controller (CLONE_PARENT), so the
 * controller can wait for it; the address space is copied as by fork(). */
static long mf_fork(int child, const char *thread)
{
	long pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0) {
		mf_start_thread0(thread);
		mf_nsig = 0;
		mf_sig_printed = 0;
		mf_process_loop(child);
	}
	return pid;
}

static void mf_forked(int parent, int child, long pid)
{
	if (pid <= 0)
		return;
	mf_pid[child] = (pid_t)pid;
	mf_alive[child] = 1;
	memcpy(mf_ctl_map[child], mf_ctl_map[parent], sizeof(mf_ctl_map[child]));
	memcpy(mf_ctl_fd[child], mf_ctl_fd[parent], sizeof(mf_ctl_fd[child]));
}

static void mf_quit(int p, int code, int step)
{
	struct mf_cmd c = { MF_CMD_QUIT, step, 0, code, "" };
	struct mf_ack a;
	mf_send(p, &c, &a, step);
}

static void mf_note_fd(int p, int f, long fd)
{
	mf_ctl_fd[p][f] = (int)fd;
}

static void mf_step_done(int step)
{
	mf_flush_all(step);
	mf_track_all();
	if (step >= 0 && step < MF_NSTEPS)
		memcpy(mf_hist[step], mf_last_pfn, sizeof(mf_last_pfn));
	mf_arg[0] = 0;
}

static long mf_va_pfn(int p, int m, unsigned long off)
{
	uint64_t e = 0;
	if (!mf_ctl_map[p][m] || mf_pagemap(p, mf_ctl_map[p][m] + off, &e))
		return -1;
	return mf_entry_pfn(e);
}

static long mf_fd_pfn(int p, int f, off_t off)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", mf_pid[p], mf_ctl_fd[p][f]);
	return mf_file_pfn(path, off);
}

static long mf_plus(long pfn, long k)
{
	return pfn < 0 ? -1 : pfn + k;
}

static long mf_create(const char *path, long size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	if (size && ftruncate(fd, size)) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	close(fd);
	return 0;
}

/* Give the case `n` free 2 MiB pages: pages in use by nobody alive are surplus after the reset
 * between cases, and writing nr_hugepages would turn them into part of the new pool. */
/* huge pages earlier cases of the boot left in use (poisoned folios are never freed, R30) */
static long mf_pool_used;

/* A write of the pool's size (the case's start, the hugepages action, sysctl
 * vm.nr_hugepages): the case's count on top of what earlier cases left in use, and the size
 * read back without them, so that a case sees the pool its scenario describes. */
static long mf_write_pool(const char *path, long n)
{
	char val[32];
	snprintf(val, sizeof(val), "%ld\n", mf_pool_used + n);
	if (mf_write_str(path, val) < 0)
		return -1;
	return mf_read_long(path) - mf_pool_used;
}

static void mf_set_pool(long n)
{
	const char *d = "/sys/kernel/mm/hugepages/hugepages-2048kB/";
	char total_path[128], free_path[128];
	snprintf(total_path, sizeof(total_path), "%snr_hugepages", d);
	snprintf(free_path, sizeof(free_path), "%sfree_hugepages", d);
	long total = mf_read_long(total_path);
	long used = total - mf_read_long(free_path);
	mf_pool_used = used > 0 ? used : 0;
	mf_write_pool(total_path, n);
}

/* A hardware error found by patrol scrub: ask the host to inject a software-recoverable
 * action-optional machine check (SRAO, MCACOD 0xC0 "memory scrubbing") for this physical
 * page through QEMU's monitor (`mce`); the guest's #MC handler logs it and
 * uc_decode_notifier() calls memory_failure(pfn, 0). Waits until memory_failure() has
 * spoken about the page and the log is quiet again. */
static long mf_mce(long pfn)
{
	char want[64], rec[4096];
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK), seen = 0, idle = 0;
	if (pfn <= 0 || fd < 0) {
		errno = pfn <= 0 ? ENOENT : errno;
		return -1;
	}
	lseek(fd, 0, SEEK_END);
	snprintf(want, sizeof(want), "Memory failure: %#lx:", pfn);
	mf_out("{\"t\":\"mce\",\"phys\":\"%#lx\"}", (unsigned long)pfn << 12);
	printf("@mf-mce %#lx\n", (unsigned long)pfn << 12);
	fflush(stdout);
	/* memory_failure() ends with action_result()'s "recovery action for" line, or says the
	 * page is "already hardware poisoned"; the signals it sends come before either */
	for (int ms = 0; ms < 30000 && (!seen || idle < 100); ms += 20) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);
		if (n > 0) {
			rec[n] = 0;
			if ((strstr(rec, want) && (strstr(rec, "recovery action for") ||
						   strstr(rec, "already hardware poisoned"))) ||
			    strstr(rec, "Kernel panic"))
				seen = 1;
			idle = 0;
			continue;
		}
		usleep(20000);
		idle += 20;
	}
	close(fd);
	if (!seen) {
		errno = ETIMEDOUT;
		return -1;
	}
	return 0;
}
