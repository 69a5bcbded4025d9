#!/usr/bin/python3
"""A PyTorch training loop that checkpoints asynchronously with shmckpt, and resumes.

Every --every steps it saves the model, the Adam optimizer, the LR scheduler, the step and the
RNG state with AsyncCheckpointer.save(), which returns two futures at once. The snapshot into
shared memory (`staging`) overlaps the next forward and backward pass; the loop waits for it only
before the next optimizer.step(), which is the first thing that changes the saved tensors. The
native checkpoint child writes the file durably (`write`) while training goes on.

    PYTHONPATH=build/python /usr/bin/python3 python/examples/train.py --dir /tmp/ckpt --steps 300
    # kill it at any moment, then continue from the newest complete checkpoint:
    PYTHONPATH=build/python /usr/bin/python3 python/examples/train.py --dir /tmp/ckpt --steps 300 --resume

A resumed run ends in exactly the state of an uninterrupted one (compare the fingerprints).

Several ranks (data parallel over gloo, gradients averaged with all_reduce): under a launcher that
sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE (torchrun, or one process per host by hand)
every rank initialises torch.distributed and the checkpoints commit through its store, across
hosts sharing the checkpoint filesystem; `--ranks N` starts N ranks on this host that way.

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-endpoint HOST:29500 python/examples/train.py --dir /shared/ckpt
    PYTHONPATH=build/python /usr/bin/python3 python/examples/train.py --dir /tmp/ckpt --ranks 3
"""
import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

import shmckpt


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="checkpoint root (one directory per checkpoint)")
    p.add_argument("--steps", type=int, default=300, help="train until this step")
    p.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="keep the newest N checkpoints")
    p.add_argument("--mib", type=float, default=1, help="model size in MiB (float32 weights)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--ranks", type=int, default=0,
                   help="start N ranks on this host (MASTER_ADDR/PORT, RANK, WORLD_SIZE set)")
    return p.parse_args()


def launch(n):
    # One host's torchrun, reduced: N copies of this script without --ranks, one rank each.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--ranks":
            skip = True
        elif not a.startswith("--ranks="):
            argv.append(a)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n))
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv],
                              env=dict(env, RANK=str(r))) for r in range(n)]
    status = 0
    for p in procs:
        status = status or p.wait()
    return status


def init_distributed():
    # (rank, world_size); torch.distributed over gloo when the launcher's environment says so.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "MASTER_ADDR" in os.environ:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build(args):
    # An MLP 64 -> h -> h -> 1 whose float32 weights take about --mib MiB.
    h = max(16, int(((args.mib * (1 << 20) / 4) + 64 ** 2) ** 0.5 - 64))
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, h), torch.nn.GELU(), torch.nn.Linear(h, h),
                                torch.nn.GELU(), torch.nn.Linear(h, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    return model, opt, sched


def batch(args, step, rank=0):
    # The data of a step depends only on (seed, step, rank): a resumed run sees the same batches.
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + rank * 7_919_993)
    x = torch.randn(args.batch, 64, generator=g)
    return x, torch.sin(x[:, :1] * 3) + x[:, 1:2] * 0.5


def fingerprint(model, opt):
    h = hashlib.sha256()
    for t in list(model.state_dict().values()) + [v for s in opt.state.values()
                                                  for v in s.values()]:
        h.update(t.detach().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def main():
    args = parse_args()
    if args.ranks:
        sys.exit(launch(args.ranks))
    rank, world = init_distributed()
    def say(message):
        # One write per line: the ranks share the terminal (or the launcher's pipe), and with
        # unbuffered output print() writes its arguments separately, so prefixes and lines of
        # different ranks could interleave.
        prefix = f"[rank {rank}] " if world > 1 else ""
        sys.stdout.write(f"{prefix}{message}\n")
        sys.stdout.flush()
    model, opt, sched = build(args)
    nbytes = sum(p.numel() * 4 for p in model.parameters()) * 3  # weights + Adam's two moments
    start = 0
    if args.resume and (latest := shmckpt.latest_checkpoint(args.dir)):
        sd = shmckpt.load(latest)
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["optimizer"])
        sched.load_state_dict(sd["scheduler"])
        torch.set_rng_state(sd["rng"])
        start = sd["step"]
        say(f"resumed from {latest} at step {start}")

    t0 = time.monotonic()
    # The shared segment grows as needed; starting it with room for two snapshots (double
    # buffering) spares the first checkpoints the growth.
    segment = 2 * nbytes + (32 << 20)
    # With torch.distributed initialised the ranks commit through its store (barrier="store").
    ck = shmckpt.AsyncCheckpointer(initial_segment_bytes=segment)
    say(f"checkpoint child pid {ck.child_pid} started in {(time.monotonic() - t0) * 1e3:.1f} ms"
        f" (segment {segment / 2**20:.0f} MiB, 2 buffer generations);"
        f" checkpoints every {args.every} steps into {args.dir}, keeping the newest {args.keep}"
        + (f"; rank {rank} of {world}, committing through the {ck.barrier} barrier"
           if world > 1 else ""))

    pending = []        # checkpoints whose write is not reported yet
    staging = None      # the newest snapshot, until it is taken
    stalls, durables = [], []
    train_time = 0.0
    step = start
    loss = torch.tensor(float("nan"))

    def report(done_only):
        while pending and (not done_only or pending[0]["write"].done()):
            c = pending.pop(0)
            c["write"].result()  # raises if the write failed
            durable = c["durable_at"] - c["saved_at"]
            durables.append(durable)
            say(f"checkpoint {os.path.basename(c['path'])}: {c['mib']:.1f} MiB, training"
                f" stalled {c['stall'] * 1e3:.1f} ms, durable and committed"
                f" {durable * 1e3:.1f} ms after save() (training was at step {c['at_step']})")
            if rank == 0:
                shmckpt.keep_last(args.dir, args.keep)

    try:
        while step < args.steps:
            t_step = time.monotonic()
            x, y = batch(args, step, rank)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:  # data parallel: every replica steps with the mean gradient
                import torch.distributed as dist
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            if staging is not None:  # the snapshot overlapped forward/backward; now it must be done
                t = time.monotonic()
                staging.result()
                pending[-1]["stall"] += time.monotonic() - t
                stalls.append(pending[-1]["stall"])
                staging = None
            opt.step()
            sched.step()
            step += 1
            train_time += time.monotonic() - t_step
            if step % args.every == 0 or step == args.steps:
                t = time.monotonic()
                path = os.path.join(args.dir, f"step_{step}")
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "step": step,
                         "rng": torch.get_rng_state()}
                staging, write = ck.save(path, state)
                c = {"path": path, "saved_at": t, "stall": time.monotonic() - t,
                     "mib": nbytes / 2**20, "write": write, "at_step": None}
                write.add_done_callback(
                    lambda f, c=c: c.update(durable_at=time.monotonic(), at_step=step))
                pending.append(c)
            report(done_only=True)
        if staging is not None:
            t = time.monotonic()
            staging.result()
            pending[-1]["stall"] += time.monotonic() - t
            stalls.append(pending[-1]["stall"])
        for c in pending:
            c["write"].exception()  # wait for each write
        report(done_only=False)
    finally:
        ck.close()

    if stalls:
        say(f"summary: {len(stalls)} checkpoints; training stalled median"
            f" {statistics.median(stalls) * 1e3:.1f} ms per checkpoint ({sum(stalls):.2f} s of"
            f" {train_time:.2f} s training, {100 * sum(stalls) / max(train_time, 1e-9):.1f}%);"
            f" durable and committed median {statistics.median(durables) * 1e3:.1f} ms after"
            f" save()")
    say(f"final state: step {step}, loss {loss.item():.9g}, fingerprint {fingerprint(model, opt)}")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
