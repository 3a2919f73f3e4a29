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
    from rseqtop.collect.loader import first_line
    from rseqtop.errors import UserError
    from rseqtop.kernel.bccimport import CFLAGS, import_bcc, prepare_headers

    bcc = import_bcc()
    prepare_headers()
    try:
        bpf = bcc.BPF(text=request["source"].encode(), cflags=CFLAGS)
    except Exception as err:
        raise UserError(f"the BPF program failed to compile or load ({first_line(err)}); "
                        f"see 'rseqtop doctor'") from None
    try:
        for system, event, raw in request["attach"]:
            if raw:
                bpf.attach_raw_tracepoint(tp=event, fn_name=f"on_{event}")
            else:
                bpf.attach_tracepoint(tp=f"{system}:{event}", fn_name=f"on_{event}")
    except Exception as err:
        raise UserError(f"attaching to tracepoints failed ({first_line(err)}); see 'rseqtop doctor'") from None
    link = -1
    if request["iterator"]:
        try:
            fn = bpf.load_func("bpf_iter__task", bcc.BPF.TRACING)
            link = bcc.lib.bcc_iter_attach(fn.fd, None, 0)
        except Exception:
            link = -1  # refused by this kernel: the collector reads each thread through a pidfd
    specs, fds = describe_maps(bpf, bcc.lib, request["maps"])
    programs = sorted(bpf.funcs)
    fds += [bpf.funcs[p].fd for p in programs]
    attachments = list(bpf.tracepoint_fds.values()) + list(bpf.raw_tracepoint_fds.values())
    fds += attachments
    if link >= 0:
        fds.append(link)
    reply = {"maps": specs, "programs": [p.decode() if isinstance(p, bytes) else p for p in programs],
             "attachments": len(attachments), "iterator": link >= 0}
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
