"""Render a Job into a run bundle: job.sbatch, launch.sh, accelerate_config.yaml, recipe.yaml,
manifest.json (and an empty logs/ folder). The bundle rules (hpctune/rules/bundle.py) read
the rendered texts back before anything is written: a template bug stops here, not on a node.

Templates are the only place a rendered line is written. The Jinja environment refuses to
print a string that has not been through a quoting filter (``finalize`` below), so a value
cannot reach a shell script unquoted by accident:

- ``shq``: a POSIX shell word (``shlex.quote``);
- ``sb``: an ``#SBATCH`` value, which nothing quotes: only plain characters are allowed;
- ``yq``: a YAML/JSON scalar;
- ``yfloat``: a float that YAML 1.1 readers also read as one (``1.0e-05``, not ``1e-05``);
- ``envname``: an environment variable name;
- ``trusted``: the profile's own shell set-up lines, which are code by design.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from pathlib import Path

import jinja2

from hpctune import __version__, resources, rules, schema
from hpctune import recipe as recipe_mod
from hpctune.errors import ConfigError
from hpctune.job import Job, file_hash, resolved_recipe
from hpctune.rules.bundle import Bundle
from hpctune.run import folder as layout
from hpctune.run import place
from hpctune.slurm_request import slurm_request

BUNDLE_FILES = layout.RENDERED
_TEMPLATED = {layout.JOB_SBATCH: "job.sbatch.j2", layout.LAUNCH: "launch.sh.j2",
              layout.ACCELERATE: "accelerate_config.yaml.j2"}
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:=@+/%\-&|!\[\]()*]+")
# A bundle path is written into #SBATCH lines: no spaces, quotes or '%' (Slurm patterns).
BUNDLE_PATH = re.compile(r"[A-Za-z0-9_.,:=@+/\-]+")


class Quoted(str):
    """A string that has been through a quoting filter and may be printed."""


def _shq(value) -> Quoted:
    return Quoted(shlex.quote(str(value)))


def _sb(value) -> Quoted:
    text = str(value)
    if not _SBATCH_SAFE.fullmatch(text):
        raise ConfigError("template", "", f"refusing to write {text!r} into an #SBATCH line")
    return Quoted(text)


def _yq(value) -> Quoted:
    return Quoted(json.dumps(value))


def _yfloat(value) -> Quoted:
    """A float YAML 1.1 readers (accelerate) also read as a float: 1e-05 -> 1.0e-05."""
    text = repr(float(value))
    mantissa, e, exp = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exp}"
    return Quoted(text)


def _envname(value) -> Quoted:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(value)):
        raise ConfigError("template", "", f"{value!r} is not an environment variable name")
    return Quoted(str(value))


def _trusted(value) -> Quoted:
    return Quoted(str(value))


def _finalize(value):
    if isinstance(value, Quoted):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"template printed {value!r} without a quoting filter (shq, sb, yq)")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja environment (built once per process: it caches the compiled templates)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(shq=_shq, sb=_sb, yq=_yq, yfloat=_yfloat, envname=_envname, trusted=_trusted)
    return env


def node_environment(job: Job) -> dict[str, str]:
    """Variables exported on every node before accelerate starts (never secrets)."""
    net = job.profile.network
    env: dict[str, str] = {}
    if net.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = net.socket_ifname
    if net.gloo_socket_ifname or net.socket_ifname:
        env["GLOO_SOCKET_IFNAME"] = net.gloo_socket_ifname or net.socket_ifname
    if job.profile.node.gpus_per_node:
        env["NCCL_IB_DISABLE"] = "0" if net.infiniband else "1"
        if net.infiniband and net.ib_hca:
            env["NCCL_IB_HCA"] = net.ib_hca
        # A first hang or failure prints NCCL's reason (the profile's nccl_env may say INFO).
        # TORCH_NCCL_ASYNC_ERROR_HANDLING is left to torch: its default (3, skip clean-up)
        # fails a timed-out collective without ncclCommAbort, the call that can hang (D10).
        env["NCCL_DEBUG"] = "WARN"
    env["OMP_NUM_THREADS"] = str(max(1, job.cpus_per_task // job.procs_per_node))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(cache_environment(job.profile))
    env.update(net.nccl_env)
    return env


def cache_environment(profile) -> dict[str, str]:
    """The Hugging Face cache every node reads and, for offline nodes, the switches that keep
    every library from trying the network (the hub client, datasets, transformers)."""
    cache = profile.cache
    env: dict[str, str] = {}
    extensions = cache.extensions()
    if extensions:
        env["HPCTUNE_EXTENSIONS_DIR"] = extensions
    if cache.hf_home:
        env["HF_HOME"] = cache.home()
    if profile.network.offline:  # one fact, one field: trackers read it too
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def render_files(job: Job, bundle: Path, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """Every bundle file's text, computed without writing anything."""
    bundle = bundle.resolve()
    if not BUNDLE_PATH.fullmatch(str(bundle)):
        raise ConfigError("-o/--output", "", f"{str(bundle)!r}: a run folder path may hold only letters, digits and _ . , : = @ + / - (it is written into #SBATCH lines)")
    rec = resolved_recipe(job)
    out = Path(rec.training.output_dir)
    output_dir = out if out.is_absolute() else bundle / out
    context = dict(
        version=__version__, job=job, profile=job.profile, recipe=rec, ds=rec.deepspeed,
        software=job.profile.software, container=job.profile.software.container,
        bundle=str(bundle), output_dir=str(output_dir), env=node_environment(job),
        compile_root=job.profile.compile_root(),
        request=slurm_request(job),
    )
    env = environment()
    files = {name: env.get_template(tpl).render(context) for name, tpl in _TEMPLATED.items()}
    files[layout.RECIPE] = (f"# Resolved by hpctune {__version__}: the one source of truth that the training\n"
                            f"# module reads on every node. Re-render instead of editing.\n"
                            + recipe_mod.to_yaml(rec))
    files[layout.MANIFEST] = layout.Manifest(
        hpctune_version=__version__,
        cluster=job.profile.name, cluster_file=job.profile.source,
        cluster_sha256=file_hash(job.profile.source) if job.profile.source else None,
        recipe=rec.name, recipe_file=job.recipe.source, overrides=list(overrides),
        recipe_sha256=file_hash(job.recipe.source) if Path(job.recipe.source).is_file() else None,
        nodes=job.nodes, processes_per_node=job.procs_per_node, num_processes=job.num_processes,
        gpus_per_node=job.gpus_per_node, partition=rec.layout.partition, time=job.time_slurm,
        distributed_type=job.distributed_type, output_dir=str(output_dir),
        # how the run behaves, for the login side's readers: nothing parses the scripts to learn it
        scheduler=job.profile.scheduler, preemption_mode=job.profile.preemption.mode,
        max_attempts=job.profile.preemption.max_attempts, signal_seconds=job.profile.preemption.signal_seconds,
        max_steps=rec.training.max_steps if rec.training.max_steps > 0 else None,
        logging_strategy=rec.training.logging_strategy, logging_steps=rec.training.logging_steps,
        # read on the nodes (train/heartbeat.py) and by the after-step decision (run/retry.py)
        watchdog=schema.to_dict(job.profile.watchdog), retry=schema.to_dict(job.profile.retry),
        offline=job.profile.network.offline,
        files={name: _sha(text) for name, text in files.items()},
    ).to_json()
    return files


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_findings(files: dict[str, str], bundle: Path) -> list:
    """The bundle rules on rendered texts (``render_files``), before they are written."""
    return rules.run(bundle=Bundle(Path(bundle).resolve(), files))


def write_bundle(job: Job, bundle: Path, overrides: tuple[str, ...] = (), *, force: bool = False) -> Path:
    """Check the target folder, render every file, then put the folder in place whole
    (hpctune.run.place: never through a symlink, never over a folder that is not a
    never-submitted run folder; ``force`` replaces one of those)."""
    final = place.target(bundle, force=force)
    files = render_files(job, final, overrides)
    rules.raise_errors(bundle_findings(files, final))
    return place.write(final, files, dirs=(layout.LOGS,), executable={layout.JOB_SBATCH, layout.LAUNCH}, force=force)
