"""From allocated bytes to what the device shows (docs/memory-model.md §3b).

* **reserved** = allocated + the caching allocator's slack. PyTorch's allocator never returns
  a segment to the driver; a freed block is cached and may be split for a smaller request. In
  training the short-lived tensors change size between phases (forward activations, the
  logits and the loss, the recomputed block, the gradients in flight), so the blocks a phase
  freed are carved up by the next one and the largest requests of the next step find no
  contiguous block: new segments are reserved. The slack therefore grows with the size of the
  short-lived memory, i.e. with micro batch x sequence, not with the weights: a share of the
  transient peak (whose blocks are the largest, re-requested every step) and a smaller share
  of the activations kept through the step and of the communication and gather buffers.
  Requests are rounded up to 512 B and large segments to 2 MiB: under 0.1 %, not modelled.
* **device used** (nvidia-smi, DCGM, a cluster's monitor) = reserved + the CUDA context of the
  process (driver, kernels of torch, cuBLAS/cuDNN handles; with CUDA's lazy module loading,
  the default since torch 1.13 / CUDA 11.7) + NCCL's communicator buffers when there is more
  than one rank (more once nodes talk through the network proxies).

The constants are fitted to the published measurements of §9 (torch counters and nvidia-smi
figures of the same set-ups) and, when a GPU is at hand, to bench/gpu_calibrate.
"""

from __future__ import annotations

GIB = 2**30

SLACK_TRANSIENT = 0.30
"""Share of the transient peak (logits + loss, or one recomputed block with its gradients)
that ends up reserved but unused."""
SLACK_KEPT = 0.20
"""Share of the activations kept through the step and of the gather/bucket/dequant buffers."""
CONTEXT_GIB = {"default": 0.55, "v100": 0.45, "t4": 0.40, "a100": 0.50, "h100": 0.60,
               "h200": 0.60, "gh200": 0.65, "b200": 0.70}
"""CUDA context per process by GPU family, GiB (outside torch's allocator)."""
NCCL_GIB_ONE_NODE = 0.5
"""NCCL communicator buffers of one rank when 4 or more ranks share a node (NVLink/NVSwitch
topologies: NCCL opens many channels, each with its LL/LL128/Simple buffers per peer)."""
NCCL_GIB_PAIR = 0.25
"""... when at most 3 ranks share a node: NCCL opens few channels (2-3 GPUs, often PCIe).
The two-GPU rows of the holdout (docs §9b) ran with at most ~0.65 GiB between torch's
reserved peak and the card, CUDA context included."""
NCCL_GIB_MULTI_NODE = 0.9
"""... when the ranks span several nodes (network proxies and their registered buffers)."""
NVLS_GIB = 1.0
"""NVLink SHARP buffers NCCL (>= 2.17) allocates by default on NVSwitch Hopper nodes
(NCCL_NVLS_ENABLE) once 4 or more GPUs of a node are in the job."""


def slack(*, kept: float, transient: float, buffers: float) -> float:
    """Bytes reserved by the caching allocator on top of the allocated peak."""
    return SLACK_TRANSIENT * transient + SLACK_KEPT * (kept + buffers)


def cuda_context(gpu_model: str) -> float:
    """Bytes of the CUDA context of one process on this GPU model."""
    return CONTEXT_GIB.get(_family(gpu_model), CONTEXT_GIB["default"]) * GIB


def nccl(world: int, nodes: int, gpu_model: str = "") -> float:
    """Bytes of NCCL buffers of one rank."""
    if world <= 1:
        return 0.0
    nvls = NVLS_GIB if _family(gpu_model) in ("h100", "h200", "gh200", "b200") and world // nodes >= 4 else 0.0
    local = world // max(nodes, 1)
    if nodes > 1:
        base = NCCL_GIB_MULTI_NODE
    else:
        base = NCCL_GIB_ONE_NODE if local >= 4 else NCCL_GIB_PAIR
    return (nvls + base) * GIB


def _family(gpu_model: str) -> str:
    return (gpu_model or "").lower().split("-")[0]
