/* Shared between the BPF programs (bpf/rseqtop.bpf.c) and user space
 * (rseqtop.bpfgen.header_constants parses the #defines below, and a test
 * checks the Python names against them; bcc builds ctypes for the structs
 * from the program text). Sizes come in as -D flags. */
#ifndef RSEQTOP_H
#define RSEQTOP_H

/* Causes of an abort, as bits. An abort's cause code is the OR of the fresh
 * causes, or RSEQTOP_CAUSE_STALE | carried causes, or 0 (unknown). */
#define RSEQTOP_CAUSE_PREEMPT 1
#define RSEQTOP_CAUSE_MIGRATE 2
#define RSEQTOP_CAUSE_SIGNAL 4
#define RSEQTOP_CAUSE_MEMBARRIER 8
#define RSEQTOP_CAUSE_STALE 16
#define RSEQTOP_NCAUSES 4
#define RSEQTOP_NCODES 32

/* Indices of the per-CPU global counters (map "counters"): map health and
 * the event stream. Activity is counted per thread, and user space sums. */
#define RSEQTOP_CNT_THREADS_DROPPED 0
#define RSEQTOP_CNT_SITES_DROPPED 1
#define RSEQTOP_CNT_OFFSETS_DROPPED 2
#define RSEQTOP_CNT_PROCS_DROPPED 3
#define RSEQTOP_CNT_PCOUNTS_DROPPED 4
#define RSEQTOP_CNT_EVENTS_SENT 5
#define RSEQTOP_CNT_EVENTS_LOST 6
#define RSEQTOP_CNT_THREAD_EXITS 7
#define RSEQTOP_CNT_LIVE_DROPPED 8
#define RSEQTOP_CNT_HANDLERS_DROPPED 9
#define RSEQTOP_CNT_PREEMPTERS_DROPPED 10
#define RSEQTOP_CNT_SLOTS_DROPPED 11
#define RSEQTOP_CNT_ABORTERS_DROPPED 12
#define RSEQTOP_NCOUNTERS 13

/* Kinds of per-process keyed counters (map "pcounts"). */
#define RSEQTOP_PC_RSEQ_REG 1        /* cmd = RSEQTOP_ABI_*, code = errno (0: success) */
#define RSEQTOP_PC_RSEQ_UNREG 2      /* cmd = RSEQTOP_ABI_*, code = errno (0: success) */
#define RSEQTOP_PC_MB_CALL 3         /* cmd = membarrier command */
#define RSEQTOP_PC_MB_ERROR 4        /* cmd, code = errno */
#define RSEQTOP_PC_MB_LATENCY 5      /* cmd, code = log2(ns) slot */

/* The ABI a registration asks for, by its rseq_len: the original 32-byte
 * area is "legacy"; a longer one (the extended area of 6.3+) is "V2", which
 * 7.1 and 7.0.10+ treat differently (IDs written only when they change). */
#define RSEQTOP_ABI_LEGACY 1
#define RSEQTOP_ABI_V2 2
#define RSEQTOP_RSEQ_LEGACY_LEN 32

/* Which threads the task iterator writes out (config.iter_threads). */
#define RSEQTOP_ITER_THREADS_NONE 0
#define RSEQTOP_ITER_THREADS_ABORTING 1
#define RSEQTOP_ITER_THREADS_ALL 2

#define RSEQTOP_FILTER_PIDS 1
#define RSEQTOP_FILTER_CGROUPS 2

#define RSEQTOP_COMM_LEN 16

/* Kinds of events in the ring buffer (rseqtop_event.kind). config.event_kinds
 * has bit (1 << kind) set for the non-abort kinds wanted; those are sent only
 * for processes in the pid filter (watch_pids), never system-wide. */
#define RSEQTOP_EV_ABORT 0
#define RSEQTOP_EV_PREEMPT 1
#define RSEQTOP_EV_MIGRATE 2
#define RSEQTOP_EV_SIGNAL 3
#define RSEQTOP_EV_MEMBARRIER 4

/* The preempter of an abort whose thread's latest switch-out was not a
 * preemption, or whose successor on that CPU had not switched out yet when
 * the thread aborted (it ran elsewhere first). */
#define RSEQTOP_PREEMPTER_UNKNOWN 0xffffffff

/* Abort storms: at least STORM_K consecutive aborts of one thread in one
 * section, each less than STORM_NS after the one before (the defaults; user
 * space writes its settings into the config map). */
#define RSEQTOP_STORM_K 16
#define RSEQTOP_STORM_NS 1000000

/* Map sizes: the defaults, which rseqtop.bpfgen reads from here; a -D
 * (bpfgen's sizes, tests' small maps) overrides them. */
#ifndef RSEQTOP_MAX_THREADS
#define RSEQTOP_MAX_THREADS 32768
#endif
#ifndef RSEQTOP_MAX_DEAD_THREADS
#define RSEQTOP_MAX_DEAD_THREADS 2048
#endif
#ifndef RSEQTOP_MAX_PROCS
#define RSEQTOP_MAX_PROCS 65536
#endif
#ifndef RSEQTOP_MAX_PROC_GENS
#define RSEQTOP_MAX_PROC_GENS 131072
#endif
/* Process slots (HOT_TASK_STORAGE): live processes whose threads' counts
 * are summed as they happen (see struct rseqtop_slot_hot). bpfgen lowers
 * it on machines with many CPUs (a per-CPU array). */
#ifndef RSEQTOP_MAX_SLOTS
#define RSEQTOP_MAX_SLOTS 8192
#endif
#ifndef RSEQTOP_MAX_SITES
#define RSEQTOP_MAX_SITES 4096
#endif
#ifndef RSEQTOP_MAX_OFFSETS
#define RSEQTOP_MAX_OFFSETS 16384
#endif
#ifndef RSEQTOP_MAX_PCOUNTS
#define RSEQTOP_MAX_PCOUNTS 8192
#endif
#ifndef RSEQTOP_MAX_HANDLERS
#define RSEQTOP_MAX_HANDLERS 16384
#endif
#ifndef RSEQTOP_MAX_PREEMPTERS
#define RSEQTOP_MAX_PREEMPTERS 16384
#endif
/* Successor ring slots per CPU (a power of two): how many preemptions of
 * tracked threads a CPU may see between a victim's preemption and its
 * abort before the victim's preempter is forgotten (shown as unknown). */
#ifndef RSEQTOP_MAX_SUCCESSORS
#define RSEQTOP_MAX_SUCCESSORS 256
#endif
/* Successors' names cached per CPU (a power of two), each fetched again
 * at its RSEQTOP_NAME_REFRESH-th use: a thread that renames itself shows
 * its old name for at most that many preemptions per CPU. */
#define RSEQTOP_NAME_CACHE 32
#define RSEQTOP_NAME_REFRESH 16
/* Possible CPUs (bpfgen passes the machine's). */
#ifndef RSEQTOP_NCPUS
#define RSEQTOP_NCPUS 1024
#endif
#ifndef RSEQTOP_RINGBUF_PAGES
#define RSEQTOP_RINGBUF_PAGES 64
#endif

/* --stacks: the user stacks of aborts (stack trace map entries) and the
 * (process, section, stack) counts of them. */
#ifndef RSEQTOP_MAX_STACKS
#define RSEQTOP_MAX_STACKS 4096
#endif
#ifndef RSEQTOP_MAX_STACK_COUNTS
#define RSEQTOP_MAX_STACK_COUNTS 16384
#endif

/* Counts kept per thread while it lives, summed into its process when it
 * exits. */
struct rseqtop_counts {
    u64 aborts;
    u64 updates;
    u64 preempts;
    u64 migrations;
    u64 signals;
    u64 membarrier_ipis;
    u64 causes[RSEQTOP_NCODES];
};

/* What every context switch and every notify-resume of a thread writes.
 * With HOT_TASK_STORAGE it lives in task-local storage (no hash lookup on
 * those paths) and rseqtop_thread.h is a copy made when the thread exits;
 * otherwise rseqtop_thread.h is the live state. Pending causes are one byte
 * each (0 or 1), read as one word: fresh since the last rseq_update, carried
 * from before it and not yet consumed by an abort. */
struct rseqtop_hot {
    union {
        u8 b[RSEQTOP_NCAUSES];
        u32 w;
    } fresh, carried;
    s32 cpu_id; /* CPU at the last rseq_update: a change is a migration */
    /* With HOT_TASK_STORAGE: nonzero for a thread whose process the filter
     * excluded, the config's filter_gen then; 0 for a tracked thread. */
    u32 ignored;
    u64 updates;
    u64 preempts;
    /* With HOT_TASK_STORAGE: the thread's id, for the task iterator, and
     * the (low half of the) iterator pass that last summed the thread. */
    u32 tid;
    u32 summed_pass;
    /* Where the thread's latest switch-out left its successor: CPU
     * pre_cpu's preemption number pre_seq (see struct rseqtop_successor);
     * pre_seq 0: that switch-out was not a preemption. */
    u32 pre_cpu;
    u32 pre_seq;
    /* 6.19+: TWIN_* bits, events the regular program handled, so that its
     * raw twin (run next on the same event) does not handle them again */
    u32 claims;
    /* With HOT_TASK_STORAGE: the thread's process slot + 1 (0: none), into
     * which its updates and preemptions are summed as they happen */
    u32 slot;
};

/* What the task iterator writes per tracked thread (HOT_TASK_STORAGE). */
struct rseqtop_hot_out {
    u32 tid;
    s32 cpu_id;
    u64 updates;
    u64 preempts;
};

struct rseqtop_thread {
    struct rseqtop_hot h;
    /* updates and preempts here are filled from h when the thread exits */
    struct rseqtop_counts c;
    u32 tgid;
    u32 gen; /* its process's generation (see proc_gen) */
    s32 mm_cid;
    u32 last_signal;
    char comm[RSEQTOP_COMM_LEN];
    u32 abort_run; /* consecutive aborts in last_abort_ip, storm rule */
    u32 slot; /* HOT_TASK_STORAGE: its process slot + 1 (0: none), set by its own thread */
    u64 last_abort_ns;
    u64 last_abort_ip;
};

/* The thread preempted last on this CPU (per-CPU slot, sched_switch only):
 * the next sched_switch here runs in its successor's context. */
struct rseqtop_victim {
    u32 tid;  /* 0: its successor is noted already */
    u32 seq;  /* this CPU's preemptions of tracked threads so far: the latest one's number */
    u64 ts;   /* when it was preempted, if preemption events are wanted (else 0) */
    /* successors' names by tid (direct-mapped): fetching the name is most
     * of a successor's cost, and the same tasks take a CPU again and again */
    struct {
        u32 tid;
        u32 uses; /* since the name was fetched: refetched at RSEQTOP_NAME_REFRESH */
        char comm[RSEQTOP_COMM_LEN];
    } names[RSEQTOP_NAME_CACHE];
};

/* Who ran next on a CPU after its preemption number seq (a ring per CPU in
 * the array successors, slot seq % RSEQTOP_MAX_SUCCESSORS): written by the
 * successor's own next switch-out, read by the victim's next abort. A slot
 * taken over by a later preemption before the victim's abort names no one. */
struct rseqtop_successor {
    u32 seq; /* written last, and read before and after the rest (see preempter_add) */
    u32 tid;
    u32 tgid;
    u32 pad;
    char comm[RSEQTOP_COMM_LEN];
};

/* Aborts caused by preemption, by process, section and preempter. A
 * preempter is a process and a thread name, not a thread: a process whose
 * thousands of threads (one name) take turns preempting a worker is one
 * entry, not thousands, so the map stays small and nothing is dropped. */
struct rseqtop_preempter_key {
    u32 tgid;
    u32 gen;
    u64 start_ip;
    u32 ptgid; /* RSEQTOP_PREEMPTER_UNKNOWN: not seen (comm all zero) */
    u32 pad;
    char comm[RSEQTOP_COMM_LEN];
};

struct rseqtop_preempter {
    u64 count;
    u32 ptid; /* the latest of its threads to cause an abort */
    u32 pad;
};

struct rseqtop_proc {
    struct rseqtop_counts retired; /* threads that exited */
    u64 exited_threads;
    char comm[RSEQTOP_COMM_LEN];
};

/* A process is (tgid, gen): gen counts the earlier processes that had the
 * same tgid and died while rseqtop watched, so a recycled pid starts at zero. */
struct rseqtop_proc_key {
    u32 tgid;
    u32 gen;
};

struct rseqtop_site_key {
    u32 tgid;
    u32 gen;
    u64 start_ip;
};

struct rseqtop_site {
    u64 aborts;
    u64 causes[RSEQTOP_NCODES];
    u64 abort_ip;
    u64 post_commit_offset;
    u64 storms; /* runs of consecutive aborts that reached the storm rule's K */
};

struct rseqtop_offset_key {
    u32 tgid;
    u32 gen;
    u64 start_ip;
    u32 offset;
    u32 pad;
};

struct rseqtop_pcount_key {
    u32 tgid;
    u16 kind;
    u16 cmd;
    u32 code;
    u32 gen;
};

struct rseqtop_config {
    u32 filter;       /* RSEQTOP_FILTER_* bits */
    u32 emit_events;  /* send abort events to the ring buffer */
    u32 filter_gen;   /* bumped by user space at every filter change (from 1) */
    u32 iter_threads; /* RSEQTOP_ITER_THREADS_*: what the task iterator writes out */
    u64 iter_pass;    /* bumped by user space before each run of the task iterator */
    u64 storm_ns;     /* storm rule: most time between consecutive aborts */
    u32 storm_k;      /* storm rule: consecutive aborts that make a storm (0: off) */
    u32 event_kinds;  /* bits 1 << RSEQTOP_EV_*: non-abort events to send (pid filter only) */
};

/* A process's live threads summed by the task iterator (HOT_TASK_STORAGE,
 * map proc_live): the pass that wrote it, how many threads, their counts
 * (updates and preemptions from their hot state). User space then needs no
 * per-thread work for process totals. */
struct rseqtop_live {
    u64 pass;
    u64 threads;
    struct rseqtop_counts c;
};

/* Process slots (HOT_TASK_STORAGE). A live process gets a slot number when
 * its first thread is tracked (map proc_slot); every event of its threads
 * is added to the slot as it happens, and a thread's exit moves its counts
 * from the slot into procs (retired). So retired + slot = the process's
 * totals, exactly, without reading any thread: a poll reads one entry per
 * process, not one per thread. User space gives a dead process's slot back
 * (free_slots) a poll after it saw the process gone.
 *
 * Updates and preemptions come on every context switch: per CPU, so the
 * line stays in this CPU's cache (the sum over CPUs is the count; a CPU's
 * own part may wrap below zero when an exit on it moves counts made
 * elsewhere). The rest are rare: one shared entry, struct rseqtop_live
 * with pass unused and threads the live tracked threads. */
struct rseqtop_slot_hot {
    u64 updates;
    u64 preempts;
};

struct rseqtop_event {
    u64 ts_ns;
    u64 start_ip;
    u64 abort_ip;
    u32 tgid;
    u32 tid;
    u32 cpu;
    u32 cause;
    u32 offset;
    u32 gen;
    char comm[RSEQTOP_COMM_LEN];
    u32 run; /* the thread's consecutive aborts in this section so far (storm rule) */
    u32 kind; /* RSEQTOP_EV_*; the fields above from start_ip to run are an abort's */
    /* migration: the CPUs the thread moved from and to */
    s32 from_cpu;
    s32 to_cpu;
    u32 signo; /* signal: its number */
    /* preemption: the task that ran next on that CPU */
    u32 next_tid;
    u32 next_tgid;
    char next_comm[RSEQTOP_COMM_LEN];
    u32 pad;
};

/* --uprobes: runs of a critical section's abort handler (a uprobe at its
 * abort_ip), per thread and handler. `kernel` of them followed a
 * rseq_ip_fixup of the thread at that abort_ip; the others are the
 * section's own cpu_id-mismatch exits (user-detected aborts), which the
 * kernel never sees. */
struct rseqtop_handler_key {
    u32 tgid;
    u32 gen;
    u32 tid;
    u32 pad;
    u64 abort_ip;
};

struct rseqtop_handler {
    u64 hits;
    u64 kernel;
};

#endif
