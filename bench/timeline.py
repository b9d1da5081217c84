#!/usr/bin/env python3
"""The machine's idle share and the simulator's progress every half second, beside a running
benchmark (BENCHMARKS.md, eleventh session): which part of a phase leaves the CPUs idle.

Usage: bash bench/scaleout.sh 10000 200 sqlite:1 & python3 bench/timeline.py [SECONDS]
Finds the running `wechatpay-sim serve` and its port itself; prints a line each half second once
the simulator answers: seconds since start, idle and steal shares of all CPUs (from /proc/stat),
callbacks acknowledged and syncs accepted so far (the simulator's /sim/counters).
"""
import json
import re
import subprocess
import sys
import time
import urllib.request


def cpu():
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return v[3] + v[4], sum(v), v[7]  # idle + iowait, all, steal


def simulator_port():
    pids = subprocess.run(["pgrep", "-f", "wechatpay-sim serve"], capture_output=True, text=True).stdout.split()
    if not pids:
        return None
    ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    m = re.search(r"127\.0\.0\.1:(\d+)\s.*pid=" + pids[0] + ",", ss)
    return m.group(1) if m else None


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120
    port, prev, t0 = None, cpu(), time.time()
    while time.time() - t0 < seconds:
        time.sleep(0.5)
        cur = cpu()
        d = cur[1] - prev[1] or 1
        idle, steal = 100 * (cur[0] - prev[0]) / d, 100 * (cur[2] - prev[2]) / d
        prev = cur
        port = port or simulator_port()
        if not port:
            continue
        try:
            k = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/counters", timeout=1))
        except OSError:
            port = None  # that simulator is gone; the next setup starts another
            continue
        print(f"{time.time() - t0:6.1f} s  idle {idle:3.0f} %  steal {steal:2.0f} %  "
              f"callbacks acknowledged {k.get('callback_acks')}  syncs accepted {k.get('points_accepted')}", flush=True)


if __name__ == "__main__":
    main()
