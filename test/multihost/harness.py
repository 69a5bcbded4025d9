#!/usr/bin/python3
"""Multi-rank commits across simulated hosts (see README.md beside this file).

Builds, on this machine only: a "storage" network namespace with a bridge and an sshd serving an
export directory, and N "hosts", each its own network and mount namespace joined to the bridge
by a veth pair, each mounting the export with sshfs at the same path. Ranks run in the hosts
with the launcher environment torchrun sets, save checkpoints through one shared directory, and
each host loads the files the other hosts wrote. Everything is torn down on every exit path;
every child also gets SIGKILL should this process die (PR_SET_PDEATHSIG), and the namespaces go
with their last process.

Exit status: 0 every assertion held, 1 one failed, 77 skipped (not root, no /dev/fuse, a tool or
the Python package missing, or the package lacks the barrier asked for), 2 usage.
"""

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
TOOLS = ["unshare", "nsenter", "ip", "sshfs", "fusermount3", "ssh", "ssh-keygen"]
SSHD = "/usr/sbin/sshd"
TMP_PREFIX = "shmckpt-multihost-"


class Skip(Exception):
    pass


class Failure(Exception):
    pass


class Interrupted(BaseException):
    pass


def log(msg):
    print(f"multihost: {msg}", file=sys.stderr, flush=True)


_libc = ctypes.CDLL(None, use_errno=True)
_parent = os.getpid()


def _die_with_parent():
    # PR_SET_PDEATHSIG (1): SIGKILL once this (single-threaded) harness dies, however it dies.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _parent:
        os._exit(1)


def wait_until(what, pred, timeout, proc=None, log_path=None):
    """Polls pred() until true (there is no event to wait on for a mount or a listening socket
    in another namespace); fails at the deadline or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise Failure(f"{what}: the process exited with status {proc.returncode}" +
                          tail(log_path))
        if time.monotonic() >= deadline:
            raise Failure(f"{what}: not done after {timeout:.0f} s" + tail(log_path))
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def tail(path, n=15):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()[-n:]
    return ("\n  " + path + ":\n    " + "\n    ".join(lines)) if lines else ""


class Cluster:
    """The namespaces, the sshd and the mounts of one run; a context manager that tears down."""

    def __init__(self, hosts, cache, keep=False):
        self.n_hosts = hosts
        self.cache = cache
        self.keep = keep
        self.procs = []      # (name, Popen), stopped in reverse order
        self.holders = {}    # name -> Popen of `unshare ... sleep infinity`
        self.mounts = []     # (host, sshfs Popen)
        self.namespaces = set()  # the network namespaces made (their /proc/*/ns/net links)
        _reclaim_dead_runs()
        self.tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
        os.chmod(self.tmp, 0o755)
        with open(os.path.join(self.tmp, "owner"), "w") as f:
            f.write(_identity(os.getpid()))
        self.suffix = os.path.basename(self.tmp).rsplit("-", 1)[-1][:6]
        a, b = random.randrange(16, 250), random.randrange(0, 256)
        self.subnet = f"10.{a}.{b}"
        self.storage_addr = f"{self.subnet}.1"
        self.addr = {f"host{i}": f"{self.subnet}.{11 + i}" for i in range(hosts)}
        self.export = os.path.join(self.tmp, "export")
        self.mnt = os.path.join(self.tmp, "mnt")   # the same path in every host
        self.logs = os.path.join(self.tmp, "logs")
        for d in (self.export, self.mnt, self.logs):
            os.makedirs(d)

    # ---- plumbing ----
    def popen(self, name, argv, **kw):
        logf = open(os.path.join(self.logs, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent, start_new_session=True, cwd=self.tmp,
                             **kw)
        logf.close()
        p.log_path = os.path.join(self.logs, name + ".log")
        self.procs.append((name, p))
        return p

    def ns(self, host, net=True, mount=True):
        pid = self.holders[host].pid
        return ["nsenter", "-t", str(pid)] + (["-n"] if net else []) + (["-m"] if mount else []) \
            + ["--"]

    def run(self, host, argv, timeout=30, **kw):
        r = subprocess.run((self.ns(host) if host else []) + argv, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=_die_with_parent, **kw)
        if r.returncode != 0:
            raise Failure(f"{' '.join(argv)} in {host or 'the root namespace'} failed "
                          f"({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def free_port(self, host):
        return int(self.run(host, [PYTHON, "-c", "import socket; s = socket.socket(); "
                                   "s.bind(('', 0)); print(s.getsockname()[1])"]))

    # ---- set-up ----
    def __enter__(self):
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def _setup(self):
        t0 = time.monotonic()
        for name in ["storage"] + list(self.addr):
            p = self.popen(f"holder-{name}", ["unshare", "--net", "--mount", "--propagation",
                                              "private", "sleep", "infinity"])
            self.holders[name] = p
            me = os.readlink("/proc/self/ns/net")
            wait_until(f"namespace of {name}",
                       lambda: _ns_of(p.pid) not in (None, me), 10, p, p.log_path)
            self.namespaces.add(_ns_of(p.pid))
        self.run("storage", ["ip", "link", "set", "lo", "up"])
        self.run("storage", ["ip", "link", "add", "br0", "type", "bridge"])
        self.run("storage", ["ip", "addr", "add", f"{self.storage_addr}/24", "dev", "br0"])
        self.run("storage", ["ip", "link", "set", "br0", "up"])
        for i, (host, addr) in enumerate(self.addr.items()):
            # Created straight inside the two namespaces: no name ever exists in the root one.
            self.run(None, ["ip", "link", "add", "name", "eth0", "netns",
                            str(self.holders[host].pid), "type", "veth", "peer", "name",
                            f"v{i}{self.suffix}", "netns", str(self.holders["storage"].pid)])
            self.run("storage", ["ip", "link", "set", f"v{i}{self.suffix}", "master", "br0", "up"])
            self.run(host, ["ip", "link", "set", "lo", "up"])
            self.run(host, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
            self.run(host, ["ip", "link", "set", "eth0", "up"])
        self._start_sshd()
        for host in self.addr:
            self._mount(host)
        self.setup_s = time.monotonic() - t0
        log(f"{self.n_hosts} hosts on {self.subnet}.0/24 ready in {self.setup_s:.1f} s, sshfs "
            f"{'default caching' if self.cache == 'default' else 'caching off'}, export "
            f"{self.export}, mounted at {self.mnt} in each host")

    def _start_sshd(self):
        k = os.path.join(self.tmp, "keys")
        os.makedirs(k, mode=0o700)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"shmckpt-multihost-{name}", "-f", os.path.join(k, name)], check=True,
                           capture_output=True, timeout=30)
        shutil.copy(os.path.join(k, "client_key.pub"), os.path.join(k, "authorized_keys"))
        self.port = self.free_port("storage")
        with open(os.path.join(k, "host_key.pub")) as f:
            hostkey = " ".join(f.read().split()[:2])
        self.known_hosts = os.path.join(k, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write(f"[{self.storage_addr}]:{self.port} {hostkey}\n")
        self.client_key = os.path.join(k, "client_key")
        cfg = os.path.join(k, "sshd_config")
        with open(cfg, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress {self.storage_addr}
HostKey {k}/host_key
PidFile none
AuthorizedKeysFile {k}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        # sshd wants its privilege-separation directory: a private /run in the storage mount
        # namespace, so nothing is created outside this run's namespaces.
        self.run("storage", ["sh", "-c", "mount -t tmpfs -o mode=0755,size=1m tmpfs /run && "
                             "mkdir -m 0755 /run/sshd"])
        self.sshd = self.popen("sshd", self.ns("storage") + [SSHD, "-D", "-e", "-f", cfg])
        wait_until(f"sshd listening on {self.storage_addr}:{self.port}",
                   lambda: _listening(self.sshd.pid, self.port), 20, self.sshd,
                   self.sshd.log_path)

    def _mount(self, host):
        opts = ["-o", f"IdentityFile={self.client_key}", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", f"Port={self.port}"]
        if self.cache == "off":
            opts += ["-o", "cache=no", "-o", "attr_timeout=0", "-o", "entry_timeout=0",
                     "-o", "negative_timeout=0"]
        p = self.popen(f"sshfs-{host}", self.ns(host) + ["sshfs", "-f", "-F", "/dev/null"] + opts +
                       [f"root@{self.storage_addr}:{self.export}", self.mnt])
        wait_until(f"sshfs mount in {host}", lambda: _mounted(p.pid, self.mnt), 20, p, p.log_path)
        self.mounts.append((host, p))

    # ---- tear-down ----
    def teardown(self):
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM,
                                                             signal.SIGHUP)}
        try:
            self._teardown()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _teardown(self):
        problems = []
        # Ranks and verifiers first (anything not infrastructure), then the mounts, sshd, and
        # last the namespace holders: a namespace ends with its last process, and its veth and
        # bridge with it.
        infra = {id(p) for _, p in self.mounts} | {id(p) for p in self.holders.values()}
        if getattr(self, "sshd", None):
            infra.add(id(self.sshd))
        for name, p in reversed(self.procs):
            if id(p) not in infra:
                _stop(p, signal.SIGKILL, 0)
        for host, p in reversed(self.mounts):
            if p.poll() is None:
                try:
                    subprocess.run(self.ns(host, net=False) + ["fusermount3", "-u", "-z", self.mnt],
                                   capture_output=True, timeout=10)
                except (subprocess.TimeoutExpired, OSError) as e:
                    problems.append(f"unmount in {host}: {e}")
            _stop(p, signal.SIGTERM, 5)
        if getattr(self, "sshd", None):
            _stop(self.sshd, signal.SIGTERM, 5)
        # What no Popen here knows of: sshd's per-connection children, the ranks' checkpoint
        # children. Each ends by itself once its peer is gone; anything left is killed.
        stray = _wait_empty(self.namespaces - {_ns_of(os.getpid())},
                            {p.pid for p in self.holders.values()}, 5)
        if stray:
            problems.append(f"killed processes left in the run's namespaces: {stray}")
        for p in self.holders.values():
            _stop(p, signal.SIGKILL, 5)
        for name, p in self.procs:
            if p.poll() is None:
                problems.append(f"{name} (pid {p.pid}) did not exit")
        if self.keep:
            os.remove(os.path.join(self.tmp, "owner"))  # not a dead run's to reclaim
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if os.path.exists(self.tmp):
                problems.append(f"could not remove {self.tmp}")
        leftovers = [l for l in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                               text=True).stdout.splitlines() if self.suffix in l]
        if leftovers:
            problems.append("interfaces left in the root namespace: " + "; ".join(leftovers))
        if problems:
            log("tear-down: " + "; ".join(problems))
        self.procs.clear()


def _identity(pid):
    """pid and start time: a pid alone may be reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid} {f.read().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


def _reclaim_dead_runs():
    # A run killed by SIGKILL could not remove its temp folder (its namespaces, mounts and
    # processes died with it): the next run removes those whose owner is gone.
    tmp = tempfile.gettempdir()
    for d in os.listdir(tmp):
        path = os.path.join(tmp, d)
        if not d.startswith(TMP_PREFIX):
            continue
        try:
            with open(os.path.join(path, "owner")) as f:
                owner = f.read().strip()
        except OSError:
            continue
        if _identity(int(owner.split()[0])) != owner:
            shutil.rmtree(path, ignore_errors=True)


def _stop(p, sig, grace):
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace if grace else 5)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _in_namespaces(namespaces, exclude):
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in exclude and _ns_of(d) in namespaces:
            try:
                with open(f"/proc/{d}/comm") as f:
                    out[int(d)] = f.read().strip()
            except OSError:
                pass
    return out


def _wait_empty(namespaces, exclude, grace):
    """Waits up to `grace` s for the processes in `namespaces` (but `exclude`) to end, then
    SIGKILLs those left; returns {pid: name} of those it had to kill."""
    deadline = time.monotonic() + grace
    while True:
        left = _in_namespaces(namespaces, exclude)
        if not left:
            return {}
        if time.monotonic() >= deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return left
        time.sleep(0.05)


def _ns_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _listening(pid, port):
    # /proc/<pid>/net/tcp shows the sockets of that process's network namespace.
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            return any(l.split()[1].endswith(f":{port:04X}") and l.split()[3] == "0A"
                       for l in f.readlines()[1:])
    except OSError:
        return False


def _mounted(pid, path):
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return any(l.split()[4] == path and " fuse.sshfs " in l for l in f)
    except OSError:
        return False


# ---- one scenario ----

def layout(spec, hosts):
    """[(host, local ranks)] from "2,1": 2 ranks on host0, 1 on host1."""
    counts = [int(x) for x in spec.split(",")]
    if len(counts) != hosts or min(counts) < 1:
        raise SystemExit(f"--ranks-per-host {spec!r} must name {hosts} positive counts")
    out, r = [], 0
    for i, c in enumerate(counts):
        out.append((f"host{i}", list(range(r, r + c))))
        r += c
    return out


def run_scenario(c, args, barrier, kill):
    """Runs the ranks of one scenario in cluster `c`; returns its report, raises Failure."""
    name = f"{barrier}{'-kill' if kill else ''}"
    root = os.path.join(c.mnt, name)                 # as the hosts see it
    on_disk = os.path.join(c.export, name)           # the server's disk, seen from here
    out = os.path.join(c.tmp, "out", name)
    os.makedirs(out)
    hosts = layout(args.ranks_per_host, c.n_hosts)
    world = sum(len(r) for _, r in hosts)
    victim = world - 1 if kill else -1              # the last rank, on the last host
    rounds = 1 if kill else args.rounds
    master = c.addr["host0"]
    port = c.free_port("host0")
    ranks = []
    for g, (host, rs) in enumerate(hosts):
        for local, rank in enumerate(rs):
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": c.tmp,
                   "PYTHONPATH": os.pathsep.join([args.python_dir, HERE]),
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                   # what torchrun sets for each worker
                   "MASTER_ADDR": master, "MASTER_PORT": str(port), "RANK": str(rank),
                   "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
                   "LOCAL_WORLD_SIZE": str(len(rs)), "GROUP_RANK": str(g),
                   "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world),
                   "OMP_NUM_THREADS": "1",
                   # gloo finds its address from the hostname, which each host shares with
                   # this machine: name the host's own interface instead (as on clusters)
                   "GLOO_SOCKET_IFNAME": "eth0", "SHMCKPT_MH_HOST": host}
            argv = c.ns(host) + [PYTHON, os.path.join(HERE, "rank.py"), "--root", root,
                                 "--rounds", str(rounds), "--mib", str(args.mib),
                                 "--barrier", barrier, "--out",
                                 os.path.join(out, f"rank{rank}.json"),
                                 "--commit-timeout", str(args.kill_commit_timeout if kill
                                                         else args.commit_timeout)]
            if kill:
                argv += ["--die-before-arrival", str(victim)]
            if g > 0 and args.skew > 0:
                argv += ["--skew", str(args.skew)]
            if args.baseline and not kill:
                argv += ["--baseline-root", os.path.join(c.mnt, name + "-baseline")]
            ranks.append((rank, host, c.popen(f"{name}-rank{rank}", argv, env=env)))
    log(f"{name}: {world} ranks ({', '.join(f'{h}: {rs}' for h, rs in hosts)}), "
        f"MASTER_ADDR={master} MASTER_PORT={port}, {rounds} round(s) of {args.mib} MiB per rank"
        + (f", rank {victim} killed before it arrives, commit_timeout="
           f"{args.kill_commit_timeout:g} s" if kill else "")
        + (f", ranks off host0 call save() {args.skew:g} s late" if args.skew > 0 else ""))

    # Every rank ends by itself (its own waits have deadlines); this one only bounds a hang.
    deadline = time.monotonic() + args.rank_deadline
    first_failure = None
    while any(p.poll() is None for _, _, p in ranks):
        now = time.monotonic()
        for rank, _, p in ranks:
            bad = p.returncode not in (None, 0) and not (rank == victim and p.returncode == -9)
            if bad and first_failure is None:
                first_failure = now
        # a rank that failed leaves the others waiting at a collective: give them a while
        if now >= deadline or (first_failure is not None and now >= first_failure + 30):
            for _, _, p in ranks:
                _stop(p, signal.SIGKILL, 0)
            break
        time.sleep(0.05)

    reports, problems = {}, []
    for rank, host, p in ranks:
        path = os.path.join(out, f"rank{rank}.json")
        rep = None
        if os.path.exists(path):
            with open(path) as f:
                rep = json.load(f)
            reports[rank] = rep
        if p.returncode == SKIP and rep and "unsupported" in rep:
            raise Skip(rep["unsupported"])
        if rank == victim:
            if p.returncode != -signal.SIGKILL:
                problems.append(f"rank {rank} should have been killed, exited {p.returncode}"
                                + tail(p.log_path))
        elif p.returncode != 0:
            why = (rep or {}).get("why") or (rep or {}).get("exception") or "no report"
            problems.append(f"rank {rank} on {host} exited {p.returncode}: {why}"
                            + tail(p.log_path))

    # The server's own disk: a manifest for every round, or none at all.
    manifests = {}
    for r in range(rounds):
        m = os.path.join(on_disk, f"step_{r}", "checkpoint.json")
        if os.path.exists(m):
            with open(m) as f:
                manifests[r] = json.load(f)
    if kill:
        if manifests:
            problems.append(f"a manifest appeared although rank {victim} never arrived: "
                            f"{sorted(manifests)}")
    else:
        for r in range(rounds):
            if r not in manifests:
                problems.append(f"round {r}: no manifest {on_disk}/step_{r}/checkpoint.json")
            elif manifests[r].get("world_size") != world or \
                    len(manifests[r].get("ranks", [])) != world:
                problems.append(f"round {r}: the manifest does not list {world} ranks")

    # Every host reads what the other hosts wrote.
    verify = {}
    if not problems:
        for host, rs in hosts:
            others = [r for h, rr in hosts if h != host for r in rr]
            vout = os.path.join(out, f"verify-{host}.json")
            argv = c.ns(host) + [PYTHON, os.path.join(HERE, "verify.py"), "--root", root,
                                 "--rounds", str(rounds), "--ranks", ",".join(map(str, others)),
                                 "--mib", str(args.mib), "--deadline", str(args.visible_deadline),
                                 "--out", vout] + (["--expect-none"] if kill else [])
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": c.tmp,
                   "PYTHONPATH": os.pathsep.join([args.python_dir, HERE]),
                   "PYTHONDONTWRITEBYTECODE": "1", "SHMCKPT_MH_HOST": host}
            p = c.popen(f"{name}-verify-{host}", argv, env=env)
            try:
                p.wait(timeout=args.visible_deadline + 60)
            except subprocess.TimeoutExpired:
                _stop(p, signal.SIGKILL, 0)
            if os.path.exists(vout):
                with open(vout) as f:
                    verify[host] = json.load(f)
            if p.returncode != 0:
                problems.append(f"verify on {host} exited {p.returncode}: "
                                f"{verify.get(host, {}).get('failures')}" + tail(p.log_path))

    report = summarize(name, barrier, c.cache, kill, victim, rounds, reports, verify)
    report["problems"] = problems
    return report


def summarize(name, barrier, cache, kill, victim, rounds, reports, verify):
    rep = {"scenario": name, "barrier": barrier, "cache": cache, "ranks": reports,
           "verify": verify, "rounds": []}
    asked = {r.get("barrier_as_asked") for r in reports.values() if r.get("barrier_as_asked")}
    rep["barrier_as_asked"] = sorted(asked)
    for k in range(rounds):
        entries = [e for r in reports.values() for e in r.get("rounds", []) if e["round"] == k]
        row = {"round": k}
        if entries and all(e.get("ok") for e in entries) and len(entries) == len(reports):
            # all on one machine: CLOCK_MONOTONIC is common to every "host"
            row["commit_s"] = max(e["resolved"] for e in entries) - \
                min(e["save_called"] for e in entries)
            row["after_last_save_s"] = max(e["resolved"] for e in entries) - \
                max(e["save_called"] for e in entries)
            row["per_rank_s"] = {str(r): e["latency_s"] for r, rr in reports.items()
                                 for e in rr.get("rounds", []) if e["round"] == k}
        else:
            row["failed"] = {str(r): {"after_s": e.get("failed_after_s"), "error": e.get("error"),
                                      "type": e.get("error_type")}
                             for r, rr in reports.items() for e in rr.get("rounds", [])
                             if e["round"] == k and not e.get("ok")}
        rep["rounds"].append(row)
    base = {str(r): sorted(rr["baseline_write_s"])[1] for r, rr in reports.items()
            if rr.get("baseline_write_s")}
    if base:
        rep["baseline_write_median_s"] = base
    for host, v in verify.items():
        if "latest_visible_after_s" in v:
            rep.setdefault("latest_visible_on_s", {})[host] = v["latest_visible_after_s"]
    return rep


def print_report(rep):
    head = f"{rep['scenario']} (sshfs {'default caching' if rep['cache'] == 'default' else 'caching off'}"
    head += f"; {', '.join(rep['barrier_as_asked'])})" if rep["barrier_as_asked"] else ")"
    print(head)
    for row in rep["rounds"]:
        if "commit_s" in row:
            per = ", ".join(f"rank {r} {s:.2f}" for r, s in sorted(row["per_rank_s"].items()))
            print(f"  round {row['round']}: committed {row['commit_s']:.2f} s after the first "
                  f"save(), {row['after_last_save_s']:.2f} s after the last (per rank, save() "
                  f"to its future: {per})")
        else:
            for r, f in sorted(row.get("failed", {}).items()):
                after = f"{f['after_s']:.2f} s" if f["after_s"] is not None else "?"
                print(f"  round {row['round']}: rank {r} failed after {after}: {f['type']}: "
                      f"{f['error']}")
    if rep.get("baseline_write_median_s"):
        b = rep["baseline_write_median_s"]
        print("  a rank's save alone (world size 1, no barrier), median of 3: " +
              ", ".join(f"rank {r} {s:.2f} s" for r, s in sorted(b.items())))
    for host, s in sorted(rep.get("latest_visible_on_s", {}).items()):
        print(f"  latest_checkpoint() on {host} showed the last round after {s:.2f} s")
    for host, v in sorted(rep["verify"].items()):
        n = sum(1 for ch in v.get("checks", []) if ch.get("identical"))
        if n:
            print(f"  {host} loaded {n} rank file(s) written on other hosts, bit-identical")
    for p in rep["problems"]:
        print(f"  FAILED: {p}")
    sys.stdout.flush()


# ---- entry ----

def preflight(args):
    if os.geteuid() != 0:
        raise Skip("needs root (network and mount namespaces, FUSE mounts)")
    if not os.path.exists("/dev/fuse"):
        raise Skip("/dev/fuse is missing (no FUSE in this machine or container)")
    missing = [t for t in TOOLS if shutil.which(t) is None] + \
        ([SSHD] if not os.access(SSHD, os.X_OK) else [])
    if missing:
        raise Skip(f"missing {', '.join(missing)} (scripts/deps.sh installs openssh-server "
                   f"sshfs fuse3 iproute2)")
    if not os.access(PYTHON, os.X_OK):
        raise Skip(f"{PYTHON} is missing")
    if not os.path.isdir(os.path.join(args.python_dir, "shmckpt")):
        raise Skip(f"the Python package was not built ({args.python_dir}/shmckpt is missing; "
                   f"build the project with python3-dev and pybind11-dev installed)")
    r = subprocess.run([PYTHON, "-c", "import shmckpt, torch.distributed as d; "
                        "assert d.is_available(), 'torch.distributed is not available'"],
                       env=dict(os.environ, PYTHONPATH=args.python_dir), capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise Skip("cannot import shmckpt and torch.distributed: " +
                   (r.stderr.strip().splitlines() or ["?"])[-1])
    r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "true"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Skip(f"cannot create network and mount namespaces here: {r.stderr.strip()}")
    if "store" in args.barrier:
        # Fast answer before any set-up; rank.py finds it out by trying as well.
        r = subprocess.run([PYTHON, "-c", "import shmckpt\n"
                            "try:\n shmckpt.AsyncCheckpointer(barrier='store', init_timeout=1)\n"
                            "except shmckpt.InvalidArgumentError as e:\n"
                            " if \"unknown option 'barrier'\" in str(e): print(e)\n"
                            "except Exception:\n pass\n"],
                           env=dict(os.environ, PYTHONPATH=args.python_dir), capture_output=True,
                           text=True, timeout=120)
        if r.stdout.strip():
            why = (f'this shmckpt has no store barrier yet (barrier="store" is rejected: '
                   f"{r.stdout.strip()[:120]}...)")
            if not args.measure or args.barrier == ["store"]:
                raise Skip(why)
            print(f"store: SKIPPED: {why}", flush=True)
            args.barrier.remove("store")
            args.skipped.append("store")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python-dir", default=os.environ.get("SHMCKPT_PYTHON_DIR"),
                   help="the built package's folder (build/python; default $SHMCKPT_PYTHON_DIR)")
    p.add_argument("--barrier", default="file",
                   help="comma-separated: file, store, default (no argument) (default: file)")
    p.add_argument("--cache", default="default",
                   help="comma-separated sshfs caching: default, off (default: default)")
    p.add_argument("--kill", action="store_true",
                   help="the failure path: the last rank dies before it arrives")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=4, help="MiB per rank and round")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", default=None, help='e.g. "2,1" (the default for 2 hosts)')
    p.add_argument("--commit-timeout", type=float, default=120.0)
    p.add_argument("--kill-commit-timeout", type=float, default=5.0)
    p.add_argument("--rank-deadline", type=float, default=300.0,
                   help="kill the ranks of a scenario still running after this many seconds")
    p.add_argument("--visible-deadline", type=float, default=60.0,
                   help="how long a host may take to see another host's checkpoint")
    p.add_argument("--skew", type=float, default=None,
                   help="ranks on hosts other than host0 call save() this many seconds after "
                        "host0's (a remote rank whose write ends later than rank 0's); "
                        "default 0, with --measure 0.5")
    p.add_argument("--baseline", action="store_true",
                   help="also time each rank's save alone (no barrier), for comparison")
    p.add_argument("--measure", action="store_true",
                   help="every barrier of --barrier (default: file,store) and cache mode; "
                        "prints the commit latency of every round")
    p.add_argument("--json", metavar="FILE", help="write the full report there")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = p.parse_args()
    if args.skew is None:
        args.skew = 0.5 if args.measure else 0.0
    if args.measure:
        args.baseline = True
        if "--barrier" not in " ".join(sys.argv):
            args.barrier = "file,store"
    args.barrier = [b for b in args.barrier.split(",") if b]
    args.cache = [x for x in args.cache.split(",") if x]
    if any(b not in ("file", "store", "default") for b in args.barrier) or \
            any(x not in ("default", "off") for x in args.cache) or args.hosts < 2:
        p.error("--barrier takes file, store, default; --cache default, off; --hosts >= 2")
    if args.ranks_per_host is None:
        args.ranks_per_host = ",".join(["2"] + ["1"] * (args.hosts - 1))
    if not args.python_dir:
        p.error("--python-dir (or SHMCKPT_PYTHON_DIR) is required: the build's python folder")
    args.python_dir = os.path.abspath(args.python_dir)

    def interrupted(sig, frame):
        raise Interrupted(signal.Signals(sig).name)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)

    args.skipped = []
    try:
        preflight(args)
    except Skip as e:
        print(f"SKIPPED: {e}", flush=True)
        return SKIP
    reports, skipped = [], args.skipped
    try:
        for cache in args.cache:
            with Cluster(args.hosts, cache, keep=args.keep) as c:
                for barrier in args.barrier:
                    try:
                        rep = run_scenario(c, args, barrier, args.kill)
                    except Skip as e:
                        if not args.measure:
                            raise
                        print(f"{barrier}: SKIPPED: {e}", flush=True)
                        skipped.append(barrier)
                        continue
                    rep["setup_s"] = c.setup_s
                    print_report(rep)
                    reports.append(rep)
    except Skip as e:
        print(f"SKIPPED: {e}", flush=True)
        return SKIP
    except Failure as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    except Interrupted as e:
        print(f"interrupted by {e}; everything was torn down", flush=True)
        return 130
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(reports, f, indent=1)
    failed = [r["scenario"] for r in reports if r["problems"]]
    print(f"multihost: {len(reports) - len(failed)} passed, {len(failed)} failed" +
          (f", {len(skipped)} skipped" if skipped else ""), flush=True)
    if not reports and skipped:
        return SKIP
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
