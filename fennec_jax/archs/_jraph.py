"""jraph, imported through one shim.

jraph 0.0.6 calls ``jax.tree_map``, which current jax removed (it is ``jax.tree.map`` now).
Import jraph from here (``from fennec_jax.archs._jraph import jraph``), never directly, so the
alias is installed before jraph runs.
"""

import jax

if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map

import jraph  # noqa: E402  (must follow the alias)

__all__ = ["jraph"]
