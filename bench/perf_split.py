#!/usr/bin/env python3
"""Splits a pointsync profile into what each sample was doing, in µs per transaction
(BENCHMARKS.md, eleventh session).

Usage: perf record -F 299 --call-graph dwarf,32768 -o svc.data -p <pointsync pid> -- sleep 9
       (during a phase of bench/scaleout.sh), then
       perf script -i svc.data | python3 bench/perf_split.py <service µs per tx from the bench>
A sample counts as crypto when its innermost frame is in aws-lc; it is then named by what called
it. Otherwise it is named by the first of the service's activities on its stack.
"""
import collections
import re
import sys

CRYPTO = re.compile(r"aws_lc|rsaz|bn_|BN_|mulx4x|sqrx8x|mont")


def activity(comm, frames):
    s = " ".join(frames)
    if comm.startswith("pointsync-write"):  # SQLite's writer thread
        for key, name in [("ingest", "writer: storing callbacks"), ("write::complete", "writer: recording outcomes"),
                          ("write::claim", "writer: claims"), ("sqlite3VdbeHalt", "writer: commit (WAL, fsync, checkpoint)"),
                          ("pagerWalFrames", "writer: commit (WAL, fsync, checkpoint)"), ("unixSync", "writer: commit (WAL, fsync, checkpoint)"),
                          ("Checkpoint", "writer: commit (WAL, fsync, checkpoint)"), ("next_group", "writer: forming groups")]:
            if key in s:
                return name
        return "writer: other"
    if CRYPTO.search(frames[0]):
        if "RequestSigner::sign" in s:
            return "crypto: signing syncs"
        if "NotifyParser" in s:
            return "crypto: verifying callbacks"
        if "Pipeline::finish" in s:
            return "crypto: verifying sync answers"
        return "crypto: other"
    for key, name in [("receiver::callback", "callbacks (besides crypto)"), ("NotifyParser", "callbacks (besides crypto)"),
                      ("send_one", "sending syncs (besides crypto)"), ("Client::execute", "sending syncs (besides crypto)"),
                      ("reqwest", "sending syncs (besides crypto)"), ("hyper_util::client", "sending syncs (besides crypto)"),
                      ("listener::serve", "HTTP server"), ("hyper::proto::h1", "HTTP (other)"),
                      ("Dispatcher<S>::run", "dispatcher loop"), ("mio::", "runtime: I/O driver"), ("epoll", "runtime: I/O driver"),
                      ("park", "runtime: parking and waking"), ("futex", "runtime: parking and waking"),
                      ("tokio::runtime", "runtime: other")]:
        if key in s:
            return name
    return "other"


def main():
    per_tx = float(sys.argv[1]) if len(sys.argv) > 1 else 100.0
    counts, total = collections.Counter(), 0
    for block in sys.stdin.read().split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) < 2:
            continue
        frames = [re.sub(r"^\s*[0-9a-f]+\s+", "", l).rsplit(" (", 1)[0] for l in lines[1:]]
        counts[activity(lines[0].split()[0], frames)] += 1
        total += 1
    unit = "µs/tx" if len(sys.argv) > 1 else "%"
    for name, n in counts.most_common():
        print(f"{per_tx * n / total:6.0f} {unit}  {100 * n / total:5.1f} %  {name}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
