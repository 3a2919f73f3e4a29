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
 * --idle-threads N: besides the workers, N mostly sleeping threads that
 * wake every --idle-period ms (clock_nanosleep, absolute CLOCK_MONOTONIC
 * deadlines, first wake-ups staggered over one period) and run one
 * round-robin operation each time, with the same exact counting; small
 * stacks, so that 10,000 of them fit. The timed run starts once all are up.
 *
 * --rseq-abi v2: the workload's own registrations (glibc not registering)
 * pass a length larger than 32 bytes, which kernels 7.1+ (and 7.0.10+)
 * treat as a "V2" registration whose IDs are written lazily.
 *
 * --check-cpu-id-start: the tcmalloc canary. Every attempt first overwrites
 * rseq->cpu_id_start with a sentinel; after each kernel abort the program
 * checks that the kernel wrote it back (kernels 6.19 to 7.0.9 did not).
 *
 * Built by rseqtop.workload from every .c file of this folder in one
 * compiler call: cc -O2 -g -Wall -Wextra -pthread -o rseq-workload *.c
 * (plus -Werror in rseqtop's test suite).
 *
 * The files:
 *   workload.h   shared types, constants, globals (extern) and prototypes
 *   rseq_abi.c   the critical sections (assembly) and the rseq registration
 *   workers.c    the worker threads, churn threads / children, self-check
 *   idle.c       the idle threads (--idle-threads) and thread-limit errors
 *   inducers.c   fixed-rate timers and the signal, migration and membarrier
 *                threads
 *   summary.c    the JSON summary
 *   options.c    errors and option parsing (--help)
 *   main.c       the global configuration, setup and main()
 */
#ifndef RSEQ_WORKLOAD_H
#define RSEQ_WORKLOAD_H

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
#define MAX_IDLE_THREADS 1000000
#define IDLE_PERIOD_MS_DEFAULT 200
#define MAX_IDLE_PERIOD_MS 3600000
/* Stack of an idle thread: the deepest path (idle_main -> run_op -> a
 * section, its abort handler, the SIGUSR1 / SIGUSR2 handlers on top, or
 * a warning through fprintf) needs well under 16 KiB; glibc carves the
 * static TLS and its thread descriptor from the same mapping (a guard page
 * is added). */
#define IDLE_STACK_SIZE (64 * 1024)
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

/* ------------------------------------------------------------------ */
/* Operations (rseq_abi.c)                                             */

enum op { OP_COUNTER, OP_SPINLOCK, OP_PUSH, OP_POP, OP_DELAY, NR_OPS };

extern const char *const op_names[NR_OPS];
extern const char *const op_symbols[NR_OPS];

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
	/* --call-paths 2: operations and kernel aborts per call path
	 * (caller_a, caller_b) */
	uint64_t path_ops[2];
	uint64_t path_aborts[2];
	/* abort storms by the rule of --storm-k / --storm-t-us, from the
	 * thread's own abort timestamps (the rule rseqtop applies in the
	 * kernel): a run of consecutive aborts of one section, each less than
	 * T after the previous, counts once when it reaches K */
	uint64_t storms[NR_OPS];
	uint64_t max_abort_run;          /* the longest such run */
};
extern __thread struct tstats t_stats;

/* A cpu_id no CPU has (the kernel writes >= 0, or -1 / -2 before and after
 * registration): --mismatch-every passes it to make the check fail. */
#define WL_NO_CPU 0x7ffffff0

/* Offset of the rseq area from the thread pointer (%fs base): glibc's
 * __rseq_offset, or the offset of the workload's own TLS area (rseq_abi.c).
 * Same for all threads. */
extern ptrdiff_t g_rseq_offset;

static inline struct rseq *rseq_area(void)
{
	return (struct rseq *)((char *)__builtin_thread_pointer() + g_rseq_offset);
}

/* The critical sections, one global non-inlined function each. */
int rseq_op_counter(intptr_t *v, int cpu);
int rseq_op_spinlock_lock(intptr_t *lock, int cpu);
int rseq_op_push(struct node **head, struct node *node, int cpu);
int rseq_op_pop(struct node **head, struct node **out, int cpu);
int rseq_op_delay(intptr_t *v, long loops, int cpu);

/* Read back a descriptor as the kernel does (after relocation). */
struct cs_view {
	uint32_t version, flags;
	uint64_t start_ip, post_commit_offset, abort_ip;
};
extern const void *const op_desc[NR_OPS];

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
	int idle_threads;        /* --idle-threads, 0: none */
	long idle_period_ms;     /* --idle-period */
	/* --mismatch-to-abort: a cpu_id mismatch jumps to the section's
	 * abort_ip, as librseq's sections do (read by the sections' asm) */
	int mismatch_to_abort;
	long long mismatch_every; /* --mismatch-every: 0, or every Nth attempt mismatches */
	int call_paths;          /* --call-paths: 1, or 2 (caller_a 3 : caller_b 1) */
	long signal_burst;       /* --signal-burst: signals per burst, 0: steady */
	long signal_burst_gap_ms; /* --signal-burst-gap: pause after each burst */
	long signal_bursts;      /* --signal-bursts: stop the run after this many, 0: no limit */
	long storm_k;            /* --storm-k */
	long storm_t_us;         /* --storm-t-us */
	const char *antagonist;  /* --antagonist NAME, NULL: none */
	double antagonist_rate;  /* --antagonist-rate HZ */
	long antagonist_spin_us; /* --antagonist-spin US */
	int antagonist_threads;  /* --antagonist-threads N, all named NAME */
	long antagonist_named_after; /* --antagonist-named-after N wake-ups (0: named from the start) */
};

/* main.c */
extern struct config cfg;
extern int nr_possible_cpus;
extern struct percpu_slot *slots;
extern cpu_set_t allowed_set;   /* sched_getaffinity at start */

extern atomic_int stop_flag;

/* Registration bookkeeping (rseq_abi.c). */
extern const char *reg_mode;
extern int own_mode;             /* reg_mode is "own" */
extern unsigned int reg_size;
extern unsigned int reg_len;     /* rseq_len passed to rseq(2), by us or by glibc */
extern unsigned long aux_feature_size, aux_align;  /* 0 before Linux 6.3 */
extern atomic_long own_registrations, own_unregistrations;
extern long probe_registrations; /* the main thread's availability check */

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
extern struct worker *workers;   /* main.c */

/* One idle thread (--idle-threads): sleeps, wakes every --idle-period,
 * runs one operation. Kept small: there may be 10,000 of them. */
struct idle_thread {
	pthread_t thread;
	atomic_int tid;          /* 0 until started */
	atomic_int done;
	int index;               /* among the idle threads, 0..N-1 */
	int reg_error;           /* errno of a failed own registration */
	long nivcsw, nvcsw;      /* at thread exit, as for workers */
	uint64_t wakeups;        /* wake-ups, one round-robin step each */
	uint64_t missed;         /* periods skipped after waking more than a period late */
	uint64_t late_ns_sum, late_ns_max;  /* wake-up time minus the deadline */
	struct tstats stats;     /* copied at thread exit */
};
extern struct idle_thread *idlers;  /* idle.c, cfg.idle_threads of them */
extern double idle_startup_s;       /* first pthread_create to all threads up */
extern size_t idle_stack_size;      /* their pthread stack size */

/* getrusage(RUSAGE_SELF) at the start and at the end of the timed run
 * (before the threads are stopped and joined), main.c. */
extern struct rusage run_ru0, run_ru1;
extern double run_wall_s;
extern long run_rss_kib;   /* resident set at the stop, -1 if unknown */

/* Inducer results (inducers.c). */
extern atomic_long signals_sent, migrations_requested;
extern atomic_llong migrations_from_ns;
extern atomic_long signals_handled;
extern long mb_calls, mb_ok;
extern int mb_registered;
extern int mb_register_errno;
#define MAX_ERRNO_NAMES 16
struct errno_count { int err; long count; };
extern struct errno_count mb_errors[MAX_ERRNO_NAMES];
extern int mb_nerrors;

extern pthread_barrier_t start_barrier;   /* main.c */

/* ------------------------------------------------------------------ */
/* Functions shared between the files                                  */

/* rseq_abi.c: registration */
int own_rseq_register(void);
int own_rseq_unregister(void);
int register_own_rseq(void);
void unregister_own_rseq(void);
void setup_registration(void);

/* options.c */
void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void parse_args(int argc, char **argv);

/* inducers.c: time */
double now_mono(void);
int tick_wait(struct timespec *next, double period);
void set_comm(void);

/* inducers.c: the inducer threads */
void *signal_main(void *arg);
void *migrate_main(void *arg);
void *membarrier_main(void *arg);
void *antagonist_main(void *arg);

/* The antagonist (--antagonist), as the summary reports it. */
#define MAX_ANTAGONISTS 64
extern atomic_int antagonist_tids[MAX_ANTAGONISTS];
extern atomic_long antagonist_runs;
extern atomic_long antagonist_unnamed_runs; /* wake-ups before their name (--antagonist-named-after) */
extern int antagonist_realtime;   /* it runs SCHED_FIFO above the workers */

/* workers.c: self-check */
#define MAX_PROBLEMS 16
extern char problems[MAX_PROBLEMS][256];
extern int nproblems;
void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern long pool_size;
extern struct node *pool;
extern char *pool_mark;
void self_check(const uint64_t *commits);

/* workers.c: the worker threads */
void on_sigusr1(int sig);
void add_stats(struct tstats *dst, const struct tstats *src);
void *worker_main(void *arg);
int run_op(int op);
void give_back_node(void);

/* idle.c */
void thread_create_failed(const char *what, long index, long count, int err)
	__attribute__((noreturn));
void start_idle_threads(void);
void wait_idle_threads_up(void);
void release_idle_threads(void);
void stop_idle_threads(void);

/* summary.c */
/* A record's counts summed over the operations. */
struct op_sums {
	uint64_t commits, aborts, mismatch, cmp_fail;
	uint64_t ids_rewritten, ids_stale, ids_wrong;
};
struct op_sums sum_ops(const struct tstats *s);
void write_json(FILE *f, const char *comm, const struct tstats *t, double duration);

#endif /* RSEQ_WORKLOAD_H */
