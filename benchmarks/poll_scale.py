"""Polling cost at scale (issue 14, goal 1): a process with many mostly
idle threads (the workload's --idle-threads mode), rseqtop's collector
polled once a second; prints the CPU time per poll next to the target, by
stage, and checks that every thread is counted exactly.

    sudo .venv/bin/python benchmarks/poll_scale.py [--threads 10000] [--period 200] [--polls 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rseqtop import workload  # noqa: E402
from rseqtop.collect import Collector  # noqa: E402
from rseqtop.collect.assemble import View, assemble  # noqa: E402
from rseqtop.present import textout  # noqa: E402
from rseqtop.present.rows import LiveModel  # noqa: E402

TARGET_MS = 10.0

# The kernel's walk alone: a task iterator whose program only counts the
# tasks it is called for. No per-poll pass over every task costs less.
EMPTY_ITERATOR = r"""
struct bpf_iter_meta { struct seq_file *seq; u64 session_id; u64 seq_num; };
struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; };
BPF_ARRAY(tasks, u64, 1);
BPF_ITER(task)
{
    int zero = 0;
    u64 *n = tasks.lookup(&zero);
    if (n && ctx->task)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def walk_floor(passes: int = 8) -> tuple[float, float]:
    """(median CPU ms of one pass of an empty task iterator, tasks per pass)."""
    import bcc

    from rseqtop.kernel import bpfsys, kheaders

    kheaders.export_for_bcc(kheaders.locate())
    b = bcc.BPF(text=EMPTY_ITERATOR)
    try:
        link = bcc.lib.bcc_iter_attach(b.load_func("bpf_iter__task", bcc.BPF.TRACING).fd, None, 0)
        if link < 0:
            raise OSError(-link, "task iterator refused")
        times = []
        for _ in range(passes):
            t = time.thread_time()
            fd = bpfsys.iter_create(link)
            try:
                while os.read(fd, 1 << 16):
                    pass
            finally:
                os.close(fd)
            times.append((time.thread_time() - t) * 1e3)
        os.close(link)
        return statistics.median(times), b["tasks"][0].value / passes
    finally:
        b.cleanup()


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=10000)
    ap.add_argument("--period", type=int, default=200, help="each thread wakes every PERIOD ms")
    ap.add_argument("--polls", type=int, default=8)
    ap.add_argument("--interval", type=float, default=1.0)
    opts = ap.parse_args()
    workload.build()
    # room for starting 10,000 threads on a busy machine: every poll measured must see them all live
    duration = opts.polls * opts.interval + 30
    # dead_threads keeps the last 2,048 exited threads by default (process
    # totals are exact regardless): room for all of them, for the per-thread check
    with Collector(sizes={"RSEQTOP_MAX_DEAD_THREADS": 2 * opts.threads}) as c:
        # what --json asks for: threads (those with aborts) and their mm_cid
        c.want_threads("aborting")
        c.want_mm_cid(True)
        proc = workload.start(["--threads", "0", "--idle-threads", str(opts.threads), "--idle-period",
                               str(opts.period), "--duration", str(duration)])
        model = LiveModel()
        # the task iterator's pass (the kernel's walk over every task), apart from the rest of the map reads
        pass_cpu = [0.0]
        iterate = c.loader.iterate

        def timed_iterate(*args):
            t = time.thread_time()
            try:
                return iterate(*args)
            finally:
                pass_cpu[0] += time.thread_time() - t

        c.loader.iterate = timed_iterate
        # wait for every thread to be up and seen
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            snap = c.poll()
            p = snap.process(proc.pid)
            if p is not None and p.threads_live >= opts.threads:
                break
            time.sleep(0.5)
        floor = walk_floor()
        rows = []
        started = time.monotonic()
        for _ in range(opts.polls):
            time.sleep(opts.interval)
            pass_cpu[0] = 0.0
            c0, w0 = cpu(), time.thread_time()
            rec = c.read()
            w1 = time.thread_time()
            a = assemble(rec, View(), c._last_totals, c._forgotten, c.symbolize)
            w2 = time.thread_time()
            model.update(a.snapshot)
            textout.json_line(model)
            w3 = time.thread_time()
            c._last_totals = dict(a.last_totals)
            rows.append(((cpu() - c0) * 1e3, (w1 - w0 - pass_cpu[0]) * 1e3, (w2 - w1) * 1e3, (w3 - w2) * 1e3,
                         a.snapshot.process(proc.pid).threads_live, pass_cpu[0] * 1e3))
        polled_for = time.monotonic() - started
        # the other front ends' polls, read only (no front end): batch
        # tables and the exporter ask for no thread, the live view's
        # thread list for every one
        other = {}
        for mode in ("none", "all"):
            c.want_threads(mode)
            times = []
            for _ in range(3):
                time.sleep(opts.interval)
                c0 = cpu()
                c.read()
                times.append((cpu() - c0) * 1e3)
            other[mode] = statistics.median(times)
        c.want_threads("aborting")
        out, _ = proc.communicate(timeout=600)
        summary = workload.parse_summary(out)
        c.want_threads("all")
        final = c.poll()
    threads = {t.tid: t for t in final.threads_of(summary["pid"])}
    wrong = [tid for tid, rec in summary["threads"].items()
             if int(tid) not in threads or threads[int(tid)].counts.aborts != rec["aborts"]]
    med = [statistics.median(r[i] for r in rows) for i in (0, 1, 2, 3, 5)]
    print(f"threads live while polled: {min(r[4] for r in rows)}..{max(r[4] for r in rows)} "
          f"(asked {opts.threads}, each waking every {opts.period} ms)")
    print(f"CPU per poll, median of {len(rows)} (process, all threads): {med[0]:.1f} ms   target <= {TARGET_MS:.0f} ms"
          f"   {'met' if med[0] <= TARGET_MS else 'NOT met'}")
    print(f"  by stage (this thread): task iterator pass {med[4]:.1f} ms (0: the poll needed none), other map reads "
          f"{med[1]:.1f} ms, assemble {med[2]:.1f} ms, JSON front end {med[3]:.1f} ms")
    print(f"  = {med[0] / (opts.interval * 10):.1f}% of a core at a {opts.interval:g} s refresh")
    print(f"  map reads alone, median of 3, asking for no thread (batch tables, exporter) {other['none']:.1f} ms, "
          f"for every thread (the live view's thread list) {other['all']:.1f} ms")
    print(f"  floor: the kernel's walk alone (an empty task iterator over {floor[1]:.0f} tasks) {floor[0]:.1f} ms")
    if min(r[4] for r in rows) < opts.threads:
        print(f"warning: the workload ended while polled ({polled_for:.0f} s of polls); its threads were not all live")
    print(f"exact: {len(summary['threads']) - len(wrong)} of {len(summary['threads'])} threads' aborts equal "
          f"the workload's ({summary['totals']['aborts']} aborts in all)")
    return 0 if not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
