"""Rules on the resolved Job against the site's practicalities: what offline nodes find in
the Hugging Face cache, what a container sees, and where the run folder lives (D18)."""

from __future__ import annotations

import os
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
