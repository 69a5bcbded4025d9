"""CheckpointProcess from Python: shared tensors, child failures, init errors, Ctrl-C."""
import os
import signal
import threading
import time

import pytest
import torch

import shmckpt
from conftest import wait_for_file


def test_empty_tensor_is_shared_and_the_childs_changes_are_seen(tmp_path, test_child):
    # The reference's shared-memory identity case: writer "set_42" sets w[0][0] = 42 in the
    # memory it was handed; the parent's tensor is that memory.
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="set_42",
                                   segment_bytes=8 << 20) as cp:
        w = cp.empty((4, 4), torch.float32)
        assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.shape == (4, 4)
        assert torch.equal(w, torch.zeros(4, 4))
        assert cp.is_shared(w) and cp.is_shared(w[1:])
        assert not cp.is_shared(torch.zeros(4, 4))
        w.fill_(1.0)
        cp.write({"w": w}, tmp_path / "c").result(timeout=60)
        assert w[0, 0].item() == 42.0 and w[0, 1].item() == 1.0


def test_empty_tensor_is_written_without_a_copy(tmp_path, test_child):
    # Writer "gate" holds the write until the gate file exists; meanwhile a copy into the
    # segment would show as allocated segment memory.
    gate = tmp_path / "gate"
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="gate",
                                   segment_bytes=16 << 20) as cp:
        w = cp.empty((256, 1024), torch.float32)  # 1 MiB
        w.copy_(torch.arange(256 * 1024, dtype=torch.float32).reshape(256, 1024))
        free = cp.segment_free_bytes
        f = cp.write({"w": w, "step": 1}, tmp_path / "shared", gate=str(gate))
        assert cp.segment_free_bytes == free  # nothing copied
        private = torch.ones(256, 1024)
        g = cp.write({"w": private}, tmp_path / "private", gate=str(gate))
        assert cp.segment_free_bytes <= free - private.numel() * 4  # a private tensor is copied
        gate.touch()
        f.result(timeout=60)
        g.result(timeout=60)
    back = shmckpt.load(tmp_path / "shared", allow_incomplete=True)
    assert torch.equal(back["w"], w) and back["step"] == 1


def test_empty_tensor_outlives_the_process_and_keeps_its_memory(test_child):
    cp = shmckpt.CheckpointProcess(worker_path=test_child, segment_bytes=8 << 20)
    w = cp.empty(1000, torch.int64)
    w.copy_(torch.arange(1000))
    view = w[10:20]
    del w
    cp.close()
    assert torch.equal(view, torch.arange(10, 20))


def test_child_killed_mid_write_fails_the_future_within_about_a_second(tmp_path, test_child):
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="block",
                                   segment_bytes=8 << 20, shutdown_timeout=5) as cp:
        f = cp.write({"w": torch.ones(10)}, tmp_path / "c")
        wait_for_file(tmp_path / "c" / "started")
        start = time.monotonic()
        os.kill(cp.pid, signal.SIGKILL)
        e = f.exception(timeout=30)
        elapsed = time.monotonic() - start
        print(f"future failed {elapsed * 1000:.0f} ms after SIGKILL")
        assert isinstance(e, shmckpt.ChildTerminatedError)
        assert "Child process terminated unexpectedly" in str(e)
        assert "signal 9" in str(e)
        assert not (tmp_path / "c" / "checkpoint_0.safetensors").exists()
    # The next write starts a replacement child on the same segment.
    with shmckpt.CheckpointProcess(worker_path=test_child, segment_bytes=8 << 20) as cp:
        killed = cp.pid
        w = cp.empty(4)
        cp.write({"w": w}, tmp_path / "e").result(timeout=60)
        os.kill(cp.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while cp.child_running and time.monotonic() < deadline:
            time.sleep(0.01)
        w.fill_(5.0)  # the segment, and tensors in it, outlive the child
        cp.write({"w": w}, tmp_path / "f").result(timeout=60)
        assert cp.pid != killed
    assert torch.equal(shmckpt.load(tmp_path / "f")["w"], torch.full((4,), 5.0))


def test_init_timeout_is_a_timeout_error(test_child):
    with shmckpt.CheckpointProcess(worker_path=test_child, init_function="sleep",
                                   init_args={"ms": 20000}, init_timeout=0.3,
                                   shutdown_timeout=1) as cp:
        with pytest.raises(shmckpt.TimeoutError) as e:
            cp.wait_ready()
        assert isinstance(e.value, TimeoutError) and isinstance(e.value, shmckpt.Error)
        assert "Timed out after" in str(e.value) and "initialize" in str(e.value)
        with pytest.raises(shmckpt.TimeoutError):
            cp.write({}, "/nonexistent/never")


def test_init_failure_carries_the_childs_message(test_child):
    with shmckpt.CheckpointProcess(worker_path=test_child, init_function="fail",
                                   init_args={"message": "no GPU here"}) as cp:
        with pytest.raises(shmckpt.ChildFailedError, match="init exploded: no GPU here"):
            cp.wait_ready()
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="fail_factory") as cp:
        with pytest.raises(shmckpt.ChildFailedError, match="writer factory exploded"):
            cp.wait_ready()


def test_writer_failure_fails_the_future_and_the_process_stays_usable(tmp_path, test_child):
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="record") as cp:
        bad = cp.write({"w": torch.ones(2)}, tmp_path / "bad", fail="disk on fire")
        good = cp.write({"w": torch.ones(2), "step": 3}, tmp_path / "good", note="periodic")
        with pytest.raises(shmckpt.ChildFailedError, match="disk on fire"):
            bad.result(timeout=60)
        good.result(timeout=60)
    record = (tmp_path / "good" / "record.txt").read_text()
    assert "kw note=periodic" in record and "tensor w 8" in record and "int step=3" in record


def test_ctrl_c_during_a_wait_raises_keyboard_interrupt_and_leaves_things_consistent(
        tmp_path, test_child):
    main = threading.main_thread().ident
    cp = shmckpt.CheckpointProcess(worker_path=test_child, init_function="sleep",
                                   init_args={"ms": 3000}, init_timeout=30,
                                   shutdown_timeout=1)
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cp.wait_ready()
        timer.join()
        cp.wait_ready()  # the handshake went on undisturbed
        cp.write({"w": torch.ones(3)}, tmp_path / "c").result(timeout=60)
        assert torch.equal(shmckpt.load(tmp_path / "c", allow_incomplete=True)["w"],
                           torch.ones(3))
    finally:
        timer.join()
        cp.close()  # lets the handshake finish, stops the child; returns normally


def test_ctrl_c_while_waiting_for_a_write_does_not_disturb_it(tmp_path, test_child):
    gate = tmp_path / "gate"
    main = threading.main_thread().ident
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="gate") as cp:
        f = cp.write({"w": torch.arange(5.0)}, tmp_path / "c", gate=str(gate))
        timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            f.result(timeout=60)
        timer.join()
        gate.touch()
        f.result(timeout=60)
    assert torch.equal(shmckpt.load(tmp_path / "c", allow_incomplete=True)["w"],
                       torch.arange(5.0))


def test_unknown_options_are_rejected():
    with pytest.raises(shmckpt.InvalidArgumentError, match="unknown option 'segment_size'"):
        shmckpt.CheckpointProcess(segment_size=1)


def test_child_priority_options_reach_the_child(test_child):
    cpu = max(os.sched_getaffinity(0))
    with shmckpt.CheckpointProcess(worker_path=test_child, writer_factory="record",
                                   segment_bytes=8 << 20, child_nice=4, child_policy="batch",
                                   child_io_class="idle", child_cpus=[cpu]) as cp:
        cp.wait_ready()
        pid = cp.pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # proc(5): field 19 is nice, field 41 the policy (3 = SCHED_BATCH), counted from 1.
        assert int(fields[19 - 3]) == min(os.getpriority(os.PRIO_PROCESS, 0) + 4, 19)
        assert int(fields[41 - 3]) == os.SCHED_BATCH
        assert os.sched_getaffinity(pid) == {cpu}
    with pytest.raises(shmckpt.InvalidArgumentError, match="'child_policy' is 'lazy'"):
        shmckpt.CheckpointProcess(worker_path=test_child, child_policy="lazy")
