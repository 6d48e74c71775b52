"""hf_mae.allocator: freed activations stay in the process (no page faults to get them back)."""

import os
import subprocess
import sys

import pytest

from hf_mae.training.allocator import keep_freed_memory

CHILD = """
import resource, statistics, torch
from hf_mae.training.allocator import keep_freed_memory
applied = keep_freed_memory()
for _ in range(3):
    x = torch.ones(16 * 2**20)  # 64 MB, freed and allocated again, like a step's activations
del x
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, int(statistics.median(faults)))  # the median: the host may reclaim an idle page now and then
"""


def page_faults(**env) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "HF_MAE_"))}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**environment, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults = page_faults()
    off, faults_off = page_faults(HF_MAE_KEEP_FREED_MEMORY="0")
    assert (applied, off) == ("True", "False")
    assert faults_off >= 16_000  # per allocation: 64 MB handed back and faulted in again, 4 KiB pages
    assert faults < 1_000  # measured 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings exist on Linux only")
def test_user_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # a setting that does not conflict: ours still apply
    assert keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert keep_freed_memory() is False
