"""The one Job -> Slurm mapping: every option a run asks Slurm for, computed once.

``templates/job.sbatch.j2`` prints ``directives`` as ``#SBATCH`` lines and ``srun`` on its srun
line; the submitit backend (``hpctune.run.backends.slurm.executor_parameters``) hands the
same options to submitit, which writes them into the script it submits. So the script that
is checked (job.sbatch: golden files, bundle rules, shellcheck, ``sbatch --test-only``) and
the script that ``hpctune submit`` sends ask for the same resources, by construction;
tests/test_slurm_request.py renders both for every shipped recipe and compares them.

What differs between the two scripts, on purpose, is not here: where output goes (job.sbatch:
``--chdir``/``--output`` into the run folder; submitit: its own log files) and the run's
identity (submitit: ``--export=ALL,HPCTUNE_RUN_ID=...``, ``--array`` for a sweep). hpctune
never sets ``--wckey`` (sites that enforce wckeys refuse made-up ones; the profile has
``sbatch_extra`` for a site that wants one).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Directive:
    option: str               # long sbatch option without the dashes: "gpus-per-node"
    value: str | int | bool   # True: a flag without a value ("--exclusive")
    why: str = ""             # a comment the rendered script prints above the line


@dataclass(frozen=True)
class SlurmRequest:
    directives: tuple[Directive, ...]
    srun: tuple[str, ...] = field(default=())   # arguments of the one srun step, one launcher per node

    def options(self) -> dict:
        """{option: value} (flags: True), in order."""
        return {d.option: d.value for d in self.directives}


def slurm_request(job) -> SlurmRequest:
    prof = job.profile
    d: list[Directive] = [Directive("job-name", job.job_name)]
    if job.partition is not None:
        d.append(Directive("partition", job.partition.name))
    d.append(Directive("nodes", job.nodes))
    d.append(Directive("ntasks-per-node", 1, "One launcher task per node: accelerate then starts one process per GPU."))
    if job.gpus_per_node:
        d.append(Directive("gpus-per-node", job.gpus_per_node))
    d.append(Directive("cpus-per-task", job.cpus_per_task))
    if job.exclusive:
        d.append(Directive("mem", 0, "Whole nodes: all of their memory (a figure typed into the profile could\n"
                                     "exceed what Slurm knows of the node and be refused)."))
    else:
        d.append(Directive("mem", f"{job.mem_gib}G"))
    d.append(Directive("time", job.time_slurm))
    for key in ("account", "qos", "constraint", "reservation"):
        if getattr(prof, key):
            d.append(Directive(key, getattr(prof, key)))
    if job.exclusive:
        d.append(Directive("exclusive", True))
    d.append(Directive("open-mode", "append"))
    d.append(Directive("signal", f"USR2@{prof.preemption.signal_seconds}",
                       "USR2 (not USR1, which NCCL uses) warns every task before the time limit: training saves\n"
                       "a checkpoint and launch.sh requeues (or resubmits) the job, which then resumes."))
    d.append(Directive("requeue" if prof.preemption.mode == "requeue" else "no-requeue", True))
    # Full option names, checked against sbatch's own table when the profile loads
    # (hpctune.slurm_options); an empty value is a flag.
    d += [Directive(key, True if value == "" else value) for key, value in sorted(prof.sbatch_extra.items())]

    # Slurm >= 22.05 steps do not inherit --cpus-per-task from the allocation: give it again.
    # --wait: when one node's launcher has ended, the others get 120 s (rank 0's last save and
    # checks fit), then the step ends instead of hanging in a collective until the time limit.
    srun = [f"--cpus-per-task={job.cpus_per_task}", "--kill-on-bad-exit=1", "--wait=120"]
    if job.gpus_per_node:
        srun.append(f"--gpus-per-node={job.gpus_per_node}")
    container = prof.software.container
    if container is not None and container.runtime == "pyxis":
        srun.append(f"--container-image={container.image}")
        if container.mounts:
            srun.append("--container-mounts=" + ",".join(container.mounts))
    return SlurmRequest(tuple(d), tuple(srun))


def by_job_sbatch(job) -> bool:
    """pyxis: the rendered job.sbatch is submitted (its batch script, on the host, computes
    the head and requeues); submitit's script would run its Python, and so its requeue,
    inside the image."""
    container = job.profile.software.container
    return container is not None and container.runtime == "pyxis"
