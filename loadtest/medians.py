"""Medians of loadtest/versions.sh rounds: per archiving mode and offered rate, server CPU-s
per 100k delivered messages (steady window) and p99, before against after.

    python3 loadtest/medians.py OUTDIR ROUNDS

OUTDIR holds before-K/ and after-K/ (K = 1..ROUNDS), each a loadtest/compare.sh run
directory with its metrics.py, whose steady-window rule this uses unchanged.
"""
import glob
import os
import re
import statistics
import sys


def metrics(out):
    """compare.sh's metrics.py as a module, without running its command line."""
    src = open(os.path.join(out, "before-1", "metrics.py")).read()
    src = src.replace("\nmain()\n", "\n")
    ns = {"__name__": "metrics"}
    exec(compile(src, "metrics.py", "exec"), ns)
    return ns


def collect(out, rounds, m):
    rows = {}
    pat = re.compile(r"rookery-(nomam|mam)-(chat|sat-(\d+))\.json$")
    for which in ("before", "after"):
        for k in range(1, rounds + 1):
            for f in sorted(glob.glob(os.path.join(out, f"{which}-{k}", "rookery-*.json"))):
                g = pat.search(os.path.basename(f))
                if not g:
                    continue
                rep = m["load"](f)
                sat = g.group(3) is not None
                # compare.sh: saturation runs have a 2 s ramp; the fixed chat keeps the
                # scenario's 5 s.
                _, cpu = m["steady"](rep, 2 if sat else 5)
                _, lat = m["chat"](rep)
                if cpu is None or lat["count"] == 0:
                    continue
                key = (g.group(1), int(g.group(3)) if sat else 0)
                rows.setdefault(key, {}).setdefault(which, []).append((cpu, lat["p99_us"] / 1000))
    return rows


def main():
    out, rounds = sys.argv[1], int(sys.argv[2])
    rows = collect(out, rounds, metrics(out))

    def med(v, i):
        return statistics.median(x[i] for x in v)

    def pct(a, b):
        return f"{(b - a) / a * 100:+.1f} %"

    print(f"Medians over {rounds} rounds per build; n = rounds with a result at that rate "
          "(a saturation series stops at its first failing rate).")
    print()
    print("| archiving | offered msgs/s | n before/after | CPU-s per 100k before | after | change "
          "| p99 ms before | after | change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0] != "nomam", k[1])):
        r = rows[key]
        if "before" not in r or "after" not in r:
            continue
        b, a = r["before"], r["after"]
        rate = "fixed chat (500)" if key[1] == 0 else f"{key[1]:,}"
        arch = "off" if key[0] == "nomam" else "on"
        print(f"| {arch} | {rate} | {len(b)}/{len(a)} | {med(b, 0):.2f} | {med(a, 0):.2f} | "
              f"{pct(med(b, 0), med(a, 0))} | {med(b, 1):.2f} | {med(a, 1):.2f} | "
              f"{pct(med(b, 1), med(a, 1))} |")


main()
