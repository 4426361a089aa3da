"""D1 probe: do a 4-bit model's packed weights survive ``deepspeed.initialize``?

One CPU process (gloo). For each ``STORAGE:STAGE`` argument the tiny model is loaded by
hpctune's own loader (``hpctune.train.model.load``) from RECIPE with that 4-bit storage dtype,
handed to DeepSpeed with the recipe's precision at that ZeRO stage, and the packed bytes and
dequantized weights of one quantized layer are compared before and after. One JSON line per
case on stdout. Usage: python tests/probes/qlora_cast.py RECIPE STORAGE:STAGE...
"""

from __future__ import annotations

import json
import os
import sys


def main(recipe_path: str, cases: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", "29533")
    import bitsandbytes.functional as bnbf
    import deepspeed
    import torch

    from hpctune import policy, recipe as recipe_mod
    from hpctune.train import model as model_mod
    from hpctune.train import preflight

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    for case in cases:
        storage, stage = case.split(":")
        stage = int(stage)
        recipe = recipe_mod.load(recipe_path, (f"method.bnb_4bit_quant_storage_dtype={storage}",))
        path = preflight.resolve_model(recipe)
        tok = model_mod.load_tokenizer(recipe, path)
        engine = policy.Engine(deepspeed=True, zero_stage=stage, world_size=1, cuda=False)
        model = model_mod.load(recipe, path, tok, engine=engine, local_rank=0)
        layer = next(m for m in model.modules() if type(m).__name__ == "Linear4bit")
        w = layer.weight
        before_bytes = w.data.view(torch.uint8).clone()
        before = bnbf.dequantize_4bit(w.data, w.quant_state).float()
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                  "bf16": {"enabled": recipe.precision == "bf16"}, "fp16": {"enabled": recipe.precision == "fp16"}}
        trainable = [p for p in model.parameters() if p.requires_grad]
        # a client optimizer: a config one would JIT-build DeepSpeed's CPU Adam first
        deepspeed.initialize(model=model, config=config, optimizer=torch.optim.AdamW(trainable, lr=1e-3))
        with deepspeed.zero.GatheredParameters([layer.weight], enabled=hasattr(layer.weight, "ds_id")):
            after_bytes = layer.weight.data.view(torch.uint8)
            survived = before_bytes.shape == after_bytes.shape and torch.equal(before_bytes, after_bytes)
            try:
                diff = float((bnbf.dequantize_4bit(layer.weight.data, w.quant_state).float() - before).abs().max())
            except Exception:  # noqa: BLE001 - a cast that changed the element size cannot even be dequantized
                diff = None
        print(json.dumps({"storage": storage, "stage": stage, "precision": recipe.precision, "survived": survived,
                          "max_abs_diff": diff, "max_abs_weight": float(before.abs().max())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
