// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: the per-thread runners. Worker threads run the sections
 * until they commit and count every attempt; with --churn-* they become
 * slots that start short-lived churn threads or child processes. The
 * self-check compares the per-CPU data with the counts.
 */
#include "workload.h"

/* ------------------------------------------------------------------ */
/* Self-check                                                          */

char problems[MAX_PROBLEMS][256];
int nproblems;

void problem(const char *fmt, ...)
{
	va_list ap;

	if (nproblems >= MAX_PROBLEMS)
		return;
	va_start(ap, fmt);
	vsnprintf(problems[nproblems++], sizeof(problems[0]), fmt, ap);
	va_end(ap);
}

long pool_size;
struct node *pool;
char *pool_mark;   /* pool_size bytes, allocated up front: a churn
		    * child (forked from a threaded process) self-checks
		    * without calling malloc */

void self_check(const uint64_t *commits)
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

void on_sigusr1(int sig)
{
	(void)sig;
	t_stats.signals++;
	atomic_fetch_add_explicit(&signals_handled, 1, memory_order_relaxed);
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

/* The cpu an attempt's section compares with: the one it works on, or
 * with --mismatch-every N, for every Nth attempt of the thread, a cpu_id no
 * CPU has, so that the section's own check fails (a user-detected abort
 * when --mismatch-to-abort sends it to the abort handler). */
static __thread long long t_attempts;

static inline int section_cpu(int cpu)
{
	if (cfg.mismatch_every && ++t_attempts % cfg.mismatch_every == 0)
		return WL_NO_CPU;
	return cpu;
}

/* The storm rule on the thread's own kernel aborts (see struct tstats). */
static __thread struct { uint64_t last_ns; uint64_t run; int last_op; } t_run = {0, 0, -1};

static void note_abort_run(int op)
{
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	if (t_run.last_op == op && now - t_run.last_ns < (uint64_t)cfg.storm_t_us * 1000)
		t_run.run++;
	else
		t_run.run = 1;
	t_run.last_ns = now;
	t_run.last_op = op;
	if (t_run.run == (uint64_t)cfg.storm_k)
		t_stats.storms[op]++;
	if (t_run.run > t_stats.max_abort_run)
		t_stats.max_abort_run = t_run.run;
}

/* Book one attempt of section `op`: 1 when it committed. A cpu_id mismatch
 * is the section's own retry (not a kernel abort: those are counted in the
 * abort handlers only, and RS_ABORT comes only from there). */
static inline int settle(int op, int r)
{
	if (r == RS_ABORT) {
		note_abort_run(op);
		if (cfg.check_ids)
			check_ids_after_abort(op);
	}
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

		if (settle(OP_COUNTER, rseq_op_counter(&slots[cpu].counter, section_cpu(cpu))))
			return 1;
	}
}

static int do_delay(void)
{
	for (;;) {
		int cpu = attempt_cpu();

		if (settle(OP_DELAY, rseq_op_delay(&slots[cpu].delay_counter, cfg.in_cs_delay, section_cpu(cpu))))
			return 1;
	}
}

static int do_spinlock(void)
{
	for (;;) {
		int cpu = attempt_cpu();
		int r = rseq_op_spinlock_lock(&slots[cpu].lock, section_cpu(cpu));

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

		if (settle(OP_PUSH, rseq_op_push(&slots[cpu].head, t_held, section_cpu(cpu)))) {
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
		int r = rseq_op_pop(&slots[cpu].head, &n, section_cpu(cpu));

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

int run_op(int op)
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

/* Push back a node popped and not yet pushed (a thread that exits, or an
 * idle thread about to sleep, holds none). */
void give_back_node(void)
{
	if (t_held)
		do_push();
}

/* ---- churn ---- */

void add_stats(struct tstats *dst, const struct tstats *src)
{
	for (int o = 0; o < NR_OPS; o++) {
		dst->commits[o] += src->commits[o];
		dst->aborts[o] += src->aborts[o];
		dst->mismatch[o] += src->mismatch[o];
		dst->cmp_fail[o] += src->cmp_fail[o];
		dst->ids_rewritten[o] += src->ids_rewritten[o];
		dst->ids_stale[o] += src->ids_stale[o];
		dst->ids_wrong[o] += src->ids_wrong[o];
		dst->storms[o] += src->storms[o];
	}
	dst->signals += src->signals;
	if (src->max_abort_run > dst->max_abort_run)
		dst->max_abort_run = src->max_abort_run;
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

static uint64_t kernel_aborts(void)
{
	uint64_t n = 0;

	for (int o = 0; o < NR_OPS; o++)
		n += t_stats.aborts[o];
	return n;
}

/* --call-paths 2: the two call paths of the sections, as a stack tracer
 * sees them (frame pointers: the build keeps them). Not inlined, and the
 * bookkeeping after the call keeps it from being a tail call, so each
 * stays a frame of its own. The kernel aborts counted during the call are
 * the path's: abort handlers count them as they run. */
static inline __attribute__((always_inline)) int on_path(int path, int op)
{
	uint64_t before = kernel_aborts();
	int r = run_op(op);

	t_stats.path_ops[path]++;
	t_stats.path_aborts[path] += kernel_aborts() - before;
	return r;
}

static __attribute__((noinline, noclone)) int caller_a(int op)
{
	return on_path(0, op);
}

static __attribute__((noinline, noclone)) int caller_b(int op)
{
	return on_path(1, op);
}

/* One operation of the worker's round robin: i counts its operations. */
static int run_worker_op(long long i, int op)
{
	if (cfg.call_paths == 2)
		return i % 4 == 3 ? caller_b(op) : caller_a(op);
	return run_op(op);
}

void *worker_main(void *arg)
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
			if (run_worker_op(i, cfg.ops[i % cfg.nops]))
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
