"""``hpctune plan``: predicted GPU and CPU memory for a recipe on a cluster; auto layout."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("plan")
@click.option("-c", "--cluster", metavar="CLUSTER", help="Cluster profile: a name or a path to a .yaml file.")
@click.argument("recipe", metavar="RECIPE", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--compare", "run", metavar="RUN", help="Put the prediction beside what a finished run measured (a run folder or id).")
@click.option("--calibrate", "calibrate_run", metavar="RUN", help="Store this cluster's correction factors (memory, step time) from a finished run; later plans use them.")
def command(cluster, recipe, overrides, as_json, run, calibrate_run):
    """Predict peak memory per GPU and CPU RAM per node, and say whether RECIPE fits CLUSTER.

    \b
    The model covers weights by dtype (4-bit with its constants), ZeRO stages 0-3 across all
    GPUs of all nodes, LoRA/full optimizer states, CPU/NVMe offload, ZeRO-3 buffers,
    activations with or without checkpointing, logits and CUDA overhead
    (docs/memory-model.md). With `--set layout.nodes=auto` it picks the cheapest layout
    that fits and lists the next best.

    \b
    Examples:
      hpctune plan -c example-h100 llama2-70b-lora-zero3
      hpctune plan -c example-a100-80g falcon-180b-lora-zero3 --set method.type=qlora
      hpctune plan -c example-h100 llama2-70b-lora-zero3 --set layout.nodes=auto --json
      hpctune plan --compare hpctune-runs/tiny-sft-local
      hpctune plan --calibrate hpctune-runs/tiny-sft-local

    \b
    Three figures per GPU: "allocated" compares with torch.cuda.max_memory_allocated(),
    "reserved" with torch.cuda.max_memory_reserved(), "device" with nvidia-smi (reserved +
    CUDA context + NCCL); FITS is judged on the device figure plus a margin. The time section
    gives step time, tokens/s, time per epoch and GPU-hours, and advises the time limit, the
    warning lead (preemption.signal_seconds) and the checkpoint interval (save_steps).
    """
    from hpctune.plan import job_plan

    if calibrate_run:
        run = calibrate_run
    if run:
        job, metrics = _load_run(run)
    else:
        if not cluster or not recipe:
            raise click.UsageError("give -c CLUSTER and RECIPE (or --compare RUN)")
        from hpctune import rules
        from hpctune.prepare import prepare
        # Show the plan even when it does not fit (the verdict sets the exit code); any
        # other error stops here, as in render.
        prep = prepare(cluster, recipe, overrides)
        rules.raise_errors([f for f in prep.findings if f.rule != "memory-fits"])
        job, metrics = prep.job, None
    inp = job_plan.plan_input(job)
    factors = job_plan.corrections(job)
    try:
        p = job_plan.estimate(inp, correction=factors["memory"])
    except KeyError as e:
        from hpctune.errors import ConfigError
        raise ConfigError(job.recipe.source, "method.lora_target_modules", str(e.args[0])) from None
    tp = job_plan.time_plan(job, inp)
    if calibrate_run:
        _calibrate(job, inp, p, tp, metrics, calibrate_run, as_json)
        return
    alts = [] if run else job_plan.alternatives(job, limit=4)
    if as_json:
        out = {**p.to_dict(), "nodes": job.nodes, "gpus_per_node": job.procs_per_node,
               "layout": job_plan.describe(inp), "time": tp.to_dict(), "corrections": factors,
               "alternatives": [
                   {"layout": job_plan.describe(a), "per_gpu_peak_gib": round(b.per_gpu_peak_gib, 2)} for a, b in alts]}
        if metrics is not None:
            out["measured"] = _measured(metrics)
            out["measured_step_seconds"] = _step_seconds(metrics)
        click.echo(json.dumps(out, indent=2))
        return
    _print_plan(job, inp, p)
    _print_time(job, tp, factors)
    if metrics is not None:
        _print_compare(job, p, metrics, tp)
    elif alts:
        click.echo("\nLayouts that fit, cheapest first:")
        for a, b in alts:
            click.echo(f"  {job_plan.describe(a):62s} {b.per_gpu_peak_gib:6.1f} GiB/GPU")
    if not p.fits and not run:
        raise SystemExit(2)


def _print_plan(job, inp, p) -> None:
    node = job.profile.node
    device = f"{node.gpu_model} {node.gpu_mem_gib:g} GiB" if node.gpus_per_node else "CPU processes"
    click.echo(f"Plan: {job.recipe.name} on {job.profile.name}: {job.nodes} node(s) x {job.procs_per_node} ({device}), "
               f"ZeRO-{inp.zero_stage}, offload optimizer={inp.offload_optimizer} param={inp.offload_param}, "
               f"micro batch {inp.micro_batch}, seq {inp.seq_len}")
    click.echo(f"Model: {job.recipe.model.model_name_or_path}: {inp.shape.n_params / 1e9:.2f} B parameters, "
               f"method {inp.method}\n")
    width = max([len(k) for k in list(p.breakdown) + list(p.cpu_breakdown)] + [24])
    click.echo(f"{'per GPU':{width}s}   GiB")
    for k, v in p.breakdown.items():
        if round(v, 2) != 0:
            click.echo(f"  {k:{width}s} {v:7.2f}")
    limit = node.gpu_mem_gib if node.gpus_per_node else node.ram_gib / job.procs_per_node
    click.echo(f"  {'peak':{width}s} {p.per_gpu_peak_gib:7.2f}  of {limit:g}")
    click.echo(f"\n{'CPU RAM per node':{width}s}   GiB")
    for k, v in p.cpu_breakdown.items():
        if round(v, 2) != 0:
            click.echo(f"  {k:{width}s} {v:7.2f}")
    click.echo(f"  {'peak':{width}s} {p.cpu_ram_peak_gib_per_node:7.2f}  of {node.ram_gib:g}")
    if node.gpus_per_node:
        click.echo("\nPer GPU, three figures (GiB):")
        click.echo(f"  allocated {p.allocated_peak_gib:7.2f}   compare with torch.cuda.max_memory_allocated()")
        click.echo(f"  reserved  {p.reserved_peak_gib:7.2f}   compare with torch.cuda.max_memory_reserved()")
        click.echo(f"  device    {p.device_used_gib:7.2f}   compare with nvidia-smi (reserved + CUDA context + NCCL)")
        click.echo(f"  engine: {p.engine}")
    verdict = "FITS" if p.fits else "DOES NOT FIT"
    click.echo(f"\n{verdict}: device {p.device_used_gib:.1f} + margin {p.margin_gib:.1f} GiB vs {limit:g} GiB; "
               f"headroom {p.headroom_gib:.1f} GiB per GPU")
    for note in p.notes:
        click.echo(f"  note: {note}")


def _print_time(job, tp, factors) -> None:
    def hms(sec):
        return "?" if sec is None else f"{int(sec // 3600)}h{int(sec % 3600 // 60):02d}m{int(sec % 60):02d}s"
    click.echo(f"\nTime (estimate; step-time correction {factors['step_time']:g}):")
    click.echo(f"  step {tp.step_seconds:.1f} s (compute {tp.compute_seconds:.1f}, communication "
               f"{tp.comm_seconds:.1f}, offload {tp.offload_seconds:.1f}), {tp.tokens_per_second:,.0f} tokens/s, "
               f"save {tp.save_seconds:.0f} s")
    if tp.steps_per_epoch is not None:
        click.echo(f"  {tp.steps_per_epoch} steps per epoch, {hms(tp.epoch_seconds)} per epoch")
    else:
        click.echo("  steps per epoch unknown: set data.train_samples (and data.mean_sample_tokens)")
    if tp.total_seconds is not None:
        click.echo(f"  run: {tp.total_steps} steps, {hms(tp.total_seconds)}, {tp.gpu_hours:.1f} GPU-hours")
    a = tp.advice
    t = job.recipe.training
    lead = job.profile.preemption.signal_seconds
    click.echo(f"  advice: preemption.signal_seconds >= {a['signal_seconds_min']} (two steps + a save; "
               f"profile has {lead}){'  <- too short' if lead < a['signal_seconds_min'] else ''}")
    click.echo(f"  advice: save_strategy steps, save_steps <= {a['save_steps']} "
               f"(recipe: {t.save_strategy}{', ' + str(t.save_steps) if t.save_strategy == 'steps' else ''})")
    if "time_limit_minutes" in a:
        click.echo(f"  advice: layout.time >= {a['time_limit_minutes']} min per attempt, {a['attempts']} attempt(s)"
                   f"{'' if a['attempts_ok'] else ' (more than preemption.max_attempts)'}; recipe asks "
                   f"{job.time_minutes:g} min")


def _step_seconds(metrics: dict) -> float | None:
    steps, sec = metrics.get("steps_this_run"), metrics.get("train_seconds")
    return round(sec / steps, 4) if steps and sec else None


def _calibrate(job, inp, p, tp, metrics: dict, run: str, as_json: bool) -> None:
    from hpctune.plan import calibration
    factors = calibration.load(job.profile.name)
    mem = None
    reserved = metrics.get("gpu_peak_reserved_gib")
    if reserved and job.profile.node.gpus_per_node:
        static = sum(p.breakdown[k] for k in ("weights", "trainable_params", "gradients", "optimizer_states"))
        mem = calibration.memory_factor(measured_reserved=reserved, predicted_reserved=p.reserved_peak_gib,
                                        static=static, current=factors["memory"])
    measured_step = _step_seconds(metrics)
    step = measured_step / tp.step_seconds * factors["step_time"] if measured_step and tp.step_seconds else None
    data = calibration.store(job.profile.name, run=run, memory=mem,
                             step_time=min(max(step, calibration.LIMITS[0]), calibration.LIMITS[1]) if step else None)
    out = {"cluster": job.profile.name, "file": str(calibration.path(job.profile.name)),
           "memory": data["memory"], "step_time": data["step_time"], "runs": len(data["runs"]),
           "measured_step_seconds": measured_step, "predicted_step_seconds": round(tp.step_seconds, 4),
           "measured_reserved_gib": reserved, "predicted_reserved_gib": round(p.reserved_peak_gib, 3)}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"Calibrated cluster {job.profile.name!r} from {run}: memory factor {data['memory']:g}, "
               f"step-time factor {data['step_time']:g} ({len(data['runs'])} run(s)); stored in {out['file']}")


def _load_run(run: str):
    """(the Job of a finished run, its metrics.json), from its run folder: the resolved
    recipe.yaml on the profile the manifest names (by file, else by name)."""
    from hpctune import profile as profile_mod
    from hpctune.errors import ConfigError, RunError
    from hpctune.prepare import prepare
    from hpctune.run import registry
    from hpctune.run.folder import RunFolder

    folder = RunFolder(run)
    if not folder.is_run_folder():
        try:
            folder = registry.find(run).folder
        except RunError as e:
            raise ConfigError("--compare", "", f"{run!r}: {e}") from None
    manifest = folder.manifest()
    cluster = manifest.cluster_file if manifest.cluster_file and Path(manifest.cluster_file).is_file() else manifest.cluster
    job = prepare(profile_mod.load(cluster), folder.recipe()).job
    metrics = folder.output.metrics()
    if metrics is None:
        raise ConfigError(str(folder.output.path / "metrics.json"), "", "no metrics yet: the run has not finished")
    return job, metrics


def _measured(metrics: dict) -> list[dict]:
    return [{"rank": r.get("rank"), "host": r.get("host"),
             "gpu_peak_allocated_gib": r.get("gpu_peak_allocated_gib"),
             "gpu_peak_reserved_gib": r.get("gpu_peak_reserved_gib"),
             "cpu_rss_peak_gib": r.get("cpu_rss_peak_gib")} for r in metrics.get("ranks", [])]


def _print_compare(job, p, metrics: dict, tp=None) -> None:
    on_gpu = job.profile.node.gpus_per_node > 0
    per_proc_cpu = p.cpu_ram_peak_gib_per_node / job.procs_per_node
    click.echo(f"\nPredicted vs measured ({metrics.get('status', '?')} run, world size {metrics.get('world_size')}):")
    if on_gpu:
        click.echo(f"  {'rank':>4s}  {'host':16s} {'GPU predicted':>14s} {'GPU reserved':>13s} {'GPU allocated':>14s} {'CPU RSS':>8s}")
    else:
        click.echo(f"  {'rank':>4s}  {'host':16s} {'RAM predicted':>14s} {'RSS measured':>13s}  (CPU run: device memory lives in RAM)")
    for r in _measured(metrics):
        if on_gpu:
            click.echo(f"  {r['rank']!s:>4s}  {str(r['host'])[:16]:16s} {p.device_used_gib:14.2f} "
                       f"{r['gpu_peak_reserved_gib'] or 0:13.2f} {r['gpu_peak_allocated_gib'] or 0:14.2f} {r['cpu_rss_peak_gib'] or 0:8.2f}")
        else:
            click.echo(f"  {r['rank']!s:>4s}  {str(r['host'])[:16]:16s} {p.per_gpu_peak_gib + per_proc_cpu:14.2f} "
                       f"{r['cpu_rss_peak_gib'] or 0:13.2f}")
    if on_gpu:
        click.echo(f"  predicted: allocated {p.allocated_peak_gib:.2f}, reserved {p.reserved_peak_gib:.2f}, "
                   f"device {p.device_used_gib:.2f} GiB")
    if tp is not None:
        measured = _step_seconds(metrics)
        click.echo(f"  step time: predicted {tp.step_seconds:.2f} s, measured "
                   f"{'?' if measured is None else f'{measured:.2f} s'}")
