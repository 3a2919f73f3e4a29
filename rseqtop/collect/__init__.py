"""From the kernel's maps to snapshots, in stages:

- loader: generate, compile and attach the BPF program (the only bcc user);
- reader: read the maps into plain records (records);
- assemble: records -> Snapshot, a pure function;
- reaper: age dead processes out of the maps, a separate explicit step;
- collector: the snapshot source that wires them together.
"""

from rseqtop.collect.collector import Collector

__all__ = ["Collector"]
