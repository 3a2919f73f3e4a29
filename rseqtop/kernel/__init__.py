"""Facts about the running kernel and the BPF program generated for it."""
