"""One process of the optimizer update run in several JAX processes on this machine.

Run by ``tests/test_multiprocess.py`` (never imported by the tests): N processes with K CPU
devices each join one cluster through ``jax.distributed.initialize`` on 127.0.0.1, lay out the
same parameters and gradients over one (data=4, model=2) mesh that spans them, and compute one
Scion update per Newton–Schulz strategy and mesh axis type. Process 0 gathers the updates and
writes them to ``--out`` (``.npz``); run with N=1 and K=8, the same program is the reference.

    python tests/multiprocess_update.py --num-processes 2 --process-id 0 --port 12345 \\
        --devices 4 --out /tmp/updates.npz
"""

from __future__ import annotations

import argparse

SHAPES = {  # name → (shape, PartitionSpec axes)
    "kernel": ((64, 96), ("data", "model")),
    "stacked": ((3, 32, 48), (None, "data", "model")),
    "tall": ((256, 40), ("data", None)),
    "bias": ((96,), (None,)),
}
STRATEGIES = ("replicate", "distribute", "sharded")
COLLECTIVE_CHUNK = 1 << 17  # floats per device and chunk: 4 MiB per device in the collectives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
        )

    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import lmo_optax

    rng = np.random.default_rng(0)  # the same host values in every process
    host_params = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SHAPES.items()}
    host_grads = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SHAPES.items()}
    results = {}
    for axis_type in ("Explicit", "Auto"):
        kind = getattr(AxisType, axis_type)
        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))

        def put(tree, mesh=mesh):
            return {
                k: jax.make_array_from_callback(
                    v.shape, NamedSharding(mesh, P(*SHAPES[k][1])), lambda idx, v=v: v[idx]
                )
                for k, v in tree.items()
            }

        params, grads = put(host_params), put(host_grads)
        for strategy in STRATEGIES:
            with jax.set_mesh(mesh):
                tx = lmo_optax.scion(0.1, "auto", ns_sharding=strategy)
                state = tx.init(params)
                updates, _ = jax.jit(tx.update)(grads, state, params)
            gathered = multihost_utils.process_allgather(updates, tiled=True)
            for k, v in gathered.items():
                results[f"{axis_type}/{strategy}/{k}"] = np.asarray(v)
    # A large reduce-scatter and all-reduce over all devices: gloo has been reported to return
    # wrong values for large reduce-scatters, which the Newton-Schulz strategies may compile to.
    flat = jax.make_mesh((jax.device_count(),), ("all",), axis_types=(AxisType.Explicit,))
    n = jax.device_count()
    host = rng.standard_normal((n, n * COLLECTIVE_CHUNK)).astype(np.float32)
    rows = jax.make_array_from_callback(
        host.shape, NamedSharding(flat, P("all", None)), lambda idx: host[idx]
    )

    def reduce(block):
        scattered = jax.lax.psum_scatter(block[0], "all", scatter_dimension=0, tiled=True)
        return scattered[None], jax.lax.psum(block, "all")

    scattered, summed = jax.jit(
        jax.shard_map(
            reduce, mesh=flat, in_specs=P("all", None), out_specs=(P("all", None), P("all", None))
        )
    )(rows)
    expected = host.astype(np.float64).sum(0)
    for name, value, want in (
        ("reduce_scatter", scattered, expected.reshape(n, COLLECTIVE_CHUNK)),
        ("all_reduce", summed, np.broadcast_to(expected, host.shape)),
    ):
        got = np.asarray(multihost_utils.process_allgather(value, tiled=True), np.float64)
        results[f"collective/{name}/error"] = np.asarray(np.max(np.abs(got - want)))
    meta = {"processes": jax.process_count(), "devices": jax.device_count()}
    if jax.process_index() == 0:
        np.savez(args.out, **results, **{f"meta/{k}": np.asarray(v) for k, v in meta.items()})
    if args.num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
