"""A model + Adam + LR scheduler resumed from a shmckpt checkpoint continues bit-identically."""
import pytest
import torch

import shmckpt


def make(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                                torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    return model, opt, sched


def batches(n):
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def train(model, opt, sched, data):
    for x, y in data:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def state_of(model, opt, sched, step):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "step": step}


def assert_same_tree(a, b, path="sd"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}.{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("flavour", ["async", "sync"])
def test_model_adam_and_scheduler_resume_bit_identically(tmp_path, flavour):
    data = batches(12)
    # The uninterrupted run.
    ref = make(0)
    train(*ref, data)

    # Train 6 steps, checkpoint, keep training (the snapshot must not see it).
    model, opt, sched = make(0)
    train(model, opt, sched, data[:6])
    saved = state_of(model, opt, sched, 6)
    if flavour == "async":
        with shmckpt.AsyncCheckpointer(segment_bytes=16 << 20) as ck:
            staging, write = ck.save(tmp_path / "step_6", saved)
            staging.result(timeout=60)
            train(model, opt, sched, data[6:8])  # overlaps the write
            write.result(timeout=60)
    else:
        with shmckpt.SyncCheckpointer() as ck:
            ck.save(tmp_path / "step_6", saved)

    # A fresh process would start from other weights; resume from the newest checkpoint.
    model, opt, sched = make(99)
    sd = shmckpt.load(shmckpt.latest_checkpoint(tmp_path))
    assert sd["step"] == 6
    assert list(sd["optimizer"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys, as torch made them
    assert sd["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optimizer"])
    sched.load_state_dict(sd["scheduler"])
    assert len(opt.state) == len(list(model.parameters()))  # every parameter's state attached
    train(model, opt, sched, data[6:])

    assert_same_tree(state_of(model, opt, sched, 12), state_of(*ref, 12))
