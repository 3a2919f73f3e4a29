// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: the global configuration and state, setup, and main():
 * start the workers, inducers and idle threads, wait, collect, self-check,
 * summarize.
 * What the program does: workload.h.
 */
#include "workload.h"

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

struct config cfg;
int nr_possible_cpus;
struct percpu_slot *slots;
cpu_set_t allowed_set;   /* sched_getaffinity at start */

atomic_int stop_flag;

struct worker *workers;

pthread_barrier_t start_barrier;

struct rusage run_ru0, run_ru1;
double run_wall_s;
long run_rss_kib = -1;

/* The resident set now (/proc/self/statm), in KiB; -1 if unknown. */
static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size, resident = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* ------------------------------------------------------------------ */
/* Main                                                                */

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
	pthread_t sig_thr, mig_thr, mb_thr, ant_thr[MAX_ANTAGONISTS];
	int n_inducers = 0;
	double t0, t1, t_create, t_stop, deadline;
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
	workers = calloc(cfg.threads ? cfg.threads : 1, sizeof(*workers));
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
	if (cfg.antagonist)
		n_inducers += cfg.antagonist_threads;
	pthread_barrier_init(&start_barrier, NULL, cfg.threads + n_inducers + 1);

	t_create = now_mono();
	for (int i = 0; i < cfg.threads; i++) {
		int err = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);

		if (err)
			thread_create_failed("worker thread", i, cfg.threads, err);
	}
	if (cfg.signal_rate > 0 && pthread_create(&sig_thr, NULL, signal_main, NULL))
		fatal("cannot create the signal thread");
	if (cfg.migrate_rate > 0 && pthread_create(&mig_thr, NULL, migrate_main, NULL))
		fatal("cannot create the migration thread");
	if (cfg.membarrier_rate > 0 && pthread_create(&mb_thr, NULL, membarrier_main, NULL))
		fatal("cannot create the membarrier thread");
	for (int i = 0; cfg.antagonist && i < cfg.antagonist_threads; i++)
		if (pthread_create(&ant_thr[i], NULL, antagonist_main, (void *)(intptr_t)i))
			fatal("cannot create antagonist thread %d", i);
	/* The timed run starts once every thread is up: the idle threads
	 * registered and waiting, the workers and inducers at the barrier. */
	start_idle_threads();
	wait_idle_threads_up();

	pthread_barrier_wait(&start_barrier);
	t0 = now_mono();
	release_idle_threads();
	idle_startup_s = t0 - t_create;
	getrusage(RUSAGE_SELF, &run_ru0);
	deadline = cfg.duration > 0 ? t0 + cfg.duration : INFINITY;

	/* Wait for the deadline, a stop signal, or all workers done. */
	for (;;) {
		struct timespec ts = {0, 50 * 1000 * 1000};
		double left = deadline - now_mono();
		int all_done = cfg.threads > 0, sig;   /* idle threads never are */

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
	/* CPU use of the run itself, without stopping and joining threads */
	getrusage(RUSAGE_SELF, &run_ru1);
	t_stop = now_mono();
	run_wall_s = t_stop - t0;
	run_rss_kib = rss_kib();   /* before the stop touches every stack again */
	atomic_store(&stop_flag, 1);
	for (int i = 0; i < cfg.threads; i++)
		pthread_join(workers[i].thread, NULL);
	stop_idle_threads();
	t1 = now_mono();
	if (cfg.signal_rate > 0)
		pthread_join(sig_thr, NULL);
	if (cfg.migrate_rate > 0)
		pthread_join(mig_thr, NULL);
	if (cfg.membarrier_rate > 0)
		pthread_join(mb_thr, NULL);
	for (int i = 0; cfg.antagonist && i < cfg.antagonist_threads; i++)
		pthread_join(ant_thr[i], NULL);

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
	for (int i = 0; i < cfg.idle_threads; i++) {
		int e = idlers[i].reg_error;

		if (e)
			fatal("rseq registration failed in idle thread %d: %s (errno %d, %s)", i,
			      strerrorname_np(e) ?: "?", e, strerror(e));
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
	for (int i = 0; i < cfg.idle_threads; i++)
		add_stats(&tot, &idlers[i].stats);
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
		int nthreads = cfg.threads + cfg.idle_threads;

		fprintf(stderr, PROG ": %d threads, %.2f s, registration %s %s (%u bytes): "
			"%llu commits (%.0f ops/s/thread), %llu kernel aborts, %llu cpu mismatches, "
			"%llu signals received\n",
			nthreads, t1 - t0, reg_mode, reg_len > ORIG_RSEQ_LEN ? "v2" : "legacy",
			reg_len, (unsigned long long)c,
			(t1 - t0) > 0 ? c / (t1 - t0) / nthreads : 0.0,
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
		if (cfg.idle_threads) {
			uint64_t wakeups = 0;

			for (int i = 0; i < cfg.idle_threads; i++)
				wakeups += idlers[i].wakeups;
			fprintf(stderr, "  idle: %d threads waking every %ld ms, %llu wake-ups, "
				"start-up %.3f s\n", cfg.idle_threads, cfg.idle_period_ms,
				(unsigned long long)wakeups, idle_startup_s);
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
