/* rseqtop's BPF programs. The Python side (rseqtop/bpfgen.py) prepends the
 * tracepoint argument structs generated from the running kernel's format
 * files and the HAVE_* / size -D flags, so the same source loads on kernels
 * with older rseq_update formats or without csd events. Only tracepoint
 * arguments are read: the kernel headers may not match the kernel.
 *
 * Every tracepoint program returns 1: one returning 0 silences perf's own
 * counting of that tracepoint, and rseqtop must not blind other tools (raw
 * tracepoint programs' return value is ignored). */
#include "rseqtop.h"

#ifndef TASK_REPORT_MASK
#define TASK_REPORT_MASK 0xff
#endif

/* Live threads by tid (sched_migrate_task names its task by tid only). */
BPF_HASH(threads, u32, struct rseqtop_thread, RSEQTOP_MAX_THREADS);
/* Final records of exited threads, for display only: exact totals live in
 * procs, so LRU eviction here loses no count. */
BPF_TABLE("lru_hash", u32, struct rseqtop_thread, dead_threads, RSEQTOP_MAX_DEAD_THREADS);
/* Processes' retired totals. Not preallocated: sized for process churn,
 * paid for as used; user space deletes dead processes after a while. */
BPF_F_TABLE("hash", struct rseqtop_proc_key, struct rseqtop_proc, procs, RSEQTOP_MAX_PROCS, BPF_F_NO_PREALLOC);
/* tgid -> generation, bumped when a watched process dies (absent: 0). */
BPF_F_TABLE("hash", u32, u32, proc_gen, RSEQTOP_MAX_PROC_GENS, BPF_F_NO_PREALLOC);
BPF_HASH(sites, struct rseqtop_site_key, struct rseqtop_site, RSEQTOP_MAX_SITES);
BPF_HASH(offsets, struct rseqtop_offset_key, u64, RSEQTOP_MAX_OFFSETS);
BPF_HASH(pcounts, struct rseqtop_pcount_key, u64, RSEQTOP_MAX_PCOUNTS);
BPF_HASH(preempters, struct rseqtop_preempter_key, struct rseqtop_preempter, RSEQTOP_MAX_PREEMPTERS);
BPF_PERCPU_ARRAY(last_victim, struct rseqtop_victim, 1);
BPF_ARRAY(successors, struct rseqtop_successor, RSEQTOP_NCPUS * RSEQTOP_MAX_SUCCESSORS);
BPF_PERCPU_ARRAY(counters, u64, RSEQTOP_NCOUNTERS);
BPF_PERCPU_ARRAY(cpu_aborts, u64, 1);
BPF_ARRAY(config, struct rseqtop_config, 1);
BPF_HASH(watch_pids, u32, u8, 1024);
BPF_HASH(watch_cgroups, u64, u8, 256);
/* Zeroed templates: the records are too large for the 512-byte BPF stack. */
BPF_PERCPU_ARRAY(zero_thread, struct rseqtop_thread, 1);
BPF_PERCPU_ARRAY(zero_site, struct rseqtop_site, 1);
BPF_PERCPU_ARRAY(zero_proc, struct rseqtop_proc, 1);
#ifdef HOT_TASK_STORAGE
/* Hot per-thread state in task-local storage: a pointer chase from the
 * task instead of a hash lookup, on the two paths that run on every
 * context switch. User space reads it with the task iterator at the end of
 * this file (or through pidfds, PIDFD_THREAD, where that is refused). */
BPF_TASK_STORAGE(hot, struct rseqtop_hot);

/* Process slots (see struct rseqtop_slot_hot): (tgid, gen) -> slot + 1,
 * and the free slots (user space fills the stack before attaching, and
 * gives dead processes' slots back). */
BPF_HASH(proc_slot, struct rseqtop_proc_key, u32, RSEQTOP_MAX_SLOTS);
BPF_STACK(free_slots, u32, RSEQTOP_MAX_SLOTS);
BPF_PERCPU_ARRAY(slot_hot, struct rseqtop_slot_hot, RSEQTOP_MAX_SLOTS);
BPF_ARRAY(slot_rare, struct rseqtop_live, RSEQTOP_MAX_SLOTS);
/* Live threads that have aborted (tid -> 1): what --json and the TUI's
 * process view show of threads, read one by one, with no pass over every
 * task. */
BPF_F_TABLE("hash", u32, u8, aborters, RSEQTOP_MAX_THREADS, BPF_F_NO_PREALLOC);

/* The task iterator's context (kernel/bpf/task_iter.c; stable since 5.8):
 * declared here because the generic headers do not have it, and only its
 * pointers are used, never a field of the task. */
struct bpf_iter_meta {
    struct seq_file *seq;
    u64 session_id;
    u64 seq_num;
};
struct bpf_iter__task {
    struct bpf_iter_meta *meta;
    struct task_struct *task;
};
#endif

BPF_RINGBUF_OUTPUT(events, RSEQTOP_RINGBUF_PAGES);
/* New critical sections, so that user space symbolizes them while their
 * process is still alive (a perf buffer: polled apart from the ring buffer). */
BPF_PERF_OUTPUT(new_sites);

#ifdef RSEQTOP_UPROBES
#include <uapi/linux/ptrace.h> /* the user-space ABI's registers (uprobe context) */
/* --uprobes: the abort_ip of each thread's latest kernel abort, until the
 * thread's next run of a probed handler takes it (it runs at that address
 * right after the fixup, on the way back to user space). LRU: a thread
 * that dies in between leaves nothing behind for long. */
BPF_TABLE("lru_hash", u32, u64, handler_pending, RSEQTOP_MAX_THREADS);
BPF_HASH(handlers, struct rseqtop_handler_key, struct rseqtop_handler, RSEQTOP_MAX_HANDLERS);
static __always_inline void note_kernel_abort(u32 tid, u64 abort_ip)
{
    handler_pending.update(&tid, &abort_ip);
}
#else
static __always_inline void note_kernel_abort(u32 tid, u64 abort_ip) {}
#endif

/* --stacks: aborts per (process, section, user stack). The stack is the
 * interrupted one (the tracepoint fires before the fixup moves the IP to
 * abort_ip), walked by frame pointers. A failed walk (stack_id < 0: -EFAULT,
 * -EEXIST on a hash collision, -ENOMEM) is counted under its negative errno,
 * so that per-section counts still add up to the section's aborts; a full
 * count map is counted in stack_drops. */
#ifdef RSEQTOP_STACKS
struct rseqtop_stack_key {
    u32 tgid;
    u32 gen;
    u64 start_ip;
    s32 stack_id;
    u32 pad;
};
BPF_STACK_TRACE(abort_stacks, RSEQTOP_MAX_STACKS);
BPF_HASH(stack_counts, struct rseqtop_stack_key, u64, RSEQTOP_MAX_STACK_COUNTS);
BPF_PERCPU_ARRAY(stack_drops, u64, 1);
static __always_inline void count_stack(void *ctx, u32 tgid, u32 gen, u64 start_ip)
{
    struct rseqtop_stack_key k = {.tgid = tgid, .gen = gen, .start_ip = start_ip};
    k.stack_id = abort_stacks.get_stackid(ctx, BPF_F_USER_STACK);
    u64 zero = 0, *n = stack_counts.lookup_or_try_init(&k, &zero);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    int first = 0;
    u64 *d = stack_drops.lookup(&first);
    if (d)
        __sync_fetch_and_add(d, 1);
}
#else
static __always_inline void count_stack(void *ctx, u32 tgid, u32 gen, u64 start_ip) {}
#endif

/* Global counters: map health and the event stream only. Activity is
 * counted per thread (no second map update on the hot paths). Atomic even
 * though per-CPU: from 6.19 tracepoint programs run preemptible (migration
 * disabled only), so another task's program can run between a load and a
 * store on this CPU. */
static __always_inline void count(u32 idx)
{
    u64 *v = counters.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline u32 current_gen(u32 tgid)
{
    u32 *g = proc_gen.lookup(&tgid);
    return g ? *g : 0;
}

static __always_inline int watched(u32 tgid)
{
    int zero = 0;
    struct rseqtop_config *cfg = config.lookup(&zero);
    if (!cfg || !cfg->filter)
        return 1;
    if ((cfg->filter & RSEQTOP_FILTER_PIDS) && !watch_pids.lookup(&tgid))
        return 0;
    if (cfg->filter & RSEQTOP_FILTER_CGROUPS) {
        u64 cg = bpf_get_current_cgroup_id();
        if (!watch_cgroups.lookup(&cg))
            return 0;
    }
    return 1;
}

/* The current thread's record, created on first sight if its process is
 * watched. Only programs running in the thread's own context create, so a
 * new record (tgid still 0) is filled in place by its own thread: the
 * per-CPU zero template itself is never written (a preempted program would
 * share it, see count). */
static __always_inline struct rseqtop_thread *current_thread(u32 tid, u32 tgid)
{
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (t)
        return t;
    if (!watched(tgid))
        return 0;
    int zero = 0;
    struct rseqtop_thread *z = zero_thread.lookup(&zero);
    if (!z)
        return 0;
    t = threads.lookup_or_try_init(&tid, z);
    if (!t) {
        count(RSEQTOP_CNT_THREADS_DROPPED);
        return 0;
    }
    if (!t->tgid) {
        t->tgid = tgid;
        t->gen = current_gen(tgid);
        t->mm_cid = -1; /* unknown until the kernel reports it */
        t->h.cpu_id = -1;  /* set by track_current */
        bpf_get_current_comm(&t->comm, sizeof(t->comm));
    }
    return t;
}

#ifdef HOT_TASK_STORAGE
/* Process (tgid, gen)'s slot + 1, taken from free_slots (user space fills
 * it) if the process has none yet; 0 when none is left (counted: user space
 * then sums slotless threads with the task iterator). */
static __always_inline u32 take_slot(u32 tgid, u32 gen)
{
    struct rseqtop_proc_key pk = {.tgid = tgid, .gen = gen};
    u32 *s = proc_slot.lookup(&pk);
    if (s)
        return *s;
    u32 n;
    if (free_slots.pop(&n)) {
        count(RSEQTOP_CNT_SLOTS_DROPPED);
        return 0;
    }
    u32 v = n + 1;
    if (!proc_slot.insert(&pk, &v))
        return v;
    /* another thread of the process took one first */
    free_slots.push(&n, 0);
    s = proc_slot.lookup(&pk);
    if (!s)
        count(RSEQTOP_CNT_SLOTS_DROPPED);
    return s ? *s : 0;
}

/* The rare counts of slot (+ 1; 0: none). */
static __always_inline struct rseqtop_live *slot_rare_of(u32 slot)
{
    u32 i = slot - 1;
    return slot ? slot_rare.lookup(&i) : 0;
}

/* This CPU's per-CPU counts of slot (+ 1; 0: none). */
static __always_inline struct rseqtop_slot_hot *slot_hot_of(u32 slot)
{
    u32 i = slot - 1;
    return slot ? slot_hot.lookup(&i) : 0;
}

/* Thread t's slot (+ 1), taken when its tracking starts; set only by the
 * thread itself. 0: none. */
static __always_inline u32 own_slot(struct rseqtop_thread *t)
{
    if (t->slot)
        return t->slot;
    u32 slot = take_slot(t->tgid, t->gen);
    struct rseqtop_live *r = slot_rare_of(slot);
    if (!r)
        return 0;
    __sync_fetch_and_add(&r->threads, 1);
    t->slot = slot;
    return slot;
}

/* Live threads with aborts, for user space to read one by one. */
static __always_inline void note_aborter(u32 tid)
{
    u8 one = 1;
    if (aborters.insert(&tid, &one) && !aborters.lookup(&tid))
        count(RSEQTOP_CNT_ABORTERS_DROPPED);
}
#else
static __always_inline struct rseqtop_live *slot_rare_of(u32 slot) { return 0; }
static __always_inline struct rseqtop_slot_hot *slot_hot_of(u32 slot) { return 0; }
static __always_inline void note_aborter(u32 tid) {}
#endif

/* Count one in a thread's slot entry (slot_hot_of or slot_rare_of, 0:
 * none), before the thread's own count: an exit then moves from the slot
 * at most what the thread's counts hold (see on_sched_process_exit), so a
 * racing event is counted in one or the other, never both. */
#define SLOT_ADD(entry, field)                    \
    do {                                          \
        typeof(entry) _e = (entry);               \
        if (_e)                                   \
            __sync_fetch_and_add(&_e->field, 1);  \
    } while (0)

/* Twins (6.19+). The kernel skips a program's run on a CPU where that
 * program is still running (a raw tracepoint's program, preemptible from
 * 6.19) or where any regular tracepoint or kprobe program, or a bpf(2)
 * map operation of any process, holds the CPU's bpf_prog_active (a map
 * syscall holds it preemptibly). Either way the event is not seen: about
 * 1% of aborts in a signal-heavy run on 7.2 with a regular program alone.
 * So rseq_ip_fixup and signal_deliver get both kinds of program, whose
 * skips have unrelated causes (and so do sched_process_exit and the
 * syscall events: see thread_exited and "Syscall twins" below). The
 * regular one is attached first, so it runs first on each event (same priority: tracepoint probes run in the
 * order they were registered, and ours stays registered), claims the
 * event in the thread's hot state, and the raw twin, run next on the same
 * event in the same thread, gives the claim back instead of handling it
 * again. An event is lost only when both are skipped on it, or when the
 * twin was skipped after a claim and the regular program is then skipped
 * on the thread's next event of that kind (the stale claim hides it):
 * each loss takes a skip of each program, so losses <= the smaller skip
 * count, which is what rseqtop reports. */
#define TWIN_FIXUP 1
#define TWIN_SIGNAL 2
#ifdef TWIN_RSEQ_IP_FIXUP
#define TWINNED_FIXUP TWIN_FIXUP
#else
#define TWINNED_FIXUP 0
#endif
#ifdef TWIN_SIGNAL_DELIVER
#define TWINNED_SIGNAL TWIN_SIGNAL
#else
#define TWINNED_SIGNAL 0
#endif

static __always_inline int twin_done(struct rseqtop_hot *h, u32 bit)
{
    if (!(h->claims & bit))
        return 0;
    h->claims &= ~bit;
    return 1;
}

static __always_inline void twin_claim(struct rseqtop_hot *h, u32 bit, int twin)
{
    bit &= TWINNED_FIXUP | TWINNED_SIGNAL;
    if (!twin && bit)
        h->claims |= bit;
}

/* The current thread's hot state as stored: with HOT_TASK_STORAGE also the
 * entries of threads the filter excluded (ignored != 0); 0 if none. */
static __always_inline struct rseqtop_hot *hot_entry(void)
{
#ifdef HOT_TASK_STORAGE
    return hot.task_storage_get(bpf_get_current_task_btf(), 0, 0);
#else
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rseqtop_thread *t = threads.lookup(&tid);
    return t ? &t->h : 0;
#endif
}

/* The current thread's hot state; 0 if it is not tracked (yet, or because
 * the filter excludes its process). */
static __always_inline struct rseqtop_hot *current_hot(void)
{
    struct rseqtop_hot *h = hot_entry();
    return h && !h->ignored ? h : 0;
}

/* The hot state of t, the current thread's record, without a second hash
 * lookup where the record holds it. */
static __always_inline struct rseqtop_hot *hot_of(struct rseqtop_thread *t)
{
#ifdef HOT_TASK_STORAGE
    return current_hot();
#else
    return &t->h;
#endif
}

/* Start tracking the current thread if its process is watched: its record
 * and its hot state, which starts on this CPU (so that the first update is
 * no migration). h: what hot_entry() returned (0, or an ignored entry). */
static __always_inline struct rseqtop_hot *track_current(s32 cpu, struct rseqtop_hot *h)
{
    u64 id = bpf_get_current_pid_tgid();
#ifdef HOT_TASK_STORAGE
    /* A thread the filter excluded is remembered as such in its storage
     * until the filter changes: no hash lookup and no filter check on each
     * of its notify-resumes. */
    int zero = 0;
    struct rseqtop_config *cfg = config.lookup(&zero);
    u32 gen = cfg ? cfg->filter_gen : 0;
    if (h && gen && h->ignored == gen)
        return 0;
    if (!watched(id >> 32)) {
        if (gen) {
            struct rseqtop_hot skip = {.ignored = gen};
            if (h)
                h->ignored = gen;
            else
                hot.task_storage_get(bpf_get_current_task_btf(), &skip, BPF_LOCAL_STORAGE_GET_F_CREATE);
        }
        return 0;
    }
    struct rseqtop_thread *t = current_thread((u32)id, id >> 32);
    if (!t)
        return 0; /* threads map full (counted): tried again next time */
    u32 slot = own_slot(t);
    if (h) {
        /* excluded before, watched now: start afresh (what it counted
         * before stays in its slot, and an exit moves only what h holds) */
        __builtin_memset(h, 0, sizeof(*h));
        h->cpu_id = cpu;
        h->tid = (u32)id;
        h->slot = slot;
        return h;
    }
    struct rseqtop_hot init = {.cpu_id = cpu, .tid = (u32)id, .slot = slot};
    return hot.task_storage_get(bpf_get_current_task_btf(), &init, BPF_LOCAL_STORAGE_GET_F_CREATE);
#else
    struct rseqtop_thread *t = current_thread((u32)id, id >> 32);
    if (!t)
        return 0;
    if (t->h.cpu_id < 0)
        t->h.cpu_id = cpu;
    return &t->h;
#endif
}

/* Count one for a key of a u64-valued hash. Every entry in this program is
 * made by bcc's lookup_or_try_init (look up, else insert with BPF_NOEXIST,
 * look up again: libbpf-tools' bpf_map_lookup_or_try_init), so creation
 * races lose no increment and NULL means the map is full: counted. */
static __always_inline void pcounts_add(struct rseqtop_pcount_key *k)
{
    u64 zero = 0, *v = pcounts.lookup_or_try_init(k, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        count(RSEQTOP_CNT_PCOUNTS_DROPPED);
}

static __always_inline void offsets_add(struct rseqtop_offset_key *k)
{
    u64 zero = 0, *v = offsets.lookup_or_try_init(k, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        count(RSEQTOP_CNT_OFFSETS_DROPPED);
}

static __always_inline void pcount(u32 tgid, u16 kind, u16 cmd, u32 code)
{
    struct rseqtop_pcount_key k = {.tgid = tgid, .kind = kind, .cmd = cmd, .code = code,
                                   .gen = current_gen(tgid)};
    pcounts_add(&k);
}

/* Four 0/1 bytes (bits 0, 8, 16, 24 of the word) -> cause bits 0..3. */
static __always_inline u32 cause_bits(u32 w)
{
    return (w & 1) | ((w >> 7) & 2) | ((w >> 14) & 4) | ((w >> 21) & 8);
}

/* A cause event of the current thread: a switch-out, a signal delivery or
 * a membarrier IPI (slot: the byte of its cause bit).
 *
 * Up to 6.18 the kernel's event mask survives returns to user space until
 * an abort consumes it, so causes add up (and go stale, see updated()).
 * From 6.19 (RSEQTOP_EXIT_CLEARS) the kernel clears its rseq event on every
 * return to user space, and it only aborts a section on a return whose
 * kernel entry had a switch-out, a signal or a membarrier IPI: the latest
 * such event is the cause, and what came before it ended with an earlier
 * return to user space. When two meet in one kernel entry (an IPI and then
 * a preemption on its way out) the later one is reported. */
static __always_inline void note_cause(struct rseqtop_hot *h, int slot)
{
#ifdef RSEQTOP_EXIT_CLEARS
    h->fresh.w = 0;
#endif
    h->fresh.b[slot & (RSEQTOP_NCAUSES - 1)] = 1;
}

/* An abort consumes the pending causes. Up to 6.18 it runs before this
 * notify-resume's rseq_update (from 6.19 after it, when the IDs changed), so
 * a CPU other than the last update's is a fresh migration (the kernel flags
 * one whenever set_task_cpu changes the task's CPU). */
static __always_inline u32 take_causes(struct rseqtop_hot *h, s32 cpu)
{
    if (h->cpu_id != cpu) {
        h->fresh.b[1] = 1;
        /* From 6.19 (V2 registrations) the next update may be far away:
         * this CPU is the one the next migration is measured from. */
        h->cpu_id = cpu;
    }
    u32 fresh = cause_bits(h->fresh.w), carried = cause_bits(h->carried.w);
    h->fresh.w = 0;
    h->carried.w = 0;
    if (fresh)
        return fresh;
    if (carried)
        return RSEQTOP_CAUSE_STALE | carried;
    return 0;
}

/* The storm rule at an abort of thread t in start_ip at now: 1 when this
 * abort makes the thread's run of consecutive aborts in that section, each
 * less than storm_ns after the previous one, reach storm_k (a run counts
 * once). Only the thread's own state: its own aborts write it. */
static __always_inline int storm_step(struct rseqtop_thread *t, struct rseqtop_config *cfg, u64 start_ip, u64 now)
{
    if (t->last_abort_ip == start_ip && now - t->last_abort_ns < (cfg ? cfg->storm_ns : RSEQTOP_STORM_NS))
        t->abort_run++;
    else
        t->abort_run = 1;
    t->last_abort_ns = now;
    t->last_abort_ip = start_ip;
    u32 k = cfg ? cfg->storm_k : RSEQTOP_STORM_K;
    return k && t->abort_run == k;
}

/* The slot of CPU cpu's preemption number seq in successors. */
static __always_inline struct rseqtop_successor *successor_slot(u32 cpu, u32 seq)
{
    u32 i = cpu * RSEQTOP_MAX_SUCCESSORS + (seq & (RSEQTOP_MAX_SUCCESSORS - 1));
    return cpu < RSEQTOP_NCPUS ? successors.lookup(&i) : 0;
}

/* An abort caused by preemption: count it for the task that ran next on
 * the CPU after the thread's latest switch-out, when that was a preemption
 * and its successor has been seen (else for RSEQTOP_PREEMPTER_UNKNOWN). */
static __always_inline void preempter_add(struct rseqtop_thread *t, struct rseqtop_hot *h, u64 start_ip)
{
    struct rseqtop_successor s = {};
    struct rseqtop_successor *slot = h->pre_seq ? successor_slot(h->pre_cpu, h->pre_seq) : 0;
    int known = 0;
    if (slot && slot->seq == h->pre_seq) {
        __builtin_memcpy(&s, slot, sizeof(s));
        /* its successor may be filling the slot again for a later
         * preemption (on another CPU than this abort's): then it names
         * that one's successor, not ours */
        asm volatile("" ::: "memory");
        known = slot->seq == h->pre_seq;
    }
    struct rseqtop_preempter_key k = {.tgid = t->tgid, .gen = t->gen, .start_ip = start_ip,
                                      .ptgid = RSEQTOP_PREEMPTER_UNKNOWN};
    if (known) {
        k.ptgid = s.tgid;
        __builtin_memcpy(k.comm, s.comm, sizeof(k.comm));
    }
    struct rseqtop_preempter zero = {};
    struct rseqtop_preempter *p = preempters.lookup_or_try_init(&k, &zero);
    if (!p) {
        count(RSEQTOP_CNT_PREEMPTERS_DROPPED);
        return;
    }
    __sync_fetch_and_add(&p->count, 1);
    if (known)
        p->ptid = s.tid; /* racing aborts each write a thread of this entry */
}

/* Whether events of a non-abort kind are wanted for process tgid: only for
 * a process the pid filter names, never system-wide. */
static __always_inline int timeline_wanted(struct rseqtop_config *cfg, u32 tgid, u32 kind)
{
    return cfg && (cfg->event_kinds & (1u << kind)) && (cfg->filter & RSEQTOP_FILTER_PIDS) &&
           watch_pids.lookup(&tgid);
}

/* A ring buffer record of kind for thread t (tid) on this CPU at ts, the
 * fields of other kinds zeroed; 0 (counted as lost) when the buffer is full.
 * The caller fills comm and its kind's fields, then calls event_submit. */
static __always_inline struct rseqtop_event *event_start(u32 kind, struct rseqtop_thread *t, u32 tid, u64 ts)
{
    struct rseqtop_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        count(RSEQTOP_CNT_EVENTS_LOST);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = ts;
    e->tgid = t->tgid;
    e->tid = tid;
    e->gen = t->gen;
    e->cpu = bpf_get_smp_processor_id();
    e->kind = kind;
    return e;
}

/* Only aborts wake the reader: a reader woken by a thread's preemption,
 * migration or signal would preempt a watched thread in turn (measured: the
 * trace process became the watched worker's main preempter, ~10k events/s
 * feeding themselves). The timeline's reader drains the rest every 100 ms. */
static __always_inline void event_submit(struct rseqtop_event *e)
{
    events.ringbuf_submit(e, e->kind == RSEQTOP_EV_ABORT ? 0 : BPF_RB_NO_WAKEUP);
    count(RSEQTOP_CNT_EVENTS_SENT);
}

/* An event of the current thread t (signal, membarrier IPI), if wanted. */
static __always_inline void own_event(struct rseqtop_thread *t, u32 kind, u32 signo)
{
    int zero = 0;
    struct rseqtop_config *cfg = config.lookup(&zero);
    if (!timeline_wanted(cfg, t->tgid, kind))
        return;
    struct rseqtop_event *e = event_start(kind, t, (u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
    if (!e)
        return;
    e->signo = signo;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    event_submit(e);
}

/* An abort. ctx is the program's context (for the perf buffer); twin: run
 * by the raw twin of the regular program (see twin_done). */
static __always_inline void aborted(void *ctx, u64 regs_ip, u64 start_ip, u64 post_commit_offset, u64 abort_ip,
                                    int twin)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    s32 this_cpu = bpf_get_smp_processor_id();
    struct rseqtop_hot *h = hot_entry();
    if (twin && h && !h->ignored && twin_done(h, TWIN_FIXUP))
        return;
    if (!h || h->ignored)
        h = track_current(this_cpu, h);
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (!h || !t)
        return;
    twin_claim(h, TWIN_FIXUP, twin);
    note_kernel_abort(tid, abort_ip);
    u32 code = take_causes(h, this_cpu) & (RSEQTOP_NCODES - 1);
    struct rseqtop_live *r = slot_rare_of(t->slot);
    if (r) {
        __sync_fetch_and_add(&r->c.aborts, 1);
        __sync_fetch_and_add(&r->c.causes[code], 1);
    }
    if (!t->c.aborts)
        note_aborter(tid);
    t->c.aborts++;
    t->c.causes[code]++;
    bpf_get_current_comm(&t->comm, sizeof(t->comm));
    int zero = 0;
    u64 *cpu = cpu_aborts.lookup(&zero);
    if (cpu)
        __sync_fetch_and_add(cpu, 1);
    struct rseqtop_config *cfg = config.lookup(&zero);
    u64 now = bpf_ktime_get_ns();
    int storm = storm_step(t, cfg, start_ip, now);

    u64 offset = regs_ip - start_ip;
    struct rseqtop_site_key sk = {.tgid = tgid, .gen = t->gen, .start_ip = start_ip};
    struct rseqtop_site *s = sites.lookup(&sk);
    if (!s) {
        struct rseqtop_site *zs = zero_site.lookup(&zero);
        s = zs ? sites.lookup_or_try_init(&sk, zs) : 0;
        if (!s)
            count(RSEQTOP_CNT_SITES_DROPPED);
        else if (!s->abort_ip) {
            /* new (an abort_ip is never 0); threads of the process racing
             * here write the same values, and symbolizing twice is harmless */
            s->abort_ip = abort_ip;
            s->post_commit_offset = post_commit_offset;
            new_sites.perf_submit(ctx, &sk, sizeof(sk));
        }
    }
    if (s) {
        __sync_fetch_and_add(&s->aborts, 1);
        __sync_fetch_and_add(&s->causes[code], 1);
        if (storm)
            __sync_fetch_and_add(&s->storms, 1);
    }
    struct rseqtop_offset_key ok = {.tgid = tgid, .gen = t->gen, .start_ip = start_ip, .offset = (u32)offset};
    offsets_add(&ok);
    count_stack(ctx, tgid, t->gen, start_ip); /* --stacks */
    if (code & RSEQTOP_CAUSE_PREEMPT)
        preempter_add(t, h, start_ip);

    if (cfg && cfg->emit_events) {
        struct rseqtop_event *e = event_start(RSEQTOP_EV_ABORT, t, tid, now);
        if (!e)
            return;
        e->start_ip = start_ip;
        e->abort_ip = abort_ip;
        e->cause = code;
        e->offset = (u32)offset;
        e->run = t->abort_run;
        bpf_get_current_comm(&e->comm, sizeof(e->comm));
        event_submit(e);
    }
}

/* A notify-resume: the thread returns to user space with its rseq fields
 * updated. Runs on every return after a context switch: hot state only. */
static __always_inline void updated(s32 cpu)
{
    struct rseqtop_hot *h = hot_entry();
    if (!h || h->ignored) {
        h = track_current(cpu, h);
        if (!h)
            return;
    }
    SLOT_ADD(slot_hot_of(h->slot), updates);
    h->updates++;
    if (h->cpu_id != cpu) {
        h->fresh.b[1] = 1;
        h->cpu_id = cpu;
    }
#ifndef RSEQTOP_EXIT_CLEARS
    /* Up to 6.18 an update ends a notify-resume (it follows the abort, if
     * any), but the kernel keeps its event mask until an abort consumes
     * it: causes seen before this notify-resume become "carried" (stale).
     * From 6.19 an update comes before the abort it may belong to, and
     * nothing outlives the return to user space: no carrying. */
    u32 fresh = h->fresh.w;
    if (fresh) {
        h->carried.w |= fresh;
        h->fresh.w = 0;
    }
#endif
}

/* Raw tracepoints where the arguments allow: no trace record is built,
 * which matters at the rate of rseq_update (once per context switch of
 * every rseq thread). bpfgen checks that the format's leading fields are
 * the prototype's arguments before it chooses this. */
#ifdef RAW_RSEQ_IP_FIXUP
int on_rseq_ip_fixup(struct bpf_raw_tracepoint_args *ctx)
{
    aborted(ctx, ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3], 0);
    return 0;
}
#else
int on_rseq_ip_fixup(struct tp_rseq_ip_fixup *args)
{
    aborted(args, args->regs_ip, args->start_ip, args->post_commit_offset, args->abort_ip, 0);
    return 1;
}
#endif

#ifdef TWIN_RSEQ_IP_FIXUP
int on_rseq_ip_fixup_twin(struct bpf_raw_tracepoint_args *ctx)
{
    aborted(ctx, ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3], 1);
    return 0;
}
#endif

#ifdef RAW_RSEQ_UPDATE
/* rseq_update runs in the thread's context on the CPU it returns on: its
 * cpu_id is this CPU (user space maps it to the node). */
int on_rseq_update(struct bpf_raw_tracepoint_args *ctx)
{
    updated(bpf_get_smp_processor_id());
    return 0;
}

#ifdef HAVE_RSEQ_UPDATE_MM_CID
/* mm_cid is only in the trace record. This regular tracepoint program is
 * attached only while a front end shows threads (Collector.want_mm_cid). */
int on_rseq_update_ids(struct tp_rseq_update *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (t)
        t->mm_cid = args->mm_cid;
    return 1;
}
#endif
#else
int on_rseq_update(struct tp_rseq_update *args)
{
    updated(args->cpu_id);
#ifdef HAVE_RSEQ_UPDATE_MM_CID
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (t)
        t->mm_cid = args->mm_cid;
#endif
    return 1;
}
#endif

#ifdef HAVE_SCHED_SWITCH
/* Who preempted: the task switched out now is the one that ran on this CPU
 * after the thread preempted here last (last_victim), so its own tid and
 * comm, no struct read, name that thread's preempter. It writes them into
 * this CPU's successor ring, where the victim's abort finds them by the
 * (CPU, number) its switch-out kept in its hot state: every switch costs a
 * per-CPU array lookup, a preemption's successor an array slot write, and
 * neither a hash lookup (the victim's record is looked up only to send a
 * preemption event). */
static __always_inline struct rseqtop_victim *note_successor(u32 cpu)
{
    int zero = 0;
    struct rseqtop_victim *v = last_victim.lookup(&zero);
    if (!v || !v->tid)
        return v;
    u32 victim = v->tid;
    v->tid = 0;
    u64 id = bpf_get_current_pid_tgid();
    /* The victim itself switching out again here: the switch to its
     * successor was not seen (a program run missed), so no preempter. */
    int seen = victim != (u32)id;
    char *name = 0;
    if (seen) {
        /* The name is most of the cost (measured: ~45 ns of ~90): fetched
         * when the task's slot in this CPU's name cache holds another task,
         * and again at every RSEQTOP_NAME_REFRESH-th use: a thread that
         * names itself after it first ran here (pthread_setname_np at its
         * start) kept its parent's name until another task took its slot
         * (one of the workload's 8 antagonists on 6.1: 359 of 2,523
         * preemptions under the name "rseq-workload"). */
        u32 n = (u32)id & (RSEQTOP_NAME_CACHE - 1);
        if (v->names[n].tid != (u32)id || !v->names[n].comm[0] ||
            ++v->names[n].uses >= RSEQTOP_NAME_REFRESH) {
            v->names[n].tid = (u32)id;
            v->names[n].uses = 0;
            /* zero first: on older kernels (6.1) the helper does not pad
             * (strscpy), and the name is part of the preempters key */
            __builtin_memset(v->names[n].comm, 0, sizeof(v->names[n].comm));
            bpf_get_current_comm(&v->names[n].comm, sizeof(v->names[n].comm));
        }
        name = v->names[n].comm;
        struct rseqtop_successor *s = successor_slot(cpu, v->seq);
        if (s) {
            s->tid = (u32)id;
            s->tgid = id >> 32;
            __builtin_memcpy(s->comm, name, sizeof(s->comm));
            asm volatile("" ::: "memory");
            s->seq = v->seq;
        }
    }
    struct rseqtop_thread *t = v->ts ? threads.lookup(&victim) : 0;
    if (t) {
        /* the preemption's event, now that its preempter is known */
        struct rseqtop_event *e = event_start(RSEQTOP_EV_PREEMPT, t, victim, v->ts);
        if (e) {
            e->next_tid = seen ? (u32)id : RSEQTOP_PREEMPTER_UNKNOWN;
            e->next_tgid = seen ? id >> 32 : RSEQTOP_PREEMPTER_UNKNOWN;
            __builtin_memcpy(e->comm, t->comm, sizeof(e->comm));
            if (name)
                __builtin_memcpy(e->next_comm, name, sizeof(e->next_comm));
            event_submit(e);
        }
    }
    v->ts = 0;
    return v;
}

/* Runs in the context of the task being switched out (prev), so its tid
 * needs no struct access. The kernel flags an rseq "preempt" event on every
 * switch-out: every switch-out is a pending cause, and the involuntary ones
 * (still runnable) are counted as preemptions, their successor noted. */
static __always_inline void switched_out(int runnable)
{
    u32 cpu = bpf_get_smp_processor_id();
#ifdef RSEQTOP_NO_PREEMPTERS
    /* the benchmark's baseline (benchmarks/bench.py --switch-cost) */
    struct rseqtop_victim *v = 0;
#else
    struct rseqtop_victim *v = note_successor(cpu);
#endif
    struct rseqtop_hot *h = current_hot();
    if (!h)
        return;
    note_cause(h, 0);
    h->pre_seq = 0;
    if (runnable) {
        SLOT_ADD(slot_hot_of(h->slot), preempts);
        h->preempts++;
        if (v) {
            u64 id = bpf_get_current_pid_tgid();
            /* numbers start at 1 (0: none) and skip 0 when they wrap */
            u32 seq = v->seq + 1;
            seq += !seq;
            v->seq = seq;
            v->tid = (u32)id;
            h->pre_cpu = cpu;
            h->pre_seq = seq;
            /* a config read per preemption of a tracked thread only */
            int zero = 0;
            struct rseqtop_config *cfg = config.lookup(&zero);
            if (timeline_wanted(cfg, id >> 32, RSEQTOP_EV_PREEMPT))
                v->ts = bpf_ktime_get_ns();
        }
    }
}

#ifdef RAW_SCHED_SWITCH
/* Raw tracepoint (5.18+ prototype: preempt, prev, next, prev_state): no
 * trace record is built, which matters at the context-switch rate. */
int on_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
    switched_out(ctx->args[0] || (u32)ctx->args[3] == 0);
    return 0;
}
#else
int on_sched_switch(struct tp_sched_switch *args)
{
    /* "R" or "R+": no state bit below TASK_REPORT_MAX */
    switched_out((args->prev_state & TASK_REPORT_MASK) == 0);
    return 1;
}
#endif
#endif

#ifdef HAVE_SCHED_MIGRATE_TASK
int on_sched_migrate_task(struct tp_sched_migrate_task *args)
{
    /* Fires in another task's context: key by the pid field. Only counted
     * here: the thread's next abort or update sees its new CPU (the pending
     * cause), without a write to another task's hot state. */
    if (args->orig_cpu == args->dest_cpu)
        return 1;
    u32 tid = args->pid;
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (!t)
        return 1;
    SLOT_ADD(slot_rare_of(t->slot), c.migrations);
    __sync_fetch_and_add(&t->c.migrations, 1);
    int zero = 0;
    struct rseqtop_config *cfg = config.lookup(&zero);
    if (!timeline_wanted(cfg, t->tgid, RSEQTOP_EV_MIGRATE))
        return 1;
    struct rseqtop_event *e = event_start(RSEQTOP_EV_MIGRATE, t, tid, bpf_ktime_get_ns());
    if (!e)
        return 1;
    e->from_cpu = args->orig_cpu;
    e->to_cpu = args->dest_cpu;
    __builtin_memcpy(e->comm, t->comm, sizeof(e->comm));
    event_submit(e);
    return 1;
}
#endif

#ifdef HAVE_SIGNAL_DELIVER
static __always_inline void signalled(u32 sig, int twin)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (!t)
        return;
    struct rseqtop_hot *h = hot_of(t);
    if (!h)
        return;
    if (twin && twin_done(h, TWIN_SIGNAL))
        return;
    twin_claim(h, TWIN_SIGNAL, twin);
    note_cause(h, 2);
    SLOT_ADD(slot_rare_of(t->slot), c.signals);
    t->c.signals++;
    t->last_signal = sig;
    own_event(t, RSEQTOP_EV_SIGNAL, sig);
}

#ifdef RAW_SIGNAL_DELIVER
int on_signal_deliver(struct bpf_raw_tracepoint_args *ctx)
{
    signalled((u32)ctx->args[0], 0); /* (int sig, siginfo, k_sigaction) */
    return 0;
}
#else
int on_signal_deliver(struct tp_signal_deliver *args)
{
    signalled(args->sig, 0);
    return 1;
}
#endif

#ifdef TWIN_SIGNAL_DELIVER
int on_signal_deliver_twin(struct bpf_raw_tracepoint_args *ctx)
{
    signalled((u32)ctx->args[0], 1);
    return 0;
}
#endif
#endif

#ifdef HAVE_CSD_FUNCTION_ENTRY
/* The membarrier RSEQ IPI runs ipi_rseq on the target CPU, with the
 * interrupted thread as current. csd_function_entry fires for every
 * cross-CPU function call, so the address test comes first. */
static __always_inline void csd_called(u64 func)
{
    if (func != IPI_RSEQ_ADDR)
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!tid)
        return;
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (!t)
        return;
    struct rseqtop_hot *h = hot_of(t);
    if (!h)
        return;
    note_cause(h, 3);
    SLOT_ADD(slot_rare_of(t->slot), c.membarrier_ipis);
    t->c.membarrier_ipis++;
    own_event(t, RSEQTOP_EV_MEMBARRIER, 0);
}

#ifdef RAW_CSD_FUNCTION_ENTRY
int on_csd_function_entry(struct bpf_raw_tracepoint_args *ctx)
{
    csd_called(ctx->args[0]); /* (smp_call_func_t func, call_single_data_t *csd) */
    return 0;
}
#else
int on_csd_function_entry(struct tp_csd_function_entry *args)
{
    csd_called((u64)args->func);
    return 1;
}
#endif
#endif

#ifdef HAVE_SCHED_PROCESS_EXIT
/* Whether generation 0 of process tgid has a slot: its death must then
 * bump the generation even if its last thread was never tracked, so that
 * user space sees it dead and gives the slot back. */
static __always_inline int has_slot(u32 tgid)
{
#ifdef HOT_TASK_STORAGE
    struct rseqtop_proc_key pk = {.tgid = tgid, .gen = 0};
    return proc_slot.lookup(&pk) != 0;
#else
    return 0;
#endif
}

/* dst += sign * src, but for migrations (other tasks' programs add to
 * those at any time: the caller reads them once) */
static __always_inline void add_counts(struct rseqtop_counts *dst, struct rseqtop_counts *src, u64 migrations,
                                       s64 sign)
{
    __sync_fetch_and_add(&dst->aborts, sign * src->aborts);
    __sync_fetch_and_add(&dst->updates, sign * src->updates);
    __sync_fetch_and_add(&dst->preempts, sign * src->preempts);
    __sync_fetch_and_add(&dst->migrations, sign * migrations);
    __sync_fetch_and_add(&dst->signals, sign * src->signals);
    __sync_fetch_and_add(&dst->membarrier_ipis, sign * src->membarrier_ipis);
#pragma unroll
    for (int i = 0; i < RSEQTOP_NCODES; i++)
        if (src->causes[i])
            __sync_fetch_and_add(&dst->causes[i], sign * src->causes[i]);
}

/* An exiting thread's counts leave its slot (they go to retired), and it
 * counts into the slot no more: its last switch-outs come after this. */
static __always_inline void leave_slot(u32 tid, struct rseqtop_thread *t, struct rseqtop_hot *h, u64 migrations)
{
#ifdef HOT_TASK_STORAGE
    aborters.delete(&tid);
    if (h)
        h->slot = 0;
    struct rseqtop_live *r = slot_rare_of(t->slot);
    if (r) {
        add_counts(&r->c, &t->c, migrations, -1);
        __sync_fetch_and_add(&r->threads, -1);
    }
    struct rseqtop_slot_hot *v = slot_hot_of(t->slot);
    if (v) {
        __sync_fetch_and_add(&v->updates, -t->c.updates);
        __sync_fetch_and_add(&v->preempts, -t->c.preempts);
    }
#endif
}

#ifdef TWIN_SCHED_PROCESS_EXIT
/* The regular program's claims on exits, for its twin to give back: tid ->
 * the exiting task (so that a claim left by a skipped twin is not taken
 * for a later thread's with the same tid). */
BPF_TABLE("lru_hash", u32, u64, exit_claims, 4096);
#endif

/* Runs once per exiting thread, in its own context: move its counts into
 * its process's totals so that nothing is lost. last: its process is gone
 * with it. twin: run by the raw twin, after the regular program. */
static __always_inline void thread_exited(int last, int twin)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
#ifdef TWIN_SCHED_PROCESS_EXIT
    u64 task = bpf_get_current_task();
    if (twin) {
        u64 *claim = exit_claims.lookup(&tid);
        if (claim && *claim == task) {
            exit_claims.delete(&tid);
            return;
        }
    } else {
        exit_claims.update(&tid, &task);
    }
#endif
    struct rseqtop_thread *t = threads.lookup(&tid);
    int tracked = t != 0;
    if (t) {
        struct rseqtop_hot *h = hot_of(t);
        if (h) {
#ifdef HOT_TASK_STORAGE
            __builtin_memcpy(&t->h, h, sizeof(t->h));
#endif
            t->c.updates = h->updates;
            t->c.preempts = h->preempts;
        }
        u64 migrations = t->c.migrations;
        leave_slot(tid, t, h, migrations);
        struct rseqtop_proc_key pk = {.tgid = tgid, .gen = t->gen};
        struct rseqtop_proc *p = procs.lookup(&pk);
        if (!p) {
            int zero = 0;
            struct rseqtop_proc *zp = zero_proc.lookup(&zero);
            p = zp ? procs.lookup_or_try_init(&pk, zp) : 0;
            if (!p)
                count(RSEQTOP_CNT_PROCS_DROPPED);
        }
        /* The name it dies with: threads rename themselves after creation. */
        bpf_get_current_comm(&t->comm, sizeof(t->comm));
        if (p) {
            add_counts(&p->retired, &t->c, migrations, 1);
            __sync_fetch_and_add(&p->exited_threads, 1);
            if (tid == tgid)
                __builtin_memcpy(p->comm, t->comm, sizeof(p->comm));
        }
        dead_threads.update(&tid, t);
        threads.delete(&tid);
        count(RSEQTOP_CNT_THREAD_EXITS);
    }
    if (last) {
        /* The process is gone: a later process with this pid is another
         * one and starts from zero. */
        u32 *g = proc_gen.lookup(&tgid);
        if (g) {
            __sync_fetch_and_add(g, 1);
        } else if (tracked || has_slot(tgid)) {
            u32 one = 1;
            if (proc_gen.insert(&tgid, &one) && !proc_gen.lookup(&tgid))
                count(RSEQTOP_CNT_PROCS_DROPPED);
        }
    }
}

int on_sched_process_exit(struct tp_sched_process_exit *args)
{
#ifdef HAVE_SCHED_PROCESS_EXIT_GROUP_DEAD
    thread_exited(args->group_dead, 0);
#else
    u64 id = bpf_get_current_pid_tgid();
    thread_exited((u32)id == id >> 32, 0); /* older kernels: the main thread's exit */
#endif
    return 1;
}

#ifdef TWIN_SCHED_PROCESS_EXIT
int on_sched_process_exit_twin(struct bpf_raw_tracepoint_args *ctx)
{
    thread_exited((u8)ctx->args[1], 1); /* (struct task_struct *p, bool group_dead), p current */
    return 0;
}
#endif
#endif

#if defined(HAVE_SYS_RSEQ) || defined(HAVE_SYS_MEMBARRIER)
/* A counted system call in flight, enter -> exit: one map for both kinds,
 * so that the exit twin (below) looks up one entry per system call. */
#define CALL_RSEQ 1     /* arg = flags, len = rseq_len */
#define CALL_MEMBARRIER 2 /* arg = cmd */
struct call { u64 ts; u32 kind; u32 arg; u32 len; u32 pad; };
BPF_HASH(calls, u32, struct call, 4096);

/* Recorded by the regular program; its twin only adds a missing entry
 * (insert), so that it never moves a call's start. */
static __always_inline void call_entered(u32 kind, u32 arg, u32 len, int twin)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!watched(id >> 32))
        return;
    u32 tid = (u32)id;
    struct call c = {.ts = bpf_ktime_get_ns(), .kind = kind, .arg = arg, .len = len};
    if (twin)
        calls.insert(&tid, &c);
    else
        calls.update(&tid, &c);
}

/* Handled once: whichever exit program deletes the entry counts it. */
static __always_inline void call_returned(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    struct call *found = calls.lookup(&tid);
    if (!found)
        return;
    struct call c = *found;
    if (calls.delete(&tid))
        return;
    if (c.kind == CALL_RSEQ) {
        u16 kind = (c.arg & 1) ? RSEQTOP_PC_RSEQ_UNREG : RSEQTOP_PC_RSEQ_REG;
        u16 abi = c.len > RSEQTOP_RSEQ_LEGACY_LEN ? RSEQTOP_ABI_V2 : RSEQTOP_ABI_LEGACY;
        pcount(tgid, kind, abi, ret < 0 ? (u32)-ret : 0);
        if (ret == 0 && kind == RSEQTOP_PC_RSEQ_REG)
            current_thread(tid, tgid);
    } else {
        u16 cmd = (u16)c.arg;
        pcount(tgid, RSEQTOP_PC_MB_CALL, cmd, 0);
        if (ret < 0)
            pcount(tgid, RSEQTOP_PC_MB_ERROR, cmd, (u32)-ret);
        pcount(tgid, RSEQTOP_PC_MB_LATENCY, cmd, bpf_log2l(bpf_ktime_get_ns() - c.ts));
    }
}
#endif

#ifdef HAVE_SYS_RSEQ
int on_sys_enter_rseq(struct tp_sys_enter_rseq *args)
{
    call_entered(CALL_RSEQ, (u32)args->flags, (u32)args->rseq_len, 0);
    return 1;
}

int on_sys_exit_rseq(struct tp_sys_exit_rseq *args)
{
    call_returned(args->ret);
    return 1;
}
#endif

#ifdef HAVE_SYS_MEMBARRIER
int on_sys_enter_membarrier(struct tp_sys_enter_membarrier *args)
{
    call_entered(CALL_MEMBARRIER, (u32)args->cmd, 0, 0);
    return 1;
}

int on_sys_exit_membarrier(struct tp_sys_exit_membarrier *args)
{
    call_returned(args->ret);
    return 1;
}
#endif

/* Syscall twins (6.19+, x86_64): raw programs on raw_syscalls:sys_enter
 * (struct pt_regs *regs, long id) and sys_exit (regs, long ret), run after
 * the regular syscall events' programs on every system call; the enter
 * twin reads the arguments from the saved user registers. */
#if defined(TWIN_SYS_ENTER_RSEQ) || defined(TWIN_SYS_ENTER_MEMBARRIER)
static __always_inline u32 syscall_arg(struct bpf_raw_tracepoint_args *ctx, int offset)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx->args[0] + offset);
    return (u32)v;
}

int on_sys_enter_twin(struct bpf_raw_tracepoint_args *ctx)
{
    long nr = ctx->args[1];
#ifdef TWIN_SYS_ENTER_RSEQ
    if (nr == NR_RSEQ) /* rseq(rseq, rseq_len, flags, sig) */
        call_entered(CALL_RSEQ, syscall_arg(ctx, SYSCALL_ARG2_OFFSET), syscall_arg(ctx, SYSCALL_ARG1_OFFSET), 1);
#endif
#ifdef TWIN_SYS_ENTER_MEMBARRIER
    if (nr == NR_MEMBARRIER) /* membarrier(cmd, flags, cpu_id) */
        call_entered(CALL_MEMBARRIER, syscall_arg(ctx, SYSCALL_ARG0_OFFSET), 0, 1);
#endif
    return 0;
}

int on_sys_exit_twin(struct bpf_raw_tracepoint_args *ctx)
{
    call_returned((long)ctx->args[1]);
    return 0;
}
#endif

#ifdef HOT_TASK_STORAGE
BPF_PERCPU_ARRAY(zero_live, struct rseqtop_live, 1);
BPF_HASH(proc_live, struct rseqtop_proc_key, struct rseqtop_live, RSEQTOP_MAX_PROCS);

/* One pass over every task, in place of a pidfd and a lookup per thread in
 * user space, run when a poll needs it: sums each live tracked thread
 * without a process slot (its record and its hot state) into its
 * process's proc_live entry, stamped with this pass, and writes out the
 * threads user space asked for (config iter_threads) as a struct
 * rseqtop_hot_out followed by the thread's record. Only pointers of the
 * task are used, never a field. */
BPF_ITER(task)
{
    struct task_struct *task = ctx->task;
    if (!task)
        return 0;
    struct rseqtop_hot *h = hot.task_storage_get(task, 0, 0);
    if (!h || h->ignored || !h->tid)
        return 0;
    u32 tid = h->tid;
    struct rseqtop_thread *t = threads.lookup(&tid);
    int zero = 0;
    struct rseqtop_config *cfg = config.lookup(&zero);
    if (!t || !t->tgid || !cfg)
        return 0;
    /* When a thread's output overflows the iterator's buffer, the kernel
     * runs the program again for it at the next read(2): sum it once. */
    u32 pass = (u32)cfg->iter_pass;
    struct rseqtop_live *z = !h->slot && h->summed_pass != pass ? zero_live.lookup(&zero) : 0;
    struct rseqtop_proc_key pk = {.tgid = t->tgid, .gen = t->gen};
    struct rseqtop_live *l = z ? proc_live.lookup_or_try_init(&pk, z) : 0;
    if (z && !l)
        count(RSEQTOP_CNT_LIVE_DROPPED);
    if (l) {
        h->summed_pass = pass;
        if (l->pass != cfg->iter_pass) {
            __builtin_memset(l, 0, sizeof(*l));
            l->pass = cfg->iter_pass;
        }
        l->threads++;
        l->c.aborts += t->c.aborts;
        l->c.updates += h->updates;
        l->c.preempts += h->preempts;
        l->c.migrations += t->c.migrations;
        l->c.signals += t->c.signals;
        l->c.membarrier_ipis += t->c.membarrier_ipis;
        /* causes only with aborts: most threads have none, and their
         * cause slots are four cache lines of a pass that is memory bound */
        if (t->c.aborts) {
#pragma unroll
            for (int i = 0; i < RSEQTOP_NCODES; i++)
                l->c.causes[i] += t->c.causes[i];
        }
    }
    u32 want = cfg->iter_threads;
    if (want == RSEQTOP_ITER_THREADS_ALL || (want == RSEQTOP_ITER_THREADS_ABORTING && t->c.aborts)) {
        struct rseqtop_hot_out out = {.tid = tid, .cpu_id = h->cpu_id, .updates = h->updates,
                                      .preempts = h->preempts};
        bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
        bpf_seq_write(ctx->meta->seq, t, sizeof(*t));
    }
    return 0;
}
#endif

#ifdef RSEQTOP_UPROBES
/* A uprobe at a verified abort handler (rseqtop.collect.uprobes attaches
 * it, pid -1: the filter applies here). The IP is the handler's address:
 * a hit right after the thread's kernel abort there is that abort; any
 * other is the section's own retry. Counted for tracked threads only, as
 * kernel aborts are. */
int on_abort_handler(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct rseqtop_thread *t = threads.lookup(&tid);
    if (!t || !t->tgid)
        return 0;
    u64 ip = PT_REGS_IP(ctx);
    struct rseqtop_handler_key k = {.tgid = id >> 32, .gen = t->gen, .tid = tid, .abort_ip = ip};
    struct rseqtop_handler zero = {};
    struct rseqtop_handler *v = handlers.lookup_or_try_init(&k, &zero);
    if (!v) {
        count(RSEQTOP_CNT_HANDLERS_DROPPED);
        return 0;
    }
    v->hits++;
    u64 *pending = handler_pending.lookup(&tid);
    if (pending && *pending == ip) {
        v->kernel++;
        handler_pending.delete(&tid);
    }
    return 0;
}
#endif
