"""Reads the checkpoints of a harness run on one host's mount (harness.py runs it in the host
that did NOT write the rank files named by --ranks) and writes what it found as JSON to --out.

Committed mode: shmckpt.latest_checkpoint(--root) must become step_<rounds-1>, and every round's
file of every rank in --ranks must load (shmckpt.load) bit-identical to what that rank saved. A
mount's client cache may hide a manifest published through another mount for a while: each
check is retried until --deadline, and how long it took to become visible is reported.
--expect-none: no checkpoint under --root may be complete (a round that failed).

Exit status: 0 as expected, 1 otherwise.
"""

import argparse
import json
import os
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--ranks", default="", help="comma-separated ranks whose files to load")
    p.add_argument("--mib", type=int, default=4)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--expect-none", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    import shmckpt
    from common import differences, make_state

    start = time.monotonic()
    deadline = start + a.deadline
    report = {"host": os.environ.get("SHMCKPT_MH_HOST"), "root": a.root, "checks": [],
              "ok": True}

    def fail(what):
        report["ok"] = False
        report.setdefault("failures", []).append(what)
        print(f"verify on {report['host']}: {what}", file=sys.stderr)

    if a.expect_none:
        latest = shmckpt.latest_checkpoint(a.root)
        report["latest_checkpoint"] = latest
        if latest is not None:
            fail(f"latest_checkpoint({a.root}) is {latest}, expected none after a failed round")
        for r in range(a.rounds):
            d = os.path.join(a.root, f"step_{r}")
            try:
                shmckpt.load(d, rank=0)
                fail(f"{d} loads, but its round failed")
            except shmckpt.NotFoundError as e:
                report["checks"].append({"path": d, "refused": str(e)})
    else:
        want = os.path.join(a.root, f"step_{a.rounds - 1}")
        pause = 0.02
        while True:
            latest = shmckpt.latest_checkpoint(a.root)
            if latest is not None and os.path.normpath(latest) == os.path.normpath(want):
                break
            if time.monotonic() >= deadline:
                fail(f"latest_checkpoint({a.root}) is {latest}, expected {want} (waited "
                     f"{a.deadline:.0f} s)")
                break
            time.sleep(pause)  # another mount's cache: nothing to wait on but time
            pause = min(pause * 2, 0.5)
        report["latest_visible_after_s"] = time.monotonic() - start
        report["latest_checkpoint"] = latest
        for r in range(a.rounds):
            d = os.path.join(a.root, f"step_{r}")
            for k in [int(x) for x in a.ranks.split(",") if x]:
                check = {"path": d, "rank": k}
                t = time.monotonic()
                pause = 0.02
                while True:
                    try:
                        got = shmckpt.load(d, rank=k, verify_checksums=True)
                        break
                    except shmckpt.NotFoundError as e:
                        if time.monotonic() >= deadline:
                            got = None
                            fail(f"{d} rank {k}: {e}")
                            break
                        time.sleep(pause)
                        pause = min(pause * 2, 0.5)
                check["visible_after_s"] = time.monotonic() - t
                if got is not None:
                    diff = differences(make_state(r, k, a.mib), got)
                    check["identical"] = not diff
                    if diff:
                        fail(f"{d} rank {k} differs from what it saved: " + "; ".join(diff[:5]))
                report["checks"].append(check)
    with open(a.out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
