"""--stacks: aborts per (process, critical section, user call stack).

The kernel counts aborts per (tgid, gen, start_ip, stack id) in the map
stack_counts and keeps the stacks (addresses) in abort_stacks. Each poll
reads the counts and symbolizes a stack the first time it is seen, while
its process lives; the names and the latest counts are kept here, so
processes that exited (and were aged out of the maps) still show.
A stack the kernel could not take (a negative stack id: -EFAULT, -EEXIST on
a hash collision of the stack map) is counted as lost, under its errno
name, so a section's stacks and lost stacks add up to its aborts.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Callable, Optional

MAX_FRAMES = 127  # the kernel's default perf_event_max_stack
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


@dataclass(frozen=True)
class StackCount:
    """Aborts of one section of one process with one user stack. frames:
    root first, the section's function last; () when the stack was lost
    (lost then names the reason, e.g. "EFAULT")."""

    pid: int
    gen: int
    comm: str
    start_ip: int
    section: str  # the section's symbol (binary!function+offset)
    frames: tuple
    count: int
    lost: Optional[str] = None


def frame_name(symbol: str) -> str:
    """A function, not an address: "bin!func+0x1c" -> "bin!func", so that
    the frames of one function merge in a flame graph. Addresses that did
    not resolve stay as they are."""
    return _OFFSET.sub("", symbol) if "!" in symbol else symbol


def lost_reason(stack_id: int) -> str:
    return errno.errorcode.get(-stack_id, f"error {-stack_id}")


class AbortStacks:
    """Reads the --stacks maps of one attached program (bcc tables)."""

    def __init__(self, symbolize: Callable[[int, int], str]):
        self._symbolize = symbolize
        self._frames: dict = {}  # (pid, gen, stack_id) -> frames, root first
        self._counts: dict = {}  # (pid, gen, start_ip, stack_id) -> latest count
        self._comms: dict = {}  # (pid, gen) -> comm
        self._sections: dict = {}  # (pid, gen, start_ip) -> symbol
        self._reaped: set = set()  # (pid, gen) whose kernel entries are deleted (their counts stay here)
        self.dropped = 0  # aborts whose count the full stack_counts map could not take

    def read(self, bpf, comms: dict) -> None:
        """comms: {(pid, gen): comm} of the processes in the maps now."""
        self._comms.update(comms)
        counts = bpf["stack_counts"]
        traces = bpf["abort_stacks"]
        for k, v in counts.items():
            key = (k.tgid, k.gen, k.start_ip, k.stack_id)
            self._counts[key] = max(v.value, self._counts.get(key, 0))
            site = (k.tgid, k.gen, k.start_ip)
            if site not in self._sections:
                self._sections[site] = self._symbolize(k.tgid, k.start_ip)
            ident = (k.tgid, k.gen, k.stack_id)
            if k.stack_id >= 0 and ident not in self._frames:
                self._frames[ident] = self._walk(traces, k.tgid, k.stack_id, self._sections[site])
        self.dropped = bpf["stack_drops"].sum(0).value

    def _walk(self, traces, pid: int, stack_id: int, section: str) -> tuple:
        try:
            addrs = list(traces.walk(stack_id))[:MAX_FRAMES]
        except (KeyError, OSError):
            return ()
        if not addrs:
            return ()
        # The first address is the interrupted IP, inside the section (the
        # only IPs the kernel fixes up): its function is the section's,
        # named even if the process has exited by now. The others are
        # return addresses, one past their call: name the call (addr - 1).
        names = [frame_name(section)] + [frame_name(self._symbolize(pid, a - 1)) for a in addrs[1:]]
        return tuple(reversed(names))

    def table(self) -> list:
        """Every (process, section, stack) seen since attach, with its
        latest count: same stacks merged (two stack ids can name the same
        functions), largest first."""
        merged: dict = {}
        for (pid, gen, start_ip, stack_id), n in self._counts.items():
            if stack_id < 0:
                key = (pid, gen, start_ip, (), lost_reason(stack_id))
            else:
                frames = self._frames.get((pid, gen, stack_id), ())
                # (a stack id whose entry vanished before it was read)
                key = (pid, gen, start_ip, frames, None if frames else "unread")
            merged[key] = merged.get(key, 0) + n
        out = [StackCount(pid, gen, self._comms.get((pid, gen), ""), start, self._sections.get((pid, gen, start), ""),
                          frames, n, lost) for (pid, gen, start, frames, lost), n in merged.items()]
        out.sort(key=lambda s: (-s.count, s.pid, s.gen, s.start_ip, s.frames, s.lost or ""))
        return out

    def delete_from(self, bpf, gone: set) -> None:
        """Delete the kernel entries of processes aged out, gone: {(pid,
        gen)}; their counts and names stay here. Stack ids no live process
        uses are freed too, or the stack map fills (then every new stack
        collides: -EEXIST)."""
        counts, traces = bpf["stack_counts"], bpf["abort_stacks"]
        self._reaped |= gone
        # ids still in use by a process in the maps (the kept counts of
        # processes reaped earlier must not pin a later owner's id)
        keep = {k[3] for k in self._counts if (k[0], k[1]) not in self._reaped}
        freed = set()
        for pid, gen, start_ip, stack_id in [k for k in self._counts if (k[0], k[1]) in gone]:
            try:
                del counts[counts.Key(tgid=pid, gen=gen, start_ip=start_ip, stack_id=stack_id)]
            except KeyError:
                pass
            if stack_id >= 0 and stack_id not in keep and stack_id not in freed:
                freed.add(stack_id)
                try:
                    del traces[traces.Key(stack_id)]
                except KeyError:
                    pass
