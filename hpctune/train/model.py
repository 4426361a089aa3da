"""Tokenizer and model: the base model (optionally 4/8-bit), LoRA on top, as PEFT's SFT example.

Rules that prevent known failures (see docs/user-pains; per-engine decisions in ``policy``):
- QLoRA: ``BitsAndBytesConfig(bnb_4bit_quant_storage=S)`` and the model loaded in dtype S,
  so ZeRO-3 sees one dtype and can shard the packed 4-bit weights.
- The weights load straight onto this rank's GPU unless ZeRO-3 shards them (never a
  ``device_map`` under ZeRO-3).
- ``autocast_adapter_dtype=False`` under ZeRO-3 (adapters in the base dtype; mixed dtypes
  break ZeRO-3's parameter gathering); elsewhere PEFT's default (fp32 adapters).
- ``use_cache=False`` when gradient checkpointing is on.
- QLoRA outside ZeRO-3: ``prepare_model_for_kbit_training``; under ZeRO-3 it is skipped,
  because it upcasts some weights to fp32, which ZeRO-3 cannot shard together with bf16.
- Tokens the chat format adds get embedding rows set to the mean of the existing rows
  (computed in chunks, no covariance: the resize must not add gigabytes to the load peak),
  and those rows are trained (PEFT ``trainable_token_indices`` on the input embedding and,
  when untied, the output layer): otherwise the role markers stay indistinguishable and the
  model cannot learn to end its turn.
"""

from __future__ import annotations

from hpctune import policy
from hpctune.errors import ConfigError
from hpctune.train import preflight

CHATML_TEMPLATE = (
    "{% for message in messages %}\n"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% if loop.last and add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}{% endfor %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# (pad, bos, eos, additional special tokens) per chat format, as in PEFT's SFT example
SPECIAL = {
    "chatml": ("<pad>", "<s>", "<|im_end|>",
               ["<|im_start|>user", "<|im_start|>assistant", "<|im_start|>system", "<|im_end|>", "<s>", "<pad>"]),
    "zephyr": ("<pad>", "<s>", "</s>",
               ["<|user|>", "<|assistant|>", "<|system|>", "</s>", "<s>", "<pad>"]),
}
TEMPLATES = {"chatml": CHATML_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}


def torch_dtype(name: str):
    import torch
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def load_tokenizer(recipe, model_path: str):
    from transformers import AutoTokenizer
    kw = dict(trust_remote_code=recipe.model.trust_remote_code, revision=recipe.model.revision)
    fmt = recipe.data.chat_template_format
    try:
        if fmt in SPECIAL:
            pad, bos, eos, extra = SPECIAL[fmt]
            tok = AutoTokenizer.from_pretrained(model_path, pad_token=pad, bos_token=bos, eos_token=eos,
                                                additional_special_tokens=extra, **kw)
            tok.chat_template = TEMPLATES[fmt]
        else:
            tok = AutoTokenizer.from_pretrained(model_path, **kw)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise ConfigError(recipe.source, "model.model_name_or_path", f"{model_path}: cannot load the tokenizer: {first}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(recipe):
    if recipe.method.type != "qlora":
        return None
    from transformers import BitsAndBytesConfig
    m = recipe.method
    if m.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=m.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=torch_dtype(m.bnb_4bit_compute_dtype),
        bnb_4bit_use_double_quant=m.use_nested_quant,
        bnb_4bit_quant_storage=torch_dtype(m.bnb_4bit_quant_storage_dtype),
    )


def lora_config(recipe, trainable_tokens: dict[str, list[int]] | None = None):
    from peft import LoraConfig
    m = recipe.method
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=preflight.target_list(recipe),
                      trainable_token_indices=trainable_tokens)


def load(recipe, model_path: str, tokenizer, *, engine, local_rank: int):
    """The model ready for the trainer (a PeftModel for lora/qlora) on ``engine`` (policy.Engine)."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(recipe)
    kw = dict(
        dtype=torch_dtype(policy.load_dtype(recipe, engine.deepspeed)),
        attn_implementation=recipe.model.attn_implementation,
        trust_remote_code=recipe.model.trust_remote_code,
        revision=recipe.model.revision,
    )
    if quant is not None:
        kw["quantization_config"] = quant
    device_map = policy.device_map(engine, local_rank)
    if device_map is not None:
        kw["device_map"] = device_map
    from transformers import set_seed
    set_seed(recipe.training.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kw)

    new_tokens = added_token_ids(tokenizer)
    if len(tokenizer) > vocab_rows(model):
        resize_embeddings(model, len(tokenizer))
    if recipe.training.gradient_checkpointing:
        model.config.use_cache = False

    if recipe.method.type == "full":
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training
    if quant is not None and not engine.zero3:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": policy.use_reentrant(recipe, engine)})
    kwargs = {"autocast_adapter_dtype": False} if engine.zero3 else {}
    # The same LoRA initialisation on every rank and in every launch mode (DDP, ZeRO-2/3).
    set_seed(recipe.training.seed)
    with _token_rows_on_this_device(engine):
        model = get_peft_model(model, lora_config(recipe, token_targets(model, new_tokens, engine)), **kwargs)
    _expose_head_bias(model)
    return model


def _expose_head_bias(model) -> None:
    """TRL's fused LM head reads ``lm_head.weight`` and ``lm_head.bias``; PEFT's
    TrainableTokensWrapper answers ``weight`` (the base rows with the trained rows merged in)
    but not ``bias``. Output layers without a bias (Llama, Falcon) get ``bias = None``."""
    out = model.get_output_embeddings()
    if type(out).__name__ == "TrainableTokensWrapper" and "bias" not in out.__dict__:
        base = out.token_adapter.base_layer
        if getattr(base, "bias", None) is None:
            out.bias = None


def vocab_rows(model) -> int:
    """Rows of the input embedding; under ZeRO-3 the local tensor is empty, ds_shape has them."""
    w = model.get_input_embeddings().weight
    shape = getattr(w, "ds_shape", None) or w.shape
    return shape[0]


def added_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens added on top of the base vocabulary (the chat format's tokens)."""
    return list(range(tokenizer.vocab_size, len(tokenizer)))


def token_targets(model, ids: list[int], engine) -> dict[str, list[int]] | None:
    """PEFT ``trainable_token_indices`` for the added tokens: the rows of the input embedding and
    of an untied output layer (the logits of the new tokens), as far as ``engine`` allows
    (``policy.trainable_token_rows``)."""
    if not ids:
        return None
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    inp, outp = policy.trainable_token_rows(tied, engine)
    names = {id(m): n for n, m in model.named_modules()}
    targets = {}
    if inp:
        targets[names[id(model.get_input_embeddings())]] = list(ids)
    out = model.get_output_embeddings()
    if outp and not tied and out is not None and id(out) in names and getattr(out, "bias", None) is None:
        targets[names[id(out)]] = list(ids)
    return targets or None


def token_rows_report(model, ids: list[int], engine) -> dict:
    """For metrics.json and the log: the added tokens and whether their rows train."""
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    inp, outp = policy.trainable_token_rows(tied, engine) if ids else (False, False)
    return {"added": len(ids), "input_rows_trained": inp, "output_rows_trained": outp}


def _gathered(params, modifier_rank=None):
    """deepspeed.zero.GatheredParameters for ZeRO-3-partitioned parameters, else nothing."""
    from contextlib import nullcontext
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def resize_embeddings(model, n_tokens: int, chunk_rows: int = 4096) -> None:
    """Grow the token embedding (and an untied output layer) to ``n_tokens`` rows, rounded up
    to a multiple of 8; every new row is the mean of the old rows.

    transformers' ``mean_resizing`` draws the new rows from a multivariate normal with the old
    rows' covariance: fp32 copies of the table, a hidden x hidden covariance and its Cholesky
    on top of the load peak (about 3 GB for Llama-2-70B, D9), for rows that differ from the
    mean by ~1e-6 anyway. Here the mean is summed in chunks of ``chunk_rows`` rows, in fp32,
    and the result is deterministic (``hpctune merge`` re-creates exactly the same rows).
    """
    import torch

    def old_rows(module):
        w = module.weight
        return (getattr(w, "ds_shape", None) or w.shape)[0]

    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    if out is not None and not tied:
        layers.append(out)
    before = [old_rows(m) for m in layers]
    model.resize_token_embeddings(n_tokens, pad_to_multiple_of=8, mean_resizing=False)
    layers = [model.get_input_embeddings()] + ([model.get_output_embeddings()] if len(layers) > 1 else [])
    from hpctune.train import dist
    for module, old in zip(layers, before):
        w = module.weight
        with _gathered([w], modifier_rank=0), torch.no_grad():
            if hasattr(w, "ds_id") and dist.rank() != 0:
                continue  # rank 0 writes; GatheredParameters hands its rows to the others
            total = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
            for start in range(0, old, chunk_rows):
                total += w[start:min(old, start + chunk_rows)].float().sum(0)
            w[old:] = (total / old).to(w.dtype)


def _token_rows_on_this_device(engine):
    """PEFT 0.21 gathers the trainable tokens' rows under ZeRO-3 into a CUDA tensor on every
    rank but 0 (trainable_tokens/layer.py ``_collect_token_weights``). Without a GPU (the CPU
    stand-in the tests run) the same collective runs on DeepSpeed's CPU device instead; on a
    GPU node PEFT's own code runs unchanged."""
    from contextlib import contextmanager, nullcontext
    if engine.cuda or not engine.zero3:
        return nullcontext()

    @contextmanager
    def patched():
        import torch
        import torch.distributed as tdist
        from peft.tuners.trainable_tokens import layer as tt_layer
        from peft.utils.integrations import gather_params_ctx

        def collect(self, weight, rows, embed_dim):
            with gather_params_ctx([weight], modifier_rank=None):
                if tdist.get_rank() == 0:
                    token_weights = weight[rows].clone()
                else:
                    token_weights = torch.empty((len(rows), embed_dim), dtype=weight.dtype, device="cpu")
            tdist.broadcast(token_weights, src=0)
            return token_weights

        original = tt_layer.TrainableTokensLayer._collect_token_weights
        tt_layer.TrainableTokensLayer._collect_token_weights = collect
        try:
            yield
        finally:
            tt_layer.TrainableTokensLayer._collect_token_weights = original

    return patched()


def summary(model) -> dict:
    """Parameter counts, dtypes and quantized layers (ZeRO-3 aware: partitioned params count fully)."""
    total = trainable = 0
    dtypes: dict[str, int] = {}
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        total += n
        if p.requires_grad:
            trainable += n
        key = str(p.dtype).replace("torch.", "")
        dtypes[key] = dtypes.get(key, 0) + n
    quantized = sum(1 for m in model.modules()
                    if m.__class__.__name__ in ("Linear4bit", "Linear8bitLt") and m.__class__.__module__.startswith("bitsandbytes"))
    return {"class": model.__class__.__name__, "parameters": total, "trainable": trainable,
            "dtypes": dtypes, "quantized_linear_layers": quantized,
            # built sharded by deepspeed.zero.Init (ZeRO-3 with zero3_init_flag; not for 4-bit
            # models: transformers loads those whole on every rank, peft#1844)
            "zero3_init": any(hasattr(p, "ds_id") for p in model.parameters())}
