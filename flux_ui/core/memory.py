"""How much memory models take and how much is free, on the inference device and in CPU RAM.

The registry asks these before it places a model, and evicts (see `Registry.make_room`) when the answer
is too small.
"""

from __future__ import annotations

import psutil
import torch

# Memory a model needs beside its weights while it runs. A 1024x1024 FLUX.1 [dev] image peaks at 24.7 GiB
# with 22.3 GiB of transformer and VAE weights (DESIGN.md's anchor): about 2.4 GiB of activations and VAE
# decoding, rounded up. A VLM answer about one image needs well under that.
WORKSPACE_BYTES = 3 * 2**30
GIB = 2**30


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def device_free_bytes(device: str) -> int | None:
    """Memory free for models on `device`, in bytes; None where it cannot be known."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        allocated = torch.cuda.memory_allocated(dev)
        # Blocks PyTorch has cached but not handed out are free to PyTorch, though not to the driver.
        free += torch.cuda.memory_reserved(dev) - allocated
        # A process capped with torch.cuda.set_per_process_memory_fraction sees the card's free memory
        # but may use only its share.
        index = torch.cuda.current_device() if dev.index is None else dev.index
        cap = torch.cuda.get_per_process_memory_fraction(index) * total
        return int(min(free, cap - allocated))
    if dev.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    if dev.type == "cpu":
        return ram_free_bytes()
    return None


def ram_free_bytes() -> int:
    """CPU RAM available to new allocations without swapping, in bytes."""
    return psutil.virtual_memory().available


def device_usage(device: str) -> dict[str, float] | None:
    """Memory of `device` in GiB: total, used by this process (allocated by PyTorch) and reserved by
    its allocator; None on the CPU (see `ram_usage`) and where it cannot be known."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(dev).total_memory
    return {
        "total_gib": round(total / GIB, 2),
        "allocated_gib": round(torch.cuda.memory_allocated(dev) / GIB, 2),
        "reserved_gib": round(torch.cuda.memory_reserved(dev) / GIB, 2),
    }


def ram_usage() -> dict[str, float]:
    """CPU RAM in GiB: the machine's total and available, and this process's resident set."""
    vm = psutil.virtual_memory()
    return {
        "total_gib": round(vm.total / GIB, 2),
        "available_gib": round(vm.available / GIB, 2),
        "process_gib": round(psutil.Process().memory_info().rss / GIB, 2),
    }
