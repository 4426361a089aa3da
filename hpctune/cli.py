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
    "clusters": ("hpctune.commands.clusters", "List, show, validate or detect cluster profiles."),
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


def main(argv: list[str] | None = None) -> None:
    """Console entry: ConfigError -> one line, exit 2; RunError -> one line, exit 1."""
    try:
        cli.main(args=argv, prog_name="hpctune", standalone_mode=False)
    except ConfigError as e:
        for line in str(e).splitlines():  # ConfigErrors: one line per problem
            click.echo(f"hpctune: error: {line}", err=True)
        sys.exit(2)
    except RunError as e:
        click.echo(f"hpctune: error: {e}", err=True)
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
