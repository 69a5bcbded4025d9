#!/usr/bin/python3
"""Side by side, in one process, on the same state dict: how long a PyTorch trainer stalls per
checkpoint, and how long until the checkpoint is on disk, with

  (a) torch.save        torch.save() in the trainer (written: torch.save returned);
  (b) reference design  PyTorch's experimental CheckpointProcess design: a torch.multiprocessing
                        "spawn" child and a Pipe; the trainer snapshots the state dict (clone) and
                        sends it, and torch.multiprocessing's pickler moves every tensor's storage
                        into fresh shared memory; the child runs torch.save and answers (written:
                        the answer arrived; no fsync);
  (c) shmckpt           shmckpt.AsyncCheckpointer.save(): staged into reused shared buffers, written
                        and fsynced by the native child, committed (durable: the write future).

The stall of (c) is the save() call plus the whole staging copy, as if the trainer waited for
`staging` at once; in a real loop the copy overlaps forward/backward and the stall is between
the save() call (also reported) and that.
Methods are interleaved: each round saves once with (a), (b) and (c), mutating the tensors in
between like a training step. The state dict is float32 "parameters" in 8 MiB tensors plus
Adam-like state (exp_avg, exp_avg_sq per parameter, a step counter): 3x the parameter bytes.

    PYTHONPATH=build/python /usr/bin/python3 tools/py-bench/bench.py            # 64, 256 MiB
    PYTHONPATH=build/python /usr/bin/python3 tools/py-bench/bench.py --sizes 64,256,1024
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

import shmckpt


def reference_child(conn):
    """The child of design (b): torch.save whatever arrives, answer when written."""
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        sd, path = msg
        torch.save(sd, path)
        del sd
        conn.send("written")


def make_state(param_mib):
    chunk = 8 << 20
    total = int(param_mib * (1 << 20))
    params, state = {}, {}
    for i in range(max(1, total // chunk)):
        n = min(chunk, total - i * chunk) // 4
        p = torch.randn(n)
        params[f"layers.{i}.weight"] = p
        state[i] = {"step": torch.tensor(1.0), "exp_avg": torch.randn(n),
                    "exp_avg_sq": torch.rand(n)}
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "params": list(state)}]
    return {"model": params, "optimizer": {"state": state, "param_groups": groups}, "step": 0}


def nbytes(sd):
    n = 0
    for v in sd["model"].values():
        n += v.numel() * 4
    for s in sd["optimizer"]["state"].values():
        n += sum(t.numel() * t.element_size() for t in s.values())
    return n


def train_step(sd):
    for p in sd["model"].values():
        p.add_(1e-3)
    for s in sd["optimizer"]["state"].values():
        s["step"].add_(1)
    sd["step"] += 1


def clone_tree(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: clone_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone_tree(v) for v in x)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,256", help="parameter MiB per state dict, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per size (after one warm-up)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    scratch = args.dir or tempfile.mkdtemp(prefix="shmckpt-py-bench-")
    os.makedirs(scratch, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    ctx = mp.get_context("spawn")
    t0 = time.monotonic()
    parent, child_end = ctx.Pipe()
    child = ctx.Process(target=reference_child, args=(child_end,), daemon=True)
    child.start()
    assert parent.recv() == "ready"
    ref_ready = time.monotonic() - t0
    log(f"reference child (torch.multiprocessing spawn) ready in {ref_ready * 1e3:.0f} ms")

    results = []
    try:
        for mib in sizes:
            sd = make_state(mib)
            total = nbytes(sd)
            t0 = time.monotonic()
            # Sized for two snapshots from the start (it would grow to that by itself).
            ck = shmckpt.AsyncCheckpointer(initial_segment_bytes=2 * total + (64 << 20))
            ck_start = time.monotonic() - t0
            runs = {"torch.save": [], "reference": [], "shmckpt": []}
            try:
                for r in range(args.rounds + 1):
                    for name in runs:
                        train_step(sd)
                        path = os.path.join(scratch, f"{name}-{r}")
                        t0 = time.monotonic()
                        if name == "torch.save":
                            torch.save(sd, path + ".pt")
                            call = stall = written = time.monotonic() - t0
                        elif name == "reference":
                            parent.send((clone_tree(sd), path + ".pt"))
                            call = stall = time.monotonic() - t0
                            assert parent.recv() == "written"
                            written = time.monotonic() - t0
                        else:
                            staging, write = ck.save(path, sd)
                            call = time.monotonic() - t0
                            staging.result()
                            stall = time.monotonic() - t0
                            write.result()
                            written = time.monotonic() - t0
                        if r > 0:
                            runs[name].append((call, stall, written))
                        # Keep the disk and page cache from filling: drop the previous round's.
                        prev = os.path.join(scratch, f"{name}-{r - 1}")
                        for p in (prev, prev + ".pt"):
                            if os.path.isdir(p):
                                shutil.rmtree(p)
                            elif os.path.exists(p):
                                os.remove(p)
                    log(f"{mib:g} MiB: round {r}{' (warm-up)' if r == 0 else ''} done")
            finally:
                ck.close()
            row = {"param_mib": mib, "state_mib": total / 2**20, "shmckpt_start_ms": ck_start * 1e3,
                   "reference_start_ms": ref_ready * 1e3}
            for name, rs in runs.items():
                row[name] = {"call_ms": statistics.median(c for c, _, _ in rs) * 1e3,
                             "stall_ms": statistics.median(s for _, s, _ in rs) * 1e3,
                             "written_ms": statistics.median(w for _, _, w in rs) * 1e3}
            row["stall_ratio_vs_reference"] = row["shmckpt"]["stall_ms"] / row["reference"]["stall_ms"]
            row["written_ratio_vs_reference"] = (row["shmckpt"]["written_ms"] /
                                                 row["reference"]["written_ms"])
            results.append(row)
            for f in os.listdir(scratch):
                p = os.path.join(scratch, f)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            del sd
    finally:
        parent.send(None)
        child.join(30)
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "results": results},
                         indent=2))
        return
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; median of {args.rounds} rounds")
    print(f"checkpoint child start: reference {ref_ready * 1e3:.0f} ms, "
          f"shmckpt {results[0]['shmckpt_start_ms']:.0f} ms (incl. segment prefault)")
    print("| state dict | method | save call returns | trainer stall (snapshot taken) |"
          " checkpoint written (shmckpt: durable) |")
    print("|---|---|---|---|---|")
    for row in results:
        for name in ("torch.save", "reference", "shmckpt"):
            m = row[name]
            print(f"| {row['param_mib']:g} MiB params, {row['state_mib']:.0f} MiB total | {name} |"
                  f" {m['call_ms']:.1f} ms | {m['stall_ms']:.1f} ms | {m['written_ms']:.1f} ms |")
    print()
    for row in results:
        print(f"{row['param_mib']:g} MiB: shmckpt / reference: stall "
              f"{row['stall_ratio_vs_reference']:.3f}x (target <= 0.1x), end to end "
              f"{row['written_ratio_vs_reference']:.3f}x (target <= 0.5x)")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
