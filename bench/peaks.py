"""A GPU's dense bf16 tensor-core peak: the denominator of every MFU that `make bench` and `make gpu-check`
print (achieved FLOP/s of a step, its FLOPs counted by `vtp_core.flops.flop_counter_mode`, over this).

The figures are the vendors' datasheet peaks without structured sparsity, looked up by a substring of
`torch.cuda.get_device_name()` (the first key that matches, so the more specific names come first). A device
missing here has no MFU; `VTP_PEAK_TFLOPS` gives its peak (or overrides a listed one, e.g. a power-capped card).
"""
from __future__ import annotations

import os

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "RTX 4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 TFLOP/s of the device called `device_name`: `VTP_PEAK_TFLOPS` when set, else the table's."""
    if os.environ.get("VTP_PEAK_TFLOPS"):
        return float(os.environ["VTP_PEAK_TFLOPS"])
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
