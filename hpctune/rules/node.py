"""What only a compute node can know, declared for ``hpctune check --list``.

hpctune/train/preflight.py enforces these (they raise ConfigError, exit 2, before training):
the login node cannot see the node's packages, GPUs, environment, model store or data.
Everything that follows from the recipe alone is a recipe rule instead (recipe.py), which
the preflight runs too.
"""

from __future__ import annotations

from hpctune.rules.book import declare

_PREFLIGHT = "hpctune.train.preflight"
declare("version-gates", "package versions on the node (QLoRA + ZeRO-3 needs newer ones)", scope="node",
        enforced_by=_PREFLIGHT, pains=(10, 11))
declare("node-launch", "the accelerate launch (DeepSpeed stage, accumulation, precision) matches recipe.yaml",
        scope="node", enforced_by=_PREFLIGHT, pains=(9,))
declare("node-devices", "fp16 and flash_attention_2 need a visible GPU (and flash-attn installed)", scope="node",
        enforced_by=_PREFLIGHT, pains=(23,))
declare("node-env", "the tracker in report_to is installed; push_to_hub has HF_TOKEN", scope="node",
        enforced_by=_PREFLIGHT)
declare("node-model", "the model is reachable and the LoRA target modules exist in it", scope="node",
        enforced_by=_PREFLIGHT, pains=(20,))
declare("node-data", "the dataset loads, has the text column and rows for one optimizer step", scope="node",
        enforced_by=_PREFLIGHT)
declare("max-seq-len-positions", "max_seq_len within the model's learned positions (read from its config)",
        scope="node", enforced_by=_PREFLIGHT)
