// SPDX-License-Identifier: Apache-2.0
/*
 * rseq-workload: the rseq ABI side. The critical sections (x86-64 assembly,
 * their descriptors and abort handlers), the per-thread counters and rseq
 * area they use, and the registration of the workload's own rseq areas.
 */
#include "workload.h"

/* ------------------------------------------------------------------ */
/* Operations                                                          */

const char *const op_names[NR_OPS] = {
	"counter", "spinlock", "push", "pop", "delay",
};
const char *const op_symbols[NR_OPS] = {
	"rseq_op_counter", "rseq_op_spinlock_lock", "rseq_op_push", "rseq_op_pop",
	"rseq_op_delay",
};

__thread struct tstats t_stats;
/* Set on the way from a failed cpu_id check to abort_ip: the handler's
 * next run is the section's own retry, not a kernel abort. No kernel abort
 * can come in between: label 7 is outside [start_ip, post_commit_ip). */
static __thread int t_user_abort;

/* Offset of the rseq area from the thread pointer (%fs base): glibc's
 * __rseq_offset, or the offset of our own TLS area. Same for all threads.
 * The own area is OWN_AREA_SIZE bytes aligned to OWN_AREA_SIZE, so that one
 * area serves a legacy registration (32 bytes, 32-aligned) and a V2 one
 * (up to OWN_AREA_SIZE bytes, aligned to AT_RSEQ_ALIGN <= OWN_AREA_SIZE). */
ptrdiff_t g_rseq_offset;
static __thread union {
	struct rseq rs;
	char bytes[OWN_AREA_SIZE];
} own_area __attribute__((aligned(OWN_AREA_SIZE)));

/*
 * Critical sections. Layout of each (as in rseq-x86.h):
 *   descriptor (struct rseq_cs) in section __rseq_cs, 32-byte aligned,
 *   pointer to it in __rseq_cs_ptr_array;
 *   store &descriptor into rseq->rseq_cs; label 1 (start_ip);
 *   compare the cpu read before the section with rseq->cpu_id, on mismatch
 *   jump to label 7 in __rseq_failure, which goes on to C label "mismatch"
 *   (NOT the abort label), or with --mismatch-to-abort sets t_user_abort and
 *   jumps to abort_ip as librseq's sections do (a uprobe on the handler then
 *   sees both kinds; the handler tells them apart by the flag);
 *   ... ; commit store; label 2 (start_ip + post_commit_offset);
 *   in section __rseq_failure: "ud1" prefix bytes, .long RSEQ_SIG, label 4
 *   (abort_ip), jump to C label "abort".
 * Each descriptor also gets a named symbol (rseq_cs_desc_<op>) so that the
 * summary can print the run-time (relocated) start_ip / abort_ip.
 */
#define __str1(x) #x
#define __str(x) __str1(x)

#define RSEQ_DEFINE_TABLE(name)                                            \
	".pushsection __rseq_cs, \"aw\"\n\t"                               \
	".balign 32\n\t"                                                   \
	".globl rseq_cs_desc_" name "\n\t"                                 \
	".hidden rseq_cs_desc_" name "\n\t"                                \
	".type rseq_cs_desc_" name ", @object\n\t"                         \
	".size rseq_cs_desc_" name ", 32\n\t"                              \
	"rseq_cs_desc_" name ":\n\t"                                       \
	"3:\n\t"                                                           \
	".long 0x0, 0x0\n\t"                                               \
	".quad 1f, (2f - 1f), 4f\n\t"                                      \
	".popsection\n\t"                                                  \
	".pushsection __rseq_cs_ptr_array, \"aw\"\n\t"                     \
	".quad 3b\n\t"                                                     \
	".popsection\n\t"

#define RSEQ_START                                                         \
	"leaq 3b(%%rip), %%rax\n\t"                                        \
	"movq %%rax, %%fs:8(%[rseq_offset])\n\t"                           \
	"1:\n\t"

#define RSEQ_CMP_CPU                                                       \
	"cmpl %[cpu_id], %%fs:4(%[rseq_offset])\n\t"                       \
	"jnz 7f\n\t"

#define RSEQ_END_ABORT                                                     \
	"2:\n\t"                                                           \
	".pushsection __rseq_failure, \"ax\"\n\t"                          \
	"7:\n\t"                                                           \
	"cmpl $0, %[to_abort]\n\t"                                         \
	"je %l[mismatch]\n\t"                                              \
	"movl $1, %[user_abort]\n\t"                                       \
	"jmp 4f\n\t"                                                       \
	".byte 0x0f, 0xb9, 0x3d\n\t"                                       \
	".long " __str(WL_RSEQ_SIG) "\n\t"                                 \
	"4:\n\t"                                                           \
	"jmp %l[abort]\n\t"                                                \
	".popsection\n\t"

#define RSEQ_MISMATCH_OPERANDS                                             \
	[to_abort] "m"(cfg.mismatch_to_abort), [user_abort] "m"(t_user_abort)

/* The handler's first C statement: a mismatch sent here is not an abort. */
#define USER_ABORT_IS_MISMATCH                                             \
	do {                                                               \
		if (t_user_abort) {                                        \
			t_user_abort = 0;                                  \
			return RS_MISMATCH;                                \
		}                                                          \
	} while (0)

#define RSEQ_FN __attribute__((noinline, noclone, used))

struct rseq_cs;
extern const struct rseq_cs rseq_cs_desc_counter, rseq_cs_desc_spinlock,
	rseq_cs_desc_push, rseq_cs_desc_pop, rseq_cs_desc_delay;

/* counter: per-CPU counter add. */
RSEQ_FN int rseq_op_counter(intptr_t *v, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("counter")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[v], %%rbx\n\t"
		"addq $1, %%rbx\n\t"
		"movq %%rbx, %[v]\n\t"      /* commit */
		RSEQ_END_ABORT
		: /* no outputs */
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), RSEQ_MISMATCH_OPERANDS, [v] "m"(*v)
		: "memory", "cc", "rax", "rbx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	USER_ABORT_IS_MISMATCH;
	t_stats.aborts[OP_COUNTER]++;  /* reached only through abort_ip */
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* spinlock: take the per-CPU lock word with cmpeqv-store (0 -> 1). */
RSEQ_FN int rseq_op_spinlock_lock(intptr_t *lock, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("spinlock")
		RSEQ_START
		RSEQ_CMP_CPU
		"cmpq $0, %[v]\n\t"
		"jnz %l[cmpfail]\n\t"
		"movq $1, %[v]\n\t"         /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), RSEQ_MISMATCH_OPERANDS, [v] "m"(*lock)
		: "memory", "cc", "rax"
		: abort, mismatch, cmpfail);
	return RS_COMMIT;
abort:
	USER_ABORT_IS_MISMATCH;
	t_stats.aborts[OP_SPINLOCK]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
cmpfail:
	return RS_CMPFAIL;
}

/* push: node->next = head; head = node (commit). */
RSEQ_FN int rseq_op_push(struct node **head, struct node *node, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("push")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[head], %%rbx\n\t"
		"movq %%rbx, (%[node])\n\t" /* node->next (node is still private) */
		"movq %[node], %[head]\n\t" /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), RSEQ_MISMATCH_OPERANDS,
		  [head] "m"(*head), [node] "r"(node)
		: "memory", "cc", "rax", "rbx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	USER_ABORT_IS_MISMATCH;
	t_stats.aborts[OP_PUSH]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* pop: n = head; if n == NULL fail; *out = n; head = n->next (commit). */
RSEQ_FN int rseq_op_pop(struct node **head, struct node **out, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("pop")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[head], %%rbx\n\t"
		"testq %%rbx, %%rbx\n\t"
		"jz %l[cmpfail]\n\t"
		"movq %%rbx, %[out]\n\t"
		"movq (%%rbx), %%rcx\n\t"   /* next (offsetof(struct node, next) == 0) */
		"movq %%rcx, %[head]\n\t"   /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), RSEQ_MISMATCH_OPERANDS,
		  [head] "m"(*head), [out] "m"(*out)
		: "memory", "cc", "rax", "rbx", "rcx"
		: abort, mismatch, cmpfail);
	return RS_COMMIT;
abort:
	USER_ABORT_IS_MISMATCH;
	t_stats.aborts[OP_POP]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
cmpfail:
	return RS_CMPFAIL;
}

/* delay: spin `loops` iterations inside the section, then add to a counter. */
RSEQ_FN int rseq_op_delay(intptr_t *v, long loops, int cpu)
{
	__asm__ __volatile__ goto(
		RSEQ_DEFINE_TABLE("delay")
		RSEQ_START
		RSEQ_CMP_CPU
		"movq %[loops], %%rcx\n\t"
		"testq %%rcx, %%rcx\n\t"
		"jz 6f\n\t"
		"5:\n\t"
		"decq %%rcx\n\t"
		"jnz 5b\n\t"
		"6:\n\t"
		"movq %[v], %%rbx\n\t"
		"addq $1, %%rbx\n\t"
		"movq %%rbx, %[v]\n\t"      /* commit */
		RSEQ_END_ABORT
		:
		: [cpu_id] "r"(cpu), [rseq_offset] "r"(g_rseq_offset), RSEQ_MISMATCH_OPERANDS, [v] "m"(*v),
		  [loops] "r"(loops)
		: "memory", "cc", "rax", "rbx", "rcx"
		: abort, mismatch);
	return RS_COMMIT;
abort:
	USER_ABORT_IS_MISMATCH;
	t_stats.aborts[OP_DELAY]++;
	return RS_ABORT;
mismatch:
	return RS_MISMATCH;
}

/* The descriptors, read back as struct cs_view by the summary. */
const void *const op_desc[NR_OPS] = {
	&rseq_cs_desc_counter, &rseq_cs_desc_spinlock, &rseq_cs_desc_push,
	&rseq_cs_desc_pop, &rseq_cs_desc_delay,
};

/* ------------------------------------------------------------------ */
/* Registration                                                        */

/* Registration bookkeeping. */
const char *reg_mode = "glibc";
int own_mode;             /* reg_mode is "own" */
unsigned int reg_size;
unsigned int reg_len;     /* rseq_len passed to rseq(2), by us or by glibc */
unsigned long aux_feature_size, aux_align;  /* 0 before Linux 6.3 */
atomic_long own_registrations, own_unregistrations;
long probe_registrations; /* the main thread's availability check */

/* Register this thread's own area with reg_len bytes (32, or the V2 length):
 * 0 or errno. Not counted: callers count what they need. */
int own_rseq_register(void)
{
	memset(&own_area, 0, sizeof(own_area));
	own_area.rs.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
	if (syscall(__NR_rseq, &own_area, reg_len, 0, WL_RSEQ_SIG) != 0)
		return errno;
	return 0;
}

/* The kernel refuses an unregistration whose length differs from the
 * registration's (EINVAL): always pass reg_len. */
int own_rseq_unregister(void)
{
	return syscall(__NR_rseq, &own_area, reg_len, RSEQ_FLAG_UNREGISTER, WL_RSEQ_SIG) == 0
		? 0 : errno;
}

int register_own_rseq(void)
{
	int err = own_rseq_register();

	if (err)
		return err;
	atomic_fetch_add(&own_registrations, 1);
	return 0;
}

void unregister_own_rseq(void)
{
	errno = own_rseq_unregister();
	if (errno == 0)
		atomic_fetch_add(&own_unregistrations, 1);
	else
		fprintf(stderr, PROG ": warning: rseq unregistration failed: %s\n",
			strerror(errno));
}

/*
 * The V2 registration length: at least AT_RSEQ_FEATURE_SIZE (so that it
 * covers every field the kernel supports) and a multiple of AT_RSEQ_ALIGN,
 * but never 32, which 7.1+ kernels take for a legacy registration. With the
 * 6.3 to 7.0 values (feature size 28, alignment 32) rounding up alone gives
 * 32, so the length becomes the next multiple, 64. Kernels 6.3+ accept any
 * length != 32 that is >= the feature size in an area aligned to
 * AT_RSEQ_ALIGN. Exits 1 when the kernel is too old or the length does not
 * fit the TLS area.
 */
static unsigned int v2_rseq_len(void)
{
	unsigned long need = aux_feature_size > ORIG_RSEQ_LEN ? aux_feature_size : ORIG_RSEQ_LEN + 1;
	unsigned long len;

	if (!aux_feature_size)
		fatal("--rseq-abi v2: this kernel is too old for extended rseq registrations "
		      "(no AT_RSEQ_FEATURE_SIZE in the auxiliary vector; needs Linux 6.3+)");
	if (!aux_align || aux_align > OWN_AREA_SIZE || OWN_AREA_SIZE % aux_align)
		fatal("--rseq-abi v2: AT_RSEQ_ALIGN is %lu, the workload's rseq area is aligned "
		      "to %d bytes", aux_align, OWN_AREA_SIZE);
	len = (need + aux_align - 1) / aux_align * aux_align;
	if (len > OWN_AREA_SIZE)
		fatal("--rseq-abi v2: the kernel's feature size %lu needs a %lu-byte registration, "
		      "more than the workload's %d-byte rseq area", aux_feature_size, len,
		      OWN_AREA_SIZE);
	return (unsigned int)len;
}

void setup_registration(void)
{
	aux_feature_size = getauxval(AT_RSEQ_FEATURE_SIZE);
	aux_align = getauxval(AT_RSEQ_ALIGN);
	if (__rseq_size > 0) {
		reg_mode = "glibc";
		reg_size = __rseq_size;
		/* glibc passes the feature size it found, but at least the
		 * original 32 bytes, to rseq(2) */
		reg_len = __rseq_size > ORIG_RSEQ_LEN ? __rseq_size : ORIG_RSEQ_LEN;
		g_rseq_offset = __rseq_offset;
		return;
	}
	reg_mode = "own";
	own_mode = 1;
	reg_size = sizeof(struct rseq);
	reg_len = cfg.rseq_v2 ? v2_rseq_len() : ORIG_RSEQ_LEN;
	g_rseq_offset = (char *)&own_area - (char *)__builtin_thread_pointer();
	/* Try once in the main thread so that a kernel without rseq fails early
	 * with a clear message; unregister right away (workers register their
	 * own areas, and only those are counted). */
	errno = own_rseq_register();
	if (errno)
		fatal("rseq registration (%u bytes) failed: %s (errno %d, %s); does this kernel "
		      "have CONFIG_RSEQ?", reg_len, strerrorname_np(errno) ?: "?", errno,
		      strerror(errno));
	probe_registrations = 1;
	errno = own_rseq_unregister();
	if (errno)
		fatal("rseq unregistration (%u bytes) failed: %s (errno %d, %s)", reg_len,
		      strerrorname_np(errno) ?: "?", errno, strerror(errno));
}
