#!/usr/bin/env python3
"""Fuzz rseqtop.symbols.elf for a given time: mutated ELF bytes, many more inputs
than the CI test (tests/test_fuzz_elf.py, whose seeds, layout and per-input
watchdog this script reuses; the mutations here are drawn with `random`,
which is much faster than hypothesis).

A crash is any input for which the reader raises something other than a
plain ElfError (ElfInternalError wraps unexpected exceptions), hangs past
the watchdog, or returns a result whose lookups misbehave. Crashing inputs
are written to --crash-dir.

    .venv/bin/python benchmarks/fuzz_elf.py --seconds 300 [--jobs 2] [--seed N]

Prints the inputs tried, how they ended (parsed / rejected / timed out) and
the crashes found; exits 1 when there were crashes.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import importlib.util
import multiprocessing
import os
import random
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _load_test_module():
    spec = importlib.util.spec_from_file_location("test_fuzz_elf", REPO / "tests" / "test_fuzz_elf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


KINDS = ("field", "field", "field", "field", "flip", "truncate", "nonul", "overlap",
         "splice", "dup")


def mutate(rng: random.Random, seed, fz) -> bytes:
    data = bytearray(seed.data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.choice(KINDS)
        if kind == "field":
            off, width, _label = rng.choice(seed.fields)
            if rng.random() < 0.6:
                value = rng.choice(fz.extremes(width, seed))
            else:
                value = rng.getrandbits(8 * width)
            fz.put(data, off, width, value)
        elif kind == "flip" and data:
            for _ in range(rng.randint(1, 32)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        elif kind == "truncate":
            at = rng.choice(seed.boundaries) + rng.randint(-3, 3)
            del data[max(0, at):]
        elif kind == "nonul":
            strtabs = [s for s in seed.sections if s[1] == 3 and s[3]]
            if strtabs:
                _b, _t, off, size = rng.choice(strtabs)
                data[off:off + size] = bytes([rng.randint(1, 255)]) * len(data[off:off + size])
        elif kind == "overlap" and len(seed.sections) > 1:
            a, b = rng.choice(seed.sections), rng.choice(seed.sections)
            fz.put(data, a[0] + 24, 8, b[2])
            if rng.random() < 0.5:
                fz.put(data, a[0] + 32, 8, b[3] + rng.randint(-8, 8))
            if rng.random() < 0.5:
                fz.put(data, a[0] + 40, 4, (b[0] - seed.sections[0][0]) // 64)
        elif kind == "splice" and data:
            pos = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[pos:pos] = rng.randbytes(rng.randint(1, 128))
            else:
                del data[pos:pos + rng.randint(1, 512)]
        elif kind == "dup" and len(data) > 128:
            # copy one structure-sized chunk over another (a header over a table...)
            size = rng.choice((24, 56, 64, 128))
            src, dst = rng.randrange(len(data) - size), rng.randrange(len(data) - size)
            data[dst:dst + size] = data[src:src + size]
    return bytes(data)


def worker(args) -> dict:
    seconds, rng_seed, crash_dir, extra = args
    fz = _load_test_module()
    seeds = list(fz.seeds()) + [fz.layout(Path(p).name, Path(p).read_bytes()) for p in extra]
    rng = random.Random(rng_seed)
    counts = {"parsed": 0, "rejected": 0, "timeout": 0}
    crashes = []
    slowest = (0.0, "")
    tried = 0
    start = time.monotonic()
    end = start + seconds
    beat = start + 10
    # if anything ever gets stuck outside the per-input watchdog, show where
    faulthandler.dump_traceback_later(seconds + 60, repeat=True)
    while time.monotonic() < end:
        if time.monotonic() >= beat:
            beat += 10
            print(f"[job {rng_seed}] {tried} inputs, {len(crashes)} crashes, "
                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        seed = rng.choice(seeds)
        data = mutate(rng, seed, fz)
        tried += 1
        t0 = time.monotonic()
        try:
            outcome = fz.run_one(data)
        except BaseException as err:  # noqa: B036 - every escape is a finding
            if isinstance(err, KeyboardInterrupt):
                raise
            digest = hashlib.sha256(data).hexdigest()[:16]
            path = Path(crash_dir) / f"crash-{digest}.elf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            crashes.append((str(path), f"{type(err).__name__}: {err}",
                            traceback.format_exc(limit=6)))
            continue
        dt = time.monotonic() - t0
        counts[outcome] = counts.get(outcome, 0) + 1
        if dt > slowest[0]:
            slowest = (dt, seed.name)
    faulthandler.cancel_dump_traceback_later()
    return {"tried": tried, "counts": counts, "crashes": crashes, "slowest": slowest}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--seed-file", action="append", default=[], metavar="ELF",
                    help="another seed binary (64-bit little-endian ELF), e.g. libc.so.6")
    ap.add_argument("--crash-dir", default=str(REPO / "benchmarks" / "results" / "fuzz-elf-crashes"),
                    help="where crashing inputs are written")
    args = ap.parse_args(argv)
    base = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    jobs = [(args.seconds, base + i, args.crash_dir, args.seed_file) for i in range(max(1, args.jobs))]
    t0 = time.monotonic()
    if len(jobs) == 1:
        results = [worker(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            results = pool.map(worker, jobs)
    wall = time.monotonic() - t0
    tried = sum(r["tried"] for r in results)
    counts: dict = {}
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    crashes = [c for r in results for c in r["crashes"]]
    slowest = max(r["slowest"] for r in results)
    print(f"seed {base}, {len(jobs)} job(s), {wall:.1f} s")
    print(f"inputs tried: {tried} ({tried / wall:.0f}/s)")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"slowest input: {slowest[0] * 1000:.1f} ms (seed file {slowest[1] or '-'})")
    print(f"crashes found: {len(crashes)}")
    for path, what, tb in crashes[:20]:
        print(f"  {path}: {what}")
        print("    " + tb.strip().replace("\n", "\n    "))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
