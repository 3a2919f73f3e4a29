"""Loading and attaching: generate the BPF program for this kernel, compile
it with bcc, attach it, write the filter configuration, and run the
new-site and event streams. With rseqtop.collect.attach (the loader
process of rseqtop.collect.handoff), the only module that imports bcc."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

from rseqtop.collect import slots
from rseqtop.collect.records import Setup
from rseqtop.errors import UserError
from rseqtop.kernel import bpfgen, bpfsys, tracefs
from rseqtop.kernel import facts as kernel
from rseqtop.kernel.bccimport import CFLAGS, import_bcc, prepare_headers
from rseqtop.kernel.facts import hot_storage_usable
from rseqtop.model.snapshot import pairs


def check_privileges() -> None:
    missing = kernel.missing_caps(kernel.effective_caps(), kernel.kernel_version())
    if missing:
        raise UserError(f"not privileged: missing {', '.join(missing)}; run as root (sudo) or see 'rseqtop doctor'")


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def compile_program(bcc, text: str):
    """bcc's BPF object for the program text (headers set up first)."""
    prepare_headers()
    try:
        return bcc.BPF(text=text.encode(), cflags=CFLAGS)
    except Exception as err:
        raise UserError(f"the BPF program failed to compile or load ({first_line(err)}); "
                        f"see 'rseqtop doctor'") from None


def attach_events(bpf, events: Iterable[tuple]) -> None:
    """Attach each (system, event, raw, program), in order (Plan.attachments)."""
    try:
        for system, event, raw, fn in events:
            if raw:
                bpf.attach_raw_tracepoint(tp=event, fn_name=fn)
            else:
                bpf.attach_tracepoint(tp=f"{system}:{event}", fn_name=fn)
    except Exception as err:
        raise UserError(f"attaching to tracepoints failed ({first_line(err)}); see 'rseqtop doctor'") from None


def fill_slots(bcc, bpf) -> None:
    """Give the kernel its process slots (rseqtop.collect.slots), before
    anything is attached: a thread tracked without one would make every
    poll pass over all tasks."""
    fd = bcc.lib.bpf_table_fd(bpf.module, b"free_slots")
    if fd >= 0:
        slots.fill(fd, int(bcc.lib.bpf_table_max_entries_id(bpf.module, bcc.lib.bpf_table_id(bpf.module,
                                                                                          b"free_slots"))))


def attach_task_iterator(bcc, bpf) -> Optional[int]:
    """The link fd of the task iterator that reads every thread's hot state
    at once; None where this kernel refuses it (each thread is then read
    through a pidfd, a few syscalls per thread and poll)."""
    try:
        fn = bpf.load_func("bpf_iter__task", bcc.BPF.TRACING)
        link = bcc.lib.bcc_iter_attach(fn.fd, None, 0)
    except Exception:
        return None
    return link if link >= 0 else None


class Probes:
    """One compiled and attached copy of rseqtop's BPF program."""

    # map -> the define of bpf/rseqtop.h that sizes it
    MAP_SIZES = {"threads": "RSEQTOP_MAX_THREADS", "dead_threads": "RSEQTOP_MAX_DEAD_THREADS",
                 "procs": "RSEQTOP_MAX_PROCS", "sites": "RSEQTOP_MAX_SITES", "offsets": "RSEQTOP_MAX_OFFSETS",
                 "pcounts": "RSEQTOP_MAX_PCOUNTS", "proc_live": "RSEQTOP_MAX_PROCS",
                 "proc_slot": "RSEQTOP_MAX_SLOTS", "handlers": "RSEQTOP_MAX_HANDLERS",
                 "preempters": "RSEQTOP_MAX_PREEMPTERS"}

    def __init__(self, sizes: Optional[dict] = None, syscalls: bool = False, tracefs_root: Optional[Path] = None,
                 uprobes: bool = False, stacks: bool = False):
        self.constants = bpfgen.header_constants()
        self._sizes = sizes or {}
        self.syscalls = syscalls
        self.uprobes = uprobes
        self.stacks = stacks  # abort user stacks (rseqtop.collect.stacks)
        self._tracefs_root = tracefs_root
        self.bpf = None
        self.plan: Optional[bpfgen.Plan] = None
        self.era = kernel.rseq_era(kernel.kernel_version())
        self.setup = Setup()
        self.hot_fd: Optional[int] = None  # task storage map, when the hot state lives there
        self.hot_value = None
        self.hot_iter_link: Optional[int] = None  # the task iterator's link fd
        self.iter_pass = 0
        self._mm_cid_attached = False
        self._mm_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._mm_timer: Optional[threading.Timer] = None
        self._watcher: Optional[threading.Thread] = None
        self._stop_watcher = threading.Event()
        self._on_site: Optional[Callable] = None
        self.handlers_probed = 0  # uprobes attached at abort handlers

    def generate(self) -> str:
        """The BPF program for this kernel (what --ebpf prints)."""
        root = self._tracefs_root or tracefs.ensure_root()
        fs = tracefs.TraceFS(root)
        self.plan = bpfgen.plan(fs.format, kernel.kallsyms_address("ipi_rseq"), self._sizes,
                                kernel.kernel_version(), syscalls=self.syscalls, hot_storage=hot_storage_usable(),
                                uprobes=self.uprobes, stacks=self.stacks)
        upd = fs.format("rseq", "rseq_update")
        self.era = kernel.rseq_era(kernel.kernel_version(), tuple(f.name for f in upd.fields) if upd else ())
        return bpfgen.source(self.plan)

    @property
    def names(self) -> tuple:
        return tuple(f"{s}:{e}" for s, e in self.plan.attach) if self.plan else ()

    def attach(self) -> None:
        check_privileges()
        if self.uprobes and not kernel.uprobes_available(self._tracefs_root or tracefs.ensure_root()):
            raise UserError("--uprobes: this kernel takes no uprobes (needs CONFIG_UPROBE_EVENTS); "
                            "run without --uprobes, see 'rseqtop doctor'")
        self._load(self.generate())
        if self.plan.hot_storage:
            self.hot_value = dict(self.bpf["threads"].Leaf._fields_)["h"]()
        capacities = {name: int(self.plan.defines[size]) for name, size in self.MAP_SIZES.items()
                      if (name not in ("proc_live", "proc_slot") or self.plan.hot_storage)
                      and (name != "handlers" or self.uprobes)}
        self.setup = Setup(self.era.name, self.era.description, self.names, self.plan.missing,
                           self.plan.unavailable_causes, pairs(capacities), self.syscalls, self.uprobes)

    def _load(self, text: str) -> None:
        """Compile, load and attach `text` in this process (sets self.bpf,
        self.hot_fd and self.hot_iter_link)."""
        bcc = import_bcc()
        self.bcc_lib = bcc.lib  # --uprobes attaches by file offset through it
        self.bpf = compile_program(bcc, text)
        try:
            fill_slots(bcc, self.bpf)
            attach_events(self.bpf, self.plan.attachments())
        except UserError:
            self.close()
            raise
        if self.plan.hot_storage:
            self.hot_fd = bcc.lib.bpf_table_fd(self.bpf.module, b"hot")
            self.hot_iter_link = attach_task_iterator(bcc, self.bpf)

    def iterate(self, threads: int) -> Optional[bytes]:
        """Run the task iterator: it sums every process's live threads into
        proc_live, stamped with the new pass (self.iter_pass), and returns
        the threads asked for (RSEQTOP_ITER_THREADS_*), each as a struct
        rseqtop_hot_out and its struct rseqtop_thread. None without the
        iterator."""
        if self.hot_iter_link is None:
            return None
        with self._config_lock:
            cfg = self.bpf["config"]
            value = cfg[0]
            value.iter_pass += 1
            value.iter_threads = threads
            cfg[0] = value
            self.iter_pass = value.iter_pass
        try:
            fd = bpfsys.iter_create(self.hot_iter_link)
        except OSError:
            return None
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.pause_watcher()
        with self._mm_lock:
            if self._mm_timer is not None:
                self._mm_timer.cancel()
                self._mm_timer = None
            self._mm_cid_attached = False
        self.hot_fd = None
        if self.hot_iter_link is not None:
            os.close(self.hot_iter_link)
            self.hot_iter_link = None
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    def programs(self) -> list:
        """(name, fd) of each loaded program."""
        return [(name.decode() if isinstance(name, bytes) else name, fn.fd) for name, fn in self.bpf.funcs.items()]

    # -- configuration --------------------------------------------------
    def configure(self, pids: Iterable[int], cgroups: Iterable[str], emit_events: bool,
                  storm: Optional[tuple] = None, event_kinds: int = 0) -> None:
        """Write the in-kernel filter: only these processes (tgids) and
        cgroup v2 directories are tracked; none given: everything. storm:
        the storm rule (K consecutive aborts, each less than T seconds after
        the one before); None: the defaults of bpf/rseqtop.h. event_kinds:
        bits 1 << RSEQTOP_EV_* of the non-abort events to send (for the
        processes of the pid filter only)."""
        pids, cgroups = list(pids), list(cgroups)
        b = self.bpf
        watch = b["watch_pids"]
        watch.clear()
        for pid in pids:
            watch[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        cg = b["watch_cgroups"]
        cg.clear()
        for path in cgroups:
            try:
                ino = os.stat(path).st_ino
            except OSError as err:
                raise UserError(f"cgroup {path}: {err.strerror}; give a cgroup v2 directory "
                                f"such as /sys/fs/cgroup/system.slice/foo.service", exit_code=2) from None
            cg[ctypes.c_uint64(ino)] = ctypes.c_uint8(1)
        k = self.constants
        with self._config_lock:  # the poll thread writes it too (iterate)
            cfg = b["config"]
            value = cfg[0]
            value.filter = (k["RSEQTOP_FILTER_PIDS"] if pids else 0) | (k["RSEQTOP_FILTER_CGROUPS"] if cgroups else 0)
            value.emit_events = 1 if emit_events else 0
            value.event_kinds = event_kinds if emit_events else 0
            # Threads the previous filter excluded are checked again.
            value.filter_gen = value.filter_gen % 0xFFFFFFFF + 1
            k_runs, t_seconds = storm or (k["RSEQTOP_STORM_K"], k["RSEQTOP_STORM_NS"] / 1e9)
            value.storm_k = k_runs
            value.storm_ns = int(round(t_seconds * 1e9))
            cfg[0] = value

    def proc_gen(self, pid: int) -> Optional[int]:
        """The kernel's current generation for pid (None: no process with it
        died while attached)."""
        g = self.bpf["proc_gen"].get(ctypes.c_uint32(pid))
        return None if g is None else g.value

    def mm_cid(self, on: bool, window: float = 0.0) -> None:
        """Where rseq_update is a raw tracepoint, mm_cid is only in the
        regular tracepoint's record, which the kernel builds for every
        context switch of every thread with rseq while a program is attached
        to it: attached only while someone looks, and then (window > 0) only
        for `window` seconds from now, a sample of each thread's latest
        mm_cid instead of a cost on every switch."""
        if not self.plan.mm_cid_on_demand:
            return
        with self._mm_lock:
            if self._mm_timer is not None:
                self._mm_timer.cancel()
                self._mm_timer = None
            self._set_mm_cid(on)
            if on and window > 0:
                self._mm_timer = threading.Timer(window, self._mm_cid_window_over)
                self._mm_timer.daemon = True
                self._mm_timer.start()

    def _mm_cid_window_over(self) -> None:
        with self._mm_lock:
            self._mm_timer = None
            if self.bpf is not None:
                self._set_mm_cid(False)

    def _set_mm_cid(self, on: bool) -> None:
        if on == self._mm_cid_attached:
            return
        if on:
            self.bpf.attach_tracepoint(tp="rseq:rseq_update", fn_name="on_rseq_update_ids")
        else:
            self.bpf.detach_tracepoint(tp="rseq:rseq_update")  # only this program is a regular one there
        self._mm_cid_attached = on

    @property
    def mm_cid_attached(self) -> bool:
        return self._mm_cid_attached

    # -- abort-handler uprobes (--uprobes) --------------------------------
    def attach_handler(self, path: str, file_offset: int) -> None:
        """A uprobe at FILE_OFFSET of the file at PATH, for every process
        (the BPF filter decides what counts). bcc's attach_uprobe would
        parse the file itself (in C) to turn an address into an offset:
        rseqtop.symbols.elf already did that, so the offset goes straight
        to the kernel. Raises UserError when the kernel refuses."""
        b = self.bpf
        fn = b.load_func("on_abort_handler", type(b).KPROBE)
        ev_name = b._get_uprobe_evname(b"p", path.encode("utf-8", "surrogateescape"), file_offset, -1)
        fd = self.bcc_lib.bpf_attach_uprobe(fn.fd, 0, ev_name, path.encode("utf-8", "surrogateescape"),
                                            file_offset, -1)
        if fd < 0:
            raise UserError(f"uprobe at {path}+0x{file_offset:x} refused by the kernel")
        b._add_uprobe_fd(ev_name, fd)
        self.handlers_probed += 1

    def site_abort_ip(self, tgid: int, gen: int, start_ip: int) -> Optional[int]:
        """The abort_ip the kernel recorded for a critical section."""
        table = self.bpf["sites"]
        key = table.Key(tgid=tgid, gen=gen, start_ip=start_ip)
        v = table.get(key)
        return v.abort_ip if v is not None and v.abort_ip else None

    # -- streams --------------------------------------------------------
    def watch_sites(self, on_site: Callable[[int, int, int], None]) -> None:
        """on_site(tgid, gen, start_ip) for each new critical section, in a
        thread, as soon as the kernel reports it: while its process still
        lives (its maps are unreadable after exit)."""
        key_type = self.bpf["sites"].Key

        def on_new_site(cpu, data, size):
            key = ctypes.cast(data, ctypes.POINTER(key_type)).contents
            on_site(key.tgid, key.gen, key.start_ip)

        self.bpf["new_sites"].open_perf_buffer(on_new_site, page_cnt=8)
        self.resume_watcher()

    def pause_watcher(self) -> None:
        """Stop the new-site thread (for example while the caller changes its
        credentials: capabilities are per thread, and a thread started later
        inherits the caller's)."""
        if self._watcher is not None:
            self._stop_watcher.set()
            self._watcher.join(timeout=5)
            self._watcher = None

    def _new_sites_poller(self) -> Optional[Callable]:
        """poll(timeout_ms): waits for new-site records (bcc's perf buffers)."""
        return self.bpf.perf_buffer_poll

    def resume_watcher(self) -> None:
        if self._watcher is not None or self.bpf is None:
            return
        poll = self._new_sites_poller()
        if poll is None:
            return
        stop = self._stop_watcher = threading.Event()

        def loop():
            while not stop.is_set():
                poll(100)

        self._watcher = threading.Thread(target=loop, name="rseqtop-symbolizer", daemon=True)
        self._watcher.start()

    def open_events(self, callback: Callable) -> None:
        table = self.bpf["events"]
        ev_type = table.event

        def handle(ctx, data, size):
            callback(ev_type(data))

        table.open_ring_buffer(handle)

    def poll_events(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume_events(self) -> None:
        """Whatever is in the ring buffer, woken or not (events other than
        aborts are sent without a wake-up)."""
        self.bpf.ring_buffer_consume()
