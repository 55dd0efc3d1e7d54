"""``lmo-optax compile`` and the Newton–Schulz strategies, compiled by the real TPU compiler
for a TPU slice that is not there (``jax.experimental.topologies``).

Needs libtpu (``pip install "lmo-optax[tpu-aot]"``); without it these tests are skipped, except
the one that checks the error a user without it gets.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lmo_optax
from lmo_optax.example.errors import ConfigError

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason='needs libtpu: pip install "lmo-optax[tpu-aot]"'
)
TIMEOUT_S = 900
SMALL = ["model.width=32", "model.depth=1", "batch_size=8"]


def lmo_optax_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmo_optax.example.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.skipif(HAVE_LIBTPU, reason="libtpu is installed")
def test_without_libtpu_compile_says_how_to_install_it(tmp_path):
    done = lmo_optax_cli("compile", "--topology", "v5e:2x4", "--mesh", "data=8", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lmo-optax: error: compile needs the TPU compiler (libtpu), which is not installed: "
        'pip install "lmo-optax[tpu-aot]"'
    )


@needs_libtpu
def test_the_tiny_train_step_compiles_for_a_v5e_slice(tmp_path):
    done = lmo_optax_cli(
        "compile", "--topology", "v5e:2x4", "--mesh", "data=4,model=2",
        "--optimizer", "scion,adamw", *SMALL, "--json", "step.json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    scion, adamw = json.loads((tmp_path / "step.json").read_text())
    for r in (scion, adamw):
        assert r["topology"] == "v5e:2x4" and r["devices"] == 8 and r["chips"] == 8
        assert r["hbm_bytes_per_device"] == 16 * 2**30 and r["fits"] is True
        assert 0 < r["optimizer_flops"] < r["per_device_flops"]
        b = r["per_device_bytes"]
        assert (
            b["total"]
            == b["arguments"] + b["outputs"] + b["temporaries"] + b["code"] - b["aliased"]
        )
        assert b["aliased"] > 0  # parameters and optimizer state are donated
        assert "all-reduce" in r["collectives"]  # the data-parallel gradient sum
    # Newton–Schulz's matrix products: Scion's update costs more than AdamW's elementwise one.
    assert scion["optimizer_flops"] > 10 * adamw["optimizer_flops"]
    # Scion keeps one buffer per parameter where AdamW keeps two, each laid out as its
    # parameter: AdamW's arguments exceed Scion's by one parameter-sized buffer, half of
    # Scion's (parameters and average; the batch is small), not by a replicated one.
    scion_args = scion["per_device_bytes"]["arguments"]
    extra = adamw["per_device_bytes"]["arguments"] - scion_args
    assert abs(extra - scion_args / 2) < 0.1 * scion_args, (extra, scion_args)
    assert "fits" in done.stdout and "collectives" in done.stdout


def test_an_abstract_optimizer_state_is_laid_out_as_its_parameters():
    import optax

    from lmo_optax.example import aot, parallel

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    shapes = {
        "embed": {"embedding": jax.ShapeDtypeStruct((256, 64), np.float32)},
        "blocks": {"fc": {"kernel": jax.ShapeDtypeStruct((64, 128), np.float32)}},
        "norm": {"scale": jax.ShapeDtypeStruct((64,), np.float32)},
    }
    shardings = parallel.param_shardings(shapes, mesh)
    params = aot._abstract(shapes, shardings)
    for tx in (optax.adamw(1e-3), lmo_optax.scion(0.1, "gpt", ns_mesh=mesh)):
        state = jax.eval_shape(lambda tx=tx: tx.init(params))
        laid_out = aot.state_shardings_like(state, shardings, shapes, mesh)
        found = {}
        for path, sharding in jax.tree_util.tree_flatten_with_path(laid_out)[0]:
            name = lmo_optax.rules.path_to_str(path)
            found[name] = sharding
            if "fc/kernel" in name:
                assert sharding == shardings["blocks"]["fc"]["kernel"], name
            elif "embed/embedding" in name:
                assert sharding == shardings["embed"]["embedding"], name
            else:
                assert sharding.spec == P(), name
        assert any("fc/kernel" in name for name in found)


@needs_libtpu
@pytest.mark.parametrize(
    "topology, mesh, message",
    [
        ("v5e:3x3", "data=8", "the TPU compiler does not know it"),
        ("v9:2x2", "data=4", "not a TPU topology"),
        ("v5e:2x4", "data=4", "--mesh 'data=4' has 4 devices but the slice has 8"),
    ],
)
def test_bad_slices_and_meshes_are_one_line_errors(tmp_path, topology, mesh, message):
    done = lmo_optax_cli("compile", "--topology", topology, "--mesh", mesh, *SMALL, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]


def test_device_counts_and_hbm_per_device():
    from lmo_optax.example import aot

    class Core:
        def __init__(self, coords):
            self.coords = coords

    two_cores = [Core((x, 0, 0)) for x in range(4) for _ in range(2)]  # v4 described without a TPU
    assert aot.chips(two_cores) == 4
    assert aot.hbm_per_device("v4:2x2x1", two_cores) == 16 * 2**30
    assert aot.hbm_per_device("v5p:2x2x1", [Core((i, 0, 0)) for i in range(4)]) == 95 * 2**30
    with pytest.raises(ConfigError, match="has 4 devices but the slice has 8"):
        aot.mesh_on(two_cores, "data=4")


def update_flops(devices: list, strategy: str, count: int = 8) -> float:
    """Per-device FLOPs of Scion's update of ``count`` (256, 256) hidden matrices, FSDP over
    the devices."""
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data", None))
    params = {
        f"blocks/{i}/kernel": jax.ShapeDtypeStruct((256, 256), np.float32, sharding=sharding)
        for i in range(count)
    }
    tx = lmo_optax.scion(0.1, "auto", ns_sharding=strategy, ns_mesh=mesh)
    state = jax.eval_shape(lambda: tx.init(params))
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
    cost = jax.jit(tx.update).lower(params, state, params).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@needs_libtpu
def test_distributing_newton_schulz_divides_its_flops_over_the_slice():
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x4").devices
    flops = {s: update_flops(devices, s) for s in ("replicate", "distribute", "sharded", "auto")}
    print({s: f"{f / 1e6:.1f} MFLOP" for s, f in flops.items()})
    assert flops["distribute"] <= 1.15 * flops["replicate"] / 8  # 8 matrices, 8 devices
    assert flops["sharded"] <= 0.5 * flops["replicate"]
    assert flops["auto"] <= 1.05 * min(flops["distribute"], flops["sharded"])


@needs_libtpu
@pytest.mark.parametrize("count", [12, 3])
def test_distribute_leaves_no_chip_idle_when_the_matrices_do_not_divide(count):
    # 12 matrices on 8 chips: whole matrices would cost 2 per chip against 1.5; 3 matrices
    # would cost 1 against 3/8. Device groups (pairs, then all 8) bring both to the ideal.
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x4").devices
    replicate = update_flops(devices, "replicate", count)
    distribute = update_flops(devices, "distribute", count)
    print(f"{count} matrices: distribute {distribute / (replicate / 8):.3f} x ideal")
    assert distribute <= 1.15 * replicate / 8


@needs_libtpu
@pytest.mark.parametrize(
    "count, shape", [(3, (4096, 16384)), (32, (2048, 8192))], ids=["device-groups", "whole"]
)
def test_distribute_in_chunks_needs_less_memory_per_chip_for_the_same_flops(
    count, shape, monkeypatch
):
    # 3 matrices of 4096×16384 on 8 chips go to one group of all 8 (each chip multiplies its
    # block of X by whole 4096×4096 Gram-side matrices); 32 of 2048×8192 are dealt whole, 4
    # per chip. One round per chunk (one matrix per group at a time) against all at once.
    # (Small programs keep their temporaries out of HBM: the sizes make them count.)
    from jax.experimental import topologies

    from lmo_optax import strategies

    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x4").devices
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data", None))
    grads = [jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)] * count
    norms = [lmo_optax.Spectral()] * count

    def update(chunk_bytes: int):
        monkeypatch.setattr(strategies, "DISTRIBUTE_CHUNK_BYTES", chunk_bytes)

        def lmos(gs):
            return strategies.spectral_lmos(norms, gs, strategy="distribute", mesh=mesh)

        compiled = jax.jit(lmos).lower(grads).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return compiled.memory_analysis().temp_size_in_bytes, cost["flops"]

    (at_once, flops_at_once), (chunked, flops) = update(1 << 40), update(1)
    print(f"{count} matrices: temporaries {at_once / 2**20:.0f} -> {chunked / 2**20:.0f} MiB")
    assert chunked < 0.5 * at_once  # measured: 306 -> 23 MiB (groups), 520 -> 137 MiB
    assert flops == pytest.approx(flops_at_once, rel=0.02)


@needs_libtpu
def test_each_chip_computes_the_activations_of_its_own_sequences_only(monkeypatch):
    """On a data=8 mesh with one sequence per chip, no buffer of the compiled step holds the
    activations of the whole batch: the residual stream is constrained to batch over ``data``
    after the embedding lookup. Without the constraint the lookup's output takes the layout of
    the table (vocabulary over ``data``), and every chip computes all eight sequences (seen
    with GPT-2's vocabulary, scanned rematerialized blocks and bfloat16 compute)."""
    import dataclasses
    import re

    from lmo_optax.example import aot, configs
    from lmo_optax.example.config import load_config
    from lmo_optax.example.model import GPTConfig

    base = load_config(str(configs.path_of("tiny")))
    model = GPTConfig(
        vocab_size=50304, context=256, width=512, depth=4, heads=4,
        scan_layers=True, remat=True, compute_dtype="bfloat16",
    )  # fmt: skip
    cfg = dataclasses.replace(base, model=model, batch_size=8, mesh="")
    texts = []
    compile_lowered = jax.stages.Lowered.compile

    def compile_and_keep_text(self, *args, **kwargs):
        compiled = compile_lowered(self, *args, **kwargs)
        texts.append(compiled.as_text())
        return compiled

    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_and_keep_text)
    mesh = aot.mesh_on(aot.topology_devices("v5e:2x4"), "data=8")
    aot.compile_step(cfg, "adamw", mesh, update_alone=False)
    (text,) = texts
    whole_batch = set(re.findall(r"\[8,256,[0-9,]*\]", text))
    one_sequence = set(re.findall(r"\[1,256,[0-9,]*\]", text))
    # The lookup's own output (batch, seq, width) before it is laid out; nothing after it.
    assert whole_batch <= {"[8,256,512]"}, whole_batch
    assert "[1,256,50304]" in one_sequence  # each chip's logits: one sequence
