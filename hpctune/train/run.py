"""The training run: recipe -> preflight -> build -> train -> save -> verify -> metrics.

Every process of the launch runs this (``accelerate launch --module hpctune.train``).
The resolved recipe (the run bundle's recipe.yaml) is the only input.

Outcomes:
- completed: adapter saved in output_dir and verified, metrics.json ``status: completed``;
- interrupted (SIGUSR2/SIGTERM, or the test hook): a checkpoint was saved, rank 0 wrote
  ``.hpctune-interrupted``; exit code 0, and the next start continues from the checkpoint;
- bad input: ConfigError before training (exit 2); a bad adapter: AdapterCheckError (exit 1).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from hpctune import policy
from hpctune.errors import ConfigError
from hpctune.train import dist, preflight, timeline


def say(msg: str) -> None:
    if dist.is_main():
        print(f"hpctune train: {msg}", file=sys.stderr, flush=True)


def load_recipe(path: str | Path):
    from hpctune import recipe as recipe_mod
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "", "recipe file not found")
    return recipe_mod.load(p)


def _env_defaults() -> None:
    # launch.sh sets a node-local folder per job; a bare `hpctune train` keeps the old shared one.
    from hpctune.train import compile_cache
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser(compile_cache.DEFAULT_SHARED))
    try:
        compile_cache.seed()  # before DeepSpeed is imported: its JIT then finds the pre-built ops
    except OSError as e:
        say(f"could not copy pre-built DeepSpeed ops from {compile_cache.shared_root()}: {e}; building them here")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # progress bars in a job log are one long line of \r
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings
    # Deprecations inside DeepSpeed/transformers, repeated on every step of every rank.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+`? is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)


def engine_of(recipe, launch: dict, cuda: bool, deepspeed: bool) -> policy.Engine:
    """The engine this launch runs (``deepspeed``: started with DeepSpeed, or planned to be)."""
    return policy.Engine(deepspeed=deepspeed, zero_stage=recipe.deepspeed.zero_stage if deepspeed else 0,
                         world_size=launch["world_size"], cuda=cuda)


def _preflight(recipe, launch: dict, deepspeed: bool) -> tuple[bool, str]:
    """The checks that need neither a process group nor the weights: (cuda, model path)."""
    preflight.check_recipe(recipe)  # the login node's recipe rules, same code
    preflight.check_versions(recipe, deepspeed)
    model_path = preflight.resolve_model(recipe)  # a missing folder fails here, in a second
    import torch
    cuda = torch.cuda.is_available()
    preflight.check_machine(recipe, cuda)
    preflight.check_launch(recipe, launch)
    config = preflight.load_config(recipe, model_path)
    meta = preflight.meta_model(recipe, config) if preflight.needs_meta_model(recipe, config) else None
    if meta is not None:
        preflight.check_targets(recipe, meta)
    preflight.check_positions(recipe, config, meta)
    return cuda, model_path


def check(recipe_path: str | Path) -> dict:
    """Every check that needs no training process group (``--check``); trains nothing."""
    _env_defaults()
    recipe = load_recipe(recipe_path)
    launch = preflight.launch_env()
    cuda, model_path = _preflight(recipe, launch, launch["deepspeed"] or recipe.deepspeed.zero_stage > 0)
    from hpctune.train import data, model as model_mod
    tokenizer = model_mod.load_tokenizer(recipe, model_path)
    if recipe.task == "seq2seq":
        from hpctune.train import seq2seq
        train_raw, eval_raw = seq2seq.load_data(recipe)
        preflight.check_rows(recipe, len(train_raw), launch["world_size"], f"the train split of {recipe.data.dataset_name}")
        return {"recipe": recipe, "model_path": model_path, "train_rows": len(train_raw),
                "eval_rows": len(eval_raw) if eval_raw is not None else 0, "cuda": cuda}
    train_raw, eval_raw = data.load(recipe)
    data.text_source(recipe, train_raw.column_names, tokenizer)
    if eval_raw is not None:
        data.text_source(recipe, eval_raw.column_names, tokenizer)
    preflight.check_rows(recipe, len(train_raw), launch["world_size"], f"the train split of {recipe.data.dataset_name}")
    return {"recipe": recipe, "model_path": model_path, "train_rows": len(train_raw),
            "eval_rows": len(eval_raw) if eval_raw is not None else 0, "cuda": cuda}


def main(recipe_path: str | Path) -> int:
    """Train; 0 when completed, already completed, or interrupted with a checkpoint."""
    wall_start = time.time()
    _env_defaults()
    recipe = load_recipe(recipe_path)
    out = preflight.output_dir(recipe)
    from hpctune.train import metrics
    previous = metrics.read(out)
    if previous and previous.get("status") == "completed":
        say(f"{out} already holds a completed run (metrics.json): nothing to do. Delete it to train again.")
        return 0

    if dist.is_main():
        # A stale marker must not survive this attempt (launch.sh would continue the job
        # again even if this attempt fails its checks).
        from hpctune.train import resume
        resume.clear_interrupted(out)

    # From here a time-limit warning or a TERM is caught (launch.sh ignored USR2 until now):
    # before the first optimizer step it ends the attempt cleanly, after it a checkpoint is saved.
    from hpctune.train import signals
    previous_handlers = signals.install()
    try:
        launch = preflight.launch_env()
        cuda, model_path = _preflight(recipe, launch, launch["deepspeed"])
        timeline.mark("imports and preflight")
        if recipe.deepspeed.zero_stage > 0 and not launch["deepspeed"]:
            say(f"deepspeed.zero_stage is {recipe.deepspeed.zero_stage} but this process was not started by "
                "`accelerate launch` with a DeepSpeed config: training without DeepSpeed")
        preflight.check_output_dir(recipe, out)
        if recipe.task == "seq2seq":  # custom Accelerate loop (reference workload 3)
            from hpctune.train import seq2seq
            return seq2seq.train(recipe, out, model_path, launch, cuda, wall_start)
        return _train(recipe, out, model_path, launch, cuda, wall_start)
    except BaseException as e:  # noqa: BLE001 - decided just below: only a start-up signal is swallowed
        # Bad input stays bad input (exit 2, shown again by the next attempt); Ctrl-C is not Slurm.
        if not signals.interrupted_startup(e) or isinstance(e, (KeyboardInterrupt, ConfigError)):
            raise
        return _end_startup(out, e)
    finally:
        signals.restore(previous_handlers)
        _publish_ops()


def _end_startup(out: Path, exc: BaseException) -> int:
    """A stop signal before the first optimizer step: nothing new to save. Rank 0 leaves the
    marker (the checkpoint the next attempt resumes from, if any) so the host side continues
    the job; every rank exits 0."""
    from hpctune.train import resume, signals
    phase = getattr(exc, "phase", None) or f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    saved = resume.latest_complete(out)
    step = _checkpoint_step(saved)
    reason = f"{signals.received() or 'signal'} during start-up, before the first optimizer step"
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        resume.write_interrupted(out, step, reason, saved, phase="startup", detail=phase)
    say(f"stopped during start-up ({phase}) on {signals.received()}: nothing to save; the job continues "
        f"from {saved.name if saved else 'the start'} in its next attempt")
    # A signal that broke a peer (not the clean, agreed stop) leaves no barrier to meet.
    _SKIP_SHUTDOWN[0] = not isinstance(exc, signals.StartupInterrupted)
    return 0


_SKIP_SHUTDOWN = [False]


def clean_exit() -> bool:
    """Whether the ranks may meet in a last barrier (see __main__)."""
    return not _SKIP_SHUTDOWN[0]


def _checkpoint_step(ckpt) -> int:
    try:
        return int(ckpt.name.split("-")[1]) if ckpt else 0
    except (IndexError, ValueError):
        return 0


def _publish_ops() -> None:
    """Ops this node had to build go to the shared folder for the next job (one process per node)."""
    if dist.local_rank() != 0:
        return
    from hpctune.train import compile_cache
    published = compile_cache.publish()
    if published:
        print(f"hpctune train: published built DeepSpeed ops {', '.join(published)} to "
              f"{compile_cache.shared_root()}", file=sys.stderr, flush=True)


def _train(recipe, out: Path, model_path: str, launch: dict, cuda: bool, wall_start: float) -> int:
    from hpctune.train import adapter_check, data, memory, metrics, model as model_mod, resume, signals, trainer as trainer_mod

    deepspeed = launch["deepspeed"]
    engine = engine_of(recipe, launch, cuda, deepspeed)
    zero_stage = engine.zero_stage
    memory.gpu_phases()  # the load phase starts here
    tokenizer = model_mod.load_tokenizer(recipe, model_path)
    has_eval = data.split_names(recipe)[1] is not None
    # Creates the process group; must precede the model load (ZeRO-3 sharded init).
    args = trainer_mod.make_args(recipe, out, cuda=cuda, has_eval=has_eval, engine=engine)
    world = dist.world_size()

    train_ds, eval_ds = _tokenized_data(recipe, tokenizer, args, world)
    timeline.mark("process group and data")
    signals.check_startup("data")

    model = model_mod.load(recipe, model_path, tokenizer, engine=engine, local_rank=dist.local_rank())
    timeline.mark("model load")
    signals.check_startup("model load")
    model_info = model_mod.summary(model)
    if recipe.method.type != "full":
        model_info["added_tokens"] = tokens = model_mod.token_rows_report(model, model_mod.added_token_ids(tokenizer), engine)
        if tokens["added"] and not (tokens["input_rows_trained"] and tokens["output_rows_trained"]):
            say(f"warning: the {tokens['added']} tokens added by chat_template_format {recipe.data.chat_template_format} "
                f"train their input rows: {tokens['input_rows_trained']}, output rows: {tokens['output_rows_trained']} "
                "(the rest stay at the mean of the old rows; see policy.trainable_token_rows)")
    stop_cb = signals.make_callback()
    metrics_cb = metrics.make_callback()
    from hpctune.train import attempt, heartbeat, tracker
    tracker.setup(recipe.training.report_to, attempt.current().bundle)  # one tracker run for all attempts
    trainer = trainer_mod.build(args, model, tokenizer, train_ds, eval_ds,
                                [stop_cb, resume.make_marker_callback(), metrics_cb,
                                 heartbeat.make_callback(attempt.current()), metrics.make_progress_callback()],
                                recipe=recipe, engine=engine)
    preflight.check_rows(recipe, len(trainer.train_dataset), world,
                         "the train split after tokenization" + (" and packing" if recipe.data.packing else ""))

    ckpt = resume.resume_point(out)  # rank 0 decides for all
    say(f"{'resuming from ' + ckpt.name if ckpt else 'starting'}: world size {world}, "
        f"{'DeepSpeed ZeRO-' + str(zero_stage) if deepspeed else ('DDP' if world > 1 else 'one process')}, "
        f"{'GPU' if cuda else 'CPU'}, output {out}")
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)

    interrupted = stop_cb.stopped and trainer.state.global_step < trainer.state.max_steps
    if interrupted:
        saved = resume.latest_complete(out)
        if dist.is_main():
            resume.write_interrupted(out, trainer.state.global_step, stop_cb.reason or "signal", saved)
        data_ = metrics.build(recipe, trainer, metrics_cb, status="interrupted", wall_start=wall_start,
                              world_size=world, eval_loss=None, extra={"checkpoint": str(saved) if saved else None})
        if dist.is_main():
            metrics.write(out, data_)
        say(f"stopped at step {trainer.state.global_step} ({stop_cb.reason}); checkpoint {saved.name if saved else 'none'}; "
            "start the job again to continue")
        return 0

    eval_loss = None
    if eval_ds is not None and args.eval_strategy != "no":
        eval_loss = metrics.last_logged(trainer.state.log_history, "eval_loss")
        if eval_loss is None or _last_eval_step(trainer) != trainer.state.global_step:
            eval_loss = trainer.evaluate().get("eval_loss")

    trainer.save_model()
    dist.barrier()
    extra = {"model": model_info, "engine": {**metrics.engine(trainer),
                                             "gradient_checkpointing": trainer_mod.effective_checkpointing(trainer)},
             "startup": {"process_started": round(timeline.START, 3), **timeline.marks()}}
    status = "completed"
    error = None
    if recipe.method.type != "full":
        expected = adapter_check.expected_keys(trainer.model)
        if dist.is_main():
            try:
                extra["adapter"] = adapter_check.verify(out, expected, trained=trainer.state.global_step > 0 and recipe.training.learning_rate > 0)
            except adapter_check.AdapterCheckError as e:
                status, error = "failed", e
                extra["error"] = str(e)
    data_ = metrics.build(recipe, trainer, metrics_cb, status=status, wall_start=wall_start,
                          world_size=world, eval_loss=eval_loss, extra=extra)
    if dist.is_main():
        metrics.write(out, data_)
    if error is not None:
        raise error
    say(f"completed {trainer.state.global_step} steps: train loss {data_['train_loss']}, eval loss {eval_loss}; "
        f"adapter and metrics.json in {out}")
    return 0


def _last_eval_step(trainer):
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry.get("step")
    return None


def _tokenized_data(recipe, tokenizer, args, world: int):
    """The tokenized splits: from the tokenized cache (``hpctune prepare`` or an earlier
    attempt wrote it), else tokenized here by rank 0 first, which keeps them for next time."""
    from hpctune.train import data
    folder = data.tokenized_dir(recipe, tokenizer)
    cached = data.load_tokenized(folder) if folder is not None else None
    if cached is None:
        with _main_first(args):
            if folder is not None and not dist.is_main():
                cached = data.load_tokenized(folder)  # rank 0 has just written it
            if cached is None:
                cached = data.tokenize_all(recipe, tokenizer, world)
                if folder is not None and dist.is_main() and data.save_tokenized(folder, *cached):
                    say(f"tokenized data kept in {folder}")
    else:
        say(f"tokenized data from {folder}")
    return cached


@contextmanager
def _main_first(args):
    """Rank 0 loads and tokenizes first (fills the datasets cache), then the others."""
    ctx = args.main_process_first(local=False, desc="dataset") if dist.world_size() > 1 else nullcontext()
    with ctx:
        yield
