"""TRL SFTConfig/SFTTrainer from the recipe: every training argument of the reference command.

``make_args`` must run before the model is loaded: under ZeRO-3 with ``zero3_init_flag``
the training arguments are what tell ``from_pretrained`` to build the model sharded.
All values come from the recipe; the accelerate config was rendered from the same recipe
(precision -> bf16/fp16, gradient_accumulation_steps, max_grad_norm), so they agree.
What depends on the engine (use_reentrant, the packing strategy, fp32 adapters for QLoRA +
fp16) is decided by ``policy``, which the rule book reports from the same functions.
"""

from __future__ import annotations

from pathlib import Path

from hpctune import policy


def make_args(recipe, output_dir: Path, *, cuda: bool, has_eval: bool, engine: policy.Engine):
    from trl import SFTConfig

    t = recipe.training
    eval_strategy = t.eval_strategy if has_eval else "no"
    kw = dict(
        output_dir=str(output_dir),
        seed=t.seed,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": policy.use_reentrant(recipe, engine)} if t.gradient_checkpointing else None,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        # transformers 5: a float in [0, 1) is a ratio of the total steps (PEFT's warmup_ratio)
        warmup_steps=min(float(t.warmup_ratio), 0.9999),
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        log_level=t.log_level,
        logging_strategy=t.logging_strategy,
        eval_strategy=eval_strategy,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        ddp_timeout=t.ddp_timeout,
        push_to_hub=t.push_to_hub,
        hub_model_id=t.hub_model_id,
        hub_private_repo=t.hub_private_repo,
        hub_strategy=t.hub_strategy,
        report_to=[] if t.report_to == "none" else [t.report_to],
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        # Without a GPU: CPU processes (gloo); without this, ZeRO-3 fails its batch-size check.
        use_cpu=not cuda,
        # SFT data settings (the dataset is tokenized by hpctune.train.data)
        max_length=recipe.data.max_seq_len,
        packing=recipe.data.packing,
        packing_strategy=policy.packing_strategy(recipe),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    if t.eval_steps is not None:
        kw["eval_steps"] = t.eval_steps
    return SFTConfig(**kw)


def build(args, model, tokenizer, train_ds, eval_ds, callbacks, *, recipe, engine: policy.Engine):
    from trl import SFTTrainer

    from hpctune.train import memory

    class Trainer(SFTTrainer):
        def evaluate(self, *a, **kw):
            # its own GPU peak, which must not count as (nor erase) the training's
            with memory.gpu_phase("eval"):
                return super().evaluate(*a, **kw)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if policy.upcast_adapters(recipe, engine.deepspeed):
        upcast_trainable(trainer.model)  # before train() creates the optimizer
    return trainer


def upcast_trainable(model) -> int:
    """Trainable parameters to float32 (QLoRA + fp16 without DeepSpeed, see policy); returns how many."""
    import torch
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def effective_checkpointing(trainer) -> dict | None:
    """Gradient checkpointing as it runs (TRL may have changed the arguments in its __init__)."""
    args = trainer.args
    if not args.gradient_checkpointing:
        return None
    return {"use_reentrant": (args.gradient_checkpointing_kwargs or {}).get("use_reentrant")}
