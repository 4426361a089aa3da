"""sbatch's options, as data: which extra options a profile may add (``sbatch_extra``).

The table is Slurm 22.05's ``sbatch`` (the tested version): every long option that its
getopt_long accepts, as listed by the real binary (``sbatch --a``, ``--b``, ... print every
option of a prefix when it is ambiguous), with its argument kind (``sbatch --NAME``: "requires
an argument"; ``--NAME=x``: "doesn't allow an argument") and its short form (``sbatch
--help``). Hidden aliases: ``--cluster`` (= ``--clusters``) and ``--tasks-per-node``
(= ``--ntasks-per-node``).

getopt_long takes any unique prefix of a long option (``--partitio`` is ``--partition``),
and an exact name before a longer one (``--gpus`` is not ``--gpus-per-node``). ``resolve``
does the same, so an extra option is checked as what sbatch will read it as.
"""

from __future__ import annotations

NO, REQUIRED, OPTIONAL = "no", "required", "optional"

# long name -> (argument, short letter or None)
OPTIONS: dict[str, tuple[str, str | None]] = {
    "account": (REQUIRED, "A"), "acctg-freq": (REQUIRED, None), "array": (REQUIRED, "a"),
    "batch": (REQUIRED, None), "bb": (REQUIRED, None), "bbf": (REQUIRED, None), "begin": (REQUIRED, "b"),
    "chdir": (REQUIRED, "D"), "cluster": (REQUIRED, None), "cluster-constraint": (REQUIRED, None),
    "clusters": (REQUIRED, "M"), "comment": (REQUIRED, None), "constraint": (REQUIRED, "C"),
    "container": (REQUIRED, None), "context": (REQUIRED, None), "contiguous": (NO, None),
    "core-spec": (REQUIRED, "S"), "cores-per-socket": (REQUIRED, None), "cpu-freq": (REQUIRED, None),
    "cpus-per-gpu": (REQUIRED, None), "cpus-per-task": (REQUIRED, "c"), "deadline": (REQUIRED, None),
    "delay-boot": (REQUIRED, None), "dependency": (REQUIRED, "d"), "distribution": (REQUIRED, "m"),
    "error": (REQUIRED, "e"), "exclude": (REQUIRED, "x"), "exclusive": (OPTIONAL, None),
    "export": (REQUIRED, None), "export-file": (REQUIRED, None), "extra-node-info": (REQUIRED, "B"),
    "get-user-env": (OPTIONAL, None), "gid": (REQUIRED, None), "gpu-bind": (REQUIRED, None),
    "gpu-freq": (REQUIRED, None), "gpus": (REQUIRED, "G"), "gpus-per-node": (REQUIRED, None),
    "gpus-per-socket": (REQUIRED, None), "gpus-per-task": (REQUIRED, None), "gres": (REQUIRED, None),
    "gres-flags": (REQUIRED, None), "help": (NO, "h"), "hint": (REQUIRED, None), "hold": (NO, "H"),
    "ignore-pbs": (NO, None), "input": (REQUIRED, "i"), "job-name": (REQUIRED, "J"),
    "kill-on-invalid-dep": (REQUIRED, None), "licenses": (REQUIRED, "L"), "mail-type": (REQUIRED, None),
    "mail-user": (REQUIRED, None), "mcs-label": (REQUIRED, None), "mem": (REQUIRED, None),
    "mem-bind": (REQUIRED, None), "mem-per-cpu": (REQUIRED, None), "mem-per-gpu": (REQUIRED, None),
    "mincpus": (REQUIRED, None), "network": (REQUIRED, None), "nice": (OPTIONAL, None),
    "no-kill": (OPTIONAL, "k"), "no-requeue": (NO, None), "nodefile": (REQUIRED, "F"),
    "nodelist": (REQUIRED, "w"), "nodes": (REQUIRED, "N"), "ntasks": (REQUIRED, "n"),
    "ntasks-per-core": (REQUIRED, None), "ntasks-per-gpu": (REQUIRED, None),
    "ntasks-per-node": (REQUIRED, None), "ntasks-per-socket": (REQUIRED, None),
    "ntasks-per-tres": (REQUIRED, None), "open-mode": (REQUIRED, None), "output": (REQUIRED, "o"),
    "overcommit": (NO, "O"), "oversubscribe": (NO, "s"), "parsable": (NO, None),
    "partition": (REQUIRED, "p"), "power": (REQUIRED, None), "prefer": (REQUIRED, None),
    "priority": (REQUIRED, None), "profile": (REQUIRED, None), "propagate": (OPTIONAL, None),
    "qos": (REQUIRED, "q"), "quiet": (NO, "Q"), "reboot": (NO, None), "requeue": (NO, None),
    "reservation": (REQUIRED, None), "signal": (REQUIRED, None), "sockets-per-node": (REQUIRED, None),
    "spread-job": (NO, None), "switches": (REQUIRED, None), "tasks-per-node": (REQUIRED, None),
    "test-only": (NO, None), "thread-spec": (REQUIRED, None), "threads-per-core": (REQUIRED, None),
    "time": (REQUIRED, "t"), "time-min": (REQUIRED, None), "tmp": (REQUIRED, None), "uid": (REQUIRED, None),
    "usage": (NO, None), "use-min-nodes": (NO, None), "verbose": (NO, "v"), "version": (NO, "V"),
    "wait": (NO, "W"), "wait-all-nodes": (REQUIRED, None), "wckey": (REQUIRED, None), "wrap": (REQUIRED, None),
}

# Hidden aliases: the same option under a second name (same getopt value).
ALIASES = {"cluster": "clusters", "tasks-per-node": "ntasks-per-node"}

SHORT = {short: name for name, (_, short) in OPTIONS.items() if short}

# Options hpctune writes itself, and the profile or recipe field that sets each.
OWNED = {
    "job-name": "the recipe's name", "partition": "partitions / layout.partition", "nodes": "layout.nodes",
    "ntasks-per-node": "nothing: one launcher task per node is how hpctune starts accelerate",
    "gpus-per-node": "layout.gpus_per_node", "cpus-per-task": "layout.cpus_per_task", "mem": "layout.mem_gib",
    "time": "layout.time", "account": "account", "qos": "qos", "constraint": "constraint",
    "reservation": "reservation", "exclusive": "exclusive", "chdir": "nothing: the job runs in its run folder",
    "output": "nothing: logs go to the run folder's logs/", "error": "nothing: logs go to the run folder's logs/",
    "open-mode": "nothing: logs are appended across requeues", "signal": "preemption.signal_seconds",
    "requeue": "preemption.mode", "no-requeue": "preemption.mode",
    "export": "nothing: hpctune passes the environment and its run id itself",
}
# Options that conflict with what hpctune asks for, or would change the job's shape, how it
# is submitted and tracked, or who it runs as.
REFUSED = {
    "gpus": "conflicts with --gpus-per-node (layout.gpus_per_node)",
    "gpus-per-task": "conflicts with --gpus-per-node (layout.gpus_per_node)",
    "gpus-per-socket": "conflicts with --gpus-per-node (layout.gpus_per_node)",
    "gres": "GPUs are requested with --gpus-per-node (layout.gpus_per_node)",
    "cpus-per-gpu": "conflicts with --cpus-per-task (layout.cpus_per_task)",
    "mem-per-cpu": "conflicts with --mem (layout.mem_gib)", "mem-per-gpu": "conflicts with --mem (layout.mem_gib)",
    "ntasks": "hpctune runs one launcher task per node", "ntasks-per-core": "hpctune runs one launcher task per node",
    "ntasks-per-gpu": "hpctune runs one launcher task per node", "ntasks-per-socket": "hpctune runs one launcher task per node",
    "ntasks-per-tres": "hpctune runs one launcher task per node", "overcommit": "hpctune runs one launcher task per node",
    "oversubscribe": "conflicts with --exclusive (exclusive)",
    "array": "changes the job's shape: use `hpctune sweep` for job arrays",
    "time-min": "lets Slurm shorten the time limit the checkpoint signal is timed against (layout.time)",
    "export-file": "changes the job's environment: put variables in network.nccl_env",
    "get-user-env": "changes the job's environment: put variables in network.nccl_env",
    "wrap": "replaces the batch script", "container": "replaces how the job runs: use software.container",
    "clusters": "submits to another cluster, where hpctune cannot follow the job",
    "cluster-constraint": "submits to another cluster, where hpctune cannot follow the job",
    "parsable": "changes sbatch's answer, which hpctune reads", "quiet": "changes sbatch's answer, which hpctune reads",
    "verbose": "changes sbatch's answer, which hpctune reads",
    "wait": "makes sbatch block until the job ends", "test-only": "submits nothing",
    "help": "submits nothing", "usage": "submits nothing", "version": "submits nothing",
    "uid": "runs the job as someone else", "gid": "runs the job as someone else",
    "context": "runs the job in another security context", "input": "the batch script reads no input",
    "ignore-pbs": "hpctune's batch script has no #PBS lines",
}


class OptionError(ValueError):
    pass


def resolve(key: str) -> str:
    """The long option sbatch reads for ``key`` (``mail-type``, ``--partitio``, ``-p``, ``p``).

    OptionError (a message without the field) if it is no sbatch option or is ambiguous.
    """
    text = key.strip()
    if text.startswith("--"):
        name = text[2:]
    elif text.startswith("-") or len(text) == 1:
        letter = text.lstrip("-")
        if len(letter) != 1 or letter not in SHORT:
            raise OptionError(f"{key!r} is not an sbatch option (Slurm 22.05)")
        return ALIASES.get(SHORT[letter], SHORT[letter])
    else:
        name = text
    if name in OPTIONS:
        return ALIASES.get(name, name)
    hits = sorted({ALIASES.get(o, o) for o in OPTIONS if o.startswith(name)}) if name else []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        import difflib
        close = difflib.get_close_matches(name, list(OPTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise OptionError(f"--{name} is not an sbatch option (Slurm 22.05){hint}")
    raise OptionError(f"--{name} is ambiguous for sbatch ({', '.join('--' + h for h in hits)}): write the whole name")


def check(key: str, value: str) -> tuple[str, str | None]:
    """(long name, value or None for a flag) of one extra option; OptionError if refused."""
    name = resolve(key)
    shown = f"--{name}" + (f" (written {key!r})" if key.lstrip("-") != name else "")
    if name in OWNED:
        raise OptionError(f"{shown} is set by hpctune; use {OWNED[name]}")
    if name in REFUSED:
        raise OptionError(f"{shown} is not allowed: {REFUSED[name]}")
    kind = OPTIONS[name][0]
    flag_words = ("", "true", "yes")
    if kind == NO:
        if value.strip().lower() not in flag_words:
            raise OptionError(f"{shown} takes no value: write it as {name}: ''")
        return name, None
    if kind == OPTIONAL and value.strip().lower() in flag_words:
        return name, None
    if not value:
        raise OptionError(f"{shown} needs a value")
    return name, value
