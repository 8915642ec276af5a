"""Suite-wide fixtures."""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module. Each XLA:CPU executable holds
    memory mappings of its own; a whole-suite run compiled enough of them to reach the
    kernel's limit on mappings per process (vm.max_map_count, 65530 here), and XLA then
    crashed (SIGSEGV) compiling the next program."""
    yield
    jax.clear_caches()
    gc.collect()
