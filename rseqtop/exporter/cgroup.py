"""Pod and container identity from /proc/PID/cgroup.

Handles cgroup v1 (`N:controllers:/path`) and v2 (`0::/path`) lines, the
systemd and cgroupfs cgroup drivers, and the naming of containerd
(`cri-containerd-<id>.scope`, `/kubepods/.../<id>`), CRI-O (`crio-<id>.scope`),
Docker (`docker-<id>.scope`, `/docker/<id>`) and Podman (`libpod-<id>.scope`).

Only IDs are in the cgroup path: the pod UID and the container ID. Names
come from the orchestrator (join on kube_pod_info{uid} and
kube_pod_container_info{container_id} from kube-state-metrics).
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

_HEX_ID = r"[0-9a-f]{64}"
# A container scope or directory: optional runtime prefix, then a 64-hex ID.
_CONTAINER = re.compile(r"(?:^|/)(?:(?:cri-containerd|crio|docker|libpod)-)?(" + _HEX_ID + r")(?:\.scope)?(?:/|$)")
_CONMON = re.compile(r"(?:crio|libpod)-conmon-" + _HEX_ID)
# systemd driver: kubepods-burstable-pod1b2c..._..._.slice (UID with '_');
# cgroupfs driver: /kubepods/burstable/pod1b2c...-....
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


class Identity(NamedTuple):
    pod_uid: str = ""
    container_id: str = ""


NONE = Identity()


def parse_path(path: str) -> Identity:
    """One cgroup path -> (pod UID, container ID); empty strings when absent."""
    if _CONMON.search(path):
        container = ""
    else:
        found = _CONTAINER.findall(path)
        container = found[-1] if found else ""
    m = _POD.search(path)
    pod = m.group(1).replace("_", "-") if m else ""
    return Identity(pod, container)


def parse(lines: Iterable[str]) -> Identity:
    """The contents of /proc/PID/cgroup -> Identity.

    The v2 line (hierarchy 0, no controllers) wins when it names a container;
    otherwise the first v1 line that does (all v1 hierarchies of a container
    carry the same path suffix).
    """
    best = NONE
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        ident = parse_path(parts[2])
        if ident == NONE:
            continue
        if parts[0] == "0" and parts[1] == "":
            return ident
        if best == NONE or (ident.container_id and not best.container_id):
            best = ident
    return best


def identity(pid: int, proc_root: str = "/proc") -> Identity:
    """Identity of a running process; NONE when it is gone or unreadable."""
    try:
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return parse(f.read().splitlines())
    except OSError:
        return NONE
