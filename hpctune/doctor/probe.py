"""``python -m hpctune.doctor.probe FOLDER``: one node's part of `hpctune doctor`.

Writes ``FOLDER/node-<k>.json`` twice: when its checks are done ("ready": the login side
then sends USR2), and at the end (with whether USR2 arrived). Every check catches its own
errors: a report names what failed instead of stopping. torch is imported here (a node).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

PACKAGES = ("hpctune", "torch", "transformers", "accelerate", "peft", "trl", "deepspeed", "datasets",
            "bitsandbytes", "submitit")
ALLREDUCE_MIB = 64
INTERNET = ("huggingface.co", 443)
USR2_WAIT_S = 60.0


def versions() -> dict[str, str | None]:
    from importlib import metadata
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _write(folder: Path, node: int, report: dict) -> None:
    path = folder / f"node-{node}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a probe reports, it never stops
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def head_address() -> str:
    from hpctune.detect import expand_hostlist
    hosts = expand_hostlist(os.environ.get("SLURM_JOB_NODELIST", "")) or ["127.0.0.1"]
    return hosts[0] + os.environ.get("HPCTUNE_HOSTNAME_SUFFIX", "")


def resolve(addr: str) -> dict:
    infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    return {"ok": True, "addr": addr, "ip": sorted({i[4][0] for i in infos})}


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def allreduce(backend: str, head: str, rank: int, world: int) -> dict:
    import datetime

    import torch
    import torch.distributed as dist
    port = int(os.environ.get("HPCTUNE_PORT_BASE", "20000")) + int(os.environ.get("SLURM_JOB_ID", "0")) % 10000 + (1 if backend == "nccl" else 0)
    t0 = time.monotonic()
    dist.init_process_group(backend, init_method=f"tcp://{head}:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        joined = time.monotonic() - t0
        device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        x = torch.ones(ALLREDUCE_MIB * 1024 * 1024 // 4, dtype=torch.float32, device=device)
        dist.all_reduce(x)  # warm-up
        if backend == "nccl":
            torch.cuda.synchronize()
        n = 3
        t1 = time.monotonic()
        for _ in range(n):
            dist.all_reduce(x)
        if backend == "nccl":
            torch.cuda.synchronize()
        secs = (time.monotonic() - t1) / n
        ok = abs(float(x[0]) - world ** (n + 1)) < 1e-3 * world ** (n + 1)
        # bus bandwidth of a ring all-reduce (what nccl-tests report): 2 (n-1)/n x size / time
        size = x.numel() * 4
        busbw = 2 * (world - 1) / world * size / secs / 1e9 if world > 1 else size / secs / 1e9
        return {"ok": ok, "backend": backend, "world": world, "mib": ALLREDUCE_MIB, "seconds": round(secs, 4),
                "busbw_gbps": round(busbw, 3), "join_s": round(joined, 2),
                **({} if ok else {"error": f"wrong sum {float(x[0])}"})}
    finally:
        dist.destroy_process_group()


def gpus() -> dict:
    import torch
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    out = {"slurm_visible": len([v for v in (visible or "").split(",") if v.strip()]) if visible else 0,
           "cuda_available": torch.cuda.is_available(), "devices": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["devices"].append({"name": p.name, "mem_gib": round(p.total_memory / 1024 ** 3, 1)})
    return out


def writable(path: str | None) -> dict:
    if not path:
        return {"ok": None, "path": None}
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    if not p.is_dir():
        return {"ok": False, "path": str(p), "error": "does not exist"}
    fd, name = tempfile.mkstemp(prefix=".hpctune-doctor-", dir=p)
    os.close(fd)
    os.unlink(name)
    return {"ok": True, "path": str(p)}


def hf_cache() -> dict:
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                     "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    Path(hub).mkdir(parents=True, exist_ok=True)
    return writable(hub)


def internet(timeout: float = 4.0) -> dict:
    result = {"ok": False, "error": f"no answer from {INTERNET[0]}:{INTERNET[1]} in {timeout:.0f} s"}

    def attempt():
        try:
            with socket.create_connection(INTERNET, timeout=timeout):
                result.update(ok=True, error=None)
        except OSError as e:
            result["error"] = f"{INTERNET[0]}:{INTERNET[1]}: {e}"
    t = threading.Thread(target=attempt, daemon=True)  # a stuck DNS lookup must not stall the probe
    t.start()
    t.join(timeout + 1)
    return {"reachable": result["ok"], "error": result["error"]}


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    node = int(os.environ.get("SLURM_NODEID", "0"))
    world = int(os.environ.get("SLURM_NNODES", "1"))
    got = {"usr2": False}
    signal.signal(signal.SIGUSR2, lambda *a: got.update(usr2=True))
    try:
        token = (folder / "token").read_text().strip()
    except OSError as e:
        token = f"unreadable: {e}"
    head = head_address()
    report = {"node_index": node, "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
              "host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable, "packages": versions(),
              "token": token, "interfaces": _try(interfaces), "env": {k: os.environ.get(k) for k in
                                                                     ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")},
              "head": _try(resolve, head), "scratch": _try(writable, os.environ.get("HPCTUNE_SCRATCH")),
              "hf_cache": _try(hf_cache), "internet": _try(internet), "gpus": _try(gpus)}
    report["head"].setdefault("addr", head)
    report["gloo"] = _try(allreduce, "gloo", head, node, world)
    if (report["gpus"] or {}).get("cuda_available"):
        report["nccl"] = _try(allreduce, "nccl", head, node, world)
    report["phase"] = "ready"
    _write(folder, node, report)
    deadline = time.monotonic() + USR2_WAIT_S
    while not got["usr2"] and time.monotonic() < deadline:
        time.sleep(0.2)
    report["usr2"] = got["usr2"]
    report["phase"] = "done"
    _write(folder, node, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
