"""GPU calibration of the memory model (issue #15 item 7).

    python -m bench.gpu_calibrate plan   --gpu-gib 139 -o runs.jsonl     # the grid (CPU)
    python -m bench.gpu_calibrate measure -i runs.jsonl -o measured.jsonl  # on the GPU
    python -m bench.gpu_calibrate fit     -i measured.jsonl -o report.md   # constants (CPU)

Randomly initialised models of real shapes (memory does not depend on weight values), LoRA,
QLoRA and full fine-tuning, without DeepSpeed (one process) and with ZeRO-3 on one GPU, at
several micro batch x sequence points. ``measure`` records torch's allocated and reserved
peaks and the device's used memory (nvidia-smi) per point; ``fit`` compares them with the
planner's three figures and fits the allocator constants (hpctune.plan.allocator) and the
CUDA context. ``plan`` and ``fit`` are pure Python and tested in CI
(tests/test_gpu_calibrate.py); ``measure`` needs a GPU, torch, transformers, peft,
bitsandbytes and deepspeed.
"""
