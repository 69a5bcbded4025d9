"""AsyncCheckpointer / SyncCheckpointer: snapshots, failures, the GIL, resume helpers."""
import concurrent.futures
import os
import threading

import pytest
import torch

import shmckpt


def state(n=1 << 16, fill=1.0):
    return {"model": {"w": torch.full((n,), fill), "b": torch.arange(10.0)}, "step": 3}


def test_async_save_returns_two_futures_and_the_checkpoint_loads(tmp_path):
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        staging, write = ck.save(tmp_path / "step_3", state(), note="periodic")
        assert isinstance(staging, concurrent.futures.Future)
        assert isinstance(write, concurrent.futures.Future)
        assert staging.result(timeout=60) is None and write.result(timeout=60) is None
        back = ck.load(tmp_path / "step_3")
    assert torch.equal(back["model"]["w"], state()["model"]["w"]) and back["step"] == 3
    assert (tmp_path / "step_3" / "checkpoint.json").exists()
    assert (tmp_path / "step_3" / "checkpoint_0.safetensors").exists()


def test_snapshot_is_taken_when_staging_is_done(tmp_path):
    sd = state()
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        staging, write = ck.save(tmp_path / "c", sd)
        staging.result(timeout=60)
        sd["model"]["w"].add_(100.0)  # training goes on
        sd["model"]["b"].zero_()
        sd["step"] = 4
        write.result(timeout=60)
    back = shmckpt.load(tmp_path / "c")
    assert torch.equal(back["model"]["w"], state()["model"]["w"])
    assert torch.equal(back["model"]["b"], torch.arange(10.0)) and back["step"] == 3


def test_sync_save_returns_when_durable_and_committed(tmp_path):
    with shmckpt.SyncCheckpointer() as ck:
        assert ck.save(tmp_path / "c", state(), note="x") is None
        assert (tmp_path / "c" / "checkpoint.json").exists()
        assert torch.equal(ck.load(tmp_path / "c")["model"]["b"], torch.arange(10.0))


def unwritable(tmp_path):
    # A regular file where a directory would have to be: unwritable even for root.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    return blocker / "step_1"


def test_async_write_to_unwritable_directory_raises_and_the_checkpointer_stays_usable(tmp_path):
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        staging, write = ck.save(unwritable(tmp_path), state())
        with pytest.raises(shmckpt.Error) as e:
            write.result(timeout=60)
        assert "blocker" in str(e.value) and "directory" in str(e.value).lower()
        # ...and once more from the next save, so a trainer that ignores futures notices.
        with pytest.raises(shmckpt.Error, match="blocker"):
            ck.save(tmp_path / "next", state())
        staging, write = ck.save(tmp_path / "good", state(fill=2.0))
        write.result(timeout=60)
    assert torch.equal(shmckpt.load(tmp_path / "good")["model"]["w"], state(fill=2.0)["model"]["w"])
    assert not (tmp_path / "next").exists()


def test_sync_write_to_unwritable_directory_raises_and_the_checkpointer_stays_usable(tmp_path):
    with shmckpt.SyncCheckpointer() as ck:
        with pytest.raises(shmckpt.Error, match="blocker"):
            ck.save(unwritable(tmp_path), state())
        ck.save(tmp_path / "good", state())
    assert shmckpt.latest_checkpoint(tmp_path) == str(tmp_path / "good")


def test_gil_is_released_during_a_long_save(tmp_path):
    # Rank 0's save waits at the commit barrier until rank 1 has written its file: rank 1 runs on
    # another Python thread, which could never run if rank 0's save held the GIL.
    sd = state(n=1 << 20)
    ranks = [shmckpt.SyncCheckpointer(rank=r, world_size=2, commit_timeout=120) for r in (0, 1)]
    started = threading.Event()
    errors = []

    def rank1():
        started.wait(60)
        try:
            ranks[1].save(tmp_path / "c", state(n=1 << 20, fill=3.0))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=rank1)
    t.start()
    started.set()
    ranks[0].save(tmp_path / "c", sd)
    t.join(120)
    assert not errors
    assert torch.equal(shmckpt.load(tmp_path / "c", rank=1)["model"]["w"],
                       state(n=1 << 20, fill=3.0)["model"]["w"])


def test_gil_is_released_while_close_waits_for_writes(tmp_path, test_child):
    gate = tmp_path / "gate"
    ck = shmckpt.AsyncCheckpointer(segment_bytes=16 << 20, worker_path=test_child,
                                   writer_factory="gate")
    staging, write = ck.save(tmp_path / "c", state(), gate=str(gate))
    staging.result(timeout=60)
    opener = threading.Timer(0.2, gate.touch)  # needs the GIL while close() waits
    opener.start()
    ck.close()
    opener.join()
    assert write.done() and write.exception() is None


def test_closed_checkpointer_refuses_to_save(tmp_path):
    ck = shmckpt.AsyncCheckpointer(segment_bytes=16 << 20)
    with ck:
        pass
    with pytest.raises(shmckpt.ClosedError):
        ck.save(tmp_path / "c", state())
    ck.close()  # idempotent


def test_latest_checkpoint_and_keep_last(tmp_path):
    assert shmckpt.latest_checkpoint(tmp_path) is None
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        for step in range(4):
            ck.save(tmp_path / f"step_{step}", state(fill=float(step)))[1].result(timeout=60)
    assert shmckpt.latest_checkpoint(tmp_path) == str(tmp_path / "step_3")
    removed = shmckpt.keep_last(tmp_path, 2)
    assert sorted(os.path.basename(p) for p in removed) == ["step_0", "step_1"]
    assert sorted(os.listdir(tmp_path)) == ["step_2", "step_3"]


def test_rank_comes_from_the_launcher_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shmckpt.detect_rank_info() == (1, 2)
    with shmckpt.SyncCheckpointer() as ck:
        assert (ck.rank, ck.world_size) == (1, 2)
    with shmckpt.SyncCheckpointer(rank=0, world_size=1) as ck:
        assert (ck.rank, ck.world_size) == (0, 1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(shmckpt.InvalidArgumentError, match="RANK"):
        shmckpt.SyncCheckpointer()


def test_staging_timeout_when_every_generation_is_busy(tmp_path, test_child):
    gate = tmp_path / "gate"
    ck = shmckpt.AsyncCheckpointer(segment_bytes=16 << 20, worker_path=test_child,
                                   writer_factory="gate", staging_generations=1,
                                   staging_timeout=0.2)
    first = ck.save(tmp_path / "a", state(), gate=str(gate))
    staging, write = ck.save(tmp_path / "b", state())
    with pytest.raises(shmckpt.TimeoutError):
        staging.result(timeout=60)
    gate.touch()
    first[1].result(timeout=60)
    # No save() raised the failure of "b": close() does.
    with pytest.raises(shmckpt.TimeoutError):
        ck.close()
    ck.close()  # once


@pytest.mark.parametrize("how", ["exit", "drop", "interrupt"])
def test_interpreter_exit_without_close_finishes_queued_writes(tmp_path, how):
    # No close(): at exit the checkpointer is closed for the trainer (queued writes finish, the
    # resolver threads stop) and the interpreter exits cleanly, also after a KeyboardInterrupt.
    import subprocess
    import sys
    script = f"""
import shmckpt, torch
ck = shmckpt.AsyncCheckpointer(segment_bytes=64 << 20)
staging, write = ck.save({str(tmp_path / 'c')!r}, {{"w": torch.ones(1 << 22)}})
if {how!r} == "drop":
    del ck, staging
if {how!r} == "interrupt":
    raise KeyboardInterrupt
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    # An uncaught KeyboardInterrupt ends the interpreter by SIGINT, as Python does.
    assert p.returncode == (-2 if how == "interrupt" else 0), p.stderr
    assert "Fatal" not in p.stderr and "terminate called" not in p.stderr, p.stderr
    assert torch.equal(shmckpt.load(tmp_path / "c")["w"], torch.ones(1 << 22))


def test_a_forked_child_leaves_the_parents_checkpointer_alone(tmp_path):
    # A fork (a DataLoader worker, os.fork) inherits the checkpointer but not its threads; its
    # exit must neither hang nor disturb the parent's checkpointer.
    with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
        ck.save(tmp_path / "a", state())[1].result(timeout=60)
        pid = os.fork()
        if pid == 0:
            try:
                ck.close()  # not this process's: returns at once, touches nothing
                code = 0
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        ck.save(tmp_path / "b", state())[1].result(timeout=60)
    assert shmckpt.latest_checkpoint(tmp_path) == str(tmp_path / "b")
