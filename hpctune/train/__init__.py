"""The training program that runs on every node: ``python -m hpctune.train RECIPE.yaml``.

This package is the only part of hpctune that imports torch, transformers, peft, trl,
deepspeed, bitsandbytes and datasets. Importing ``hpctune.train`` itself imports none of
them: each module imports what it needs when it is used.

Modules, one job each:

- ``run``: the entry point (recipe -> preflight -> build -> train -> save -> verify -> metrics)
- ``preflight``: checks that fail before training with a ConfigError (exit code 2)
- ``model``, ``data``, ``trainer``: tokenizer and model, dataset, TRL SFTTrainer
- ``resume``, ``signals``: continue from the newest complete checkpoint; stop cleanly on
  SIGUSR2/SIGTERM (the preemption protocol shared with launch.sh)
- ``adapter_check``, ``metrics``: verify the saved adapter; write metrics.json
- ``merge``: merge a LoRA adapter into its base model on CPU, outside DeepSpeed
- ``dist``: rank/world size/collectives that also work without a process group
- ``attempt``, ``heartbeat``, ``record``, ``tracker``: who this rank is and its recorded
  exception; heartbeats and the hang watchdog (stack dumps); the reproducibility record of
  the attempt; one tracker run across attempts (#14)
- ``faults``: TEST-ONLY fault injection (``HPCTUNE_FAULT``), for the failure-cause tests
- ``tiny``: the built-in tiny model, tokenizer and dataset (``hpctune:tiny-llama``,
  ``hpctune:tiny-chat``) used by tests, the benchmark and ``recipes/tiny-sft.yaml``
"""
