"""One rank of a torch.distributed (gloo) job for test_store_barrier.py.

    dist_rank.py MODE DIR      (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE in the environment)

The test process hosts the job's TCPStore on MASTER_PORT; every rank joins it as a client.
Prints one JSON line with what this rank saw. Rank 0 leaves last, through keys of the test's
own. SIGABRT prints every thread's Python stack to stderr before the rank dies, which the test
uses to show where a failed job's ranks were.
"""
import datetime
import faulthandler
import json
import os
import signal
import sys

import torch
import torch.distributed as dist

import shmckpt

mode, root = sys.argv[1], sys.argv[2]
faulthandler.enable(all_threads=True)
_timeout = datetime.timedelta(seconds=120)
_rank, _world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), _world, False,
                       _timeout)
dist.init_process_group("gloo", store=_store, rank=_rank, world_size=_world, timeout=_timeout)
rank, world = dist.get_rank(), dist.get_world_size()
store = dist.distributed_c10d._get_default_store()
out = {"rank": rank}


def sd(step):
    return {"w": torch.full((1024,), float(rank * 100 + step)), "step": step}


def done_and_wait():
    # Every rank tells it is done; rank 0 leaves last.
    store.set(f"test/done/{rank}", "1")
    if rank == 0:
        store.wait([f"test/done/{r}" for r in range(world) if r != 0], datetime.timedelta(seconds=120))


def error_text(fut):
    try:
        fut.result(timeout=120)
        return ""
    except shmckpt.Error as e:
        return f"{type(e).__name__}: {e}"


def block_commit_directory(*dirs):
    # A regular file where the file barrier would make its .commit/ directory: any attempt to
    # create or use it fails the save. Every rank waits until rank 0 has put it there.
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        if rank == 0:
            with open(os.path.join(d, ".commit"), "w") as f:
                f.write("not a directory\n")
    dist.barrier()


if mode == "commit":
    block_commit_directory(*(os.path.join(root, f"step_{step}") for step in (1, 2)))
    with shmckpt.AsyncCheckpointer(commit_timeout=60) as ck:
        out["barrier"] = ck.barrier
        out["rank_seen"] = [ck.rank, ck.world_size]
        for step in (1, 2):
            _, write = ck.save(os.path.join(root, f"step_{step}"), sd(step))
            out[f"error_{step}"] = error_text(write)
    with shmckpt.SyncCheckpointer() as sc:
        d = os.path.join(root, "sync")
        try:
            sc.save(d, sd(3))
            out["error_sync"] = ""
        except shmckpt.Error as e:
            out["error_sync"] = str(e)
    done_and_wait()
elif mode == "process":
    # CheckpointProcess, the low-level API, commits through the store too: the same obstacle.
    d = os.path.join(root, "step_1")
    block_commit_directory(d)
    with shmckpt.CheckpointProcess(commit_timeout=60) as cp:
        out["barrier"] = cp.barrier
        out["error_1"] = error_text(cp.write(sd(1), d))
    with shmckpt.CheckpointProcess(barrier="file", commit_timeout=5) as cp:
        out["file_barrier"] = cp.barrier
        out["error_file"] = error_text(cp.write(sd(2), os.path.join(root, "step_2_file")))
        # ... which needs no obstacle to work: a directory of its own commits.
    done_and_wait()
elif mode == "file-control":
    # The same obstacle under the file barrier: the save must fail (the check has teeth).
    d = os.path.join(root, "step_1")
    block_commit_directory(d)
    ck = shmckpt.AsyncCheckpointer(barrier="file", commit_timeout=3)
    out["barrier"] = ck.barrier
    _, write = ck.save(d, sd(1))
    out["error_1"] = error_text(write)
    try:
        ck.close()
    except shmckpt.Error:
        pass
    done_and_wait()
elif mode == "killed":
    if rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # before it ever arrives
    ck = shmckpt.AsyncCheckpointer(commit_timeout=2)
    # Ranks 0 and 1 save together, so that each sees the other arrive within commit_timeout.
    store.set(f"test/ready/{rank}", "1")
    store.wait([f"test/ready/{1 - rank}"], datetime.timedelta(seconds=120))
    _, write = ck.save(os.path.join(root, "step_1"), sd(1))
    out["error_1"] = error_text(write)
    try:
        ck.close()
    except shmckpt.Error:
        pass
    store.set(f"test/done/{rank}", "1")
    if rank == 0:
        store.wait(["test/done/1"], datetime.timedelta(seconds=120))
elif mode == "mix":
    d = os.path.join(root, "step")
    ck = shmckpt.AsyncCheckpointer(commit_timeout=4)
    dist.barrier()  # every child started: ranks 0 and 1 arrive together
    # Round 1: rank 2 saves only once ranks 0 and 1 have given up on it.
    if rank == 2:
        store.wait(["test/failed/0", "test/failed/1"], datetime.timedelta(seconds=120))
    _, write = ck.save(d, sd(1))
    out["error_1"] = error_text(write)
    if rank != 2:
        store.set(f"test/failed/{rank}", "1")
    try:
        ck.save(os.path.join(root, "never"), sd(0))  # raises round 1's failure; saves nothing
        out["reported"] = False
    except shmckpt.Error:
        out["reported"] = True
    dist.barrier()
    # Round 2, into the same directory, where round 1 left files and store keys behind.
    _, write = ck.save(d, sd(2))
    out["error_2"] = error_text(write)
    try:
        ck.close()
        out["close"] = ""
    except shmckpt.Error as e:
        out["close"] = str(e)
    done_and_wait()
elif mode == "crash":
    # For the harness's own test: rank 1 fails while the others wait for a key it never sets.
    if rank == 1:
        raise SystemExit("rank 1 fails on purpose")
    store.wait(["test/never"], datetime.timedelta(seconds=120))
print(json.dumps(out), flush=True)
os._exit(0)
