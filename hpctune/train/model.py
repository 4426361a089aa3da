"""Tokenizer and model: the base model (optionally 4/8-bit), LoRA on top, as PEFT's SFT example.

Rules that prevent known failures (see docs/user-pains):
- QLoRA: ``BitsAndBytesConfig(bnb_4bit_quant_storage=S)`` and the model loaded in dtype S,
  so ZeRO-3 sees one dtype and can shard the packed 4-bit weights.
- Never a ``device_map`` under ZeRO-3 (or any DeepSpeed/distributed launch).
- ``autocast_adapter_dtype=False`` under ZeRO-3 (adapters in the base dtype; mixed dtypes
  break ZeRO-3's parameter gathering); elsewhere PEFT's default (fp32 adapters).
- ``use_cache=False`` when gradient checkpointing is on.
- QLoRA outside ZeRO-3: ``prepare_model_for_kbit_training``; under ZeRO-3 it is skipped,
  because it upcasts some weights to fp32, which ZeRO-3 cannot shard together with bf16.
"""

from __future__ import annotations

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


def lora_config(recipe):
    from peft import LoraConfig
    m = recipe.method
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=preflight.target_list(recipe))


def load(recipe, model_path: str, tokenizer, *, zero_stage: int, cuda: bool, local_rank: int):
    """The model ready for the trainer (a PeftModel for lora/qlora)."""
    from transformers import AutoModelForCausalLM

    quant = quantization_config(recipe)
    kw = dict(
        dtype=torch_dtype(recipe.model_dtype),
        attn_implementation=recipe.model.attn_implementation,
        trust_remote_code=recipe.model.trust_remote_code,
        revision=recipe.model.revision,
    )
    if quant is not None:
        kw["quantization_config"] = quant
        # 4/8-bit weights are placed at load time; DeepSpeed and DDP take no device_map.
        if cuda and zero_stage != 3:
            kw["device_map"] = {"": local_rank}
    from transformers import set_seed
    set_seed(recipe.training.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kw)

    if len(tokenizer) > _vocab_rows(model):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
    if recipe.training.gradient_checkpointing:
        model.config.use_cache = False

    if recipe.method.type == "full":
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training
    if quant is not None and zero_stage != 3:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": recipe.training.use_reentrant})
    kwargs = {"autocast_adapter_dtype": False} if zero_stage == 3 else {}
    # The same LoRA initialisation on every rank and in every launch mode (DDP, ZeRO-2/3).
    set_seed(recipe.training.seed)
    model = get_peft_model(model, lora_config(recipe), **kwargs)
    return model


def _vocab_rows(model) -> int:
    """Rows of the input embedding; under ZeRO-3 the local tensor is empty, ds_shape has them."""
    w = model.get_input_embeddings().weight
    shape = getattr(w, "ds_shape", None) or w.shape
    return shape[0]


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
