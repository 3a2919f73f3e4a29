// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: time (fixed-rate timers) and the inducer threads that make
 * the kernel abort sections: signals, migrations, membarrier.
 */
#include "workload.h"

/* ------------------------------------------------------------------ */
/* Time                                                                */

double now_mono(void)
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
int tick_wait(struct timespec *next, double period)
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

void set_comm(void)
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
/* Inducers                                                            */

/* Inducer results. */
atomic_long signals_sent, migrations_requested;
/* CLOCK_MONOTONIC ns before the migration thread's first request and after
 * every worker pinned itself: a migration of a worker from then on is a
 * requested one (what moved it before is its start and its own pin). */
atomic_llong migrations_from_ns;
atomic_long signals_handled;   /* SIGUSR1 handled, all threads (paces --signal-burst) */
long mb_calls, mb_ok;
int mb_registered;
int mb_register_errno;
struct errno_count mb_errors[MAX_ERRNO_NAMES];
int mb_nerrors;

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

/* Signal the next live worker, round robin; 1 when a signal was sent. */
static int signal_next_worker(pid_t pid, int *i)
{
	for (int k = 0; k < cfg.threads; k++) {
		struct worker *w = &workers[(*i)++ % cfg.threads];
		int tid = inducer_target(w);
		int sent;

		if (!tid)
			continue;
		sent = syscall(SYS_tgkill, pid, tid, SIGUSR1) == 0;
		if (sent)
			atomic_fetch_add(&signals_sent, 1);
		inducer_release(w);
		return sent;
	}
	return 0;
}

/* --signal-burst: bursts of signals paced by a busy wait (no timer: the
 * storm keeps its rate on a slow machine or in an emulated VM, where timer
 * wake-ups come late), each followed by a pause of --signal-burst-gap, long
 * next to --storm-t-us, so that each burst is one run of aborts. With
 * --signal-bursts N the run ends after the N-th burst and its pause, so
 * that a slow machine sees as many bursts as a fast one. */
static void signal_bursts(pid_t pid)
{
	struct timespec gap = {cfg.signal_burst_gap_ms / 1000, (cfg.signal_burst_gap_ms % 1000) * 1000000L};
	double period = 1.0 / cfg.signal_rate;
	int i = 0;

	for (long b = 0; !atomic_load_explicit(&stop_flag, memory_order_relaxed); b++) {
		if (cfg.signal_bursts && b == cfg.signal_bursts) {
			atomic_store(&stop_flag, 1);
			break;
		}
		struct timespec left = gap;

		for (long n = 0; n < cfg.signal_burst; n++) {
			double start = now_mono(), until = start + period;
			long handled = atomic_load(&signals_handled);

			/* the next one only once this one was handled (up to
			 * 50 ms): a SIGUSR1 sent while one is pending is lost,
			 * as in a slow VM most of a burst was */
			if (signal_next_worker(pid, &i))
				while (atomic_load(&signals_handled) == handled && now_mono() < start + 0.05 &&
				       !atomic_load_explicit(&stop_flag, memory_order_relaxed))
					;
			while (now_mono() < until)
				;
		}
		while (nanosleep(&left, &left) == -1 && errno == EINTR)
			;
	}
}

void *signal_main(void *arg)
{
	struct timespec next;
	double period = 1.0 / cfg.signal_rate;
	pid_t pid = getpid();
	int i = 0;

	(void)arg;
	set_comm();
	pin_inducer();
	pthread_barrier_wait(&start_barrier);
	if (cfg.signal_burst) {
		signal_bursts(pid);
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (tick_wait(&next, period))
		signal_next_worker(pid, &i);
	return NULL;
}

void *migrate_main(void *arg)
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
	atomic_store(&migrations_from_ns, (long long)next.tv_sec * 1000000000LL + next.tv_nsec);
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

void *membarrier_main(void *arg)
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
/* The antagonist (--antagonist NAME)                                  */

atomic_int antagonist_tids[MAX_ANTAGONISTS];
atomic_long antagonist_runs;
atomic_long antagonist_unnamed_runs;
int antagonist_realtime;

/* Threads with a known name on the first worker CPU (arg: which of the
 * --antagonist-threads) that wake --antagonist-rate times a second between
 * them, in turn, and spin --antagonist-spin us: each wake-up preempts the
 * worker running there. When the process runs SCHED_FIFO / SCHED_RR
 * (chrt), they take one realtime priority more than the workers, so that
 * they preempt them at once and nothing else does. */
void *antagonist_main(void *arg)
{
	int i = (int)(intptr_t)arg;
	struct timespec next;
	double period = cfg.antagonist_threads / cfg.antagonist_rate;
	struct sched_param sp;
	int policy;
	cpu_set_t set;
	long runs = 0;

	if (!cfg.antagonist_named_after)
		prctl(PR_SET_NAME, cfg.antagonist, 0, 0, 0);
	CPU_ZERO(&set);
	CPU_SET(cfg.cpus[0], &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		fatal("--antagonist: sched_setaffinity to CPU %d failed: %s", cfg.cpus[0], strerror(errno));
	if (pthread_getschedparam(pthread_self(), &policy, &sp) == 0 &&
	    (policy == SCHED_FIFO || policy == SCHED_RR)) {
		sp.sched_priority++;
		if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp))
			fatal("--antagonist: cannot raise its realtime priority: %s", strerror(errno));
		antagonist_realtime = 1;
	}
	atomic_store(&antagonist_tids[i], (int)syscall(SYS_gettid));
	pthread_barrier_wait(&start_barrier);
	clock_gettime(CLOCK_MONOTONIC, &next);
	ts_add(&next, period * i / cfg.antagonist_threads);  /* in turn */
	while (tick_wait(&next, period)) {
		double until = now_mono() + cfg.antagonist_spin_us / 1e6;

		/* named at the start of its N+1st wake-up: the first N ran and
		 * preempted under the process's name */
		if (runs < cfg.antagonist_named_after)
			atomic_fetch_add(&antagonist_unnamed_runs, 1);
		else if (runs && runs == cfg.antagonist_named_after)
			prctl(PR_SET_NAME, cfg.antagonist, 0, 0, 0);
		runs++;
		atomic_fetch_add(&antagonist_runs, 1);
		while (now_mono() < until)
			;
	}
	return NULL;
}
