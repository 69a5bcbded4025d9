"""Commits through torch.distributed's store: 3 ranks (gloo, CPU), each its own process."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import shmckpt

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(mode, root, world=3, timeout=240):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world))
    procs = []
    for r in range(world):
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "dist_rank.py"), mode, str(root)],
            env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = {}
    try:
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=timeout)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            results[r] = {"returncode": p.returncode,
                          "out": json.loads(lines[-1]) if lines else None, "stderr": err}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
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
    res = run_ranks("killed", tmp_path)
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
