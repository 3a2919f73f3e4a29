// SPDX-License-Identifier: Apache-2.0
/* rseq-workload: errors, option parsing and --help. */
#include "workload.h"

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

void fatal(const char *fmt, ...)
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
"  --signal-burst N         send the signals in bursts of N (at most --signal-rate,\n"
"                           each once the previous one was handled), each burst\n"
"                           followed by a pause of --signal-burst-gap\n"
"  --signal-burst-gap MS    the pause after each burst (default 20 ms)\n"
"  --signal-bursts N        end the run after N bursts and their pauses\n"
"                           (--duration still bounds it)\n"
"  --storm-k K              abort storm rule (as rseqtop's): K consecutive kernel\n"
"                           aborts of a thread in one section (default 16) ...\n"
"  --storm-t-us US          ... each less than US after the previous (default\n"
"                           1000); counted from the thread's own abort times\n"
"  --antagonist NAME        a thread named NAME pinned to the first --cpus CPU\n"
"                           that wakes --antagonist-rate times a second and\n"
"                           spins --antagonist-spin us, preempting the worker\n"
"                           there (SCHED_FIFO one above the workers when the\n"
"                           process runs realtime, e.g. under chrt -f 1)\n"
"  --antagonist-rate HZ     its wake-ups per second (default 1000)\n"
"  --antagonist-spin US     its busy time per wake-up (default 50)\n"
"  --antagonist-threads N   N such threads, all named NAME, waking in turn\n"
"                           (--antagonist-rate between them; default 1, max 64)\n"
"  --antagonist-named-after N  each takes NAME only after its first N wake-ups\n"
"                           (until then it has the process's name, as a thread\n"
"                           that names itself once it has run)\n"
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
"  --mismatch-to-abort      a failed cpu_id check jumps to the section's abort\n"
"                           handler (abort_ip), as librseq's sections do; the\n"
"                           handler still counts it as cpu_mismatch, not as an\n"
"                           abort (a uprobe on the handler sees both)\n"
"  --mismatch-every N       every Nth attempt (N >= 2) of each thread compares\n"
"                           with a cpu_id no CPU has, so that its check fails\n"
"  --call-paths 1|2         2: workers call every operation through one of two\n"
"                           functions, caller_a for 3 of every 4 operations\n"
"                           and caller_b for the 4th, and the summary counts\n"
"                           each path's operations and kernel aborts\n"
"                           (call_paths), for stack tracers to check against\n"
"  --idle-threads N         N more threads (besides --threads; --threads 0\n"
"                           allowed) that sleep and wake every --idle-period\n"
"                           to run ONE operation of the round robin each, with\n"
"                           the same exact counting; small stacks (64 KiB), so\n"
"                           that 10,000 fit; the timed run starts once all are\n"
"                           up; they stop with the run\n"
"  --idle-period MS         idle threads' wake-up period in ms (default 200;\n"
"                           wake-ups spread evenly over each period)\n"
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
	O_RSEQ_ABI, O_CHECK_IDS, O_IDLE_THREADS, O_IDLE_PERIOD,
	O_MISMATCH_TO_ABORT, O_MISMATCH_EVERY, O_CALL_PATHS,
	O_SIGNAL_BURST, O_SIGNAL_BURST_GAP, O_SIGNAL_BURSTS, O_STORM_K, O_STORM_T, O_ANTAGONIST, O_ANTAGONIST_RATE,
	O_ANTAGONIST_SPIN,
	O_ANTAGONIST_THREADS,
	O_ANTAGONIST_NAMED_AFTER,
};

void parse_args(int argc, char **argv)
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
		{"idle-threads", required_argument, 0, O_IDLE_THREADS},
		{"idle-period", required_argument, 0, O_IDLE_PERIOD},
		{"mismatch-to-abort", no_argument, 0, O_MISMATCH_TO_ABORT},
		{"mismatch-every", required_argument, 0, O_MISMATCH_EVERY},
		{"call-paths", required_argument, 0, O_CALL_PATHS},
		{"signal-burst", required_argument, 0, O_SIGNAL_BURST},
		{"signal-burst-gap", required_argument, 0, O_SIGNAL_BURST_GAP},
		{"signal-bursts", required_argument, 0, O_SIGNAL_BURSTS},
		{"storm-k", required_argument, 0, O_STORM_K},
		{"storm-t-us", required_argument, 0, O_STORM_T},
		{"antagonist", required_argument, 0, O_ANTAGONIST},
		{"antagonist-rate", required_argument, 0, O_ANTAGONIST_RATE},
		{"antagonist-spin", required_argument, 0, O_ANTAGONIST_SPIN},
		{"antagonist-threads", required_argument, 0, O_ANTAGONIST_THREADS},
		{"antagonist-named-after", required_argument, 0, O_ANTAGONIST_NAMED_AFTER},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	int c, threads_given = 0, idle_period_given = 0;
	const char *threads_arg = NULL;

	cfg.in_cs_delay = 1000;
	cfg.churn_ops = CHURN_OPS_DEFAULT;
	cfg.call_paths = 1;
	cfg.signal_burst_gap_ms = 20;
	cfg.storm_k = 16;
	cfg.storm_t_us = 1000;
	cfg.antagonist_rate = 1000;
	cfg.antagonist_spin_us = 50;
	cfg.antagonist_threads = 1;
	parse_ops("all");
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case O_THREADS:
			/* 0 only with --idle-threads, checked below */
			cfg.threads = (int)parse_int("--threads", optarg, 0, MAX_THREADS);
			threads_given = 1;
			threads_arg = optarg;
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
		case O_MISMATCH_TO_ABORT: cfg.mismatch_to_abort = 1; break;
		case O_MISMATCH_EVERY:
			cfg.mismatch_every = parse_int("--mismatch-every", optarg, 2, LLONG_MAX);
			break;
		case O_CALL_PATHS:
			cfg.call_paths = (int)parse_int("--call-paths", optarg, 1, 2);
			break;
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
		case O_IDLE_THREADS:
			cfg.idle_threads = (int)parse_int("--idle-threads", optarg, 0, MAX_IDLE_THREADS);
			break;
		case O_IDLE_PERIOD:
			cfg.idle_period_ms = (long)parse_int("--idle-period", optarg, 1, MAX_IDLE_PERIOD_MS);
			idle_period_given = 1;
			break;
		case O_SIGNAL_BURST:
			cfg.signal_burst = (long)parse_int("--signal-burst", optarg, 1, 1000000000L);
			break;
		case O_SIGNAL_BURST_GAP:
			cfg.signal_burst_gap_ms = (long)parse_int("--signal-burst-gap", optarg, 1, 3600000L);
			break;
		case O_SIGNAL_BURSTS:
			cfg.signal_bursts = (long)parse_int("--signal-bursts", optarg, 1, 1000000000L);
			break;
		case O_STORM_K: cfg.storm_k = (long)parse_int("--storm-k", optarg, 1, 1000000000L); break;
		case O_STORM_T: cfg.storm_t_us = (long)parse_int("--storm-t-us", optarg, 1, 3600000000L); break;
		case O_ANTAGONIST:
			if (!*optarg)
				usage_error("--antagonist: empty name");
			cfg.antagonist = optarg;
			break;
		case O_ANTAGONIST_RATE:
			cfg.antagonist_rate = parse_positive_double("--antagonist-rate", optarg);
			break;
		case O_ANTAGONIST_SPIN:
			cfg.antagonist_spin_us = (long)parse_int("--antagonist-spin", optarg, 0, 1000000L);
			break;
		case O_ANTAGONIST_THREADS:
			cfg.antagonist_threads = (int)parse_int("--antagonist-threads", optarg, 1, MAX_ANTAGONISTS);
			break;
		case O_ANTAGONIST_NAMED_AFTER:
			cfg.antagonist_named_after = parse_int("--antagonist-named-after", optarg, 0, 1000000000L);
			break;
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
	if (cfg.signal_burst && cfg.signal_rate <= 0)
		usage_error("--signal-burst needs --signal-rate");
	if (cfg.signal_bursts && !cfg.signal_burst)
		usage_error("--signal-bursts needs --signal-burst");
	if (cfg.antagonist && !cfg.ncpus)
		usage_error("--antagonist runs on the workers' CPU: give it with --cpus");
	if (cfg.antagonist_threads > 1 && !cfg.antagonist)
		usage_error("--antagonist-threads needs --antagonist");
	if (cfg.antagonist_named_after && !cfg.antagonist)
		usage_error("--antagonist-named-after needs --antagonist");
	if (cfg.antagonist && cfg.churn == CHURN_PROCESSES)
		usage_error("--antagonist cannot be combined with --churn-processes");
	if (!threads_given)
		cfg.threads = CPU_COUNT(&allowed_set) > 0 ? CPU_COUNT(&allowed_set) : 1;
	if (cfg.threads > MAX_THREADS)
		cfg.threads = MAX_THREADS;
	if (!cfg.idle_period_ms)
		cfg.idle_period_ms = IDLE_PERIOD_MS_DEFAULT;
	if (idle_period_given && !cfg.idle_threads)
		usage_error("--idle-period needs --idle-threads");
	if (cfg.threads == 0) {
		if (!cfg.idle_threads)
			usage_error("--threads: must be between 1 and %d, got '%s' (0 only with "
				    "--idle-threads)", MAX_THREADS, threads_arg);
		/* nothing but idle threads: they stop with the run, at --duration */
		if (cfg.ops_per_thread)
			usage_error("--ops counts operations per worker, and --threads 0 starts none: "
				    "use --duration");
		if (cfg.churn)
			usage_error("--churn-%s needs worker slots (--threads 1 or more)",
				    cfg.churn == CHURN_THREADS ? "threads" : "processes");
		if (cfg.signal_rate > 0)
			usage_error("--signal-rate acts on worker threads: needs --threads 1 or more");
		if (cfg.migrate_rate > 0)
			usage_error("--migrate-rate acts on worker threads: needs --threads 1 or more");
	}
	/* A child forked while an idle thread is inside an operation (a lock
	 * taken, a node popped) would find its copy of the per-CPU data
	 * inconsistent. */
	if (cfg.idle_threads && cfg.churn == CHURN_PROCESSES)
		usage_error("--idle-threads cannot be combined with --churn-processes");
	if (!cfg.duration_given && !cfg.ops_per_thread)
		cfg.duration = 5.0;
	if (cfg.membarrier_unregistered && cfg.membarrier_rate <= 0)
		usage_error("--membarrier-unregistered needs --membarrier-rate");
	if (cfg.churn_ops_given && !cfg.churn)
		usage_error("--churn-ops needs --churn-threads or --churn-processes");
	if (cfg.call_paths == 2 && cfg.churn)
		usage_error("--call-paths 2 splits the workers' own loop: not with --churn-threads/--churn-processes");
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
