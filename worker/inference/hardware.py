"""What the machine offers, and the serving defaults that fit it (`dfscan worker` on a GPU host).

A worker on a CUDA GPU wants other defaults than one on a CPU: a CPU forward costs every image its full
price, so small batches (8) and every core for torch; a GPU forward of 128 images costs little more than
one of 8, and torch's own CPU threads mostly spin beside it. :func:`probe` reads the GPU (name, memory,
compute capability) and :func:`serving_defaults` picks, for settings the operator left unset:

- ``batch_size``: 64 on a GPU under 16 GiB, 128 under 40 GiB, 256 from 40 GiB (A100-40GB, L40S, H100,
  H200). ViT-B/16's activations in bf16 are a few MB per image; the rest of the memory is the headroom
  other processes (workers sharing the GPU under MPS, the face detector) need. The worker's task threads
  (images in flight) are twice the batch size, so a batch fills while the previous one runs.
- ``threads``: 2 torch threads per process: the model runs on the GPU; the CPU work beside it (decode,
  the face detector's NMS, numpy) is spread over task threads, not torch's intra-op pool, and a node's
  cores are shared with the other worker processes on it.

Pure: torch only. Whether CUDA graphs or ``torch.compile`` pay off, and whether N processes per GPU
(CUDA MPS) beat one model-owner process, is measured by ``bench/gpu.py`` on a GPU; these defaults do not
assume either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    """The device a worker would serve on: ``cuda`` False means CPU (then the other fields are empty)."""

    cuda: bool
    name: str = "cpu"
    memory_gib: float = 0.0
    capability: tuple[int, int] = (0, 0)


def probe(device: str = "auto") -> Hardware:
    """The GPU ``device`` (a ``DFSCAN_DEVICE`` value) would use: the first CUDA device, or CPU.

    Initialises CUDA in this process when one is present (the worker loads its model here next, and never
    forks after it)."""
    if device == "cpu" or not torch.cuda.is_available():
        return Hardware(cuda=False)
    props = torch.cuda.get_device_properties(0)
    return Hardware(
        cuda=True,
        name=str(props.name),
        memory_gib=props.total_memory / 2**30,
        capability=(int(props.major), int(props.minor)),
    )


def gpu_batch_size(memory_gib: float) -> int:
    """Images per forward pass on a GPU of ``memory_gib``: 64, 128 or 256 (module docstring)."""
    if memory_gib >= 40:
        return 256
    if memory_gib >= 16:
        return 128
    return 64


GPU_TORCH_THREADS = 2


def serving_defaults(hardware: Hardware) -> dict[str, int]:
    """Settings (name -> value) that fit ``hardware`` better than the CPU defaults; empty on a CPU."""
    if not hardware.cuda:
        return {}
    return {"batch_size": gpu_batch_size(hardware.memory_gib), "threads": GPU_TORCH_THREADS}
