"""The exporter's prometheus_client Collector against SyntheticSource and
hand-made snapshots: names, values, escaping, cardinality, TTL, monotonicity,
and the cgroup parser on saved /proc/PID/cgroup contents."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rseqtop.exporter import cgroup
from rseqtop.exporter.metrics import OTHER_SITE, RseqCollector
from rseqtop.model.snapshot import Counts, MembarrierStats, ProcessStats, SelfStats, SiteStats, Snapshot, pairs
from rseqtop.model.synthetic import SyntheticSource

DATA = Path(__file__).parent / "data" / "cgroup"


def make(source, **kw):
    reg = CollectorRegistry()
    kw.setdefault("identity", None)
    col = RseqCollector(source, **kw)
    reg.register(col)
    return reg, col


def scrape(reg) -> str:
    return generate_latest(reg).decode()


def samples(text: str, name: str) -> list:
    out = []
    for fam in text_string_to_metric_families(text):
        out += [s for s in fam.samples if s.name == name]
    return out


class Text:
    """A scrape's samples, looked up like CollectorRegistry.get_sample_value
    (which would poll the source again)."""

    def __init__(self, text: str):
        self.text = text
        self.index = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.index[(s.name, frozenset(s.labels.items()))] = s.value

    def get_sample_value(self, name, labels=None):
        return self.index.get((name, frozenset((labels or {}).items())))


def promtool_check(text: str) -> str:
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed")
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


# -- values -----------------------------------------------------------------

def test_values_match_the_snapshot():
    src = SyntheticSource(processes=6, threads_per_process=3)
    reg, _ = make(src)
    scrape(reg)
    text = scrape(reg)  # second poll: two steps of the fake clock
    reg = Text(text)
    snap = SyntheticSource(processes=6, threads_per_process=3)
    snap.poll()
    snap = snap.poll()
    for p in snap.processes:
        for cause, n in p.counts.causes:
            assert reg.get_sample_value("rseqtop_aborts_total", {"comm": p.comm, "pod_uid": "", "container_id": "",
                                                                 "cause": cause}) == n
        lab = {"comm": p.comm, "pod_uid": "", "container_id": ""}
        assert reg.get_sample_value("rseqtop_preemptions_total", lab) == p.counts.preempts
        assert reg.get_sample_value("rseqtop_rseq_updates_total", lab) == p.counts.updates
        assert reg.get_sample_value("rseqtop_threads_registered", lab) == p.threads_live
        assert reg.get_sample_value("rseqtop_membarrier_calls_total",
                                    {**lab, "command": "PRIVATE_EXPEDITED_RSEQ"}) == (p.membarrier_calls() or None)
        for s in snap.sites_of(p.pid):
            assert reg.get_sample_value("rseqtop_site_aborts_total", {**lab, "symbol": s.symbol}) == s.aborts
    assert "rseqtop_build_info{" in text
    assert reg.get_sample_value("rseqtop_probes_attached") == len(snap.self_stats.probes_attached)
    assert reg.get_sample_value("rseqtop_scrape_errors_total") == 0


def test_promtool_check_metrics_is_clean():
    reg, _ = make(SyntheticSource(processes=20, threads_per_process=2), labels="tid")
    scrape(reg)
    assert promtool_check(scrape(reg)).strip() == ""


def test_every_family_has_help_and_prefix():
    reg, _ = make(SyntheticSource(processes=4))
    for fam in text_string_to_metric_families(scrape(reg)):
        assert fam.name.startswith("rseqtop_"), fam.name
        assert fam.documentation, fam.name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples)


def test_same_comm_processes_are_summed():
    src = SyntheticSource(processes=4, threads_per_process=2, comms=["dup"])
    reg, _ = make(src)
    reg = Text(scrape(reg))
    ref = SyntheticSource(processes=4, threads_per_process=2, comms=["dup"]).poll()
    want = sum(p.counts.preempts for p in ref.processes)
    assert reg.get_sample_value("rseqtop_preemptions_total",
                                {"comm": "dup", "pod_uid": "", "container_id": ""}) == want
    assert len(samples(reg.text, "rseqtop_preemptions_total")) == 1


def test_container_labels_split_and_sum():
    ids = {1000: cgroup.Identity("pod-a", "c1"), 1001: cgroup.Identity("pod-a", "c1"),
           1002: cgroup.Identity("pod-b", "c2")}
    src = SyntheticSource(processes=3, threads_per_process=1, comms=["svc"])
    reg, _ = make(src, identity=lambda pid: ids[pid])
    reg = Text(scrape(reg))
    ref = SyntheticSource(processes=3, threads_per_process=1, comms=["svc"]).poll()
    a = ref.processes[0].counts.preempts + ref.processes[1].counts.preempts
    assert reg.get_sample_value("rseqtop_preemptions_total",
                                {"comm": "svc", "pod_uid": "pod-a", "container_id": "c1"}) == a
    assert reg.get_sample_value("rseqtop_preemptions_total",
                                {"comm": "svc", "pod_uid": "pod-b", "container_id": "c2"}) == \
        ref.processes[2].counts.preempts


def test_hostile_comms_are_escaped():
    comms = ['a"b', "new\nline", "back\\slash", "ünï©ødé ✓", "}{,=", "\x1b[31mred"]
    reg, _ = make(SyntheticSource(processes=len(comms), threads_per_process=1, comms=comms))
    text = scrape(reg)
    assert 'comm="a\\"b"' in text
    assert 'comm="new\\nline"' in text
    assert 'comm="back\\\\slash"' in text
    assert "ünï©ødé ✓" in text
    # every line is one sample or comment: no raw newline leaked into a label
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("rseqtop_") or line.startswith("process_"), line
    got = {s.labels["comm"] for s in samples(text, "rseqtop_preemptions_total")}
    assert got == set(comms)
    promtool_check(text)


# -- cardinality -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["pid", "tid"])
def test_max_series_caps_and_counts_drops(mode):
    n, procs = 7, 25
    reg, col = make(SyntheticSource(processes=procs, threads_per_process=2), labels=mode, max_series=n)
    for _ in range(3):  # refused label sets are counted once, not once per scrape
        text = scrape(reg)
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("rseqtop_") or not fam.samples or "pid" not in fam.samples[0].labels:
            continue
        keys = {(s.labels["pid"], s.labels.get("tid")) for s in fam.samples}
        assert len(keys) <= n, fam.name
    assert len(samples(text, "rseqtop_registrations_total")) == n
    expected = procs - n if mode == "pid" else (procs - n) + (procs * 2 - n)
    assert Text(text).get_sample_value("rseqtop_series_dropped_total") == expected


def test_default_mode_has_no_pid_label():
    reg, _ = make(SyntheticSource(processes=10))
    for fam in text_string_to_metric_families(scrape(reg)):
        for s in fam.samples:
            assert "pid" not in s.labels and "tid" not in s.labels


class ScriptedSource:
    """poll() returns the next of a list of snapshots (the last one repeats)."""

    def __init__(self, snaps):
        self.snaps = list(snaps)
        self.i = 0

    def poll(self):
        snap = self.snaps[min(self.i, len(self.snaps) - 1)]
        self.i += 1
        if isinstance(snap, Exception):
            raise snap
        return snap

    def reap(self):
        return 0


def proc(pid, comm, aborts, alive=True, sites=(), mb=()):
    c = Counts(aborts=aborts, preempts=aborts * 2, causes=pairs({"preempt": aborts}))
    return ProcessStats(pid, comm, c, threads_live=1 if alive else 0, registrations=1, membarrier=mb, alive=alive)


def snap(t, procs, sites=()):
    return Snapshot(monotonic=t, wall=t, era="classic", era_description="", totals=Counts(),
                    processes=tuple(procs), sites=tuple(sites), self_stats=SelfStats(("rseq:rseq_ip_fixup",)))


def aborts(text, comm):
    return Text(text).get_sample_value("rseqtop_aborts_total", {"comm": comm, "pod_uid": "", "container_id": "",
                                                         "cause": "preempt"})


def test_dead_process_keeps_its_counts_then_ages_out():
    snaps = [snap(0, [proc(1, "svc", 10), proc(2, "svc", 5)]),
             snap(1, [proc(1, "svc", 12)]),                       # pid 2 gone: its 5 stay
             snap(2, [proc(1, "svc", 12, alive=False)]),           # pid 1 exited, still listed
             snap(50, [proc(1, "svc", 12, alive=False)]),
             snap(70, [proc(1, "svc", 12, alive=False)]),          # > ttl after last alive: expired
             snap(80, [proc(1, "svc", 12, alive=False)]),          # and not resurrected
             snap(90, [proc(3, "svc", 4)])]                        # a new process: a new series
    reg, col = make(ScriptedSource(snaps), series_ttl=60)
    lab = {"comm": "svc", "pod_uid": "", "container_id": ""}
    t = [scrape(reg) for _ in range(len(snaps))]
    assert aborts(t[0], "svc") == 15
    assert aborts(t[1], "svc") == 17
    assert aborts(t[3], "svc") == 17
    assert Text(t[3]).get_sample_value("rseqtop_threads_registered", lab) == 0
    assert aborts(t[4], "svc") is None
    assert Text(t[4]).get_sample_value("rseqtop_series_expired_total") == 1
    assert aborts(t[5], "svc") is None
    assert aborts(t[6], "svc") == 4


def test_ticks_between_scrapes_take_what_a_reaped_process_counted():
    """tick() polls only when the latest poll (scrape or tick) is at least
    its interval old, never with 0, and its polls feed the series: a
    process seen (dead) only by a tick, then reaped, still counts."""
    snaps = [snap(0, [proc(1, "svc", 10)]),
             snap(1, [proc(1, "svc", 10), proc(2, "svc", 7, alive=False)]),  # seen by a tick only
             snap(2, [proc(1, "svc", 11)])]                                    # pid 2 reaped
    source = ScriptedSource(snaps)
    reg, col = make(source)
    assert aborts(scrape(reg), "svc") == 10 and source.i == 1
    assert not col.tick(0) and not col.tick(3600) and source.i == 1  # never / polled just now
    col.polled -= 2
    assert not col.tick(5) and col.tick(1) and source.i == 2
    assert not col.tick(1)  # that tick was a poll
    assert aborts(scrape(reg), "svc") == 18 and source.i == 3


def test_a_recycled_pid_adds_to_the_process_before_it():
    """A pid's new process (a later generation) starts from zero: its
    counts add to those of the process that had the pid, whether the
    exporter saw that one alive, or only dead in the snapshot's earlier
    generations, or never before it was reaped."""
    def gen(p, g):
        return dataclasses.replace(p, gen=g)

    snaps = [snap(0, [proc(1, "svc", 10)]),
             dataclasses.replace(snap(1, [gen(proc(1, "svc", 3), 1)]),
                                 earlier=(proc(1, "svc", 12, alive=False),)),  # gen 0 died, pid 1 reused
             snap(2, [gen(proc(1, "svc", 4), 1)]),                            # gen 0 reaped
             dataclasses.replace(snap(3, [gen(proc(1, "svc", 1), 3)]),
                                 earlier=(gen(proc(1, "svc", 4, alive=False), 1),
                                          gen(proc(1, "svc", 6, alive=False), 2)))]  # gen 2: seen dead only
    reg, _ = make(ScriptedSource(snaps))
    assert [aborts(scrape(reg), "svc") for _ in snaps] == [10, 15, 16, 23]


def test_counters_never_decrease_and_errors_are_counted():
    snaps = [snap(0, [proc(1, "a", 10)]), snap(1, [proc(1, "a", 7)]),  # a dip (map re-read race)
             RuntimeError("map read failed"), snap(3, [proc(1, "a", 11)])]
    reg, col = make(ScriptedSource(snaps))
    seen = []
    for _ in range(4):
        text = scrape(reg)
        seen.append(aborts(text, "a"))
    assert seen == [10, 10, 10, 11]
    assert Text(text).get_sample_value("rseqtop_scrape_errors_total") == 1


def test_sites_are_bounded_per_label_set_with_other_bucket():
    sites = [SiteStats(1, 0x1000 + i, f"bin!f{i}+0x0", 100 - i) for i in range(8)]
    reg, _ = make(ScriptedSource([snap(0, [proc(1, "s", 500)], sites)]), top_sites=3)
    text = scrape(reg)
    got = {s.labels["symbol"]: s.value for s in samples(text, "rseqtop_site_aborts_total")}
    assert got == {"bin!f0+0x0": 100, "bin!f1+0x0": 99, "bin!f2+0x0": 98, OTHER_SITE: sum(100 - i for i in range(3, 8))}


def test_membarrier_latency_histogram():
    mb = (MembarrierStats("PRIVATE_EXPEDITED_RSEQ", 10, pairs({"EPERM": 2}), pairs({12: 6, 20: 4})),)
    reg, _ = make(ScriptedSource([snap(0, [proc(1, "m", 1, mb=mb)])]))
    reg = Text(scrape(reg))
    lab = {"comm": "m", "pod_uid": "", "container_id": "", "command": "PRIVATE_EXPEDITED_RSEQ"}
    get = reg.get_sample_value
    assert get("rseqtop_membarrier_duration_seconds_count", lab) == 10
    # slot 12 is [4096, 8192) ns: in le=8.192e-06 but not in le=4.096e-06
    assert get("rseqtop_membarrier_duration_seconds_bucket", {**lab, "le": "4.096e-06"}) == 0
    assert get("rseqtop_membarrier_duration_seconds_bucket", {**lab, "le": "8.192e-06"}) == 6
    assert get("rseqtop_membarrier_duration_seconds_bucket", {**lab, "le": "0.002097152"}) == 10
    assert get("rseqtop_membarrier_duration_seconds_bucket", {**lab, "le": "+Inf"}) == 10
    assert get("rseqtop_membarrier_errors_total", {**lab, "errno": "EPERM"}) == 2


def test_describe_does_not_poll():
    src = SyntheticSource()
    reg = CollectorRegistry(auto_describe=True)
    reg.register(RseqCollector(src, identity=None))
    assert src.polls == 0


# -- cgroup parser -------------------------------------------------------------

CASES = {
    "v2-systemd-containerd.txt": ("6f1e2d3c-4b5a-4c6d-8e9f-0a1b2c3d4e5f",
                                  "3f4e5d6c7b8a99001122334455667788990011223344556677889900aabbccdd"),
    "v2-systemd-crio.txt": ("0a1b2c3d-0000-4111-8222-333344445555",
                            "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233"),
    "v2-cgroupfs-containerd.txt": ("11111111-2222-4333-8444-555555555555",
                                   "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    "v2-systemd-docker.txt": ("", "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
    "v1-cgroupfs-docker.txt": ("", "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"),
    "v1-systemd-containerd-guaranteed.txt": ("99998888-7777-4666-8555-444433332222",
                                             "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"),
    "v2-host-session.txt": ("", ""),
    "v2-systemd-crio-conmon.txt": ("0a1b2c3d-0000-4111-8222-333344445555", ""),
    "v2-podman.txt": ("", "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cgroup_parser(name):
    lines = (DATA / name).read_text().splitlines()
    assert tuple(cgroup.parse(lines)) == CASES[name]


def test_cgroup_identity_of_self_and_of_missing_pid(tmp_path):
    assert isinstance(cgroup.identity(1), cgroup.Identity)
    assert cgroup.identity(999999999) == cgroup.NONE
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text((DATA / "v2-systemd-crio.txt").read_text())
    assert cgroup.identity(42, proc_root=str(tmp_path)) == cgroup.Identity(*CASES["v2-systemd-crio.txt"])
