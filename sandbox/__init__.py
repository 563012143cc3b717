"""Isolated, pre-warmed Python workers that run untrusted program text (never imports JAX).

  from sandbox import SandboxPool
  with SandboxPool(num_workers=2, timeout_s=5.0, memory_mb=1024, max_output_chars=1024) as pool:
    results = pool.run(["print(1+1)", "x = 1/0"])   # list[SandboxResult], input order

Public names load lazily, so the jailed workers that import `sandbox._worker` never load the host-side pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SandboxPool", "SandboxResult"]

if TYPE_CHECKING:
  from sandbox.pool import SandboxPool
  from sandbox.result import SandboxResult


def __getattr__(name: str) -> Any:
  if name == "SandboxPool":
    from sandbox.pool import SandboxPool  # pylint: disable=import-outside-toplevel
    return SandboxPool
  if name == "SandboxResult":
    from sandbox.result import SandboxResult  # pylint: disable=import-outside-toplevel
    return SandboxResult
  raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
