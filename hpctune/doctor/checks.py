"""`hpctune doctor`'s verdicts: every node's report -> PASS/FAIL/WARN/SKIP rows, each failure
with its fix, and the figures recorded in the profile. Pure (tested on recorded reports)."""

from __future__ import annotations

from dataclasses import dataclass

COMPARED_PACKAGES = ("hpctune", "torch", "transformers", "accelerate", "peft", "trl", "deepspeed", "datasets")


@dataclass
class Row:
    check: str
    status: str          # PASS, FAIL, WARN, SKIP
    detail: str
    fix: str = ""


def _nodes_where(nodes: dict, pred) -> list[str]:
    return [str(r.get("node") or f"node {k}") for k, r in sorted(nodes.items()) if r is not None and pred(r)]


def evaluate(profile, *, login: dict, nodes: dict, setup: dict, job: dict) -> list[Row]:
    """``nodes``: node index -> report (None: none arrived); ``setup``: node index -> the
    set-up lines' failures (text); ``login``: {packages, token}; ``job``: {job_id, nodes,
    requeue: {ok, error}, usr2_sent, state}."""
    src = profile.source or profile.name
    n = job.get("nodes") or len(nodes)
    got = {k: r for k, r in nodes.items() if r is not None}
    names = ", ".join(str(r.get("node")) for _, r in sorted(got.items())) or "-"
    rows = []

    # 1. the set-up lines on every node
    bad = {k: t for k, t in setup.items() if t.strip()}
    if bad:
        first = next(iter(bad.values())).strip().splitlines()[0]
        rows.append(Row("set-up lines", "FAIL", f"failed on {len(bad)} of {n} node(s): {first}",
                        f"fix software.setup / software.modules in {src}: every line must succeed on the nodes "
                        "(e.g. the venv's activate script must exist there)"))
    elif len(got) < n:
        rows.append(Row("set-up lines", "FAIL", f"{n - len(got)} of {n} node(s) sent no report (see the job's node logs)",
                        f"check software.setup in {src} and the node logs in the doctor folder"))
    else:
        rows.append(Row("set-up lines", "PASS", f"environment active on {names}"))

    # 2. the run folder is on storage every node shares
    unshared = _nodes_where(got, lambda r: r.get("token") != login.get("token"))
    missing = n - len(got)
    if unshared or missing:
        rows.append(Row("shared run folder", "FAIL", f"{', '.join(unshared) or f'{missing} node(s)'} did not see "
                        "the file written on the login node", f"runs_dir in {src} must be on a filesystem every node mounts at the same path"))
    else:
        rows.append(Row("shared run folder", "PASS", f"every node read the login node's file ({job.get('folder')})"))

    # 3. package versions equal the login node's
    diffs = []
    for r in got.values():
        for p in COMPARED_PACKAGES:
            want, have = (login.get("packages") or {}).get(p), (r.get("packages") or {}).get(p)
            if want and want != have:
                diffs.append(f"{r.get('node')}: {p} {have or 'missing'} (login {want})")
    rows.append(Row("package versions", "FAIL", "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else ""),
                    "install the same versions on the login node and in the nodes' environment (one venv on shared storage)")
                if diffs else Row("package versions", "PASS" if got else "SKIP",
                                  "same as the login node" if got else "no report"))

    # 4. GPUs
    want = profile.node.gpus_per_node
    if not want:
        rows.append(Row("GPUs", "SKIP", "the profile has no GPUs"))
    elif got:
        problems, fakes = [], []
        for r in got.values():
            g = r.get("gpus") or {}
            devs = g.get("devices") or []
            if not g.get("cuda_available"):
                if g.get("slurm_visible") == want and profile.node.gpu_model.lower() in ("none", ""):
                    fakes.append(str(r.get("node")))
                else:
                    problems.append(f"{r.get('node')}: torch sees no CUDA device (Slurm gave {g.get('slurm_visible')})")
                continue
            if len(devs) != want:
                problems.append(f"{r.get('node')}: {len(devs)} GPU(s), profile says {want}")
            model = profile.node.gpu_model.lower().replace("-", "")
            for d in devs[:1]:
                if model not in ("none", "") and model.split("80g")[0].split("40g")[0] not in d["name"].lower().replace("-", ""):
                    problems.append(f"{r.get('node')}: {d['name']}, profile says {profile.node.gpu_model}")
                if profile.node.gpu_mem_gib and abs(d["mem_gib"] - profile.node.gpu_mem_gib) > 0.1 * profile.node.gpu_mem_gib:
                    problems.append(f"{r.get('node')}: {d['mem_gib']} GiB per GPU, profile says {profile.node.gpu_mem_gib:g}")
        if problems:
            rows.append(Row("GPUs", "FAIL", "; ".join(problems[:3]), f"fix node.gpus_per_node / gpu_model / gpu_mem_gib in {src}"))
        elif fakes:
            rows.append(Row("GPUs", "WARN", f"Slurm gave {want} GPU(s) per node but torch sees no CUDA device on "
                            f"{', '.join(fakes)} (fake GPU devices: gpu_model is none)"))
        else:
            d = (next(iter(got.values())).get("gpus") or {}).get("devices") or [{}]
            rows.append(Row("GPUs", "PASS", f"{want} x {d[0].get('name')} ({d[0].get('mem_gib')} GiB) per node"))

    # 5. interfaces named by the profile exist
    missing_if = []
    for r in got.values():
        have = r.get("interfaces") if isinstance(r.get("interfaces"), list) else []
        for var, value in (r.get("env") or {}).items():
            for name in (value or "").split(","):
                name = name.strip()
                if name and not name.startswith(("^", "=")) and have and not any(i == name or i.startswith(name) for i in have):
                    missing_if.append(f"{var}={name} on {r.get('node')} (has: {', '.join(have)})")
    if missing_if:
        rows.append(Row("network interface", "FAIL", "no such interface: " + "; ".join(sorted(set(missing_if))[:3]),
                        f"set network.socket_ifname (and gloo_socket_ifname) in {src} to an interface the nodes have"))
    elif got:
        rows.append(Row("network interface", "PASS", ", ".join(f"{k}={v}" for k, v in
                                                             (next(iter(got.values())).get("env") or {}).items() if v) or "not set (torch picks one)"))

    # 6. every node resolves the head address
    unresolved = [f"{r.get('node')}: {(r.get('head') or {}).get('error')}" for r in got.values() if not (r.get("head") or {}).get("ok")]
    head = (next(iter(got.values()), {}).get("head") or {}).get("addr", "?") if got else "?"
    if unresolved:
        rows.append(Row("head address", "FAIL", f"{head} does not resolve: " + "; ".join(unresolved[:3]),
                        f"check network.hostname_suffix in {src} (the head's address is its first node name + suffix)"))
    elif got:
        rows.append(Row("head address", "PASS", f"{head} resolves on every node"))

    # 7. gloo (and NCCL) all-reduce across the nodes
    for backend in ("gloo", "nccl"):
        results = {k: r.get(backend) for k, r in got.items() if r.get(backend) is not None}
        if backend == "nccl" and not results:
            rows.append(Row("NCCL all-reduce", "SKIP", "no CUDA on the nodes"))
            continue
        if not results:
            continue
        failed = [f"{got[k].get('node')}: {v.get('error')}" for k, v in results.items() if not v.get("ok")]
        label = f"{'gloo' if backend == 'gloo' else 'NCCL'} all-reduce"
        if failed or len(results) < n:
            rows.append(Row(label, "FAIL", "; ".join(failed[:2]) or f"only {len(results)} of {n} node(s) took part",
                            f"the nodes cannot reach each other at the head address: check network.socket_ifname / "
                            f"gloo_socket_ifname and firewalls ({src})"))
        else:
            bw = min(v.get("busbw_gbps") or 0 for v in results.values())
            v0 = next(iter(results.values()))
            rows.append(Row(label, "PASS", f"{n} node(s), {v0.get('mib')} MiB: {bw:.2f} GB/s bus bandwidth"))

    # 8. USR2 reaches the processes started by the set-up (the training's signal)
    if job.get("usr2_sent"):
        no = _nodes_where(got, lambda r: not r.get("usr2"))
        rows.append(Row("USR2 signal", "FAIL", f"did not reach the process on {', '.join(no)}",
                        "the time-limit warning would not reach the training: check the container runtime / srun options")
                    if no or not got else Row("USR2 signal", "PASS", "reached the probe on every node"))
    else:
        rows.append(Row("USR2 signal", "FAIL", "not sent (the probes never got ready)", "see the rows above"))

    # 9. scontrol requeue
    rq = job.get("requeue") or {}
    if profile.preemption.mode != "requeue":
        rows.append(Row("scontrol requeue", "SKIP", f"preemption.mode is {profile.preemption.mode}"))
    elif rq.get("ok"):
        rows.append(Row("scontrol requeue", "PASS", "a running job of this profile can be requeued"))
    else:
        rows.append(Row("scontrol requeue", "FAIL", rq.get("error") or "not tried",
                        f"set preemption.mode: cancel in {src} (hpctune then submits again instead of requeueing)"))

    # 10. node-local scratch
    scratch = {k: r.get("scratch") or {} for k, r in got.items()}
    if not profile.node.local_scratch:
        rows.append(Row("local scratch", "SKIP", "node.local_scratch is not set"))
    else:
        bad_s = [f"{got[k].get('node')}: {s.get('error')}" for k, s in scratch.items() if not s.get("ok")]
        rows.append(Row("local scratch", "FAIL", f"{profile.node.local_scratch}: " + "; ".join(bad_s[:3]),
                        f"fix node.local_scratch in {src} (a node-local folder that exists on every node)")
                    if bad_s else Row("local scratch", "PASS", f"{profile.node.local_scratch} writable on every node"))

    # 11. internet, and the offline setting
    reach = [bool((r.get("internet") or {}).get("reachable")) for r in got.values()]
    offline = profile.network.offline
    if got and not any(reach):
        rows.append(Row("internet", "PASS" if offline else "FAIL", "the nodes cannot reach the internet"
                        + (" (network.offline: true)" if offline else ""),
                        "" if offline else f"set network.offline: true in {src} (trackers log offline) and put models "
                                           "and datasets in the HF cache before submitting"))
    elif got:
        rows.append(Row("internet", "WARN" if offline else "PASS", "the nodes reach the internet"
                        + ("; network.offline is true anyway" if offline else "")))

    # 12. the Hugging Face cache
    bad_hf = [f"{r.get('node')}: {(r.get('hf_cache') or {}).get('error')}" for r in got.values()
              if not (r.get("hf_cache") or {}).get("ok")]
    if got:
        path = (next(iter(got.values())).get("hf_cache") or {}).get("path")
        rows.append(Row("HF cache", "FAIL", "not writable: " + "; ".join(bad_hf[:3]),
                        "set HF_HOME in software.setup to a writable folder on shared storage")
                    if bad_hf else Row("HF cache", "PASS", f"{path} writable on every node"))
    return rows


def figures(rows: list[Row], *, job_id: str, nodes: int, date: str) -> dict:
    """What `doctor` records in the profile (``verified``)."""
    out = {"date": date, "job_id": str(job_id), "nodes": nodes, "passed": not any(r.status == "FAIL" for r in rows),
           "checks": {r.check: f"{r.status}: {r.detail}"[:200] for r in rows}}
    return out
