"""Commits through torch.distributed's store: 3 ranks (gloo, CPU), each its own process."""
import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import shmckpt

HERE = os.path.dirname(os.path.abspath(__file__))


def run_ranks(mode, root, world=3, timeout=240, may_die=()):
    """Runs `world` ranks of dist_rank.py MODE and returns what each printed.

    The test hosts the job's store itself, on a port the kernel picks and that stays bound until
    every rank is gone, so no other process can take the port between choosing and binding it.
    A rank that fails (other than those in `may_die`) or a job still running after `timeout`
    seconds ends the run at once: every rank still alive is made to print its Python stacks
    (SIGABRT, through faulthandler) and the test fails with every rank's output, rather than
    the others running through their own timeouts one after another.
    """
    server = dist.TCPStore("127.0.0.1", 0, world, True, datetime.timedelta(seconds=timeout),
                           wait_for_workers=False)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(server.port),
               WORLD_SIZE=str(world))
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(HERE, "dist_rank.py"), mode, str(root)],
        env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(world)]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=world)
    outputs = {pool.submit(p.communicate): r for r, p in enumerate(procs)}
    deadline = time.monotonic() + timeout
    failure = None
    try:
        pending = set(outputs)
        while pending and failure is None:
            done, pending = concurrent.futures.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()),
                return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                failure = f"ranks still running after {timeout} s"
            for f in done:
                r = outputs[f]
                if procs[r].returncode != 0 and r not in may_die:
                    failure = f"rank {r} exited with {procs[r].returncode}"
        if failure is not None:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGABRT)  # faulthandler prints the stacks, then exits
            concurrent.futures.wait(outputs, timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        pool.shutdown(wait=True)
        del server
    results = {}
    for f, r in outputs.items():
        out, err = f.result()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        results[r] = {"returncode": procs[r].returncode,
                      "out": json.loads(lines[-1]) if lines else None, "stderr": err, "raw": out}
    if failure is not None:
        pytest.fail(f"{mode}: {failure}\n" + "\n".join(
            f"--- rank {r} (exit {results[r]['returncode']}) ---\n{results[r]['raw']}"
            f"\n{results[r]['stderr']}" for r in sorted(results)))
    return results


def test_three_ranks_commit_through_the_store_and_never_touch_a_commit_directory(tmp_path):
    res = run_ranks("commit", tmp_path)
    for r in range(3):
        out = res[r]["out"]
        assert out is not None, res[r]["stderr"]
        assert out["barrier"] == "store"  # the default, with torch.distributed initialised
        assert out["rank_seen"] == [r, 3]
        assert out["error_1"] == "" and out["error_2"] == "" and out["error_sync"] == "", out
    for step in ("step_1", "step_2", "sync"):
        d = tmp_path / step
        with open(d / "checkpoint.json") as f:
            m = json.load(f)
        assert [e["rank"] for e in m["ranks"]] == [0, 1, 2]
        assert shmckpt.latest_checkpoint(tmp_path) is not None
    for step in ("step_1", "step_2"):
        # The obstacle is still the plain file rank 0 put there: nobody made .commit/.
        assert (tmp_path / step / ".commit").is_file()
    assert not (tmp_path / "sync" / ".commit").exists()
    back = shmckpt.load(tmp_path / "step_2", rank=2)
    assert torch.equal(back["w"], torch.full((1024,), 202.0))


def test_checkpoint_process_commits_through_the_store_by_default(tmp_path):
    res = run_ranks("process", tmp_path)
    for r in range(3):
        out = res[r]["out"]
        assert out is not None, res[r]["stderr"]
        assert out["barrier"] == "store", out
        assert out["error_1"] == "", out
        assert out["file_barrier"] == "file" and out["error_file"] == "", out
    with open(tmp_path / "step_1" / "checkpoint.json") as f:
        assert [e["rank"] for e in json.load(f)["ranks"]] == [0, 1, 2]
    assert (tmp_path / "step_1" / ".commit").is_file()  # nobody made .commit/
    assert shmckpt.load(tmp_path / "step_2_file", rank=1)["step"] == 2


def test_the_file_barrier_would_have_needed_the_commit_directory(tmp_path):
    # The control for the test above: the same obstacle fails a file-barrier save.
    res = run_ranks("file-control", tmp_path)
    for r in range(3):
        out = res[r]["out"]
        assert out is not None, res[r]["stderr"]
        assert out["barrier"] == "file"
        assert out["error_1"] != "", out
    assert not (tmp_path / "step_1" / "checkpoint.json").exists()


def test_a_rank_killed_before_arriving_fails_the_others_naming_it(tmp_path):
    res = run_ranks("killed", tmp_path, may_die=(2,))
    assert res[2]["returncode"] == -9
    for r in (0, 1):
        out = res[r]["out"]
        assert out is not None, res[r]["stderr"]
        assert out["error_1"].startswith("TimeoutError"), out
        assert "2 of 3 never arrived" in out["error_1"], out
        assert "no manifest was published" in out["error_1"], out
    assert not (tmp_path / "step_1" / "checkpoint.json").exists()
    assert not (tmp_path / "step_1" / ".commit").exists()


def test_rounds_never_mix_a_failed_rounds_leftovers_are_ignored(tmp_path):
    res = run_ranks("mix", tmp_path)
    for r in range(3):
        out = res[r]["out"]
        assert out is not None, res[r]["stderr"]
        assert out["error_1"] != "", out  # round 1 failed everywhere
        assert out["reported"] is True
        assert out["error_2"] == "" and out["close"] == "", out
    assert "2 of 3 never arrived" in res[0]["out"]["error_1"]
    assert "rank 0 failed the commit" in res[2]["out"]["error_1"]  # late: told at once
    d = tmp_path / "step"
    with open(d / "checkpoint.json") as f:
        m = json.load(f)
    assert len({e["round"] for e in m["ranks"]}) == 3  # each rank's own token
    for r in range(3):
        back = shmckpt.load(d, rank=r)
        assert back["step"] == 2 and torch.equal(back["w"], torch.full((1024,), r * 100 + 2.0))


def test_barrier_option_is_checked():
    with pytest.raises(shmckpt.InvalidArgumentError, match="needs torch.distributed"):
        shmckpt.AsyncCheckpointer(barrier="store")
    with pytest.raises(shmckpt.InvalidArgumentError, match="is not 'file'"):
        shmckpt.SyncCheckpointer(barrier="nfs")


def test_an_explicit_store_is_used_by_a_single_rank(tmp_path):
    import torch.distributed as dist
    store = dist.HashStore()
    with shmckpt.SyncCheckpointer(barrier=store, rank=0, world_size=1) as ck:
        assert ck.barrier == "store"
        ck.save(tmp_path / "a", {"x": torch.ones(3)})
    with shmckpt.AsyncCheckpointer(barrier=store, rank=0, world_size=1) as ck:
        _, w = ck.save(tmp_path / "b", {"x": torch.ones(3)})
        w.result(timeout=60)
    assert (tmp_path / "a" / "checkpoint.json").exists()
    assert (tmp_path / "b" / "checkpoint.json").exists()
    assert store.num_keys() > 0  # the commit went through it


def test_a_failed_rank_ends_the_job_at_once_and_shows_where_the_others_wait(tmp_path):
    # The harness's own check: rank 1 exits while ranks 0 and 2 wait for a store key it never
    # sets (for 120 s). The run must end with rank 1's error and the stacks of the ranks still
    # waiting, which they print only when the harness stops them.
    with pytest.raises(pytest.fail.Exception) as failed:
        run_ranks("crash", tmp_path)
    text = str(failed.value)
    assert "rank 1 exited with 1" in text
    assert "rank 1 fails on purpose" in text
    for r in (0, 2):
        part = text.split(f"--- rank {r} ")[1].split("--- rank ")[0]
        assert "Fatal Python error: Aborted" in part and 'dist_rank.py", line' in part, part
