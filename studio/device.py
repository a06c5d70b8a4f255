"""The one place for device and dtype policy.

CUDA and Apple MPS run in fp16 (half the memory, tensor cores); the CPU runs fp32, where fp16 is slow or unsupported.
"""

import torch


def pick_device(override: str | None = None) -> torch.device:
    """`override` ("cpu", "cuda", "cuda:1", "mps") wins; otherwise the best accelerator present, else the CPU."""
    if override:
        device = torch.device(override)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {override}: CUDA is not available on this machine (torch {torch.__version__})")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {override}: Apple MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.float16


def describe(device: torch.device) -> str:
    """A one-line summary for the UI footer and logs."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), fp16"
    return f"{device.type.upper()}, {str(dtype_for(device)).removeprefix('torch.')}"
