"""Parameter paths: the "/"-joined key path by which rules and layouts name a parameter.

>>> import jax.numpy as jnp
>>> [path for path, _ in flatten_with_paths({"mlp": {"fc": {"kernel": jnp.ones(2)}}})[0]]
['mlp/fc/kernel']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


def path_to_str(path: Sequence[Any]) -> str:
    """ "/"-joined key path, without the trailing ``value`` attribute of NNX variables.

    ``flax.nnx.Optimizer`` initializes the optimizer with ``nnx.Variable`` leaves (paths ending
    in ``.value``) and updates it with their plain arrays; both name a parameter alike.
    """
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return jax.tree_util.keystr(tuple(keys), simple=True, separator="/")


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], jax.tree_util.PyTreeDef]:
    """The leaves of ``tree`` with their paths (:func:`path_to_str`), and its treedef."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_to_str(p), x) for p, x in leaves], treedef
