"""hpctune: LoRA/QLoRA + DeepSpeed fine-tuning on Slurm, right the first time.

The package is split so that the command line stays light on login nodes: everything
outside ``hpctune.train`` imports only the standard library, PyYAML, Jinja2, click and
(for submission) submitit.
"""

__version__ = "0.1.0"
