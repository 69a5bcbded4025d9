"""What the rank and verify scripts share: the state dict each (round, rank) saves, compared bit
for bit after loading it on another host."""

import torch


def make_state(round_, rank, mib):
    """A trainer-like state dict of about `mib` MiB, the same for the same (round, rank)."""
    g = torch.Generator().manual_seed(1_000_003 * (round_ + 1) + 7919 * rank)
    total = max(1, mib) << 20
    cols = 256
    rows = max(1, (total * 3 // 4) // (4 * cols))   # 3/4 of the bytes as float32
    ids = max(1, (total // 4) // 8)                  # 1/4 as int64
    return {
        "model": {
            "layer.weight": torch.randn(rows, cols, generator=g),
            "layer.bias": torch.randn(1024, generator=g).to(torch.bfloat16),
            "embedding.ids": torch.randint(-2**62, 2**62, (ids,), generator=g, dtype=torch.int64),
        },
        "optimizer": {
            "state": {0: {"step": torch.tensor(float(round_)),
                          "exp_avg": torch.randn(4096, generator=g)}},
            "param_groups": [{"lr": 0.1 / (round_ + 1), "betas": (0.9, 0.999), "params": [0]}],
        },
        "step": round_,
        "rank": rank,
        "tag": f"round {round_} of rank {rank}",
    }


def differences(expected, got, where="state"):
    """Where `got` differs from `expected` (types, keys, dtypes, shapes or bytes); [] if none."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return [f"{where}: expected a tensor, got {type(got).__name__}"]
        if got.dtype != expected.dtype or tuple(got.shape) != tuple(expected.shape):
            return [f"{where}: expected {expected.dtype} {tuple(expected.shape)}, "
                    f"got {got.dtype} {tuple(got.shape)}"]
        a = expected.contiguous().reshape(-1).view(torch.uint8)
        b = got.contiguous().reshape(-1).view(torch.uint8)
        if not torch.equal(a, b):
            first = int((a != b).nonzero()[0])
            return [f"{where}: bytes differ (first at byte {first})"]
        return []
    if type(got) is not type(expected):
        return [f"{where}: expected {type(expected).__name__}, got {type(got).__name__}"]
    if isinstance(expected, dict):
        if list(expected.keys()) != list(got.keys()):
            return [f"{where}: keys {list(expected.keys())} != {list(got.keys())}"]
        out = []
        for k in expected:
            out += differences(expected[k], got[k], f"{where}[{k!r}]")
        return out
    if isinstance(expected, (list, tuple)):
        if len(expected) != len(got):
            return [f"{where}: length {len(expected)} != {len(got)}"]
        out = []
        for i, (e, g) in enumerate(zip(expected, got)):
            out += differences(e, g, f"{where}[{i}]")
        return out
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]
