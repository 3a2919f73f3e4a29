"""rseqtop: eBPF observability for Linux restartable sequences."""

__version__ = "0.1.0"
