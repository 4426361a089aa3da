"""TRL SFTConfig/SFTTrainer from the recipe: every training argument of the reference command.

``make_args`` must run before the model is loaded: under ZeRO-3 with ``zero3_init_flag``
the training arguments are what tell ``from_pretrained`` to build the model sharded.
All values come from the recipe; the accelerate config was rendered from the same recipe
(precision -> bf16/fp16, gradient_accumulation_steps, max_grad_norm), so they agree.
"""

from __future__ import annotations

from pathlib import Path


def make_args(recipe, output_dir: Path, *, cuda: bool, has_eval: bool):
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
        gradient_checkpointing_kwargs={"use_reentrant": t.use_reentrant} if t.gradient_checkpointing else None,
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
        # best-fit packing keeps samples apart only with FlashAttention's position ids;
        # other kernels get PEFT's classic concatenate-and-chunk packing.
        packing_strategy="bfd" if recipe.model.attn_implementation == "flash_attention_2" else "wrapped",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    if t.eval_steps is not None:
        kw["eval_steps"] = t.eval_steps
    return SFTConfig(**kw)


def build(args, model, tokenizer, train_ds, eval_ds, callbacks):
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
