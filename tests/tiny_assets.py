"""Helpers for the training tests: tiny recipes, broken datasets, bundles, launches.

The tiny model, tokenizer and dataset come from ``hpctune.train.tiny`` (built on first use
into ``$HPCTUNE_CACHE``, default ~/.cache/hpctune). Every run uses a copy of
``recipes/tiny-sft.yaml`` with dict edits (the ``--set`` of the command line), written
into a temporary folder so that the relative ``output_dir`` lands there.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY_RECIPE = REPO / "recipes" / "tiny-sft.yaml"
# Multi-process runs on a 2-core machine: one thread per process, or they fight for cores.
THREADS = "1"


def set_path(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def recipe_dict(**overrides) -> dict:
    """recipes/tiny-sft.yaml with ``{"training.max_steps": 10}``-style edits (pass as **{...})."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        set_path(data, key, value)
    return data


def write_recipe(folder: Path, overrides: dict | None = None, name: str = "recipe.yaml") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(recipe_dict(**(overrides or {})), sort_keys=False))
    return path


def write_dataset(folder: Path, n_train: int = 64, n_test: int = 8, columns=("messages", "content")) -> Path:
    """A tiny chat dataset folder (train.jsonl, test.jsonl) with the given columns."""
    from hpctune.train import tiny
    folder = Path(folder)
    tiny.build_dataset(folder, n_train=n_train, n_test=n_test, columns=tuple(columns))
    return folder


def env(**extra: str) -> dict[str, str]:
    """The environment for launched runs: the venv's tools first, one thread per process."""
    e = dict(os.environ)
    for k in list(e):
        if k.startswith(("ACCELERATE_", "HPCTUNE_NODE", "HPCTUNE_HEAD", "HPCTUNE_MAIN", "HPCTUNE_STOP")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            del e[k]
    e["PATH"] = str(Path(PYTHON).parent) + os.pathsep + e.get("PATH", "")
    e.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "hpctune" / "torch_extensions"))
    e["OMP_NUM_THREADS"] = THREADS
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def run(args: list[str], *, timeout: float = 300, cwd: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env(**extra_env))


def hpctune(*args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m hpctune ARGS`` (the lead's command line)."""
    return run([PYTHON, "-m", "hpctune", *args], timeout=timeout, **extra_env)


def train(recipe: Path, *, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m hpctune.train RECIPE`` (what launch.sh starts on every process)."""
    return run([PYTHON, "-m", "hpctune.train", str(recipe)], timeout=timeout, **extra_env)


def render(bundle: Path, *sets: str, cluster: str = "local") -> Path:
    """``hpctune render -c CLUSTER tiny-sft --set ... -o BUNDLE``."""
    args = ["render", "-c", cluster, "tiny-sft", "-o", str(bundle)]
    for s in sets:
        args += ["--set", s]
    proc = hpctune(*args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return Path(bundle)


def launch(bundle: Path, *, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return run(["bash", str(Path(bundle) / "launch.sh")], timeout=timeout, **extra_env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "metrics.json").read_text())


def losses(output_dir: Path) -> dict[int, float]:
    """step -> logged training loss, from the newest trainer_state.json in output_dir."""
    states = sorted(Path(output_dir).glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = json.loads(states[-1].read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def adapter(output_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(output_dir) / "adapter_model.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def tail(proc: subprocess.CompletedProcess, n: int = 40) -> str:
    return "\n".join((proc.stdout + "\n" + proc.stderr).splitlines()[-n:])
