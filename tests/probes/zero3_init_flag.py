"""D14 probe: does ``zero3_init_flag: false`` stop transformers from building the model sharded?

One CPU process. The environment is what ``accelerate launch`` sets from the rendered
accelerate config for a ZeRO-3 job with ``zero3_init_flag: false``. Then the object the
training path builds first: ``sft`` the SFT trainer's arguments (hpctune.train.trainer
make_args -> TrainingArguments), ``seq2seq`` the seq2seq loop's plain Accelerator. Prints
one JSON line: the flag accelerate parsed and whether ``from_pretrained`` would build the
model under deepspeed.zero.Init (transformers' ``is_deepspeed_zero3_enabled``).
Usage: python tests/probes/zero3_init_flag.py sft|seq2seq OUTPUT_DIR
"""

from __future__ import annotations

import json
import os
import sys


def main(path: str, out: str) -> None:
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="3",
                      ACCELERATE_DEEPSPEED_ZERO3_INIT="false", ACCELERATE_MIXED_PRECISION="bf16",
                      MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", "29534")
    from accelerate import PartialState
    from transformers.integrations import is_deepspeed_zero3_enabled

    PartialState(cpu=True)  # gloo, as the node does without a GPU
    if path == "sft":
        from trl import SFTConfig
        args = SFTConfig(output_dir=out, use_cpu=True, bf16=True, per_device_train_batch_size=1)
        plugin = args.deepspeed_plugin
    else:
        from accelerate import Accelerator
        plugin = Accelerator().state.deepspeed_plugin
    print(json.dumps({"path": path, "flag": plugin.zero3_init_flag, "zero3_init": is_deepspeed_zero3_enabled()}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
