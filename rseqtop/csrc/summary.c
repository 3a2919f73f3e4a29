// SPDX-License-Identifier: Apache-2.0
/* rseq-workload: the JSON summary (see docs/workload.md for its schema). */
#include "workload.h"

static const char *const churn_mode_names[] = { NULL, "threads", "processes" };

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
struct op_sums sum_ops(const struct tstats *s)
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

/* A record's abort storms (see struct tstats), as further members. */
static void write_storms(FILE *f, const struct tstats *s)
{
	uint64_t storms = 0;

	for (int o = 0; o < NR_OPS; o++)
		storms += s->storms[o];
	fprintf(f, ", \"storms\": %llu, \"max_abort_run\": %llu", (unsigned long long)storms,
		(unsigned long long)s->max_abort_run);
}

/* "antagonist": the threads of --antagonist, or null ("tid": the first). */
static void write_antagonist_json(FILE *f)
{
	fputs(" \"antagonist\": ", f);
	if (!cfg.antagonist) {
		fputs("null,\n", f);
		return;
	}
	fprintf(f, "{\"pid\": %d, \"tid\": %d, \"tids\": [", (int)getpid(), atomic_load(&antagonist_tids[0]));
	for (int i = 0; i < cfg.antagonist_threads; i++)
		fprintf(f, "%s%d", i ? ", " : "", atomic_load(&antagonist_tids[i]));
	fputs("], \"comm\": ", f);
	{
		char comm[16];

		snprintf(comm, sizeof(comm), "%s", cfg.antagonist);  /* as the kernel keeps it */
		json_str(f, comm);
	}
	fprintf(f, ", \"cpu\": %d, \"realtime\": %s, \"runs\": %ld, \"unnamed_runs\": %ld, \"rate\": ", cfg.cpus[0],
		antagonist_realtime ? "true" : "false", atomic_load(&antagonist_runs),
		atomic_load(&antagonist_unnamed_runs));
	json_rate(f, cfg.antagonist_rate);
	fprintf(f, ", \"spin_us\": %ld},\n", cfg.antagonist_spin_us);
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
			"\"cpu_mismatch\": %llu, \"cmp_fail\": %llu, \"storms\": %llu",
			first ? "" : ", ", op_names[o],
			(unsigned long long)s->commits[o], (unsigned long long)s->aborts[o],
			(unsigned long long)s->mismatch[o], (unsigned long long)s->cmp_fail[o],
			(unsigned long long)s->storms[o]);
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

/* "idle_threads": null, or what the idle threads did. */
/* --call-paths 2: each path's operations and kernel aborts over all
 * workers (null with one path). */
static void write_call_paths_json(FILE *f)
{
	static const char *const names[2] = {"caller_a", "caller_b"};
	uint64_t ops[2] = {0, 0}, aborts[2] = {0, 0};

	if (cfg.call_paths != 2) {
		fputs(" \"call_paths\": null,\n", f);
		return;
	}
	for (int i = 0; i < cfg.threads; i++)
		for (int p = 0; p < 2; p++) {
			ops[p] += workers[i].stats.path_ops[p];
			aborts[p] += workers[i].stats.path_aborts[p];
		}
	fputs(" \"call_paths\": {", f);
	for (int p = 0; p < 2; p++)
		fprintf(f, "%s\"%s\": {\"share\": %d, \"ops\": %llu, \"aborts\": %llu}", p ? ", " : "",
			names[p], p ? 1 : 3, (unsigned long long)ops[p], (unsigned long long)aborts[p]);
	fputs("},\n", f);
}

static void write_idle_json(FILE *f)
{
	uint64_t wakeups = 0, missed = 0, late_sum = 0, late_max = 0;

	if (!cfg.idle_threads) {
		fputs(" \"idle_threads\": null,\n", f);
		return;
	}
	for (int i = 0; i < cfg.idle_threads; i++) {
		const struct idle_thread *t = &idlers[i];

		wakeups += t->wakeups;
		missed += t->missed;
		late_sum += t->late_ns_sum;
		if (t->late_ns_max > late_max)
			late_max = t->late_ns_max;
	}
	fprintf(f, " \"idle_threads\": {\"count\": %d, \"period_ms\": %ld, \"wakeups\": %llu, "
		"\"missed\": %llu, \"startup_s\": ", cfg.idle_threads, cfg.idle_period_ms,
		(unsigned long long)wakeups, (unsigned long long)missed);
	json_double(f, idle_startup_s);
	fputs(", \"late_ms_mean\": ", f);
	json_double(f, wakeups ? late_sum / 1e6 / wakeups : 0);
	fputs(", \"late_ms_max\": ", f);
	json_double(f, late_max / 1e6);
	fprintf(f, ", \"stack_kib\": %zu},\n", idle_stack_size / 1024);
}

static double tv_s(const struct timeval *tv)
{
	return tv->tv_sec + tv->tv_usec / 1e6;
}

/* "rusage": the whole process (getrusage(RUSAGE_SELF) now, after the
 * joins) and the timed run alone (from its start to the stop, before the
 * threads are stopped and joined). */
static void write_rusage_json(FILE *f)
{
	struct rusage ru;

	memset(&ru, 0, sizeof(ru));
	getrusage(RUSAGE_SELF, &ru);
	fprintf(f, " \"rusage\": {\"max_rss_kib\": %ld, \"user_s\": ", ru.ru_maxrss);
	json_double(f, tv_s(&ru.ru_utime));
	fputs(", \"system_s\": ", f);
	json_double(f, tv_s(&ru.ru_stime));
	fputs(", \"run_s\": ", f);
	json_double(f, run_wall_s);
	fputs(", \"run_user_s\": ", f);
	json_double(f, tv_s(&run_ru1.ru_utime) - tv_s(&run_ru0.ru_utime));
	fputs(", \"run_system_s\": ", f);
	json_double(f, tv_s(&run_ru1.ru_stime) - tv_s(&run_ru0.ru_stime));
	fputs(", \"run_end_rss_kib\": ", f);
	if (run_rss_kib >= 0)
		fprintf(f, "%ld},\n", run_rss_kib);
	else
		fputs("null},\n", f);
}

void write_json(FILE *f, const char *comm, const struct tstats *t, double duration)
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
	fprintf(f, ", \"mismatch_to_abort\": %s, \"mismatch_every\": %lld, \"call_paths\": %d",
		cfg.mismatch_to_abort ? "true" : "false", cfg.mismatch_every, cfg.call_paths);
	fprintf(f, ", \"rseq_abi\": \"%s\", \"check_cpu_id_start\": %s, \"idle_threads\": %d, "
		"\"idle_period_ms\": ", cfg.rseq_v2 ? "v2" : "legacy",
		cfg.check_ids ? "true" : "false", cfg.idle_threads);
	if (cfg.idle_threads)
		fprintf(f, "%ld},\n", cfg.idle_period_ms);
	else
		fputs("null},\n", f);

	fputs(" \"threads\": {", f);
	for (int i = 0; i < cfg.threads; i++) {
		const struct worker *w = &workers[i];
		const struct tstats *s = &w->stats;
		struct op_sums n = sum_ops(s);

		fprintf(f, "%s\n  \"%d\": {\"tid\": %d, \"index\": %d, \"commits\": %llu, "
			"\"aborts\": %llu, \"cpu_mismatch\": %llu, \"cmp_fail\": %llu, "
			"\"signals\": %llu, \"nivcsw\": %ld, \"nvcsw\": %ld, \"idle\": false",
			i ? "," : "", atomic_load(&w->tid), atomic_load(&w->tid), i,
			(unsigned long long)n.commits, (unsigned long long)n.aborts, (unsigned long long)n.mismatch,
			(unsigned long long)n.cmp_fail, (unsigned long long)s->signals, w->nivcsw, w->nvcsw);
		write_ids(f, n.ids_rewritten, n.ids_stale, n.ids_wrong);
		write_storms(f, s);
		fputs(", \"ops\": {", f);
		write_op_counts(f, s);
		fputc('}', f);
		if (cfg.churn)
			write_churn_counts(f, w);
		fputc('}', f);
	}
	for (int i = 0; i < cfg.idle_threads; i++) {
		const struct idle_thread *t = &idlers[i];
		const struct tstats *s = &t->stats;
		struct op_sums n = sum_ops(s);

		fprintf(f, "%s\n  \"%d\": {\"tid\": %d, \"index\": %d, \"commits\": %llu, "
			"\"aborts\": %llu, \"cpu_mismatch\": %llu, \"cmp_fail\": %llu, "
			"\"signals\": %llu, \"nivcsw\": %ld, \"nvcsw\": %ld, \"idle\": true, "
			"\"wakeups\": %llu, \"missed\": %llu",
			cfg.threads + i ? "," : "", atomic_load(&t->tid), atomic_load(&t->tid),
			cfg.threads + i, (unsigned long long)n.commits, (unsigned long long)n.aborts,
			(unsigned long long)n.mismatch, (unsigned long long)n.cmp_fail,
			(unsigned long long)s->signals, t->nivcsw, t->nvcsw,
			(unsigned long long)t->wakeups, (unsigned long long)t->missed);
		write_ids(f, n.ids_rewritten, n.ids_stale, n.ids_wrong);
		write_storms(f, s);
		fputs(", \"ops\": {", f);
		write_op_counts(f, s);
		fputs("}}", f);
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
		fprintf(f, ", \"storms\": %llu}", (unsigned long long)t->storms[o]);
	}
	fputs("},\n", f);

	fprintf(f, " \"totals\": {\"commits\": %llu, \"aborts\": %llu, \"cpu_mismatch\": %llu, "
		"\"cmp_fail\": %llu, \"signals\": %llu",
		(unsigned long long)tc, (unsigned long long)ta, (unsigned long long)tm,
		(unsigned long long)tf, (unsigned long long)t->signals);
	write_ids(f, sum.ids_rewritten, sum.ids_stale, sum.ids_wrong);
	write_storms(f, t);
	fputs("},\n", f);
	fprintf(f, " \"storm_rule\": {\"k\": %ld, \"t_us\": %ld},\n", cfg.storm_k, cfg.storm_t_us);
	write_antagonist_json(f);

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

	write_call_paths_json(f);
	write_churn_json(f, duration);
	write_idle_json(f);
	write_rusage_json(f);
	fprintf(f, " \"signals_sent\": %ld, \"migrations_requested\": %ld, \"migrations_from_ns\": %lld,\n",
		atomic_load(&signals_sent), atomic_load(&migrations_requested), atomic_load(&migrations_from_ns));
	fputs(" \"duration_s\": ", f);
	json_double(f, duration);
	fputs(", \"ops_per_second\": ", f);
	json_double(f, duration > 0 ? tc / duration : 0);
	fputs(", \"ops_per_second_per_thread\": ", f);
	json_double(f, duration > 0 ? tc / duration / (cfg.threads + cfg.idle_threads) : 0);
	fprintf(f, ",\n \"self_check\": {\"ok\": %s, \"problems\": [", nproblems ? "false" : "true");
	for (int i = 0; i < nproblems; i++) {
		if (i)
			fputs(", ", f);
		json_str(f, problems[i]);
	}
	fputs("]}}\n", f);
}
