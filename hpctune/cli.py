"""The ``hpctune`` command line: a thin click group that loads each command on demand.

Each subcommand lives in ``hpctune/commands/<name>.py`` and exports ``command``. Only the
command actually run is imported, so ``hpctune --help`` and ``hpctune render`` never import
torch & co. (login nodes are shared; see bench/bench_cli.py).
"""

from __future__ import annotations

import importlib
import sys

import click

from hpctune import __version__
from hpctune.errors import ConfigError, RunError

# name -> (module, one-line help shown by `hpctune --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("hpctune.commands.render", "Write a run bundle (sbatch, launch, accelerate config) for a cluster + recipe."),
    "submit": ("hpctune.commands.submit", "Render, check and submit a run (Slurm via submitit, or this machine)."),
    "plan": ("hpctune.commands.plan", "Predict GPU and CPU memory per node; choose a layout that fits."),
    "check": ("hpctune.commands.check", "Check a cluster + recipe against every rule before submitting."),
    "prepare": ("hpctune.commands.prepare", "Fetch model and data into the profile's cache, tokenize once, pre-build ops."),
    "clusters": ("hpctune.commands.clusters", "List, show, validate or detect cluster profiles."),
    "doctor": ("hpctune.commands.doctor", "Prove a cluster profile on the live cluster with a short probe job."),
    "recipes": ("hpctune.commands.recipes", "List the shipped recipes or show one resolved."),
    "runs": ("hpctune.commands.runs", "List runs in the registry."),
    "status": ("hpctune.commands.status", "Show one run's state, nodes, attempts and progress."),
    "logs": ("hpctune.commands.logs", "Print (or follow) a run's logs, per node."),
    "cancel": ("hpctune.commands.cancel", "Cancel a run's Slurm job."),
    "sweep": ("hpctune.commands.sweep", "Submit a grid of runs as one Slurm job array."),
    "train": ("hpctune.commands.train", "Train from a resolved recipe.yaml (runs on the compute nodes)."),
    "merge": ("hpctune.commands.merge", "Merge a LoRA adapter into its base model, on CPU."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (module, _) in COMMANDS.items() if _module_exists(module)]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, _ = COMMANDS[name]
        if not _module_exists(module):
            return None
        return importlib.import_module(module).command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpctune")
def cli():
    """Fine-tune with LoRA/QLoRA + DeepSpeed on Slurm, right the first time.

    \b
    Quick start (no cluster needed: trains a tiny model on this machine):
      hpctune submit -c local tiny-sft --wait
    On a cluster:
      hpctune clusters                                  # profiles you can use
      hpctune plan   -c example-h100 recipes/llama2-70b-lora-zero3.yaml
      hpctune check  -c example-h100 recipes/llama2-70b-lora-zero3.yaml
      hpctune submit -c example-h100 recipes/llama2-70b-lora-zero3.yaml --wait
      hpctune runs; hpctune logs RUN -f; hpctune cancel RUN
    """


INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in hpctune, not in the user's input


def crash_log(exc: BaseException) -> str:
    """Write the traceback to a private file; return its path ('' if nowhere writable).

    Not into $HPCTUNE_HOME: that folder may be shared with a team, a traceback may quote
    paths and values. ~/.cache/hpctune/crash (0700), else a private temporary file."""
    import os
    import tempfile
    import time
    import traceback

    text = (f"hpctune {__version__} crashed at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"argv: {sys.argv!r}\n\n" + "".join(traceback.format_exception(exc)))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(base, "hpctune", "crash"), None):
        try:
            if folder is not None:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=time.strftime("hpctune-crash-%Y%m%d-%H%M%S-"), suffix=".log",
                                        dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return ""


def main(argv: list[str] | None = None) -> None:
    """Console entry: ConfigError -> one line, exit 2; RunError -> one line, exit 1;
    anything else (a bug) -> one line naming a log file with the traceback, exit 70."""
    try:
        _main(argv)
    except SystemExit:
        raise
    except BrokenPipeError:
        # `hpctune runs | head`: the reader left; say nothing more.
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the last resort: no traceback reaches a user
        path = crash_log(e)
        where = f"; details in {path}" if path else ""
        from hpctune.errors import one_line
        msg = one_line(f"{e.__class__.__name__}: {e}", 200)
        try:
            click.echo(f"hpctune: internal error ({msg}){where}; please report it", err=True)
        except Exception:  # noqa: BLE001 - stderr itself is gone
            pass
        sys.exit(INTERNAL_ERROR)


def _main(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="hpctune", standalone_mode=False)
    except ConfigError as e:
        for line in str(e).splitlines():  # ConfigErrors: one line per problem
            click.echo(f"hpctune: error: {line}", err=True)
        sys.exit(2)
    except RunError as e:
        from hpctune.errors import one_line
        click.echo(f"hpctune: error: {one_line(str(e), 1000)}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
