"""The train step's process settings (`vtp_core.runtime.keep_freed_memory`)."""
from __future__ import annotations

import subprocess
import sys

import pytest

# A step's temporaries: 32 x 4 MiB written, then freed together, ten steady steps after three warm-up ones.
# Through libc directly: torch ops in the loop made glibc's choices vary between runs (0 or all pages).
# Each run is a fresh process, since the setting is process-wide and cannot be undone.
_STEPS = """
import ctypes, resource, sys
from vtp_core.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def step():
    blocks = [libc.malloc(4 << 20) for _ in range(32)]
    for b in blocks:
        ctypes.memset(b, 1, 4 << 20)
    for b in blocks:
        libc.free(b)
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_keep_freed_memory_stops_the_heap_refaulting_every_step():
    # by default glibc trims the freed 128 MiB at the heap's top and faults it back in the next step:
    # 32,768 pages a step. Kept, the steady state faults (almost) nothing.
    default, kept = _faults("default"), _faults("keep")
    assert default > 10 * 16_000, f"the pattern no longer makes glibc trim ({default} faults): the test proves nothing"
    assert kept < 500, f"{kept} minor faults in 10 steady-state steps with freed memory kept"
