// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: the bundled ground-truth workload of rseqtop.
 *
 * Worker threads run x86-64 restartable-sequence critical sections written
 * the way the kernel selftests (tools/testing/selftests/rseq/rseq-x86.h) and
 * librseq write them, and count exactly what happened to every attempt:
 *
 *   commit        the commit store retired;
 *   abort         the kernel moved the thread to abort_ip (one
 *                 rseq:rseq_ip_fixup event); counted only in the code that is
 *                 reached through abort_ip;
 *   cpu_mismatch  the section's own cpu_id check failed (not a kernel abort);
 *   cmp_fail      the section's compare failed (lock busy, free list empty).
 *
 * Every failed attempt is retried until it commits; an operation is one
 * commit. Optional inducers (signals, migrations, membarrier, oversubscription)
 * make the kernel abort sections. At exit the program checks its per-CPU data
 * against the counts and prints one JSON summary (see docs/workload.md).
 *
 * --churn-threads / --churn-processes: the workers become slots that start
 * short-lived threads (or fork short-lived child processes) one after the
 * other, each running --churn-ops operations with the same exact counting;
 * their counts are summed per slot (children report through a pipe).
 *
 * --rseq-abi v2: the workload's own registrations (glibc not registering)
 * pass a length larger than 32 bytes, which kernels 7.1+ (and 7.0.10+)
 * treat as a "V2" registration whose IDs are written lazily.
 *
 * --check-cpu-id-start: the tcmalloc canary. Every attempt first overwrites
 * rseq->cpu_id_start with a sentinel; after each kernel abort the program
 * checks that the kernel wrote it back (kernels 6.19 to 7.0.9 did not).
 *
 * Built by rseqtop.workload with: cc -O2 -Wall -Wextra -Werror -pthread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>
#include <linux/membarrier.h>

#if !defined(__x86_64__)
#error "rseq-workload supports x86-64 only"
#endif

#define PROG "rseq-workload"
#define SCHEMA_VERSION 1
#define WL_RSEQ_SIG 0x53053053
#define MAX_THREADS 1024
#define NODES_PER_CPU 1024
#define EXIT_USAGE 2
#define EXIT_SELFCHECK 3
#define CHURN_OPS_DEFAULT 20
#define CHURN_STACK_SIZE (256 * 1024)
/* Size and alignment of the workload's own rseq area (TLS): room for a
 * V2 registration of any length the kernel may ask for in the foreseeable
 * future; checked against the auxiliary vector at run time. */
#define OWN_AREA_SIZE 256
/* Written into cpu_id_start by --check-cpu-id-start: never a CPU number
 * (CPU numbers are below NR_CPUS, far below 2^31), and neither of the
 * kernel's own negative markers RSEQ_CPU_ID_UNINITIALIZED (-1) and
 * RSEQ_CPU_ID_REGISTRATION_FAILED (-2). */
#define CPU_ID_START_SENTINEL 0xC0DEC0DEu
#define ORIG_RSEQ_LEN 32         /* the original (legacy) struct rseq size */
#ifndef AT_RSEQ_FEATURE_SIZE
#define AT_RSEQ_FEATURE_SIZE 27  /* since Linux 6.3 */
#endif
#ifndef AT_RSEQ_ALIGN
#define AT_RSEQ_ALIGN 28
#endif

enum churn_mode { CHURN_NONE, CHURN_THREADS, CHURN_PROCESSES };
static const char *const churn_mode_names[] = { NULL, "threads", "processes" };

/* ------------------------------------------------------------------ */
/* Operations                                                          */

enum op { OP_COUNTER, OP_SPINLOCK, OP_PUSH, OP_POP, OP_DELAY, NR_OPS };

static const char *const op_names[NR_OPS] = {
	"counter", "spinlock", "push", "pop", "delay",
};
static const char *const op_symbols[NR_OPS] = {
	"rseq_op_counter", "rseq_op_spinlock_lock", "rseq_op_push", "rseq_op_pop",
	"rseq_op_delay",
};

/* Result of one attempt at a critical section. */
enum { RS_COMMIT = 0, RS_ABORT = 1, RS_MISMATCH = 2, RS_CMPFAIL = 3 };

struct node {
	struct node *next;
	long id;
};

/* One slot per possible CPU, each on its own 128-byte block. */
struct percpu_slot {
	intptr_t counter;        /* op counter */
	intptr_t delay_counter;  /* op delay */
	intptr_t lock;           /* op spinlock: lock word (0 free, 1 taken) */
	intptr_t locked_count;   /* op spinlock: protected counter */
	struct node *head;       /* ops push/pop: free list */
} __attribute__((aligned(128)));

/* Per-thread counters: plain thread-local variables, collected at exit. */
struct tstats {
	uint64_t commits[NR_OPS];
	uint64_t aborts[NR_OPS];
	uint64_t mismatch[NR_OPS];
	uint64_t cmp_fail[NR_OPS];
	uint64_t signals;
	/* --check-cpu-id-start: what each kernel abort left in cpu_id_start */
	uint64_t ids_rewritten[NR_OPS];  /* written back, equal to cpu_id */
	uint64_t ids_stale[NR_OPS];      /* still the sentinel */
	uint64_t ids_wrong[NR_OPS];      /* written back, but not cpu_id */
};
static __thread struct tstats t_stats;

/* Offset of the rseq area from the thread pointer (%fs base): glibc's
 * __rseq_offset, or the offset of our own TLS area. Same for all threads.
 * The own area is OWN_AREA_SIZE bytes aligned to OWN_AREA_SIZE, so that one
 * area serves a legacy registration (32 bytes, 32-aligned) and a V2 one
 * (up to OWN_AREA_SIZE bytes, aligned to AT_RSEQ_ALIGN <= OWN_AREA_SIZE). */
static ptrdiff_t g_rseq_offset;
static __thread union {
	struct rseq rs;
	char bytes[OWN_AREA_SIZE];
} own_area __attribute__((aligned(OWN_AREA_SIZE)));

static inline struct rseq *rseq_area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + g_rseq_offset);
}

/*
 * Critical sections. Layout of each (as in rseq-x86.h):
 *   descriptor (struct rseq_cs) in section __rseq_cs, 32-byte aligned,
 *   pointer to it in __rseq_cs_ptr_array;
 *   store &descriptor into rseq->rseq_cs; label 1 (start_ip);
 *   compare the cpu read before the section with rseq->cpu_id, on mismatch
 *   jump to C label "mismatch" (NOT the abort label);
 *   ... ; commit store; label 2 (start_ip + post_commit_offset);
 *   in section __rseq_failure: "ud1" prefix bytes, .long RSEQ_SIG, label 4
 *   (abort_ip), jump to C label "abort".
 * Each descriptor also gets a named symbol (rseq_cs_desc_<op>) so that the
 * summary can print the run-time (relocated) start_ip / abort_ip.
 */
#define __str1(x) #x
#define __str(x) __str1(x)

#define RSEQ_DEFINE_TABLE(name)                                            \
	".pushsection __rseq_cs, \"aw\"\n\t"                               \
	".balign 32\n\t"                                                   \
	".globl rseq_cs_desc_" name "\n\t"                                 \
	".hidden rseq_cs_desc_" name "\n\t"                                \
	".type rseq_cs_desc_" name ", @object\n\t"                         \
	".size rseq_cs_desc_" name ", 32\n\t"                              \
	"rseq_cs_desc_" name ":\n\t"                                       \
	"3:\n\t"                                                           \
	".long 0x0, 0x0\n\t"                                               \
	".quad 1f, (2f - 1f), 4f\n\t"                                      \
	".popsection\n\t"                                                  \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                     \
	".quad 3b\n\t"                                                     \
	".popsection\n\t"

#define RSEQ_START                                                         \
	"leaq 3b(%%rip), %%rax\n\t"                                        \
	"movq %%rax, %%fs:8(%[rseq_offset])\n\t"                           \
	"1:\n\t"

#define RSEQ_CMP_CPU                                                       \
	"cmpl %[cpu_id], %%fs:4(%[rseq_offset])\n\t"                       \
	"jnz %l[mismatch]\n\t"

#define RSEQ_END_ABORT                                                     \
	"2:\n\t"                                                           \
	".pushsection __rseq_failure, \"ax\"\n\t"                          \
	".byte 0x0f, 0xb9, 0x3d\n\t"                                       \
	".long " __str(WL_RSEQ_SIG) "\n\t"                                 \
	"4:\n\t"                                                           \
	"jmp %l[abort]\n\t"                                                \
	".popsection\n\t"

#define RSEQ_FN __attribute__((noinline, noclone, used))

struct rseq_cs;
extern const struct rseq_cs rseq_cs_desc_counter, rseq_cs_desc_spinlock,
	rseq_cs_desc_push, rseq_cs_desc_pop, rseq_cs_desc_delay;

/* counter: per-CPU counter add. */
RSEQ_FN int rseq_op_counter(intptr_t *v, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("counter")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[v], %%rbx\n\t"
		"addq $1, %%rbx\n\t"
		"movq %%rbx, %[v]\n\t"      /* commit */
		RSEQ_END_ABORT
		: /* no outputs */
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), [v] "m"(*v)
		: "memory", "cc", "rax", "rbx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	t_stats.aborts[OP_COUNTER]++;  /* reached only through abort_ip */
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* spinlock: take the per-CPU lock word with cmpeqv-store (0 -> 1). */
RSEQ_FN int rseq_op_spinlock_lock(intptr_t *lock, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("spinlock")
		RSEQ_START
		RSEQ_CMP_CPU
		"cmpq $0, %[v]\n\t"
		"jnz %l[cmpfail]\n\t"
		"movq $1, %[v]\n\t"         /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), [v] "m"(*lock)
		: "memory", "cc", "rax"
		: abort, mismatch, cmpfail);
	return RS_COMMIT;
abort:
	t_stats.aborts[OP_SPINLOCK]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
cmpfail:
	return RS_CMPFAIL;
}

/* push: node->next = head; head = node (commit). */
RSEQ_FN int rseq_op_push(struct node **head, struct node *node, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("push")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[head], %%rbx\n\t"
		"movq %%rbx, (%[node])\n\t" /* node->next (node is still private) */
		"movq %[node], %[head]\n\t" /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset),
		  [head] "m"(*head), [node] "r"(node)
		: "memory", "cc", "rax", "rbx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	t_stats.aborts[OP_PUSH]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* pop: n = head; if n == NULL fail; *out = n; head = n->next (commit). */
RSEQ_FN int rseq_op_pop(struct node **head, struct node **out, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("pop")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[head], %%rbx\n\t"
		"testq %%rbx, %%rbx\n\t"
		"jz %l[cmpfail]\n\t"
		"movq %%rbx, %[out]\n\t"
		"movq (%%rbx), %%rcx\n\t"   /* next (offsetof(struct node, next) == 0) */
		"movq %%rcx, %[head]\n\t"   /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset),
		  [head] "m"(*head), [out] "m"(*out)
		: "memory", "cc", "rax", "rbx", "rcx"
		: abort, mismatch, cmpfail);
	return RS_COMMIT;
abort:
	t_stats.aborts[OP_POP]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
cmpfail:
	return RS_CMPFAIL;
}

/* delay: spin `loops` iterations inside the section, then add to a counter. */
RSEQ_FN int rseq_op_delay(intptr_t *v, long loops, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("delay")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[loops], %%rcx\n\t"
		"testq %%rcx, %%rcx\n\t"
		"jz 6f\n\t"
		"5:\n\t"
		"decq %%rcx\n\t"
		"jnz 5b\n\t"
		"6:\n\t"
		"movq %[v], %%rbx\n\t"
		"addq $1, %%rbx\n\t"
		"movq %%rbx, %[v]\n\t"      /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), [v] "m"(*v),
		  [loops] "r"(loops)
		: "memory", "cc", "rax", "rbx", "rcx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	t_stats.aborts[OP_DELAY]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* Read back a descriptor as the kernel does (after relocation). */
struct cs_view {
	uint32_t version, flags;
	uint64_t start_ip, post_commit_offset, abort_ip;
};
static const void *const op_desc[NR_OPS] = {
	&rseq_cs_desc_counter, &rseq_cs_desc_spinlock, &rseq_cs_desc_push,
	&rseq_cs_desc_pop, &rseq_cs_desc_delay,
};

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

struct config {
	int threads;
	int cpus[CPU_SETSIZE];
	int ncpus;               /* 0: no --cpus */
	int inducer_cpus[CPU_SETSIZE];
	int n_inducer_cpus;      /* 0: no --inducer-cpus */
	double signal_rate, migrate_rate, membarrier_rate;
	int membarrier_unregistered;
	int yield;
	int ops[NR_OPS * 4];
	int nops;
	int op_enabled[NR_OPS];
	double duration;         /* seconds; 0 if not given */
	int duration_given;
	long long ops_per_thread; /* 0 if not given */
	long in_cs_delay;
	const char *name;
	const char *json_out;
	int churn;               /* enum churn_mode */
	long long churn_ops;     /* operations per churn thread / child */
	int churn_ops_given;
	double churn_rate;       /* churn threads / children per second, 0: no limit */
	int rseq_v2;             /* --rseq-abi v2 (own registrations only) */
	int check_ids;           /* --check-cpu-id-start */
};

static struct config cfg;
static int nr_possible_cpus;
static struct percpu_slot *slots;
static cpu_set_t allowed_set;   /* sched_getaffinity at start */

static atomic_int stop_flag;

/* Registration bookkeeping. */
static const char *reg_mode = "glibc";
static int own_mode;             /* reg_mode is "own" */
static unsigned int reg_size;
static unsigned int reg_len;     /* rseq_len passed to rseq(2), by us or by glibc */
static unsigned long aux_feature_size, aux_align;  /* 0 before Linux 6.3 */
static atomic_long own_registrations, own_unregistrations;
static long probe_registrations; /* the main thread's availability check */

/* One child process of --churn-processes, as the parent saw it. */
struct child_rec {
	int pid;
	int processes;         /* > 1 only after merging reused pids */
	uint64_t commits, aborts, mismatch, cmp_fail;
};

/* What a churn child sends to its parent through the slot's pipe (one
 * write, smaller than PIPE_BUF, so atomic). */
#define CHILD_REPORT_MAGIC 0x52534551u
struct child_report {
	uint32_t magic;
	int32_t reg_error;      /* errno of a failed registration, 0 if none */
	int32_t own_reg, own_unreg;
	int32_t nproblems;      /* self-check problems found in the child */
	int32_t pad;
	long long done_ops;
	struct tstats stats;
	char problem[256];      /* the first of them */
};

struct worker {
	int index;
	pthread_t thread;
	atomic_int tid;        /* 0 until started */
	atomic_int done;
	int reg_error;         /* errno of a failed own registration */
	struct tstats stats;   /* copied at thread exit */
	long nivcsw, nvcsw;    /* the kernel's context-switch counts, at thread exit */

	/* --churn-*: this worker is a slot that starts short-lived threads or
	 * child processes one after the other, and only they run sections. */
	pthread_mutex_t churn_lock;  /* held while an inducer acts on churn_tid */
	atomic_int churn_tid;        /* live churn thread, 0 if none */
	long long churn_k;           /* steps for the current churn thread */
	long long churn_step;        /* round-robin position over cfg.ops */
	long long churn_done;        /* commits counted against --ops */
	long long churn_ran;         /* the current churn thread's commits */
	uint64_t churn_created;
	struct tstats churn_stats;   /* sum over its churn threads / children */
	int churn_reg_error;         /* first registration failure of a churn thread */
	int churn_error;             /* errno of a failed pthread_create / fork */
	const char *churn_error_what;
	long churn_own_reg, churn_own_unreg;  /* children's own (un)registrations */
	int churn_pipe[2];
	struct child_rec *children;
	size_t nchildren, children_cap;
	long child_failures;         /* children that failed or reported problems */
	char child_problem[320];     /* the first such failure */
};
static struct worker *workers;

/* Inducer results. */
static atomic_long signals_sent, migrations_requested;
static long mb_calls, mb_ok;
static int mb_registered;
static int mb_register_errno;
#define MAX_ERRNO_NAMES 16
static struct { int err; long count; } mb_errors[MAX_ERRNO_NAMES];
static int mb_nerrors;

static pthread_barrier_t start_barrier;

/* ------------------------------------------------------------------ */
/* Errors and parsing                                                  */

static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* one line, whatever the input contained */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	fprintf(stderr, PROG ": error: %s (try '" PROG " --help')\n", msg);
	exit(EXIT_USAGE);
}

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fatal(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": error: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double parse_positive_double(const char *opt, const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0 || !isfinite(v))
		usage_error("%s: '%s' is not a number", opt, s);
	if (v <= 0)
		usage_error("%s: must be greater than 0, got '%s'", opt, s);
	return v;
}

static long long parse_int(const char *opt, const char *s, long long min, long long max)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s || *end != '\0' || errno != 0)
		usage_error("%s: '%s' is not an integer", opt, s);
	if (v < min || v > max)
		usage_error("%s: must be between %lld and %lld, got '%s'", opt, min, max, s);
	return v;
}

static void format_cpuset(const cpu_set_t *set, char *buf, size_t len)
{
	size_t off = 0;

	buf[0] = '\0';
	for (int c = 0; c < CPU_SETSIZE && off + 16 < len; c++) {
		if (!CPU_ISSET(c, set))
			continue;
		int e = c;
		while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
			e++;
		if (e == c)
			off += snprintf(buf + off, len - off, "%s%d", off ? "," : "", c);
		else
			off += snprintf(buf + off, len - off, "%s%d-%d", off ? "," : "", c, e);
		c = e;
	}
}

static void parse_cpu_list(const char *opt, const char *s, int *out, int *nout)
{
	const char *p = s;
	char avail[256];

	if (!*s)
		usage_error("%s: empty CPU list", opt);
	format_cpuset(&allowed_set, avail, sizeof(avail));
	*nout = 0;
	while (*p) {
		char *end;
		long a, b;

		if (*p < '0' || *p > '9')
			usage_error("%s: bad CPU list '%s' (expected e.g. 0,1 or 0-3)", opt, s);
		a = strtol(p, &end, 10);
		b = a;
		p = end;
		if (*p == '-') {
			p++;
			if (*p < '0' || *p > '9')
				usage_error("%s: bad CPU list '%s' (expected e.g. 0,1 or 0-3)", opt, s);
			b = strtol(p, &end, 10);
			p = end;
		}
		if (*p == ',') {
			p++;
			if (!*p)
				usage_error("%s: bad CPU list '%s' (expected e.g. 0,1 or 0-3)", opt, s);
		} else if (*p) {
			usage_error("%s: bad CPU list '%s' (expected e.g. 0,1 or 0-3)", opt, s);
		}
		if (b < a)
			usage_error("%s: bad range %ld-%ld in '%s'", opt, a, b, s);
		for (long c = a; c <= b; c++) {
			if (c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed_set))
				usage_error("%s: CPU %ld does not exist or is not available "
					    "(available: %s)", opt, c, avail);
			if (*nout >= CPU_SETSIZE)
				usage_error("%s: too many CPUs", opt);
			out[(*nout)++] = (int)c;
		}
	}
}

static void parse_ops(const char *s)
{
	char buf[256];
	char *rest, *tok;

	if (strlen(s) >= sizeof(buf))
		usage_error("--op: list too long");
	strcpy(buf, s);
	cfg.nops = 0;
	memset(cfg.op_enabled, 0, sizeof(cfg.op_enabled));
	rest = buf;
	while ((tok = strsep(&rest, ",")) != NULL) {
		int found = -1;

		if (!*tok)
			usage_error("--op: empty name in operation list '%s'", s);

		for (int i = 0; i < NR_OPS; i++)
			if (!strcmp(tok, op_names[i]))
				found = i;
		if (!strcmp(tok, "all")) {
			for (int i = 0; i < NR_OPS && cfg.nops < (int)(sizeof(cfg.ops) / sizeof(cfg.ops[0])); i++) {
				cfg.ops[cfg.nops++] = i;
				cfg.op_enabled[i] = 1;
			}
			continue;
		}
		if (found < 0)
			usage_error("--op: unknown operation '%s' (choose from counter, spinlock, "
				    "push, pop, delay, all)", tok);
		if (cfg.nops >= (int)(sizeof(cfg.ops) / sizeof(cfg.ops[0])))
			usage_error("--op: too many operations");
		cfg.ops[cfg.nops++] = found;
		cfg.op_enabled[found] = 1;
	}
	if (cfg.nops == 0)
		usage_error("--op: empty operation list");
}

static void print_help(void)
{
	printf(
"Usage: " PROG " [OPTIONS]\n"
"\n"
"Run x86-64 restartable-sequence (rseq) critical sections in worker threads,\n"
"count every commit, kernel abort and cpu_id mismatch exactly, and print a JSON\n"
"summary (stdout, or --json-out) plus a short human summary (stderr).\n"
"Stops after --duration or --ops, or cleanly on SIGINT / SIGTERM.\n"
"\n"
"Options:\n"
"  --threads N              worker threads (default: number of usable CPUs); with\n"
"                           --churn-*, worker slots that start churn threads\n"
"  --cpus LIST              pin workers round-robin to CPUs, e.g. 0,1 or 0-1\n"
"  --inducer-cpus LIST      pin the signal, migration and membarrier threads to\n"
"                           these CPUs (keeps them from preempting the workers)\n"
"  --op NAME[,NAME...]      sections to run in round robin: counter, spinlock,\n"
"                           push, pop, delay, or all (default: all)\n"
"  --duration SECONDS       run time (float; default 5 unless --ops is given)\n"
"  --ops N                  operations per worker thread (round-robin steps; with\n"
"                           --churn-*, per slot over all its churn threads);\n"
"                           with --duration, stop at whichever comes first\n"
"  --in-cs-delay N          delay-loop iterations inside the delay section\n"
"                           before its commit (default 1000; 0 allowed)\n"
"  --yield                  sched_yield() between operations\n"
"  --signal-rate HZ         send SIGUSR1 (tgkill) to workers, round robin, HZ in total\n"
"  --migrate-rate HZ        move one worker per tick to its next allowed CPU\n"
"                           (sched_setaffinity), HZ ticks per second\n"
"  --membarrier-rate HZ     call membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)\n"
"                           HZ times per second (registered first)\n"
"  --membarrier-unregistered  skip the membarrier registration (calls fail EPERM)\n"
"  --churn-threads          each worker slot starts short-lived threads one after\n"
"                           the other; each registers rseq, runs --churn-ops\n"
"                           operations, adds its exact counts to the totals, exits\n"
"  --churn-processes        the same with short-lived child processes (fork); each\n"
"                           self-checks and reports its counts through a pipe\n"
"                           (not with --signal-rate, --migrate-rate, --membarrier-rate)\n"
"  --churn-ops K            operations per churn thread / child (default 20)\n"
"  --churn-rate HZ          at most HZ churn threads / children per second in\n"
"                           total (default: as fast as possible)\n"
"  --rseq-abi legacy|v2     length of the workload's own registrations: legacy\n"
"                           (32 bytes, default) or v2 (larger than 32, from\n"
"                           AT_RSEQ_FEATURE_SIZE / AT_RSEQ_ALIGN; needs Linux 6.3+\n"
"                           and GLIBC_TUNABLES=glibc.pthread.rseq=0)\n"
"  --check-cpu-id-start     tcmalloc canary: overwrite cpu_id_start with a sentinel\n"
"                           before every attempt (the sections then compare with\n"
"                           cpu_id), and count after each kernel abort whether\n"
"                           the kernel wrote it back (rewritten / stale / wrong)\n"
"  --name NAME              set every thread's comm (kernel keeps 15 bytes)\n"
"  --json-out FILE          write the JSON summary to FILE instead of stdout\n"
"  -h, --help               show this help and exit\n"
"\n"
"Registration: glibc's rseq area is used when glibc registered one (__rseq_size\n"
"> 0); otherwise (e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0) each worker registers\n"
"its own area (32 bytes, or larger with --rseq-abi v2) and unregisters it at\n"
"exit.\n"
"\n"
"Exit status: 0 ok; 1 runtime error (e.g. rseq registration failed);\n"
"2 bad arguments; 3 self-check failed (summary still printed).\n");
}

enum {
	O_THREADS = 1000, O_CPUS, O_OP, O_DURATION, O_OPS, O_DELAY, O_YIELD,
	O_SIGNAL, O_MIGRATE, O_MEMBARRIER, O_MB_UNREG, O_NAME, O_JSON_OUT, O_INDUCER_CPUS,
	O_CHURN_THREADS, O_CHURN_PROCESSES, O_CHURN_OPS, O_CHURN_RATE,
	O_RSEQ_ABI, O_CHECK_IDS,
};

static void parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"threads", required_argument, 0, O_THREADS},
		{"cpus", required_argument, 0, O_CPUS},
		{"inducer-cpus", required_argument, 0, O_INDUCER_CPUS},
		{"op", required_argument, 0, O_OP},
		{"duration", required_argument, 0, O_DURATION},
		{"ops", required_argument, 0, O_OPS},
		{"in-cs-delay", required_argument, 0, O_DELAY},
		{"yield", no_argument, 0, O_YIELD},
		{"signal-rate", required_argument, 0, O_SIGNAL},
		{"migrate-rate", required_argument, 0, O_MIGRATE},
		{"membarrier-rate", required_argument, 0, O_MEMBARRIER},
		{"membarrier-unregistered", no_argument, 0, O_MB_UNREG},
		{"name", required_argument, 0, O_NAME},
		{"json-out", required_argument, 0, O_JSON_OUT},
		{"churn-threads", no_argument, 0, O_CHURN_THREADS},
		{"churn-processes", no_argument, 0, O_CHURN_PROCESSES},
		{"churn-ops", required_argument, 0, O_CHURN_OPS},
		{"churn-rate", required_argument, 0, O_CHURN_RATE},
		{"rseq-abi", required_argument, 0, O_RSEQ_ABI},
		{"check-cpu-id-start", no_argument, 0, O_CHECK_IDS},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	int c, threads_given = 0;

	cfg.in_cs_delay = 1000;
	cfg.churn_ops = CHURN_OPS_DEFAULT;
	parse_ops("all");
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case O_THREADS:
			cfg.threads = (int)parse_int("--threads", optarg, 1, MAX_THREADS);
			threads_given = 1;
			break;
		case O_CPUS: parse_cpu_list("--cpus", optarg, cfg.cpus, &cfg.ncpus); break;
		case O_INDUCER_CPUS:
			parse_cpu_list("--inducer-cpus", optarg, cfg.inducer_cpus, &cfg.n_inducer_cpus);
			break;
		case O_OP: parse_ops(optarg); break;
		case O_DURATION:
			cfg.duration = parse_positive_double("--duration", optarg);
			cfg.duration_given = 1;
			break;
		case O_OPS:
			cfg.ops_per_thread = parse_int("--ops", optarg, 1, LLONG_MAX / 4);
			break;
		case O_DELAY:
			cfg.in_cs_delay = (long)parse_int("--in-cs-delay", optarg, 0, 1000000000L);
			break;
		case O_YIELD: cfg.yield = 1; break;
		case O_SIGNAL: cfg.signal_rate = parse_positive_double("--signal-rate", optarg); break;
		case O_MIGRATE: cfg.migrate_rate = parse_positive_double("--migrate-rate", optarg); break;
		case O_MEMBARRIER:
			cfg.membarrier_rate = parse_positive_double("--membarrier-rate", optarg);
			break;
		case O_MB_UNREG: cfg.membarrier_unregistered = 1; break;
		case O_NAME:
			if (!*optarg)
				usage_error("--name: empty name");
			cfg.name = optarg;
			break;
		case O_JSON_OUT:
			if (!*optarg)
				usage_error("--json-out: empty file name");
			cfg.json_out = optarg;
			break;
		case O_CHURN_THREADS:
		case O_CHURN_PROCESSES: {
			int m = c == O_CHURN_THREADS ? CHURN_THREADS : CHURN_PROCESSES;

			if (cfg.churn && cfg.churn != m)
				usage_error("--churn-threads and --churn-processes exclude each other");
			cfg.churn = m;
			break;
		}
		case O_CHURN_OPS:
			cfg.churn_ops = parse_int("--churn-ops", optarg, 1, 1000000000LL);
			cfg.churn_ops_given = 1;
			break;
		case O_CHURN_RATE:
			cfg.churn_rate = parse_positive_double("--churn-rate", optarg);
			break;
		case O_RSEQ_ABI:
			if (!strcmp(optarg, "legacy"))
				cfg.rseq_v2 = 0;
			else if (!strcmp(optarg, "v2"))
				cfg.rseq_v2 = 1;
			else
				usage_error("--rseq-abi: unknown ABI '%s' (choose legacy or v2)", optarg);
			break;
		case O_CHECK_IDS: cfg.check_ids = 1; break;
		case 'h':
			print_help();
			exit(0);
		case ':':
			usage_error("option '%s' needs a value", argv[optind - 1]);
		default:
			usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (!threads_given)
		cfg.threads = CPU_COUNT(&allowed_set) > 0 ? CPU_COUNT(&allowed_set) : 1;
	if (cfg.threads > MAX_THREADS)
		cfg.threads = MAX_THREADS;
	if (!cfg.duration_given && !cfg.ops_per_thread)
		cfg.duration = 5.0;
	if (cfg.membarrier_unregistered && cfg.membarrier_rate <= 0)
		usage_error("--membarrier-unregistered needs --membarrier-rate");
	if (cfg.churn_ops_given && !cfg.churn)
		usage_error("--churn-ops needs --churn-threads or --churn-processes");
	if (cfg.churn_rate > 0 && !cfg.churn)
		usage_error("--churn-rate needs --churn-threads or --churn-processes");
	/* The length of glibc's registration is glibc's choice (max(__rseq_size,
	 * 32)): only the workload's own registrations can be made V2. */
	if (cfg.rseq_v2 && __rseq_size > 0)
		usage_error("--rseq-abi v2 needs the workload's own registration, but glibc "
			    "registered rseq (__rseq_size %u): run with "
			    "GLIBC_TUNABLES=glibc.pthread.rseq=0", __rseq_size);
	if (cfg.churn == CHURN_PROCESSES) {
		/* The inducers act on this process's threads and memory map: they
		 * cannot reach the children (and a reaped child's pid may already
		 * belong to another process). */
		if (cfg.signal_rate > 0)
			usage_error("--signal-rate cannot be combined with --churn-processes");
		if (cfg.migrate_rate > 0)
			usage_error("--migrate-rate cannot be combined with --churn-processes");
		if (cfg.membarrier_rate > 0)
			usage_error("--membarrier-rate cannot be combined with --churn-processes");
	}
}

/* ------------------------------------------------------------------ */
/* Time                                                                */

static double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ts_add(struct timespec *ts, double s)
{
	long ns = (long)(s * 1e9);

	ts->tv_sec += ns / 1000000000L;
	ts->tv_nsec += ns % 1000000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Sleep until the next tick of a fixed-rate timer; returns 0 when stopping. */
static int tick_wait(struct timespec *next, double period)
{
	struct timespec now;

	ts_add(next, period);
	clock_gettime(CLOCK_MONOTONIC, &now);
	/* never try to catch up more than 100 ms of missed ticks */
	if ((now.tv_sec - next->tv_sec) * 1e9 + (now.tv_nsec - next->tv_nsec) > 1e8)
		*next = now;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL) == EINTR)
		;
	return !atomic_load_explicit(&stop_flag, memory_order_relaxed);
}

static void set_comm(void)
{
	if (cfg.name)
		prctl(PR_SET_NAME, cfg.name, 0, 0, 0);
}

/* Inducer threads: keep them off the workers' CPUs when asked, so that
 * their own wake-ups do not preempt the workers they act on. */
static void pin_inducer(void)
{
	cpu_set_t set;

	if (!cfg.n_inducer_cpus)
		return;
	CPU_ZERO(&set);
	for (int i = 0; i < cfg.n_inducer_cpus; i++)
		CPU_SET(cfg.inducer_cpus[i], &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		fatal("--inducer-cpus: sched_setaffinity failed: %s", strerror(errno));
}

/* ------------------------------------------------------------------ */
/* Self-check                                                          */

#define MAX_PROBLEMS 16
static char problems[MAX_PROBLEMS][256];
static int nproblems;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...)
{
	va_list ap;

	if (nproblems >= MAX_PROBLEMS)
		return;
	va_start(ap, fmt);
	vsnprintf(problems[nproblems++], sizeof(problems[0]), fmt, ap);
	va_end(ap);
}

static long pool_size;
static struct node *pool;
static char *pool_mark;   /* pool_size bytes, allocated up front: a churn
			   * child (forked from a threaded process) self-checks
			   * without calling malloc */

static void self_check(const uint64_t *commits)
{
	intptr_t sum = 0, dsum = 0, lsum = 0;
	long seen = 0;
	char *mark = pool_mark;

	memset(mark, 0, pool_size);

	for (int c = 0; c < nr_possible_cpus; c++) {
		sum += slots[c].counter;
		dsum += slots[c].delay_counter;
		lsum += slots[c].locked_count;
		if (slots[c].lock != 0)
			problem("spinlock of CPU %d still held at exit", c);
	}
	if ((uint64_t)sum != commits[OP_COUNTER])
		problem("per-CPU counters sum to %ld but counter commits are %llu",
			(long)sum, (unsigned long long)commits[OP_COUNTER]);
	if ((uint64_t)dsum != commits[OP_DELAY])
		problem("per-CPU delay counters sum to %ld but delay commits are %llu",
			(long)dsum, (unsigned long long)commits[OP_DELAY]);
	if ((uint64_t)lsum != commits[OP_SPINLOCK])
		problem("spinlock-protected counters sum to %ld but spinlock commits are %llu",
			(long)lsum, (unsigned long long)commits[OP_SPINLOCK]);
	if (commits[OP_PUSH] != commits[OP_POP])
		problem("push commits (%llu) differ from pop commits (%llu)",
			(unsigned long long)commits[OP_PUSH], (unsigned long long)commits[OP_POP]);
	for (int c = 0; c < nr_possible_cpus; c++) {
		for (struct node *n = slots[c].head; n; n = n->next) {
			long id = n - pool;

			if (id < 0 || id >= pool_size) {
				problem("free list of CPU %d holds a foreign pointer", c);
				break;
			}
			if (mark[id]) {
				problem("node %ld appears twice in the free lists", id);
				break;
			}
			mark[id] = 1;
			seen++;
		}
	}
	if (seen != pool_size)
		problem("free lists hold %ld nodes, expected %ld", seen, pool_size);
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */

static void on_sigusr1(int sig)
{
	(void)sig;
	t_stats.signals++;
}

/*
 * The CPU an attempt works on, read before the section. Normally
 * cpu_id_start, as librseq does. With --check-cpu-id-start the attempt first
 * overwrites cpu_id_start with the sentinel, so that the abort handler can
 * tell whether the kernel wrote it back; the CPU then has to come from cpu_id
 * (the sections compare with cpu_id, which we never write). Overwriting
 * cpu_id_start is harmless in this process even in glibc's area: glibc only
 * reads cpu_id (sched_getcpu), and no other rseq user (tcmalloc) is loaded.
 * Without the flag there is no store.
 */
static inline int attempt_cpu(void)
{
	volatile struct rseq *rs = rseq_area();

	if (!cfg.check_ids)
		return (int)rs->cpu_id_start;
	rs->cpu_id_start = CPU_ID_START_SENTINEL;
	return (int)rs->cpu_id;
}

/*
 * --check-cpu-id-start, after a kernel abort of `op`: a correct kernel
 * rewrites cpu_id_start together with cpu_id whenever it aborts a section
 * (preemption, signal, membarrier IPI), so the sentinel must be gone. Still
 * the sentinel: stale (the tcmalloc breakage of 6.19 to 7.0.9). Rewritten
 * but not equal to cpu_id: wrong. A later preemption may rewrite both again
 * between two reads, so a mismatch counts only if it persists over a few
 * consistent snapshots (no migration in between).
 */
static void check_ids_after_abort(int op)
{
	volatile struct rseq *rs = rseq_area();
	uint32_t start = rs->cpu_id_start;

	if (start == CPU_ID_START_SENTINEL) {
		t_stats.ids_stale[op]++;
		return;
	}
	for (int i = 0; i < 4; i++) {
		uint32_t cpu = rs->cpu_id, again = rs->cpu_id_start;

		if (start == again && start == cpu) {
			t_stats.ids_rewritten[op]++;
			return;
		}
		start = again;
	}
	t_stats.ids_wrong[op]++;
}

/* Book one attempt of section `op`: 1 when it committed. A cpu_id mismatch
 * is the section's own retry (not a kernel abort: those are counted in the
 * abort handlers only, and RS_ABORT comes only from there). */
static inline int settle(int op, int r)
{
	if (r == RS_ABORT && cfg.check_ids)
		check_ids_after_abort(op);
	if (r == RS_COMMIT) {
		t_stats.commits[op]++;
		return 1;
	}
	if (r == RS_MISMATCH)
		t_stats.mismatch[op]++;
	else if (r == RS_CMPFAIL)
		t_stats.cmp_fail[op]++;
	return 0;
}

/* Run a section until it commits (or the run stops while a compare keeps
 * failing). Returns 1 on commit. */
static int do_counter(void)
{
	for (;;) {
		int cpu = attempt_cpu();

		if (settle(OP_COUNTER, rseq_op_counter(&slots[cpu].counter, cpu)))
			return 1;
	}
}

static int do_delay(void)
{
	for (;;) {
		int cpu = attempt_cpu();

		if (settle(OP_DELAY, rseq_op_delay(&slots[cpu].delay_counter, cfg.in_cs_delay, cpu)))
			return 1;
	}
}

static int do_spinlock(void)
{
	for (;;) {
		int cpu = attempt_cpu();
		int r = rseq_op_spinlock_lock(&slots[cpu].lock, cpu);

		if (settle(OP_SPINLOCK, r)) {
			/* lock of `cpu` held: update the data it protects, release */
			slots[cpu].locked_count++;
			__atomic_store_n(&slots[cpu].lock, 0, __ATOMIC_RELEASE);
			return 1;
		}
		if (r == RS_CMPFAIL)
			sched_yield(); /* held by a thread preempted or migrated while holding it */
	}
}

static __thread struct node *t_held;   /* node popped and not yet pushed */

static int do_push(void)
{
	for (;;) {
		int cpu = attempt_cpu();

		if (settle(OP_PUSH, rseq_op_push(&slots[cpu].head, t_held, cpu))) {
			t_held = NULL;
			return 1;
		}
	}
}

static int do_pop(void)
{
	for (;;) {
		int cpu = attempt_cpu();
		struct node *n = NULL;
		int r = rseq_op_pop(&slots[cpu].head, &n, cpu);

		if (settle(OP_POP, r)) {
			t_held = n;
			return 1;
		}
		if (r == RS_CMPFAIL) {
			/* this CPU's list is empty: wait for a push or a migration */
			if (atomic_load_explicit(&stop_flag, memory_order_relaxed))
				return 0;
			sched_yield();
		}
	}
}

static int run_op(int op)
{
	switch (op) {
	case OP_COUNTER: return do_counter();
	case OP_SPINLOCK: return do_spinlock();
	case OP_DELAY: return do_delay();
	case OP_PUSH:
		/* push and pop come in pairs: pop first if holding no node */
		if (!t_held && !do_pop())
			return 0;
		return do_push();
	case OP_POP:
		if (t_held)
			do_push();
		return do_pop();
	}
	return 0;
}

/* Register this thread's own area with reg_len bytes (32, or the V2 length):
 * 0 or errno. Not counted: callers count what they need. */
static int own_rseq_register(void)
{
	memset(&own_area, 0, sizeof(own_area));
	own_area.rs.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
	if (syscall(__NR_rseq, &own_area, reg_len, 0, WL_RSEQ_SIG) != 0)
		return errno;
	return 0;
}

/* The kernel refuses an unregistration whose length differs from the
 * registration's (EINVAL): always pass reg_len. */
static int own_rseq_unregister(void)
{
	return syscall(__NR_rseq, &own_area, reg_len, RSEQ_FLAG_UNREGISTER, WL_RSEQ_SIG) == 0
		? 0 : errno;
}

static int register_own_rseq(void)
{
	int err = own_rseq_register();

	if (err)
		return err;
	atomic_fetch_add(&own_registrations, 1);
	return 0;
}

static void unregister_own_rseq(void)
{
	errno = own_rseq_unregister();
	if (errno == 0)
		atomic_fetch_add(&own_unregistrations, 1);
	else
		fprintf(stderr, PROG ": warning: rseq unregistration failed: %s\n",
			strerror(errno));
}

/* ---- churn ---- */

static void add_stats(struct tstats *dst, const struct tstats *src)
{
	for (int o = 0; o < NR_OPS; o++) {
		dst->commits[o] += src->commits[o];
		dst->aborts[o] += src->aborts[o];
		dst->mismatch[o] += src->mismatch[o];
		dst->cmp_fail[o] += src->cmp_fail[o];
		dst->ids_rewritten[o] += src->ids_rewritten[o];
		dst->ids_stale[o] += src->ids_stale[o];
		dst->ids_wrong[o] += src->ids_wrong[o];
	}
	dst->signals += src->signals;
}

/* The body of a churn thread or child: up to k round-robin steps over
 * cfg.ops, continuing the slot's round robin. Returns the commits. */
static long long churn_run(struct worker *w, long long k)
{
	long long done = 0;

	for (long long i = 0; i < k; i++) {
		if (atomic_load_explicit(&stop_flag, memory_order_relaxed))
			break;
		if (run_op(cfg.ops[(w->churn_step + i) % cfg.nops]))
			done++;
		if (cfg.yield)
			sched_yield();
	}
	if (t_held)
		do_push();   /* give the node back */
	return done;
}

/* Steps for the next churn thread / child of w; 0 when --ops is reached. */
static long long churn_next_k(const struct worker *w)
{
	long long k = cfg.churn_ops;

	if (cfg.ops_per_thread) {
		long long left = cfg.ops_per_thread - w->churn_done;

		if (left <= 0)
			return 0;
		if (left < k)
			k = left;
	}
	return k;
}

static void *churn_thread_main(void *arg)
{
	struct worker *w = arg;
	int publish = cfg.signal_rate > 0 || cfg.migrate_rate > 0;
	sigset_t usr1;

	/* A new thread: glibc registered its rseq area before calling us (or
	 * we register our own); t_stats and t_held start zeroed (fresh TLS). */
	if (own_mode) {
		int err = register_own_rseq();

		if (err) {
			w->churn_reg_error = err;
			atomic_store(&stop_flag, 1);
			return NULL;
		}
	}
	if (publish)
		atomic_store(&w->churn_tid, (int)gettid());
	w->churn_ran = churn_run(w, w->churn_k);
	if (publish) {
		/* an inducer holding the lock is acting on this (live) tid */
		pthread_mutex_lock(&w->churn_lock);
		atomic_store(&w->churn_tid, 0);
		pthread_mutex_unlock(&w->churn_lock);
	}
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	/* the slot reads churn_stats only after pthread_join */
	add_stats(&w->churn_stats, &t_stats);
	if (own_mode)
		unregister_own_rseq();
	return NULL;
}

static void slot_churn_threads(struct worker *w)
{
	pthread_attr_t attr;
	long long k;

	struct timespec next;

	clock_gettime(CLOCK_MONOTONIC, &next);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, CHURN_STACK_SIZE);
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed) &&
	       (k = churn_next_k(w)) > 0) {
		pthread_t t;
		int err;

		if (cfg.churn_rate > 0 && !tick_wait(&next, cfg.threads / cfg.churn_rate))
			break;
		w->churn_k = k;
		w->churn_ran = 0;
		err = pthread_create(&t, &attr, churn_thread_main, w);
		if (err) {
			w->churn_error = err;
			w->churn_error_what = "cannot create a churn thread";
			atomic_store(&stop_flag, 1);
			break;
		}
		w->churn_created++;
		pthread_join(t, NULL);
		w->churn_done += w->churn_ran;
		w->churn_step += k;
	}
	pthread_attr_destroy(&attr);
}

/* A forked child: this thread alone, with a copy of the parent's memory
 * (same addresses, so the same start_ip / abort_ip) in which no other
 * thread runs sections. The rseq registration of the forking thread is
 * inherited (glibc mode); in own mode the child registers its own. Runs k
 * operations, self-checks its copy of the per-CPU data, reports through the
 * slot's pipe and _exits. Only async-signal-safe calls: other threads of
 * the parent may have held locks at fork time. */
static void churn_child(struct worker *w, long long k) __attribute__((noreturn));
static void churn_child(struct worker *w, long long k)
{
	struct child_report rep;

	memset(&rep, 0, sizeof(rep));
	rep.magic = CHILD_REPORT_MAGIC;
	memset(&t_stats, 0, sizeof(t_stats));
	t_held = NULL;
	nproblems = 0;
	if (own_mode) {
		rep.reg_error = own_rseq_register();
		if (rep.reg_error)
			goto send;
		rep.own_reg = 1;
	} else if ((int32_t)rseq_area()->cpu_id < 0) {
		rep.reg_error = -1;   /* no registration inherited through fork */
		goto send;
	}
	rep.done_ops = churn_run(w, k);
	self_check(t_stats.commits);
	rep.nproblems = nproblems;
	if (nproblems)
		memcpy(rep.problem, problems[0], sizeof(rep.problem) - 1);
	rep.stats = t_stats;
	if (own_mode && own_rseq_unregister() == 0)
		rep.own_unreg = 1;
send:
	if (write(w->churn_pipe[1], &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
		_exit(1);
	_exit(0);
}

static void child_failure(struct worker *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void child_failure(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	if (w->child_failures++ == 0) {
		va_start(ap, fmt);
		vsnprintf(w->child_problem, sizeof(w->child_problem), fmt, ap);
		va_end(ap);
	}
}

static void slot_churn_processes(struct worker *w)
{
	long long k;
	struct timespec next;

	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!atomic_load_explicit(&stop_flag, memory_order_relaxed) &&
	       (k = churn_next_k(w)) > 0) {
		struct child_report rep;
		struct child_rec *rec;
		ssize_t n;
		int status = 0;
		pid_t pid;

		if (cfg.churn_rate > 0 && !tick_wait(&next, cfg.threads / cfg.churn_rate))
			break;
		if (w->nchildren == w->children_cap) {
			size_t cap = w->children_cap ? w->children_cap * 2 : 4096;
			struct child_rec *c = realloc(w->children, cap * sizeof(*c));

			if (!c) {
				w->churn_error = ENOMEM;
				w->churn_error_what = "out of memory";
				atomic_store(&stop_flag, 1);
				break;
			}
			w->children = c;
			w->children_cap = cap;
		}
		/* _Fork: no atfork handlers, no malloc / stdio locks taken; the
		 * child uses none of them. */
		pid = _Fork();
		if (pid < 0) {
			w->churn_error = errno;
			w->churn_error_what = "cannot fork a churn child";
			atomic_store(&stop_flag, 1);
			break;
		}
		if (pid == 0)
			churn_child(w, k);
		w->churn_created++;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		rec = &w->children[w->nchildren++];
		memset(rec, 0, sizeof(*rec));
		rec->pid = pid;
		rec->processes = 1;
		n = read(w->churn_pipe[0], &rep, sizeof(rep));
		if (n == (ssize_t)sizeof(rep) && rep.magic == CHILD_REPORT_MAGIC) {
			if (rep.reg_error) {
				if (!w->churn_reg_error)
					w->churn_reg_error = rep.reg_error;
				atomic_store(&stop_flag, 1);
			}
			w->churn_own_reg += rep.own_reg;
			w->churn_own_unreg += rep.own_unreg;
			w->churn_done += rep.done_ops;
			add_stats(&w->churn_stats, &rep.stats);
			for (int o = 0; o < NR_OPS; o++) {
				rec->commits += rep.stats.commits[o];
				rec->aborts += rep.stats.aborts[o];
				rec->mismatch += rep.stats.mismatch[o];
				rec->cmp_fail += rep.stats.cmp_fail[o];
			}
			if (rep.nproblems)
				child_failure(w, "child %d: %s", (int)pid, rep.problem);
		} else {
			child_failure(w, "child %d sent no report", (int)pid);
		}
		if (WIFSIGNALED(status))
			child_failure(w, "child %d killed by signal %d", (int)pid, WTERMSIG(status));
		else if (WIFEXITED(status) && WEXITSTATUS(status))
			child_failure(w, "child %d exited with status %d", (int)pid,
				      WEXITSTATUS(status));
		w->churn_step += k;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int own = own_mode && !cfg.churn;   /* churn slots run no sections */
	long long done_ops = 0;
	sigset_t usr1;

	set_comm();
	if (cfg.ncpus > 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cfg.cpus[w->index % cfg.ncpus], &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0)
			fprintf(stderr, PROG ": warning: pinning worker %d: %s\n", w->index,
				strerror(errno));
	}
	if (own) {
		w->reg_error = register_own_rseq();
		if (w->reg_error)
			atomic_store(&stop_flag, 1);
	}
	atomic_store(&w->tid, (int)gettid());
	pthread_barrier_wait(&start_barrier);

	if (cfg.churn == CHURN_THREADS) {
		slot_churn_threads(w);
	} else if (cfg.churn == CHURN_PROCESSES) {
		slot_churn_processes(w);
	} else if (!w->reg_error) {
		for (int i = 0; !atomic_load_explicit(&stop_flag, memory_order_relaxed); i++) {
			if (cfg.ops_per_thread && done_ops >= cfg.ops_per_thread)
				break;
			if (run_op(cfg.ops[i % cfg.nops]))
				done_ops++;
			if (cfg.yield)
				sched_yield();
		}
		if (t_held)
			do_push();   /* give the node back */
	}

	/* Collect: no more signal counting after this point. */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	atomic_store(&w->done, 1);
	w->stats = t_stats;
	if (own && !w->reg_error)
		unregister_own_rseq();
	/* Ground truth for tracers' per-thread preemption counts. */
	struct rusage ru;
	if (getrusage(RUSAGE_THREAD, &ru) == 0) {
		w->nivcsw = ru.ru_nivcsw;
		w->nvcsw = ru.ru_nvcsw;
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Inducers                                                            */

/* The thread an inducer should act on for worker w: the worker itself, or
 * with --churn-threads the slot's live churn thread, whose lock is then held
 * (the thread cannot exit, so its tid cannot be reused, until
 * inducer_release). Returns 0 when there is none. */
static int inducer_target(struct worker *w)
{
	int tid;

	if (cfg.churn == CHURN_THREADS) {
		pthread_mutex_lock(&w->churn_lock);
		tid = atomic_load(&w->churn_tid);
		if (!tid)
			pthread_mutex_unlock(&w->churn_lock);
		return tid;
	}
	tid = atomic_load(&w->tid);
	return atomic_load(&w->done) ? 0 : tid;
}

static void inducer_release(struct worker *w)
{
	if (cfg.churn == CHURN_THREADS)
		pthread_mutex_unlock(&w->churn_lock);
}

static void *signal_main(void *arg)
{
	struct timespec next;
	double period = 1.0 / cfg.signal_rate;
	pid_t pid = getpid();
	int i = 0;

	(void)arg;
	set_comm();
	pin_inducer();
	pthread_barrier_wait(&start_barrier);
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (tick_wait(&next, period)) {
		/* next live worker, round robin */
		for (int k = 0; k < cfg.threads; k++) {
			struct worker *w = &workers[i++ % cfg.threads];
			int tid = inducer_target(w);

			if (!tid)
				continue;
			if (syscall(SYS_tgkill, pid, tid, SIGUSR1) == 0)
				atomic_fetch_add(&signals_sent, 1);
			inducer_release(w);
			break;
		}
	}
	return NULL;
}

static void *migrate_main(void *arg)
{
	struct timespec next;
	double period = 1.0 / cfg.migrate_rate;
	int list[CPU_SETSIZE], n = 0, i = 0;
	int *pos = calloc(cfg.threads, sizeof(int));

	(void)arg;
	set_comm();
	pin_inducer();
	if (cfg.ncpus > 0) {
		memcpy(list, cfg.cpus, cfg.ncpus * sizeof(int));
		n = cfg.ncpus;
	} else {
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &allowed_set))
				list[n++] = c;
	}
	for (int k = 0; k < cfg.threads; k++)
		pos[k] = cfg.ncpus > 0 ? k % n : k % (n ? n : 1);
	pthread_barrier_wait(&start_barrier);
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (n > 0 && tick_wait(&next, period)) {
		int k = i++ % cfg.threads;
		struct worker *w = &workers[k];
		int tid = inducer_target(w);
		cpu_set_t set;

		if (!tid)
			continue;
		pos[k] = (pos[k] + 1) % n;
		CPU_ZERO(&set);
		CPU_SET(list[pos[k]], &set);
		if (sched_setaffinity(tid, sizeof(set), &set) == 0)
			atomic_fetch_add(&migrations_requested, 1);
		inducer_release(w);
	}
	free(pos);
	return NULL;
}

static void mb_count_error(int err)
{
	for (int i = 0; i < mb_nerrors; i++) {
		if (mb_errors[i].err == err) {
			mb_errors[i].count++;
			return;
		}
	}
	if (mb_nerrors < MAX_ERRNO_NAMES) {
		mb_errors[mb_nerrors].err = err;
		mb_errors[mb_nerrors].count = 1;
		mb_nerrors++;
	}
}

static void *membarrier_main(void *arg)
{
	struct timespec next;
	double period = 1.0 / cfg.membarrier_rate;

	(void)arg;
	set_comm();
	pin_inducer();
	if (!cfg.membarrier_unregistered) {
		if (syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0)
			mb_registered = 1;
		else
			mb_register_errno = errno;
	}
	pthread_barrier_wait(&start_barrier);
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (tick_wait(&next, period)) {
		mb_calls++;
		if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0)
			mb_ok++;
		else
			mb_count_error(errno);
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* JSON output                                                         */

/* Escape arbitrary bytes as an ASCII-only JSON string: valid UTF-8 becomes
 * \uXXXX (surrogate pairs above U+FFFF), invalid bytes become U+FFFD. */
static void json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	while (*p) {
		unsigned c = *p;

		if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", c);
			p++;
		} else if (c >= 0x20 && c < 0x7f) {
			fputc(c, f);
			p++;
		} else if (c < 0x80) {
			fprintf(f, "\\u%04x", c);
			p++;
		} else {
			int len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
			uint32_t cp = len == 4 ? c & 0x07 : len == 3 ? c & 0x0f : c & 0x1f;
			int ok = len > 0;

			if (len == 3 && c > 0xef)
				ok = 0;
			for (int k = 1; ok && k < len; k++) {
				if ((p[k] & 0xc0) != 0x80)
					ok = 0;
				else
					cp = (cp << 6) | (p[k] & 0x3f);
			}
			if (ok && ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
				   (len == 4 && (cp < 0x10000 || cp > 0x10ffff))))
				ok = 0;
			if (!ok) {
				fputs("\\ufffd", f);
				p++;
				continue;
			}
			if (cp >= 0x10000) {
				cp -= 0x10000;
				fprintf(f, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
			} else {
				fprintf(f, "\\u%04x", cp);
			}
			p += len;
		}
	}
	fputc('"', f);
}

static void json_hex_bytes(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		fprintf(f, "%02x", *p);
	fputc('"', f);
}

static void json_rate(FILE *f, double v)
{
	if (v > 0)
		fprintf(f, "%.6f", v);
	else
		fputs("null", f);
}

static void json_double(FILE *f, double v)
{
	if (!isfinite(v))
		fputs("null", f);
	else
		fprintf(f, "%.6f", v);
}

/* A record's counts summed over the operations. */
struct op_sums {
	uint64_t commits, aborts, mismatch, cmp_fail;
	uint64_t ids_rewritten, ids_stale, ids_wrong;
};

static struct op_sums sum_ops(const struct tstats *s)
{
	struct op_sums r = {0, 0, 0, 0, 0, 0, 0};

	for (int o = 0; o < NR_OPS; o++) {
		r.commits += s->commits[o];
		r.aborts += s->aborts[o];
		r.mismatch += s->mismatch[o];
		r.cmp_fail += s->cmp_fail[o];
		r.ids_rewritten += s->ids_rewritten[o];
		r.ids_stale += s->ids_stale[o];
		r.ids_wrong += s->ids_wrong[o];
	}
	return r;
}

/* With --check-cpu-id-start only (absent otherwise): the canary's counts,
 * as further members of the object being written. */
static void write_ids(FILE *f, uint64_t rewritten, uint64_t stale, uint64_t wrong)
{
	if (!cfg.check_ids)
		return;
	fprintf(f, ", \"cpu_id_start_rewritten\": %llu, \"cpu_id_start_stale\": %llu, "
		"\"cpu_id_start_wrong\": %llu", (unsigned long long)rewritten,
		(unsigned long long)stale, (unsigned long long)wrong);
}

/* The members of an "ops" object: per-operation counts of one record. */
static void write_op_counts(FILE *f, const struct tstats *s)
{
	int first = 1;

	for (int o = 0; o < NR_OPS; o++) {
		if (!cfg.op_enabled[o] && !s->commits[o] && !s->aborts[o] &&
		    !s->mismatch[o] && !s->cmp_fail[o])
			continue;
		fprintf(f, "%s\"%s\": {\"commits\": %llu, \"aborts\": %llu, "
			"\"cpu_mismatch\": %llu, \"cmp_fail\": %llu",
			first ? "" : ", ", op_names[o],
			(unsigned long long)s->commits[o], (unsigned long long)s->aborts[o],
			(unsigned long long)s->mismatch[o], (unsigned long long)s->cmp_fail[o]);
		write_ids(f, s->ids_rewritten[o], s->ids_stale[o], s->ids_wrong[o]);
		fputc('}', f);
		first = 0;
	}
}

/* A slot's "churn" object: what its churn threads / children did. */
static void write_churn_counts(FILE *f, const struct worker *w)
{
	const struct tstats *s = &w->churn_stats;
	struct op_sums n = sum_ops(s);

	fprintf(f, ",\n   \"churn\": {\"created\": %llu, \"commits\": %llu, \"aborts\": %llu, "
		"\"cpu_mismatch\": %llu, \"cmp_fail\": %llu, \"signals\": %llu",
		(unsigned long long)w->churn_created, (unsigned long long)n.commits,
		(unsigned long long)n.aborts, (unsigned long long)n.mismatch, (unsigned long long)n.cmp_fail,
		(unsigned long long)s->signals);
	write_ids(f, n.ids_rewritten, n.ids_stale, n.ids_wrong);
	fputs(", \"ops\": {", f);
	write_op_counts(f, s);
	fputs("}}", f);
}

static int child_rec_cmp(const void *a, const void *b)
{
	const struct child_rec *x = a, *y = b;

	return (x->pid > y->pid) - (x->pid < y->pid);
}

/* "churn", "children" and "children_totals". */
static void write_churn_json(FILE *f, double duration)
{
	uint64_t created = 0;
	long failed = 0;
	size_t n = 0, m = 0;
	struct child_rec *all = NULL;
	struct child_rec sum;

	if (!cfg.churn) {
		fputs(" \"churn\": null, \"children_totals\": null, \"children\": null,\n", f);
		return;
	}
	for (int i = 0; i < cfg.threads; i++) {
		created += workers[i].churn_created;
		failed += workers[i].child_failures;
	}
	fprintf(f, " \"churn\": {\"mode\": \"%s\", \"created\": %llu, \"per_second\": ",
		churn_mode_names[cfg.churn], (unsigned long long)created);
	json_double(f, duration > 0 ? created / duration : 0);
	fprintf(f, ", \"ops_per_thread\": %lld, \"failed\": %ld},\n", cfg.churn_ops, failed);
	if (cfg.churn != CHURN_PROCESSES) {
		fputs(" \"children_totals\": null, \"children\": null,\n", f);
		return;
	}

	/* All children, by pid; a pid the kernel reused for a later child
	 * (pid_max is often 32768) becomes one entry with "processes" > 1. */
	for (int i = 0; i < cfg.threads; i++)
		n += workers[i].nchildren;
	all = malloc((n ? n : 1) * sizeof(*all));
	if (!all)
		fatal("out of memory");
	for (int i = 0; i < cfg.threads; i++) {
		memcpy(all + m, workers[i].children, workers[i].nchildren * sizeof(*all));
		m += workers[i].nchildren;
	}
	qsort(all, n, sizeof(*all), child_rec_cmp);
	memset(&sum, 0, sizeof(sum));
	m = 0;
	for (size_t i = 0; i < n; i++) {
		sum.commits += all[i].commits;
		sum.aborts += all[i].aborts;
		sum.mismatch += all[i].mismatch;
		sum.cmp_fail += all[i].cmp_fail;
		if (m && all[m - 1].pid == all[i].pid) {
			all[m - 1].processes += all[i].processes;
			all[m - 1].commits += all[i].commits;
			all[m - 1].aborts += all[i].aborts;
			all[m - 1].mismatch += all[i].mismatch;
			all[m - 1].cmp_fail += all[i].cmp_fail;
		} else {
			all[m++] = all[i];
		}
	}
	fprintf(f, " \"children_totals\": {\"processes\": %zu, \"pids\": %zu, \"commits\": %llu, "
		"\"aborts\": %llu, \"cpu_mismatch\": %llu, \"cmp_fail\": %llu},\n", n, m,
		(unsigned long long)sum.commits, (unsigned long long)sum.aborts,
		(unsigned long long)sum.mismatch, (unsigned long long)sum.cmp_fail);
	fputs(" \"children\": {", f);
	for (size_t i = 0; i < m; i++)
		fprintf(f, "%s\n  \"%d\": {\"processes\": %d, \"commits\": %llu, \"aborts\": %llu, "
			"\"cpu_mismatch\": %llu, \"cmp_fail\": %llu}", i ? "," : "", all[i].pid,
			all[i].processes, (unsigned long long)all[i].commits,
			(unsigned long long)all[i].aborts, (unsigned long long)all[i].mismatch,
			(unsigned long long)all[i].cmp_fail);
	fputs("},\n", f);
	free(all);
}

static void write_json(FILE *f, const char *comm, const struct tstats *t, double duration)
{
	struct op_sums sum = sum_ops(t);
	uint64_t tc = sum.commits, ta = sum.aborts, tm = sum.mismatch, tf = sum.cmp_fail;
	const char *abi = reg_len > ORIG_RSEQ_LEN ? "v2" : "legacy";

	fprintf(f, "{\"schema_version\": %d, \"pid\": %d, \"comm\": ", SCHEMA_VERSION, (int)getpid());
	json_str(f, comm);
	fputs(", \"comm_hex\": ", f);
	json_hex_bytes(f, comm);

	fprintf(f, ",\n \"registration\": {\"mode\": \"%s\", \"rseq_size\": %u, "
		"\"abi\": \"%s\", \"rseq_len\": %u, \"feature_size\": %lu, \"align\": %lu,\n"
		"                  \"own_registrations\": %ld, \"own_unregistrations\": %ld, "
		"\"probe_registrations\": %ld, \"rseq_offset\": %ld},\n",
		reg_mode, reg_size, abi, reg_len, aux_feature_size, aux_align,
		atomic_load(&own_registrations), atomic_load(&own_unregistrations),
		probe_registrations, (long)g_rseq_offset);

	fprintf(f, " \"config\": {\"threads\": %d, \"cpus\": ", cfg.threads);
	if (cfg.ncpus) {
		fputc('[', f);
		for (int i = 0; i < cfg.ncpus; i++)
			fprintf(f, "%s%d", i ? ", " : "", cfg.cpus[i]);
		fputc(']', f);
	} else {
		fputs("null", f);
	}
	fputs(", \"ops\": [", f);
	for (int i = 0; i < cfg.nops; i++)
		fprintf(f, "%s\"%s\"", i ? ", " : "", op_names[cfg.ops[i]]);
	fputs("], \"duration_s\": ", f);
	if (cfg.duration > 0)
		json_double(f, cfg.duration);
	else
		fputs("null", f);
	fputs(", \"ops_per_thread\": ", f);
	if (cfg.ops_per_thread)
		fprintf(f, "%lld", cfg.ops_per_thread);
	else
		fputs("null", f);
	fprintf(f, ", \"in_cs_delay\": %ld, \"yield\": %s, \"signal_rate\": ", cfg.in_cs_delay,
		cfg.yield ? "true" : "false");
	json_rate(f, cfg.signal_rate);
	fputs(", \"migrate_rate\": ", f);
	json_rate(f, cfg.migrate_rate);
	fputs(", \"membarrier_rate\": ", f);
	json_rate(f, cfg.membarrier_rate);
	fprintf(f, ", \"membarrier_unregistered\": %s, \"name\": ",
		cfg.membarrier_unregistered ? "true" : "false");
	if (cfg.name)
		json_str(f, cfg.name);
	else
		fputs("null", f);
	fputs(", \"json_out\": ", f);
	if (cfg.json_out)
		json_str(f, cfg.json_out);
	else
		fputs("null", f);
	if (cfg.churn) {
		fprintf(f, ", \"churn\": \"%s\", \"churn_ops\": %lld, \"churn_rate\": ",
			churn_mode_names[cfg.churn], cfg.churn_ops);
		json_rate(f, cfg.churn_rate);
	} else {
		fputs(", \"churn\": null, \"churn_ops\": null, \"churn_rate\": null", f);
	}
	fprintf(f, ", \"rseq_abi\": \"%s\", \"check_cpu_id_start\": %s},\n",
		cfg.rseq_v2 ? "v2" : "legacy", cfg.check_ids ? "true" : "false");

	fputs(" \"threads\": {", f);
	for (int i = 0; i < cfg.threads; i++) {
		const struct worker *w = &workers[i];
		const struct tstats *s = &w->stats;
		struct op_sums n = sum_ops(s);

		fprintf(f, "%s\n  \"%d\": {\"tid\": %d, \"index\": %d, \"commits\": %llu, "
			"\"aborts\": %llu, \"cpu_mismatch\": %llu, \"cmp_fail\": %llu, "
			"\"signals\": %llu, \"nivcsw\": %ld, \"nvcsw\": %ld",
			i ? "," : "", atomic_load(&w->tid), atomic_load(&w->tid), i,
			(unsigned long long)n.commits, (unsigned long long)n.aborts, (unsigned long long)n.mismatch,
			(unsigned long long)n.cmp_fail, (unsigned long long)s->signals, w->nivcsw, w->nvcsw);
		write_ids(f, n.ids_rewritten, n.ids_stale, n.ids_wrong);
		fputs(", \"ops\": {", f);
		write_op_counts(f, s);
		fputc('}', f);
		if (cfg.churn)
			write_churn_counts(f, w);
		fputc('}', f);
	}
	fputs("},\n", f);

	fputs(" \"ops\": {", f);
	for (int o = 0; o < NR_OPS; o++) {
		const struct cs_view *d = op_desc[o];

		fprintf(f, "%s\n  \"%s\": {\"symbol\": \"%s\", \"function\": \"0x%lx\", "
			"\"start_ip\": \"0x%llx\", \"abort_ip\": \"0x%llx\", "
			"\"post_commit_offset\": %llu, \"descriptor\": \"0x%lx\", \"enabled\": %s, "
			"\"commits\": %llu, \"aborts\": %llu, \"cpu_mismatch\": %llu, \"cmp_fail\": %llu",
			o ? "," : "", op_names[o], op_symbols[o],
			o == OP_COUNTER ? (unsigned long)(uintptr_t)rseq_op_counter :
			o == OP_SPINLOCK ? (unsigned long)(uintptr_t)rseq_op_spinlock_lock :
			o == OP_PUSH ? (unsigned long)(uintptr_t)rseq_op_push :
			o == OP_POP ? (unsigned long)(uintptr_t)rseq_op_pop :
			(unsigned long)(uintptr_t)rseq_op_delay,
			(unsigned long long)d->start_ip, (unsigned long long)d->abort_ip,
			(unsigned long long)d->post_commit_offset, (unsigned long)(uintptr_t)d,
			cfg.op_enabled[o] ? "true" : "false",
			(unsigned long long)t->commits[o], (unsigned long long)t->aborts[o],
			(unsigned long long)t->mismatch[o], (unsigned long long)t->cmp_fail[o]);
		write_ids(f, t->ids_rewritten[o], t->ids_stale[o], t->ids_wrong[o]);
		fputc('}', f);
	}
	fputs("},\n", f);

	fprintf(f, " \"totals\": {\"commits\": %llu, \"aborts\": %llu, \"cpu_mismatch\": %llu, "
		"\"cmp_fail\": %llu, \"signals\": %llu",
		(unsigned long long)tc, (unsigned long long)ta, (unsigned long long)tm,
		(unsigned long long)tf, (unsigned long long)t->signals);
	write_ids(f, sum.ids_rewritten, sum.ids_stale, sum.ids_wrong);
	fputs("},\n", f);

	fprintf(f, " \"membarrier\": {\"registered\": %s, \"register_error\": ",
		mb_registered ? "true" : "false");
	if (mb_register_errno)
		fprintf(f, "\"%s\"", strerrorname_np(mb_register_errno) ?: "unknown");
	else
		fputs("null", f);
	fprintf(f, ", \"calls\": %ld, \"ok\": %ld, \"errors\": {", mb_calls, mb_ok);
	for (int i = 0; i < mb_nerrors; i++) {
		const char *n = strerrorname_np(mb_errors[i].err);
		char buf[32];

		if (!n) {
			snprintf(buf, sizeof(buf), "errno_%d", mb_errors[i].err);
			n = buf;
		}
		fprintf(f, "%s\"%s\": %ld", i ? ", " : "", n, mb_errors[i].count);
	}
	fputs("}},\n", f);

	write_churn_json(f, duration);
	fprintf(f, " \"signals_sent\": %ld, \"migrations_requested\": %ld,\n",
		atomic_load(&signals_sent), atomic_load(&migrations_requested));
	fputs(" \"duration_s\": ", f);
	json_double(f, duration);
	fputs(", \"ops_per_second\": ", f);
	json_double(f, duration > 0 ? tc / duration : 0);
	fputs(", \"ops_per_second_per_thread\": ", f);
	json_double(f, duration > 0 ? tc / duration / cfg.threads : 0);
	fprintf(f, ",\n \"self_check\": {\"ok\": %s, \"problems\": [", nproblems ? "false" : "true");
	for (int i = 0; i < nproblems; i++) {
		if (i)
			fputs(", ", f);
		json_str(f, problems[i]);
	}
	fputs("]}}\n", f);
}

/* ------------------------------------------------------------------ */
/* Main                                                                */

/*
 * The V2 registration length: at least AT_RSEQ_FEATURE_SIZE (so that it
 * covers every field the kernel supports) and a multiple of AT_RSEQ_ALIGN,
 * but never 32, which 7.1+ kernels take for a legacy registration. With the
 * 6.3 to 7.0 values (feature size 28, alignment 32) rounding up alone gives
 * 32, so the length becomes the next multiple, 64. Kernels 6.3+ accept any
 * length != 32 that is >= the feature size in an area aligned to
 * AT_RSEQ_ALIGN. Exits 1 when the kernel is too old or the length does not
 * fit the TLS area.
 */
static unsigned int v2_rseq_len(void)
{
	unsigned long need = aux_feature_size > ORIG_RSEQ_LEN ? aux_feature_size : ORIG_RSEQ_LEN + 1;
	unsigned long len;

	if (!aux_feature_size)
		fatal("--rseq-abi v2: this kernel is too old for extended rseq registrations "
		      "(no AT_RSEQ_FEATURE_SIZE in the auxiliary vector; needs Linux 6.3+)");
	if (!aux_align || aux_align > OWN_AREA_SIZE || OWN_AREA_SIZE % aux_align)
		fatal("--rseq-abi v2: AT_RSEQ_ALIGN is %lu, the workload's rseq area is aligned "
		      "to %d bytes", aux_align, OWN_AREA_SIZE);
	len = (need + aux_align - 1) / aux_align * aux_align;
	if (len > OWN_AREA_SIZE)
		fatal("--rseq-abi v2: the kernel's feature size %lu needs a %lu-byte registration, "
		      "more than the workload's %d-byte rseq area", aux_feature_size, len,
		      OWN_AREA_SIZE);
	return (unsigned int)len;
}

static void setup_registration(void)
{
	aux_feature_size = getauxval(AT_RSEQ_FEATURE_SIZE);
	aux_align = getauxval(AT_RSEQ_ALIGN);
	if (__rseq_size > 0) {
		reg_mode = "glibc";
		reg_size = __rseq_size;
		/* glibc passes the feature size it found, but at least the
		 * original 32 bytes, to rseq(2) */
		reg_len = __rseq_size > ORIG_RSEQ_LEN ? __rseq_size : ORIG_RSEQ_LEN;
		g_rseq_offset = __rseq_offset;
		return;
	}
	reg_mode = "own";
	own_mode = 1;
	reg_size = sizeof(struct rseq);
	reg_len = cfg.rseq_v2 ? v2_rseq_len() : ORIG_RSEQ_LEN;
	g_rseq_offset = (char *)&own_area - (char *)__builtin_thread_pointer();
	/* Try once in the main thread so that a kernel without rseq fails early
	 * with a clear message; unregister right away (workers register their
	 * own areas, and only those are counted). */
	errno = own_rseq_register();
	if (errno)
		fatal("rseq registration (%u bytes) failed: %s (errno %d, %s); does this kernel "
		      "have CONFIG_RSEQ?", reg_len, strerrorname_np(errno) ?: "?", errno,
		      strerror(errno));
	probe_registrations = 1;
	errno = own_rseq_unregister();
	if (errno)
		fatal("rseq unregistration (%u bytes) failed: %s (errno %d, %s)", reg_len,
		      strerrorname_np(errno) ?: "?", errno, strerror(errno));
}

static void setup_pool(void)
{
	pool_size = (long)nr_possible_cpus * NODES_PER_CPU;
	pool = calloc(pool_size, sizeof(*pool));
	pool_mark = calloc(pool_size, 1);
	if (!pool || !pool_mark)
		fatal("out of memory");
	/* Distribute the nodes over the usable CPUs' lists. */
	int usable[CPU_SETSIZE], n = 0;

	for (int c = 0; c < nr_possible_cpus && c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed_set))
			usable[n++] = c;
	if (n == 0)
		usable[n++] = 0;
	for (long i = 0; i < pool_size; i++) {
		struct percpu_slot *s = &slots[usable[i % n]];

		pool[i].id = i;
		pool[i].next = s->head;
		s->head = &pool[i];
	}
}

int main(int argc, char **argv)
{
	sigset_t stopset;
	struct sigaction sa;
	pthread_t sig_thr, mig_thr, mb_thr;
	int n_inducers = 0;
	double t0, t1, deadline;
	struct tstats tot;
	char comm[17] = {0};
	FILE *out = stdout;

	if (sched_getaffinity(0, sizeof(allowed_set), &allowed_set) != 0)
		fatal("sched_getaffinity: %s", strerror(errno));
	parse_args(argc, argv);

	nr_possible_cpus = (int)sysconf(_SC_NPROCESSORS_CONF);
	if (nr_possible_cpus < 1)
		nr_possible_cpus = 1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &allowed_set) && c >= nr_possible_cpus)
			nr_possible_cpus = c + 1;
	slots = aligned_alloc(128, sizeof(*slots) * nr_possible_cpus);
	workers = calloc(cfg.threads, sizeof(*workers));
	if (!slots || !workers)
		fatal("out of memory");
	memset(slots, 0, sizeof(*slots) * nr_possible_cpus);
	for (int i = 0; i < cfg.threads; i++) {
		workers[i].index = i;
		pthread_mutex_init(&workers[i].churn_lock, NULL);
		workers[i].churn_pipe[0] = workers[i].churn_pipe[1] = -1;
		/* the parent reads a report only after reaping its child: a
		 * child that died without writing leaves the pipe empty */
		if (cfg.churn == CHURN_PROCESSES &&
		    pipe2(workers[i].churn_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
			fatal("pipe: %s", strerror(errno));
	}
	setup_pool();
	setup_registration();

	if (cfg.json_out) {
		out = fopen(cfg.json_out, "w");
		if (!out)
			fatal("cannot write %s: %s", cfg.json_out, strerror(errno));
	}
	set_comm();
	prctl(PR_GET_NAME, comm, 0, 0, 0);

	/* SIGUSR1 is counted by the worker that receives it. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigusr1;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);

	/* SIGINT / SIGTERM: blocked everywhere, taken by the main thread. */
	sigemptyset(&stopset);
	sigaddset(&stopset, SIGINT);
	sigaddset(&stopset, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stopset, NULL);

	if (cfg.signal_rate > 0)
		n_inducers++;
	if (cfg.migrate_rate > 0)
		n_inducers++;
	if (cfg.membarrier_rate > 0)
		n_inducers++;
	pthread_barrier_init(&start_barrier, NULL, cfg.threads + n_inducers + 1);

	for (int i = 0; i < cfg.threads; i++) {
		int err = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);

		if (err)
			fatal("cannot create worker thread %d: %s", i, strerror(err));
	}
	if (cfg.signal_rate > 0 && pthread_create(&sig_thr, NULL, signal_main, NULL))
		fatal("cannot create the signal thread");
	if (cfg.migrate_rate > 0 && pthread_create(&mig_thr, NULL, migrate_main, NULL))
		fatal("cannot create the migration thread");
	if (cfg.membarrier_rate > 0 && pthread_create(&mb_thr, NULL, membarrier_main, NULL))
		fatal("cannot create the membarrier thread");

	pthread_barrier_wait(&start_barrier);
	t0 = now_mono();
	deadline = cfg.duration > 0 ? t0 + cfg.duration : INFINITY;

	/* Wait for the deadline, a stop signal, or all workers done. */
	for (;;) {
		struct timespec ts = {0, 50 * 1000 * 1000};
		double left = deadline - now_mono();
		int all_done = 1, sig;

		for (int i = 0; i < cfg.threads; i++)
			if (!atomic_load(&workers[i].done))
				all_done = 0;
		if (all_done || left <= 0 || atomic_load(&stop_flag))
			break;
		if (left < 0.05)
			ts.tv_nsec = (long)(left * 1e9);
		sig = sigtimedwait(&stopset, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM)
			break;
	}
	atomic_store(&stop_flag, 1);
	for (int i = 0; i < cfg.threads; i++)
		pthread_join(workers[i].thread, NULL);
	t1 = now_mono();
	if (cfg.signal_rate > 0)
		pthread_join(sig_thr, NULL);
	if (cfg.migrate_rate > 0)
		pthread_join(mig_thr, NULL);
	if (cfg.membarrier_rate > 0)
		pthread_join(mb_thr, NULL);

	for (int i = 0; i < cfg.threads; i++) {
		const struct worker *w = &workers[i];
		int e = w->reg_error;

		if (e)
			fatal("rseq registration failed in worker %d: %s (errno %d, %s)", i,
			      strerrorname_np(e) ?: "?", e, strerror(e));
		e = w->churn_reg_error;
		if (e == -1)
			fatal("a churn child of worker %d had no rseq registration after fork", i);
		if (e)
			fatal("rseq registration failed in a churn %s of worker %d: %s (errno %d, %s)",
			      cfg.churn == CHURN_PROCESSES ? "child" : "thread", i,
			      strerrorname_np(e) ?: "?", e, strerror(e));
		e = w->churn_error;
		if (e)
			fatal("%s (worker %d): %s", w->churn_error_what, i, strerror(e));
	}

	memset(&tot, 0, sizeof(tot));
	for (int i = 0; i < cfg.threads; i++) {
		add_stats(&tot, &workers[i].stats);
		add_stats(&tot, &workers[i].churn_stats);
		if (cfg.churn == CHURN_PROCESSES) {
			atomic_fetch_add(&own_registrations, workers[i].churn_own_reg);
			atomic_fetch_add(&own_unregistrations, workers[i].churn_own_unreg);
		}
	}
	if (cfg.churn == CHURN_PROCESSES) {
		/* this process's per-CPU data saw only its own threads (none run
		 * sections); each child checked its own copy */
		struct tstats mine;

		memset(&mine, 0, sizeof(mine));
		for (int i = 0; i < cfg.threads; i++)
			add_stats(&mine, &workers[i].stats);
		self_check(mine.commits);
		for (int i = 0; i < cfg.threads; i++)
			if (workers[i].child_failures)
				problem("%ld churn child(ren) of worker %d failed, first: %s",
					workers[i].child_failures, i, workers[i].child_problem);
	} else {
		self_check(tot.commits);
	}

	write_json(out, comm, &tot, t1 - t0);
	if (fflush(out) != 0 || (out != stdout && fclose(out) != 0))
		fatal("cannot write the summary: %s", strerror(errno));

	{
		struct op_sums n = sum_ops(&tot);
		uint64_t c = n.commits, a = n.aborts, m = n.mismatch;

		fprintf(stderr, PROG ": %d threads, %.2f s, registration %s %s (%u bytes): "
			"%llu commits (%.0f ops/s/thread), %llu kernel aborts, %llu cpu mismatches, "
			"%llu signals received\n",
			cfg.threads, t1 - t0, reg_mode, reg_len > ORIG_RSEQ_LEN ? "v2" : "legacy",
			reg_len, (unsigned long long)c,
			(t1 - t0) > 0 ? c / (t1 - t0) / cfg.threads : 0.0,
			(unsigned long long)a, (unsigned long long)m,
			(unsigned long long)tot.signals);
		if (cfg.churn) {
			uint64_t created = 0;

			for (int i = 0; i < cfg.threads; i++)
				created += workers[i].churn_created;
			fprintf(stderr, "  churn: %llu short-lived %s (%.0f/s), %lld operations each\n",
				(unsigned long long)created,
				cfg.churn == CHURN_THREADS ? "threads" : "child processes",
				(t1 - t0) > 0 ? created / (t1 - t0) : 0.0, cfg.churn_ops);
		}
		for (int o = 0; o < NR_OPS; o++)
			if (tot.commits[o] || tot.aborts[o])
				fprintf(stderr, "  %-9s commits %llu  aborts %llu  cpu_mismatch %llu\n",
					op_names[o], (unsigned long long)tot.commits[o],
					(unsigned long long)tot.aborts[o],
					(unsigned long long)tot.mismatch[o]);
		if (cfg.check_ids)
			fprintf(stderr, "  cpu_id_start after kernel aborts: %llu rewritten, %llu stale, "
				"%llu wrong%s\n", (unsigned long long)n.ids_rewritten,
				(unsigned long long)n.ids_stale, (unsigned long long)n.ids_wrong,
				n.ids_stale || n.ids_wrong ? " (this kernel breaks tcmalloc-style "
				"cpu_id_start use)" : "");
	}
	if (nproblems) {
		for (int i = 0; i < nproblems; i++)
			fprintf(stderr, PROG ": self-check failed: %s\n", problems[i]);
		return EXIT_SELFCHECK;
	}
	return 0;
}
