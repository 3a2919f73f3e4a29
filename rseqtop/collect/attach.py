"""The short-lived loader process: `python -m rseqtop.collect.attach FD`.

It receives a load request on the Unix socket FD (a SOCK_SEQPACKET end from
rseqtop.collect.handoff), compiles the program with bcc (libbcc maps about
85 MB of LLVM and leaves tens of MB of heap behind), attaches it, and sends
back the file descriptors of every map, program and attachment with
SCM_RIGHTS, plus a description of each map. Then it exits with os._exit:
bcc's atexit cleanup would detach and close what the collector now holds
(an attachment lives while any process holds its fd, and perf events are
disabled by bcc's detach, which would reach the collector's copy).

Request (JSON): {"source": program text, "attach": [[system, event, raw]],
"iterator": bool}. Reply (JSON, with the fds): {"maps": [{name, type,
max_entries, key, leaf}], "programs": [name], "attachments": n,
"iterator": bool} where fds are the maps', then the programs', then the
attachments', then the iterator link's; or {"error": one line}."""

from __future__ import annotations

import json
import os
import socket
import sys

from rseqtop.collect.handoff import MAX_MESSAGE


def describe_maps(bpf, lib, names) -> tuple:
    """([map description], [fd]) of the named maps the program has."""
    specs, fds = [], []
    for name in names:
        raw = name.encode()
        fd = lib.bpf_table_fd(bpf.module, raw)
        if fd < 0:
            continue
        map_id = lib.bpf_table_id(bpf.module, raw)
        key = lib.bpf_table_key_desc(bpf.module, raw)
        specs.append({"name": name, "type": lib.bpf_table_type_id(bpf.module, map_id),
                      "max_entries": int(lib.bpf_table_max_entries_id(bpf.module, map_id)),
                      "key": json.loads(key) if key else None,
                      "leaf": json.loads(lib.bpf_table_leaf_desc(bpf.module, raw))})
        fds.append(fd)
    return specs, fds


def load(request: dict) -> tuple:
    """(reply, fds). Raises UserError with the reason it failed."""
    from rseqtop.collect.loader import attach_events, attach_task_iterator, compile_program, fill_slots
    from rseqtop.kernel.bccimport import import_bcc

    bcc = import_bcc()
    bpf = compile_program(bcc, request["source"])
    fill_slots(bcc, bpf)
    attach_events(bpf, request["attach"])
    link = attach_task_iterator(bcc, bpf) if request["iterator"] else None
    specs, fds = describe_maps(bpf, bcc.lib, request["maps"])
    programs = sorted(bpf.funcs)
    fds += [bpf.funcs[p].fd for p in programs]
    attachments = list(bpf.tracepoint_fds.values()) + list(bpf.raw_tracepoint_fds.values())
    fds += attachments
    if link is not None:
        fds.append(link)
    reply = {"maps": specs, "programs": [p.decode() if isinstance(p, bytes) else p for p in programs],
             "attachments": len(attachments), "iterator": link is not None}
    return reply, fds


def main(argv) -> None:
    sock = socket.socket(fileno=int(argv[1]))
    code = 1
    try:
        request = json.loads(sock.recv(MAX_MESSAGE))
        try:
            reply, fds = load(request)
        except Exception as err:  # UserError's text, or one line of the unexpected
            from rseqtop.errors import UserError

            text = str(err) if isinstance(err, UserError) else f"loading the BPF program failed: " \
                                                                 f"{type(err).__name__}: {err}"
            sock.send(json.dumps({"error": text}).encode())
        else:
            socket.send_fds(sock, [json.dumps(reply).encode()], fds)
            code = 0
    finally:
        sys.stderr.flush()
        os._exit(code)  # never bcc's atexit cleanup: the collector holds the attachments now


if __name__ == "__main__":
    main(sys.argv)
