"""The example trains, checkpoints, is killed, and resumes to exactly the uninterrupted state.

usage: run_example.py <path of examples/train.py>
"""
import os
import re
import signal
import subprocess
import sys
import tempfile

train = sys.argv[1]
common = ["--every", "20", "--mib", "0.25", "--batch", "16", "--keep", "2"]


def run(args, **kw):
    p = subprocess.run([sys.executable, train, *common, *args], capture_output=True, text=True,
                       timeout=240, **kw)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        sys.exit(f"example failed with status {p.returncode}")
    return p.stdout


def fingerprint(out):
    m = re.search(r"^final state: step (\d+), .* fingerprint (\S+)$", out, re.M)
    if not m:
        sys.exit("example printed no final state")
    return m.group(1), m.group(2)


with tempfile.TemporaryDirectory(prefix="shmckpt-example-") as tmp:
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    out = run(["--dir", a, "--steps", "200"])
    assert re.search(r"checkpoint step_20: .* training stalled .* ms, durable and committed .* ms"
                     r" after save\(\)", out), "no per-checkpoint figures"
    assert "summary: 10 checkpoints" in out, "not every checkpoint was reported"
    assert sorted(os.listdir(a)) == ["step_180", "step_200"], os.listdir(a)
    reference = fingerprint(out)

    # Kill a long run once a checkpoint is durable, then resume it to the same step.
    p = subprocess.Popen([sys.executable, train, *common, "--dir", b, "--steps", "100000"],
                         stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            sys.stdout.write("killed run: " + line)
            if line.startswith("checkpoint step_40:"):
                break
        else:
            sys.exit("the long run ended before its step_40 checkpoint")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(60)
    out = run(["--dir", b, "--steps", "200", "--resume"])
    assert re.search(r"^resumed from .*step_\d+ at step \d+$", out, re.M), "did not resume"
    resumed = fingerprint(out)
    if resumed != reference:
        sys.exit(f"resumed run ended in {resumed}, the uninterrupted one in {reference}")
    print(f"example: resumed run reproduces the uninterrupted run exactly ({reference[1]})")

# Three ranks on this host (--ranks 3: the launcher's environment, torch.distributed over gloo):
# they commit through its store, one manifest per checkpoint, and end in the same state.
with tempfile.TemporaryDirectory(prefix="shmckpt-example-ranks-") as tmp:
    out = run(["--dir", tmp, "--steps", "40", "--ranks", "3"])
    for r in range(3):
        assert f"[rank {r}] checkpoint child pid" in out and \
            f"rank {r} of 3, committing through the store barrier" in out, out
    prints = set(re.findall(r"final state: step 40, .* fingerprint (\S+)$", out, re.M))
    assert len(prints) == 1, f"the ranks' replicas differ: {prints}"
    for step in ("step_20", "step_40"):
        names = sorted(os.listdir(os.path.join(tmp, step)))
        assert names == ["checkpoint.json", "checkpoint_0.safetensors",
                         "checkpoint_1.safetensors", "checkpoint_2.safetensors"], names
    print("example: 3 ranks committed through torch.distributed's store")
