"""Shared test settings: one torch thread (tests run beside other jobs on 2 cores), and the
``needs_cc`` marker for tests that build code with a C compiler (skipped, with the reason,
where there is none)."""

from __future__ import annotations

import shutil

import pytest
import torch

torch.set_num_threads(1)

HAS_CC = any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CC:
        return
    skip = pytest.mark.skip(
        reason="no C compiler (cc, gcc or clang) on PATH: LinBreg's C kernel and "
        "torch.compile on the CPU cannot be built here"
    )
    for item in items:
        if "needs_cc" in item.keywords:
            item.add_marker(skip)
