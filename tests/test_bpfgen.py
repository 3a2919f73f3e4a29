"""Code generation from tracepoint format files, including older kernels'."""

from pathlib import Path

import pytest

from rseqtop.errors import UserError
from rseqtop.kernel import bpfgen, tracefs

DATA = Path(__file__).parent / "data"


VERSIONS = {"tracefs-6.18": (6, 18), "tracefs-5.15": (5, 15)}


def plan_for(name, ipi=0xFFFFFFFF81000000, **kw):
    fs = tracefs.TraceFS(DATA / name)
    kw.setdefault("kernel_version", VERSIONS[name])
    return bpfgen.plan(fs.format, ipi, **kw)


def test_current_kernel_format_uses_every_probe():
    p = plan_for("tracefs-6.18", syscalls=True)
    assert len(p.attach) == len(bpfgen.PROBES) and not p.missing
    assert p.defines["HAVE_RSEQ_UPDATE_MM_CID"] == 1 and p.defines["HAVE_CSD_FUNCTION_ENTRY"] == 1
    assert p.defines["TASK_REPORT_MASK"] == "0xff"
    assert p.defines["HAVE_SCHED_PROCESS_EXIT_GROUP_DEAD"] == 1
    assert "struct tp_rseq_ip_fixup {" in p.structs


def test_syscall_tracepoints_only_when_asked():
    p = plan_for("tracefs-6.18")
    assert not any(e in bpfgen.SYSCALL_EVENTS for _, e in p.attach)
    assert not p.missing, "not asked for is not missing"
    assert "HAVE_SYS_MEMBARRIER" not in p.defines and "HAVE_SYS_RSEQ" not in p.defines
    assert len(p.attach) == len(bpfgen.PROBES) - len(bpfgen.SYSCALL_EVENTS)


def test_old_kernel_without_csd_and_with_cpu_id_only_update():
    p = plan_for("tracefs-5.15")
    assert not p.has("csd_function_entry")
    assert any("membarrier cause unavailable" in m for m in p.missing)
    assert "HAVE_RSEQ_UPDATE_MM_CID" not in p.defines and "HAVE_RSEQ_UPDATE_NODE_ID" not in p.defines
    assert "mm_cid" not in p.structs


def test_missing_kallsyms_symbol_drops_csd_with_reason():
    p = plan_for("tracefs-6.18", ipi=None)
    assert not p.has("csd_function_entry")
    assert any("ipi_rseq" in m for m in p.missing)


def test_struct_offsets_follow_the_format():
    fmt = tracefs.TraceFS(DATA / "tracefs-6.18").format("sched", "sched_switch")
    text = bpfgen.arg_struct(fmt, ("prev_pid", "prev_state"))
    # prev_pid at 24 (after 24 bytes of padding), prev_state (long) at 32
    assert "u8 __pad0[24];" in text and "s32 prev_pid;" in text and "u8 __pad1[4];" in text and "s64 prev_state;" in text


def test_missing_required_tracepoint_is_a_user_error(tmp_path):
    (tmp_path / "events").mkdir()
    fs = tracefs.TraceFS(tmp_path)
    with pytest.raises(UserError, match="rseq:rseq_ip_fixup"):
        bpfgen.plan(fs.format, None)


def test_half_a_syscall_pair_is_dropped(tmp_path):
    import shutil

    shutil.copytree(DATA / "tracefs-6.18", tmp_path / "t")
    shutil.rmtree(tmp_path / "t/events/syscalls/sys_exit_membarrier")
    p = bpfgen.plan(tracefs.TraceFS(tmp_path / "t").format, 1, syscalls=True)
    assert p.has("sys_enter_rseq")
    assert not p.has("sys_enter_membarrier") and "HAVE_SYS_MEMBARRIER" not in p.defines


def test_sizes_come_in_as_defines():
    p = plan_for("tracefs-6.18", sizes={"RSEQTOP_MAX_THREADS": 16})
    assert p.defines["RSEQTOP_MAX_THREADS"] == 16
    assert "#define RSEQTOP_MAX_THREADS 16" in bpfgen.source(p)


def test_raw_tracepoints_where_the_prototype_allows():
    new = plan_for("tracefs-6.18")
    assert new.raw == ("rseq_ip_fixup", "rseq_update", "sched_switch", "signal_deliver", "csd_function_entry")
    assert new.mm_cid_on_demand  # raw rseq_update: mm_cid only through the regular tracepoint
    old = plan_for("tracefs-5.15")
    # sched_switch gained prev_state as an argument in 5.18; csd events in 6.3
    assert old.raw == ("rseq_ip_fixup", "rseq_update", "signal_deliver")
    assert "RAW_SCHED_SWITCH" not in old.defines
    assert not old.mm_cid_on_demand  # no mm_cid in this kernel at all
    assert plan_for("tracefs-6.18", kernel_version=(4, 16)).raw == ()


def test_from_6_19_cause_rules_and_no_raw_tracepoint_in_preemptible_context():
    """6.19+: the kernel clears its rseq event on every return to user space
    (RSEQTOP_EXIT_CLEARS), and tracepoint programs may be preempted, so the
    events that fire in preemptible context use regular tracepoints (a
    preempted raw program makes the kernel skip the next run on that CPU)."""
    new = plan_for("tracefs-6.18", kernel_version=(7, 2))
    assert new.defines["RSEQTOP_EXIT_CLEARS"] == 1
    assert new.raw == ("rseq_update", "sched_switch", "csd_function_entry")
    assert "RAW_RSEQ_IP_FIXUP" not in new.defines and "RAW_SIGNAL_DELIVER" not in new.defines
    old = plan_for("tracefs-6.18", kernel_version=(6, 18))
    assert "RSEQTOP_EXIT_CLEARS" not in old.defines and "rseq_ip_fixup" in old.raw


def test_from_6_19_preemptible_events_get_a_raw_twin_attached_after_the_regular_program():
    """The regular program is skipped while a bpf(2) map operation on its
    CPU is preempted, the raw one while its own earlier run there is: each
    event gets both, the regular one attached (and so run) first, so that
    the twin can give back its claim (see "Twins" in the BPF program). A
    thread's exit is one such event: losing it loses the thread."""
    new = plan_for("tracefs-6.18", kernel_version=(7, 2))
    assert new.twins == ("rseq_ip_fixup", "signal_deliver", "sched_process_exit")
    assert all(new.defines[f"TWIN_{e.upper()}"] == 1 for e in new.twins)
    order = [(e, raw, fn) for _, e, raw, fn in new.attachments()]
    for event in new.twins:
        regular = order.index((event, False, f"on_{event}"))
        assert order.index((event, True, f"on_{event}_twin")) > regular
    assert len(order) == len(new.attach) + 3
    assert not any(k.startswith("SYSCALL_ARG") for k in new.defines)  # no syscall events without --syscalls
    old = plan_for("tracefs-6.18", kernel_version=(6, 18))
    assert old.twins == () and not any(k.startswith("TWIN_") for k in old.defines)
    assert [fn for *_, fn in old.attachments()] == [f"on_{e}" for _, e in old.attach]


def test_syscall_events_share_one_raw_twin_per_raw_syscalls_tracepoint_where_the_registers_are_known():
    """bcc attaches one program to a raw tracepoint: rseq and membarrier
    share raw_syscalls:sys_enter's twin (and sys_exit's), which reads the
    arguments from the saved user registers, known on x86_64 only."""
    new = plan_for("tracefs-6.18", kernel_version=(7, 2), syscalls=True, machine="x86_64")
    syscall_twins = [(e, fn) for _, e, raw, fn in new.attachments() if raw and e.startswith("sys_")]
    assert syscall_twins == [("sys_enter", "on_sys_enter_twin"), ("sys_exit", "on_sys_exit_twin")]
    assert {"sys_enter_rseq", "sys_exit_rseq", "sys_enter_membarrier", "sys_exit_membarrier"} <= set(new.twins)
    assert (new.defines["NR_RSEQ"], new.defines["NR_MEMBARRIER"]) == (334, 324)
    assert new.defines["SYSCALL_ARG1_OFFSET"] == 104  # struct pt_regs .si: rseq's rseq_len
    other = plan_for("tracefs-6.18", kernel_version=(7, 2), syscalls=True, machine="riscv64")
    assert not any(e.startswith("sys_") for e in other.twins) and "NR_RSEQ" not in other.defines
    assert "sched_process_exit" in other.twins


def test_a_twinned_programs_skips_count_only_as_far_as_its_twin_missed_too():
    from rseqtop.collect.reader import unseen

    assert unseen({"on_rseq_ip_fixup": 9, "on_rseq_ip_fixup_twin": 2, "on_rseq_update": 3}) == 5
    assert unseen({"on_rseq_ip_fixup": 0, "on_rseq_ip_fixup_twin": 7}) == 0
    # a shared syscall twin bounds each of its regular programs' losses
    assert unseen({"on_sys_enter_rseq": 4, "on_sys_enter_membarrier": 1, "on_sys_enter_twin": 2}) == 3
    assert unseen({"on_rseq_ip_fixup": 4}) == 4


def test_process_slots_stay_within_their_memory_on_many_cpus(monkeypatch):
    """The per-CPU slot counts (16 bytes a slot and CPU) stay within
    SLOT_MEMORY, down to MIN_SLOTS; a size given wins."""
    for ncpus, want in ((2, 8192), (128, 8192), (256, 4096), (4096, bpfgen.MIN_SLOTS)):
        monkeypatch.setattr(bpfgen.bpfsys, "possible_cpus", lambda n=ncpus: n)
        assert plan_for("tracefs-6.18").defines["RSEQTOP_MAX_SLOTS"] == want, ncpus
    assert plan_for("tracefs-6.18", sizes={"RSEQTOP_MAX_SLOTS": 3}).defines["RSEQTOP_MAX_SLOTS"] == 3


def test_a_process_with_threads_in_a_slot_and_others_summed_by_the_iterator_is_one_record():
    from rseqtop.collect.reader import merge_live
    from rseqtop.collect.records import LiveRecord
    from rseqtop.model.snapshot import Counts

    merged = merge_live([LiveRecord(10, 0, 3, Counts(aborts=2, updates=5, causes=(("preempt", 2),))),
                         LiveRecord(11, 0, 1, Counts(updates=1)),
                         LiveRecord(10, 0, 2, Counts(aborts=1, updates=4, causes=(("signal", 1),)))])
    assert sorted(merged, key=lambda r: r.pid) == [
        LiveRecord(10, 0, 5, Counts(aborts=3, updates=9, causes=(("preempt", 2), ("signal", 1)))),
        LiveRecord(11, 0, 1, Counts(updates=1))]


def test_raw_needs_the_arguments_in_prototype_order(tmp_path):
    """If a kernel reordered rseq_ip_fixup's fields (and so, presumably, its
    prototype), reading raw arguments would misread them: use the record."""
    import shutil

    shutil.copytree(DATA / "tracefs-6.18", tmp_path / "t")
    f = tmp_path / "t/events/rseq/rseq_ip_fixup/format"
    text = f.read_text()
    text = text.replace("regs_ip;\toffset:8", "regs_ip;\toffset:16").replace("start_ip;\toffset:16", "start_ip;\toffset:8")
    f.write_text(text)
    p = bpfgen.plan(tracefs.TraceFS(tmp_path / "t").format, 1, kernel_version=(6, 18))
    assert "rseq_ip_fixup" not in p.raw and "rseq_update" in p.raw


@pytest.mark.parametrize("version", [(6, 18), (7, 2)], ids=["6.18-rules", "6.19+-rules"])
@pytest.mark.parametrize("hot_storage", [True, False], ids=["task-storage", "hash"])
@pytest.mark.parametrize("name", ["tracefs-6.18", "tracefs-5.15"])
def test_generated_programs_compile_and_load(bpf_ok, name, hot_storage, version):
    from rseqtop.kernel.bccimport import import_bcc, prepare_headers

    prepare_headers()
    bcc = import_bcc()
    p = plan_for(name, syscalls=True, hot_storage=hot_storage, kernel_version=version)
    b = bcc.BPF(text=bpfgen.source(p).encode())
    try:
        for _, event in p.attach:
            kind = bcc.BPF.RAW_TRACEPOINT if event in p.raw else bcc.BPF.TRACEPOINT
            b.load_func(f"on_{event}", kind)
        if p.mm_cid_on_demand:
            b.load_func("on_rseq_update_ids", bcc.BPF.TRACEPOINT)
    finally:
        b.cleanup()


def test_header_constants_parse():
    k = bpfgen.header_constants()
    assert k["RSEQTOP_CAUSE_STALE"] == 16 and k["RSEQTOP_NCODES"] == 32


def test_hot_state_in_task_storage_only_when_asked():
    assert plan_for("tracefs-6.18", hot_storage=True).defines["HOT_TASK_STORAGE"] == 1
    assert plan_for("tracefs-6.18", hot_storage=True).hot_storage
    assert "HOT_TASK_STORAGE" not in plan_for("tracefs-6.18").defines


def test_python_vocabulary_agrees_with_the_bpf_header():
    """Cause bits, the stale flag, registration ABIs: bpf/rseqtop.h is the
    source; the Python names must match it bit for bit."""
    from rseqtop.model.snapshot import ABI_NAMES, CAUSES, STALE_BIT

    k = bpfgen.header_constants()
    assert k["RSEQTOP_NCAUSES"] == len(CAUSES)
    for i, name in enumerate(CAUSES):
        assert k[f"RSEQTOP_CAUSE_{name.upper()}"] == 1 << i, name
    assert k["RSEQTOP_CAUSE_STALE"] == STALE_BIT and k["RSEQTOP_NCODES"] == STALE_BIT * 2
    assert {k[f"RSEQTOP_ABI_{name.upper()}"]: name for name in ABI_NAMES.values()} == ABI_NAMES
    assert set(bpfgen.CAUSE_EVENTS.values()) == set(CAUSES)


def test_doctor_checks_every_tracepoint_the_program_uses():
    from rseqtop.commands import doctor

    assert {(s, e) for s, e, *_ in bpfgen.PROBES} == {(s, e) for s, e, *_ in doctor.TRACEPOINTS}


def test_count_fields_are_the_bpf_counts_struct_everywhere():
    """struct rseqtop_counts in bpf/rseqtop.h is the source of the count
    fields; snapshots, rates and the exporter's counters follow it."""
    import dataclasses
    import re

    from rseqtop import paths
    from rseqtop.exporter import metrics
    from rseqtop.model import rates
    from rseqtop.model.snapshot import CAUSE_OF_FIELD, CAUSES, COUNT_FIELDS

    header = (paths.bpf_dir() / "rseqtop.h").read_text()
    body = re.search(r"struct rseqtop_counts \{(.*?)\};", header, re.S).group(1)
    scalars = tuple(re.findall(r"u64 (\w+);", body))
    assert scalars == COUNT_FIELDS
    assert tuple(f.name for f in dataclasses.fields(rates.Rates)) == COUNT_FIELDS
    assert set(metrics.COUNTERS) == set(COUNT_FIELDS)
    assert tuple(CAUSE_OF_FIELD.values()) == CAUSES and set(CAUSE_OF_FIELD) < set(COUNT_FIELDS)


def test_map_sizes_come_from_the_header_only():
    import re

    from rseqtop import paths
    from rseqtop.collect.loader import Probes

    sizes = bpfgen.default_sizes()
    program = (paths.bpf_dir() / "rseqtop.bpf.c").read_text()
    used = set(re.findall(r"\b(RSEQTOP_MAX_\w+|RSEQTOP_RINGBUF_PAGES)\b", program))
    assert used and used <= set(sizes)
    assert not re.search(r"#define RSEQTOP_MAX_", program), "map sizes are defined in rseqtop.h"
    assert set(Probes.MAP_SIZES.values()) <= set(sizes)
    p = plan_for("tracefs-6.18")
    assert {k: p.defines[k] for k in sizes} == sizes


def test_synthetic_source_lists_the_real_probes():
    from rseqtop.model import synthetic

    assert synthetic.PROBES == tuple(f"{s}:{e}" for s, e, *_ in bpfgen.PROBES)
