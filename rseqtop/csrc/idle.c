// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: idle threads (--idle-threads N, --idle-period MS), for
 * measuring a tracer against a process with thousands of mostly sleeping
 * threads. Each registers rseq like a worker, waits until every thread of
 * the process is up, then sleeps until its next deadline (clock_nanosleep,
 * TIMER_ABSTIME, CLOCK_MONOTONIC; the first deadlines spread evenly over one
 * period), runs ONE operation of the round robin with the workers' exact
 * counting, and sleeps again, until the run stops. Also: the one-line error
 * for a thread that cannot be created because of a limit.
 */
#include "workload.h"
#include <linux/futex.h>

struct idle_thread *idlers;
double idle_startup_s;
size_t idle_stack_size = IDLE_STACK_SIZE;

static atomic_int idle_up;          /* idle threads registered and waiting */
static atomic_int idle_go;          /* 1 once idle_epoch is set */
static struct timespec idle_epoch;  /* start of the timed run */

static long futex(atomic_int *addr, int op, int val)
{
	return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static struct timespec ns_ts(int64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL };

	return ts;
}

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts_ns(&ts);
}

static inline int stopping(void)
{
	return atomic_load_explicit(&stop_flag, memory_order_relaxed);
}

/* SIGUSR2: sent by the main thread at the end of the run, only to cut the
 * idle threads' sleep short (clock_nanosleep fails with EINTR). */
static void on_wake(int sig)
{
	(void)sig;
}

static void *idle_main(void *arg)
{
	struct idle_thread *t = arg;
	int64_t period = cfg.idle_period_ms * 1000000LL, next;
	long long step = t->index;   /* the threads awake together run different ops */
	sigset_t usr1;
	struct rusage ru;

	set_comm();
	if (own_mode) {
		t->reg_error = register_own_rseq();
		if (t->reg_error)
			atomic_store(&stop_flag, 1);
	}
	atomic_store(&t->tid, (int)gettid());
	if (atomic_fetch_add(&idle_up, 1) + 1 == cfg.idle_threads)
		futex(&idle_up, FUTEX_WAKE_PRIVATE, 1);
	while (!atomic_load(&idle_go))
		futex(&idle_go, FUTEX_WAIT_PRIVATE, 0);

	/* Thread i first wakes (1 + i/N) periods after the start: the first
	 * period lets the N threads released at once from the gate settle
	 * (their first deadlines are not late because of that herd); from
	 * the second one, the wake-ups are spread evenly over every period. */
	next = ts_ns(&idle_epoch) + period + period * t->index / cfg.idle_threads;
	while (!t->reg_error && !stopping()) {
		struct timespec deadline = ns_ts(next);
		int64_t now, late;

		if (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) != 0)
			continue;   /* EINTR: a signal; stopping() decides */
		if (stopping())
			break;
		late = mono_ns() - next;
		if (late > 0) {
			t->late_ns_sum += (uint64_t)late;
			if ((uint64_t)late > t->late_ns_max)
				t->late_ns_max = (uint64_t)late;
		}
		run_op(cfg.ops[step++ % cfg.nops]);
		/* hold no pool node while asleep: 10,000 sleepers holding one
		 * each would empty the free lists (an extra push commit) */
		give_back_node();
		t->wakeups++;
		next += period;
		now = mono_ns();
		if (next <= now) {   /* more than a period late: skip, do not catch up */
			int64_t k = (now - next) / period + 1;

			next += k * period;
			t->missed += (uint64_t)k;
		}
	}
	give_back_node();

	/* Collect: no more signal counting after this point. */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	t->stats = t_stats;
	if (own_mode && !t->reg_error)
		unregister_own_rseq();
	if (getrusage(RUSAGE_THREAD, &ru) == 0) {
		t->nivcsw = ru.ru_nivcsw;
		t->nvcsw = ru.ru_nvcsw;
	}
	atomic_store(&t->done, 1);
	return NULL;
}

/* Create the idle threads (after the workers). Exits 1 when one cannot be
 * created. */
void start_idle_threads(void)
{
	pthread_attr_t attr;
	struct sigaction sa;
	long min = sysconf(_SC_THREAD_STACK_MIN);
	int err;

	if (!cfg.idle_threads)
		return;
	idlers = calloc(cfg.idle_threads, sizeof(*idlers));
	if (!idlers)
		fatal("out of memory for %d idle threads", cfg.idle_threads);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_wake;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR2, &sa, NULL);
	if (min > 0 && (size_t)min > idle_stack_size)
		idle_stack_size = (size_t)min;
	pthread_attr_init(&attr);
	err = pthread_attr_setstacksize(&attr, idle_stack_size);
	if (err)
		fatal("idle thread stack size %zu: %s", idle_stack_size, strerror(err));
	for (int i = 0; i < cfg.idle_threads; i++) {
		idlers[i].index = i;
		err = pthread_create(&idlers[i].thread, &attr, idle_main, &idlers[i]);
		if (err)
			thread_create_failed("idle thread", i, cfg.idle_threads, err);
	}
	pthread_attr_destroy(&attr);
}

/* Return once every idle thread registered rseq and waits for the start. */
void wait_idle_threads_up(void)
{
	int v;

	while ((v = atomic_load(&idle_up)) < cfg.idle_threads)
		futex(&idle_up, FUTEX_WAIT_PRIVATE, v);
}

/* The timed run starts now: let the idle threads go. */
void release_idle_threads(void)
{
	if (!cfg.idle_threads)
		return;
	clock_gettime(CLOCK_MONOTONIC, &idle_epoch);
	atomic_store(&idle_go, 1);
	futex(&idle_go, FUTEX_WAKE_PRIVATE, INT_MAX);
}

/* stop_flag is set: wake the sleepers and join them. A thread between its
 * stop check and clock_nanosleep misses the signal, so whoever has not
 * exited after 20 ms is signalled again. */
void stop_idle_threads(void)
{
	pid_t pid = getpid();

	for (int i = 0; i < cfg.idle_threads; i++) {
		int tid = atomic_load(&idlers[i].tid);

		if (tid && !atomic_load(&idlers[i].done))
			syscall(SYS_tgkill, pid, tid, SIGUSR2);
	}
	for (int i = 0; i < cfg.idle_threads; i++) {
		for (;;) {
			struct timespec deadline = ns_ts(mono_ns() + 20 * 1000000LL);
			int tid = atomic_load(&idlers[i].tid);

			if (pthread_clockjoin_np(idlers[i].thread, NULL, CLOCK_MONOTONIC,
						 &deadline) != ETIMEDOUT)
				break;
			if (tid)
				syscall(SYS_tgkill, pid, tid, SIGUSR2);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Thread creation failures                                            */

/* A /proc or /sys value as text (first line), or "?"; no malloc: memory
 * may be what ran out. */
static const char *read_value(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return "?";
	n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0)
		return "?";
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return buf;
}

/* A soft limit in the units of ulimit (unit: 1, or 1024 for KiB). */
static const char *rlimit_text(int resource, unsigned long long unit, char *buf, size_t len)
{
	struct rlimit rl;

	if (getrlimit(resource, &rl) != 0)
		return "?";
	if (rl.rlim_cur == RLIM_INFINITY)
		return "unlimited";
	snprintf(buf, len, "%llu", (unsigned long long)rl.rlim_cur / unit);
	return buf;
}

/* ", cgroup pids.max N (...)" for this process's cgroup (v1 pids
 * controller, else v2), or "" when no pids.max applies (root cgroup). */
static const char *cgroup_pids_clause(char *out, size_t len)
{
	static const char *const mounts[] = { "/sys/fs/cgroup/pids", "/sys/fs/cgroup",
					      "/sys/fs/cgroup/unified" };
	char text[4096], path[4200], value[64];
	const char *cg = NULL, *v;
	int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
	ssize_t n;
	int first = 0, last = 0;

	out[0] = '\0';
	if (fd < 0)
		return out;
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return out;
	text[n] = '\0';
	for (char *save, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;

		if (!c2)
			continue;
		*c2 = '\0';
		if (!strcmp(c1 + 1, "pids")) {          /* v1 */
			cg = c2 + 1;
			first = last = 0;
			break;
		}
		if (c1 == line + 1 && line[0] == '0' && c1[1] == '\0') {  /* v2: "0::" */
			cg = c2 + 1;
			first = 1;
			last = 2;
		}
	}
	if (!cg || !strcmp(cg, "/"))
		return out;
	for (int i = first; i <= last; i++) {
		snprintf(path, sizeof(path), "%s%s/pids.max", mounts[i], cg);
		v = read_value(path, value, sizeof(value));
		if (strcmp(v, "?")) {
			snprintf(out, len, ", cgroup pids.max %s (%s; raise it there, e.g. systemd "
				 "TasksMax=)", v, path);
			return out;
		}
	}
	return out;
}

/*
 * pthread_create failed: exit 1 with one line. EAGAIN means a limit: the
 * per-user process/thread count (RLIMIT_NPROC, not enforced for root), the
 * address space (RLIMIT_AS: every thread maps a stack), the system-wide
 * thread and pid counts, the number of memory maps (two per thread: stack
 * and guard page), or the cgroup's pids.max. The line names each with its
 * value and how to raise it; the workload itself changes none of them.
 */
void thread_create_failed(const char *what, long index, long count, int err)
{
	char nproc[32], as[32], tmax[32], pmax[32], maps[32], pids[4400];

	if (err != EAGAIN)
		fatal("cannot create %s %ld of %ld: %s", what, index + 1, count, strerror(err));
	fatal("cannot create %s %ld of %ld: %s (EAGAIN): a limit on threads or memory was "
	      "reached; limits: ulimit -u %s (raise: ulimit -u N, as that user), ulimit -v %s "
	      "(raise: ulimit -v unlimited), kernel.threads-max %s (raise: sysctl -w "
	      "kernel.threads-max=N, /proc/sys/kernel/threads-max), kernel.pid_max %s "
	      "(sysctl -w kernel.pid_max=N), vm.max_map_count %s (2 maps per thread; sysctl -w "
	      "vm.max_map_count=N)%s; nothing was changed by " PROG,
	      what, index + 1, count, strerror(err),
	      rlimit_text(RLIMIT_NPROC, 1, nproc, sizeof(nproc)),
	      rlimit_text(RLIMIT_AS, 1024, as, sizeof(as)),
	      read_value("/proc/sys/kernel/threads-max", tmax, sizeof(tmax)),
	      read_value("/proc/sys/kernel/pid_max", pmax, sizeof(pmax)),
	      read_value("/proc/sys/vm/max_map_count", maps, sizeof(maps)),
	      cgroup_pids_clause(pids, sizeof(pids)));
}
