"""The package uses only public APIs of its dependencies; the library imports only jax, optax
and numpy, and changes nothing in them (or in flax) when it is imported; the compilation
counter the other tests rely on works."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lmo_optax"
LIBRARY_FILES = sorted(PACKAGE.glob("*.py"))  # the library, not the training example
ALL_FILES = sorted(PACKAGE.rglob("*.py"))  # the library and the training example
THIRD_PARTY = ("jax", "jaxlib", "optax", "numpy", "flax", "orbax")


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _private_names(path: pathlib.Path) -> list[str]:
    """Private modules imported and private attributes of jax/optax/numpy used in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound, found = set(), []

    def is_private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in THIRD_PARTY:
                    bound.add(alias.asname or alias.name.split(".")[0])
                    found += [alias.name] if any(map(is_private, alias.name.split("."))) else []
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in THIRD_PARTY:
                names = node.module.split(".") + [a.name for a in node.names]
                found += [f"from {node.module} import ..."] if any(map(is_private, names)) else []
                bound.update(a.asname or a.name for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return [f"{path.name}: {f}" for f in found]


def test_package_uses_no_private_names_of_its_dependencies():
    assert len(ALL_FILES) > len(LIBRARY_FILES) > 5
    assert [f for p in ALL_FILES for f in _private_names(p)] == []


def test_the_private_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import jax\nfrom jax._src import core\nfrom jax.interpreters import mlir\n"
        "mlir._uncacheable_primitives.add(1)\njax.numpy._x\n"
    )
    assert len(_private_names(bad)) == 3


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_library_imports_only_jax_optax_and_numpy():
    imported = set().union(*map(_imported_packages, LIBRARY_FILES))
    outside = imported - set(sys.stdlib_module_names) - {"lmo_optax", "__future__"}
    assert outside <= {"jax", "optax", "numpy"}, outside
    # flax is the training example's dependency, never the library's.
    out = _run(
        "import sys, lmo_optax; print(sorted({'flax', 'chex', 'matplotlib'} & set(sys.modules)))"
    )
    assert out.strip() == "[]", out


def test_importing_lmo_optax_changes_nothing_in_jax_optax_or_flax():
    # Every module of jax, optax and flax (private ones included): the same attributes, and
    # every module-level set, dict or list of the same size and keys; jax's config unchanged;
    # no new module of theirs imported.
    out = _run(
        """
        import sys
        import flax, flax.nnx, jax, jax.numpy, numpy, optax

        OWNERS = ("jax", "jaxlib", "optax", "flax")

        def snapshot():
            modules = {n: m for n, m in list(sys.modules.items())
                       if n.split(".")[0] in OWNERS and m is not None}
            state = {}
            for name, module in modules.items():
                for attr, value in list(vars(module).items()):
                    entry = id(value)
                    if isinstance(value, (set, frozenset, dict, list)):
                        keys = value.keys() if isinstance(value, dict) else value
                        try:
                            entry = (id(value), len(value), frozenset(map(id, keys)))
                        except TypeError:
                            entry = (id(value), len(value))
                    state[name, attr] = entry
            config = dict(jax.config.values)
            return set(modules), state, config

        modules, state, config = snapshot()
        import lmo_optax
        modules2, state2, config2 = snapshot()
        changed = sorted(f"{m}.{a}" for (m, a), v in state.items() if state2.get((m, a)) != v)
        added = sorted(f"{m}.{a}" for (m, a) in set(state2) - set(state) if m in modules)
        print(sorted(modules2 - modules), changed, added, config2 == config)
        """
    )
    assert out.strip() == "[] [] [] True", out


def test_compile_counter_counts_recompilations(compiles):
    f = jax.jit(lambda x: x * 2)
    three, four = jnp.ones(3), jnp.ones(4)
    f(three)
    with compiles() as counter:
        f(three)
    assert counter.count == 0
    with compiles() as counter:
        f(four)  # a new shape: one compilation
    assert counter.count == 1
