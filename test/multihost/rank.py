"""One trainer rank of the multi-host harness (harness.py starts it inside a "host").

It finds its rank from the launcher environment as torchrun sets it (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), joins a gloo process group, saves --rounds checkpoints
with shmckpt.AsyncCheckpointer into --root/step_<round> on its host's mount, and writes what
happened (latency per round: save() to the write future resolving) as JSON to --out.

--die-before-arrival: this rank SIGKILLs itself once every rank has built its checkpointer,
before its first save; the others expect their first write to fail naming it.

Exit status: 0 as expected, 77 the package lacks the barrier asked for, 1 otherwise.
"""

import argparse
import json
import os
import re
import signal
import sys
import time
import traceback

UNSUPPORTED = 77


def make_checkpointer(shmckpt, barrier, commit_timeout):
    """The one place that calls the API choosing the commit barrier. Returns (checkpointer, how
    it was asked for). barrier: "file", "store", or "default" (no argument: the package's own
    choice, which is "store" once torch.distributed is initialised where the package has it).
    A package without the `barrier` option (it has only the file barrier) rejects the argument:
    "file" then runs without it, "store" is unsupported."""
    options = {"commit_timeout": commit_timeout}
    if barrier == "default":
        return shmckpt.AsyncCheckpointer(**options), "default (no barrier argument)"
    try:
        return shmckpt.AsyncCheckpointer(barrier=barrier, **options), f'barrier="{barrier}"'
    except shmckpt.InvalidArgumentError as e:
        if "barrier" not in str(e):
            raise
        if barrier != "file":
            raise Unsupported(f'this shmckpt does not accept barrier="{barrier}": {e}') from e
    return shmckpt.AsyncCheckpointer(**options), "default (the package has no barrier option: file)"


class Unsupported(Exception):
    pass


def names_rank(message, rank):
    """Whether an error message names `rank` as a rank ("rank 2", "rank(s) 1, 2 of 3")."""
    return re.search(r"\branks?(?:\(s\))?\s+(?:\d+,\s*)*%d\b" % rank, message) is not None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=4)
    p.add_argument("--barrier", choices=["file", "store", "default"], default="file")
    p.add_argument("--commit-timeout", type=float, default=120.0)
    p.add_argument("--die-before-arrival", type=int, default=-1, metavar="RANK")
    p.add_argument("--skew", type=float, default=0.0,
                   help="call save() this many seconds after the round's common start")
    p.add_argument("--baseline-root", default=None,
                   help="first time 3 saves of this rank alone (world size 1, no barrier) there")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    report = {"rank": rank, "world_size": world, "local_rank": int(os.environ["LOCAL_RANK"]),
              "host": os.environ.get("SHMCKPT_MH_HOST"), "barrier": a.barrier, "rounds": [],
              "ok": False}

    def finish(code):
        with open(a.out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(a.out + ".tmp", a.out)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the process group and the checkpointer are already closed

    import datetime
    import torch.distributed as dist
    import shmckpt
    from common import make_state

    t = time.monotonic()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    report["init_process_group_s"] = time.monotonic() - t
    ck = None
    failing = a.die_before_arrival >= 0
    try:
        try:
            ck, report["barrier_as_asked"] = make_checkpointer(shmckpt, a.barrier,
                                                               a.commit_timeout)
        except Unsupported as e:
            report["unsupported"] = str(e)
            print(f"rank {rank}: {e}", file=sys.stderr)
            finish(UNSUPPORTED)
        if a.baseline_root:
            report["baseline_write_s"] = solo_writes(shmckpt, make_state, rank, a)
        dist.barrier()  # every rank has its checkpoint child
        if rank == a.die_before_arrival:
            print(f"rank {rank}: killing myself before my first save", file=sys.stderr)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        for r in range(a.rounds):
            sd = make_state(r, rank, a.mib)
            if not failing:
                dist.barrier()  # every rank starts the round together
            if a.skew > 0:
                time.sleep(a.skew)  # a rank whose write starts late (what is measured)
            path = os.path.join(a.root, f"step_{r}")
            entry = {"round": r, "path": path}
            report["rounds"].append(entry)
            t0 = time.monotonic()
            entry["save_called"] = t0
            staging, write = ck.save(path, sd)
            staging.result(timeout=600)
            entry["staged_s"] = time.monotonic() - t0
            try:
                write.result(timeout=a.commit_timeout + 120)
                entry["resolved"] = time.monotonic()
                entry["latency_s"] = entry["resolved"] - t0
                entry["ok"] = True
                print(f"rank {rank}: round {r} committed {entry['latency_s']:.3f} s after "
                      f"save()", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - reported, judged below
                entry["failed_after_s"] = time.monotonic() - t0
                entry["ok"] = False
                entry["error_type"] = type(e).__name__
                entry["error"] = str(e)
                print(f"rank {rank}: round {r} failed after {entry['failed_after_s']:.3f} s: "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
                break
        if failing:
            e = report["rounds"][0] if report["rounds"] else {}
            dead = a.die_before_arrival
            report["ok"] = (not e.get("ok", True) and isinstance(e, dict)
                            and names_rank(e.get("error", ""), dead)
                            and e.get("error_type") in {c.__name__ for c in _error_classes(shmckpt)})
            if not report["ok"]:
                report["why"] = (f"expected the first write to fail with a shmckpt error naming "
                                 f"rank {dead}")
        else:
            report["ok"] = all(e.get("ok") for e in report["rounds"]) and \
                len(report["rounds"]) == a.rounds
            for e in report["rounds"]:
                if not e.get("ok"):
                    report["why"] = f"round {e['round']}: {e['error_type']}: {e['error']}"
                    break
            dist.barrier()  # nobody (rank 0 holds the TCPStore) leaves while others commit
    except Exception as e:  # noqa: BLE001 - reported
        report["exception"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if ck is not None:
            try:
                ck.close()
            except Exception as e:  # noqa: BLE001 - a failure the futures reported already
                report["close_error"] = f"{type(e).__name__}: {e}"
        if not failing:
            dist.destroy_process_group()
    finish(0 if report["ok"] else 1)


def solo_writes(shmckpt, make_state, rank, a):
    """Seconds from save() to durable for this rank's state dict saved alone (world size 1:
    no barrier), 3 times: what a round costs without any commit wait."""
    out = []
    with shmckpt.AsyncCheckpointer(rank=0, world_size=1) as solo:
        for r in range(3):
            sd = make_state(r, rank, a.mib)
            t0 = time.monotonic()
            staging, write = solo.save(os.path.join(a.baseline_root, f"rank{rank}_{r}"), sd)
            write.result(timeout=600)
            out.append(time.monotonic() - t0)
    return out


def _error_classes(shmckpt):
    return [c for c in vars(shmckpt).values() if isinstance(c, type) and
            issubclass(c, shmckpt.Error)]


if __name__ == "__main__":
    main()
