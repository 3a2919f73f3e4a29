"""A one-minute soak (benchmarks/soak.py --seconds 600 is the real one):
counts stay exact, memory and file descriptors stay flat."""

import soak


def test_one_minute_soak(bpf_ok):
    res = soak.soak(60)
    print(soak.report(res))
    assert res["truth"] > 0
    assert res["exported"] == res["truth"]
    assert str(res["truth"]) in res["tui_row"].split()
    assert res["warm"], "no sample after warm-up"
    for proc, end in res["end"].items():
        warm = res["warm"].get(proc)
        if warm is None:
            continue
        assert end["fds"] <= warm["fds"], (proc, warm, end)
        # after warm-up, memory stays within 5% (the flatness criterion)
        assert end["rss_mb"] <= warm["rss_mb"] * 1.05, (proc, warm, end)
