"""Rules on the resolved Job against the site's practicalities: what offline nodes find in
the Hugging Face cache, what a container sees (its mounts; modules on the host), and where
the run folder lives (D18)."""

from __future__ import annotations

import os
import re
from typing import Iterable

from hpctune import hubcache
from hpctune.rules.book import Finding, rule

BUILTIN = "hpctune:"  # built-in tiny assets (hpctune.train.tiny), made on the node


def _prepare_cmd(job) -> str:
    return f"hpctune prepare -c {job.profile.name} {job.recipe.source or job.recipe.name}"


@rule("offline-cache", "offline nodes need the model and dataset in the profile's Hugging Face cache",
      scope="job", blocks_submit=True)
def offline_cache(job) -> Iterable[Finding]:
    prof, rec = job.profile, job.recipe
    if not prof.network.offline:
        return
    model = rec.model.model_name_or_path
    hub_model = not model.startswith(BUILTIN) and hubcache.is_repo_id(model)
    hub_data = not rec.data.dataset_name.startswith(BUILTIN) and hubcache.is_repo_id(rec.data.dataset_name)
    if not (hub_model or hub_data):
        return
    if not prof.cache.hf_home:
        yield Finding("offline-cache", "warning", prof.source, "cache.hf_home",
                      "network.offline is true but cache.hf_home is not set: offline nodes look for hub models and "
                      "datasets in their own default cache, which nothing fills",
                      f"set cache.hf_home to a folder every node reads, then run `{_prepare_cmd(job)}`")
        return
    hub = hubcache.hub_dir(prof.cache.home())
    if hub_model and not hubcache.model_in_cache(prof.cache.home(), model, rec.model.revision):
        yield Finding("offline-cache", "warning", rec.source, "model.model_name_or_path",
                      f"{model} is not in {hub} and the nodes are offline (network.offline in {prof.source}): "
                      "the job would fail when it loads the model",
                      f"run `{_prepare_cmd(job)}` on a login or transfer node first")
    if hub_data and not (hubcache.snapshot(hub, rec.data.dataset_name, rec.data.dataset_revision, "dataset")
                         or hubcache.snapshot(hub, rec.data.dataset_name, hubcache.PARQUET_EXPORT, "dataset")):
        yield Finding("offline-cache", "warning", rec.source, "data.dataset_name",
                      f"dataset {rec.data.dataset_name} is not in {hub} and the nodes are offline: the job would fail "
                      "when it loads the data",
                      f"run `{_prepare_cmd(job)}` on a login or transfer node first")


# Folders that are each machine's own: a run folder there is not seen by the compute nodes.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch/local", "/local")


def node_local_reason(path: str, profile) -> str | None:
    """Why ``path`` is on a node's own disk (None when it looks shared)."""
    p = os.path.abspath(os.path.expanduser(path))
    mine = [x for x in (profile.node.local_scratch, profile.cache.compile_dir) if x]
    for root in [os.path.expanduser(x) for x in mine] + list(NODE_LOCAL):
        root = os.path.abspath(root)
        if p == root or p.startswith(root.rstrip("/") + "/"):
            where = "the profile's node-local folder" if root in [os.path.abspath(os.path.expanduser(x)) for x in mine] \
                else "a machine's own temporary folder"
            return f"{p} is in {root}, {where}: the compute nodes do not see this machine's copy, so Slurm " \
                   "cannot start the job there (--chdir) or write its log (--output), and it fails without one"
    return None


@rule("run-folder-shared", "run folders of a Slurm profile live on a filesystem the nodes share", scope="job")
def run_folder_shared(job) -> Iterable[Finding]:
    prof = job.profile
    if prof.scheduler != "slurm" or not os.path.isabs(os.path.expanduser(prof.runs_dir)):
        return  # relative: under the working directory, which `render`/`submit` check as they write
    why = node_local_reason(prof.runs_dir, prof)
    if why:
        yield Finding("run-folder-shared", "warning", prof.source, "runs_dir", why,
                      "set runs_dir to a folder on a shared filesystem (home, project or work space)")


# --- containers: what the job needs must be inside the image's view -----------------------

def _mounts(container) -> list[tuple[str, str]]:
    """(host path, path inside) of each mount; "SRC" alone means the same path inside."""
    out = []
    for m in container.mounts:
        parts = m.split(":")
        src = os.path.normpath(parts[0])
        dst = os.path.normpath(parts[1]) if len(parts) > 1 and parts[1] else src
        out.append((src, dst))
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def container_view(path: str, container) -> str | None:
    """None when ``path`` is seen at the same path inside the container, else why not."""
    p = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    home = os.path.expanduser("~")
    if container.runtime == "apptainer" and (_under(p, home) or _under(p, "/tmp")):
        return None  # apptainer binds $HOME and /tmp by default
    for src, dst in _mounts(container):
        if _under(p, src):
            if src == dst:
                return None
            return f"{p} is mounted at {dst}{p[len(src):]} inside the container, not at {p}"
    return f"{p} is in none of the container's mounts ({', '.join(container.mounts) or 'none'})"


_ABS_PATH = re.compile(r"""(?:(?<=[\s"'=])|^)((?:~|\$HOME|\$\{HOME\})?/[A-Za-z0-9_.,+@%/\-]+)""")


def _setup_paths(setup: list[str]) -> list[str]:
    """Absolute (or home-relative) paths in the set-up lines: a venv, a conda env, a script."""
    out = []
    for line in setup:
        for m in _ABS_PATH.finditer(line):
            p = m.group(1).replace("${HOME}", "~").replace("$HOME", "~")
            out.append(p)
    return out


@rule("container-mounts", "the run folder, the venv and the caches are inside the container's mounts", scope="job")
def container_mounts(job) -> Iterable[Finding]:
    prof = job.profile
    c = prof.software.container
    if c is None:
        return
    needed = []
    if prof.cache.hf_home:
        needed.append(("cache.hf_home", prof.cache.hf_home, "the models and data the job loads"))
    if prof.cache.extensions():
        needed.append(("cache.extensions_dir", prof.cache.extensions(), "the pre-built DeepSpeed ops"))
    if os.path.isabs(os.path.expanduser(prof.runs_dir)):
        needed.append(("runs_dir", prof.runs_dir, "the run folders (launch.sh, recipe.yaml, output)"))
    for p in _setup_paths(prof.software.setup):
        needed.append(("software.setup", p, "a path the set-up lines use (a venv, an env)"))
    for field, path, what in needed:
        why = container_view(path, c)
        if why:
            yield Finding("container-mounts", "error", prof.source, field,
                          f"{why}: {what} must be seen inside the container at the same path",
                          f"add a mount such as {os.path.dirname(os.path.abspath(os.path.expanduser(path)))}:"
                          f"{os.path.dirname(os.path.abspath(os.path.expanduser(path)))} to software.container.mounts")


@rule("container-modules", "with pyxis, modules load on the host only: the image brings the software", scope="job")
def container_modules(job) -> Iterable[Finding]:
    c = job.profile.software.container
    if c is not None and c.runtime == "pyxis" and job.profile.software.modules:
        yield Finding("container-modules", "warning", job.profile.source, "software.modules",
                      f"{', '.join(job.profile.software.modules)}: loaded on the host before srun (the batch script); their "
                      "files are the host's, not the image's: the training uses what the image holds",
                      "keep here only what the host side needs (e.g. enroot/pyxis settings); put CUDA, NCCL and "
                      "Python packages into the image")


def run_folder_warnings(path: str, profile) -> list[str]:
    """What `render` and `submit` say about the run folder they write (its path is known
    only there): on a node's own disk (D18), or outside the container's mounts."""
    out = []
    if profile.scheduler == "slurm":
        why = node_local_reason(path, profile)
        if why:
            out.append(f"{why}; write it on a shared filesystem (-o)")
    c = profile.software.container
    if c is not None:
        why = container_view(path, c)
        if why:
            out.append(f"{why}: launch.sh and recipe.yaml must be seen inside the container; mount the folder "
                       "(software.container.mounts) or write the run folder under a mount (-o)")
    return out
