"""Per-layer diagnostics (docs/algorithm.md §5.9): norm/ρ, dual norm, Newton–Schulz error."""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import lmo_optax as L

EXACT_NORMS = (
    L.Rule("spectral", L.Spectral(method="svd"), 3.0),
    L.Rule("stack", L.Spectral(method="svd"), 2.0),
    L.Rule("col", L.ColNorm(), 1.5),
    L.Rule("row", L.RowNorm(), 0.5),
    L.Rule("sign", L.Sign(), 10.0),
    L.Rule("gain", L.RMS(init_value="ones"), 2.0),
)
SHAPES = {
    "spectral": (24, 40),
    "stack": (3, 16, 8),
    "col": (20, 12),
    "row": (12, 20),
    "sign": (16, 8),
    "gain": (8,),
}
# Jitted once per rules, flags and shapes: compiling is cheaper than running op by op.
diagnostics = jax.jit(L.diagnostics, static_argnames=("rules", "exact", "ns_steps"))
PE5_BAND = (0.8402, 1.1236)  # Polar Express, 5 steps (§5.4)
PE5_ERROR = max(1 - PE5_BAND[0] ** 2, PE5_BAND[1] ** 2 - 1)  # ‖OOᵀ − I‖_F/√m ≤ this


def _params(rules, key=0):
    shapes = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    return L.init_on_ball(jax.random.key(key), shapes, rules)


def _grads(params, key):
    keys = jax.random.split(jax.random.key(key), len(params))
    return {k: jax.random.normal(kk, x.shape) for (k, x), kk in zip(params.items(), keys)}


def _with_default_ns(rules):
    """The same rules with Newton–Schulz (default table) for the Spectral ones."""
    return tuple(
        L.Rule(r.pattern, L.Spectral(), r.radius) if isinstance(r.norm, L.Spectral) else r
        for r in rules
    )


@pytest.mark.parametrize("exact", [False, True])
def test_norm_over_radius_is_one_on_the_sphere(exact):
    params = _params(EXACT_NORMS)
    result = diagnostics(params, EXACT_NORMS, exact=exact)
    assert set(result) == set(SHAPES)
    for path, values in result.items():
        assert set(values) == {"norm_over_radius"}
        assert float(values["norm_over_radius"]) == pytest.approx(1.0, abs=2e-6), path
    # radius_scale multiplies every radius.
    halved = diagnostics(params, EXACT_NORMS, radius_scale=2.0, exact=exact)
    assert float(halved["col"]["norm_over_radius"]) == pytest.approx(0.5, abs=1e-6)


def test_scg_stays_in_the_ball_up_to_the_band():
    rules = _with_default_ns(EXACT_NORMS)
    params = _params(rules)
    tx = L.scion(0.5, rules)
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for k in range(5):
        updates, state = step(params, state, _grads(params, k + 1))
        params = optax.apply_updates(params, updates)
    for exact in (False, True):
        result = diagnostics(params, rules, exact=exact)
        for path, values in result.items():
            ratio = float(values["norm_over_radius"])
            assert 0.3 < ratio <= PE5_BAND[1] + 0.01, (path, ratio)
        for path in ("col", "row", "sign", "gain"):  # exact LMOs: inside the ball
            assert float(result[path]["norm_over_radius"]) <= 1 + 1e-6
    # The power method (the default) is a lower bound on the exact σ_max, here within 1%.
    cheap, exact = diagnostics(params, rules), diagnostics(params, rules, exact=True)
    for path in ("spectral", "stack"):
        a, b = float(cheap[path]["norm_over_radius"]), float(exact[path]["norm_over_radius"])
        assert 0.99 * b <= a <= b * (1 + 1e-5), path


def _stepped(rules, tx=None, steps=2):
    """Parameters and optimizer state after ``steps`` Scion steps from the ball."""
    if tx is None:
        return _scion_stepped(rules, steps)
    return _run(rules, tx, steps)


@functools.cache  # shared by the tests: each run compiles a step
def _scion_stepped(rules, steps):
    return _run(rules, L.scion(0.1, rules, gradient_weight=0.5), steps)


def _run(rules, tx, steps):
    params = _params(rules)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(steps):
        updates, state = update(_grads(params, k + 1), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_dual_norm_is_the_norms_dual_norm_of_the_state_average():
    rules = _with_default_ns(EXACT_NORMS)
    params, state = _stepped(rules)
    average = L.average_from_state(state)
    assert float(jnp.abs(average["col"]).sum()) > 0
    cheap = diagnostics(params, rules, average)
    exact = diagnostics(params, rules, average, exact=True)
    assignments = L.assign(params, rules)
    for path, a in assignments.items():
        want = float(a.norm.dual_norm(average[path]))
        assert float(exact[path]["dual_norm"]) == pytest.approx(want, rel=1e-5), path
        if path in ("spectral", "stack"):  # −⟨d, lmo(d)⟩ with the Newton–Schulz factor
            ratio = float(cheap[path]["dual_norm"]) / want
            assert PE5_BAND[0] - 0.01 <= ratio <= PE5_BAND[1] + 0.01, (path, ratio)
        else:
            assert float(cheap[path]["dual_norm"]) == pytest.approx(want, rel=1e-5), path


def test_ns_error_is_zero_for_the_exact_polar_factor_and_in_the_band_otherwise():
    params, state = _stepped(EXACT_NORMS)
    svd = diagnostics(params, EXACT_NORMS, L.average_from_state(state))
    rules = _with_default_ns(EXACT_NORMS)
    params, state = _stepped(rules)
    ns = diagnostics(params, rules, L.average_from_state(state))
    for path in ("spectral", "stack"):
        assert float(svd[path]["ns_error"]) < 1e-5, path
        assert 0.02 < float(ns[path]["ns_error"]) <= PE5_ERROR + 0.01, path
    assert all("ns_error" not in ns[p] for p in ("col", "row", "sign", "gain"))
    # More steps, smaller error (6 steps: band [0.9935, 1.0012]); the optimizer's settings
    # are the ones the diagnostics use.
    six = diagnostics(params, rules, L.average_from_state(state), ns_steps=6)
    assert float(six["spectral"]["ns_error"]) < 0.015


def test_ns_error_of_a_zero_matrix_in_a_stack_is_zero():
    rules = (L.Rule("*", L.Spectral(), 1.0),)
    d = jax.random.normal(jax.random.key(0), (3, 16, 8))
    tree = {"full": d, "holed": d.at[1].set(0), "zero": 0 * d}
    result = diagnostics(tree, rules, tree)
    assert 0 < float(result["full"]["ns_error"]) <= PE5_ERROR
    assert float(result["holed"]["ns_error"]) <= float(result["full"]["ns_error"])
    assert float(result["holed"]["ns_error"]) > 0
    assert all(float(v) == 0 for v in result["zero"].values())


def test_jitted_without_recompiling(compiles):
    rules = _with_default_ns(EXACT_NORMS)
    params, state = _stepped(rules)
    f = jax.jit(L.diagnostics, static_argnames="rules")
    first = f(params, rules, L.average_from_state(state), radius_scale=1.0)
    other = jax.tree.map(lambda x: 0.5 * x, (params, L.average_from_state(state)))
    with compiles() as counter:
        second = f(*other[:1], rules, other[1], radius_scale=2.0)
        jax.block_until_ready(second)
    assert counter.count == 0
    for path in first:  # the same function of other values
        assert first[path].keys() == second[path].keys()
        assert float(first[path]["norm_over_radius"]) != float(second[path]["norm_over_radius"])


def test_inject_hyperparams_state():
    rules = _with_default_ns(EXACT_NORMS)
    tx = optax.inject_hyperparams(L.scion, static_args=("rules",))(
        learning_rate=0.1, rules=rules, gradient_weight=0.5
    )
    params, state = _stepped(rules, tx)
    plain_params, plain_state = _stepped(rules)
    got = diagnostics(params, rules, L.average_from_state(state))
    want = diagnostics(plain_params, rules, L.average_from_state(plain_state))
    for path in want:
        for key in want[path]:
            assert float(got[path][key]) == pytest.approx(float(want[path][key]), rel=1e-4)
    # Also wrapped further, e.g. in a chain.
    chained = (optax.EmptyState(), state)
    assert L.average_from_state(chained) is L.average_from_state(state)


def test_errors_name_the_path():
    rules = (L.Rule("*kernel", L.Spectral(), 1.0),)
    params = {"layer": {"kernel": jnp.ones((4, 3))}}
    with pytest.raises(ValueError, match="layer/kernel"):
        L.diagnostics(params, rules, {"layer": {"kernel": jnp.ones((3, 4))}})
    with pytest.raises(ValueError, match="layer/kernel"):
        L.diagnostics(params, rules, {"layer": {"kernel": jnp.ones((4, 3), jnp.int32)}})
    with pytest.raises(ValueError, match="no rule matched.*layer/bias"):
        L.diagnostics({"layer": {"bias": jnp.ones(3)}}, rules)
    with pytest.raises(ValueError, match="layer/step"):
        L.diagnostics({"layer": {"step": jnp.ones((), jnp.int32)}}, rules)
    with pytest.raises(ValueError, match="radius_scale"):
        L.diagnostics(params, rules, radius_scale=0.0)
    with pytest.raises(ValueError, match="gradient_weight=1"):
        L.average_from_state(L.scion(0.1, rules, gradient_weight=1.0).init(params))


def test_table():
    rules = _with_default_ns(EXACT_NORMS)
    params, state = _stepped(rules)
    text = L.diagnostics_table(diagnostics(params, rules, L.average_from_state(state)))
    lines = text.splitlines()
    assert lines[0].split() == ["path", "norm/ρ", "dual", "norm", "NS", "error"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == set(SHAPES)
    assert rows["col"][2] == "-" and rows["spectral"][2] != "-"
    assert L.diagnostics_table(diagnostics(params, rules))  # without d: dashes


def test_recorder_appends_lines_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from lmo_optax.example.diagnostics_log import DiagnosticsLog

    rules = _with_default_ns(EXACT_NORMS)
    params, state = _stepped(rules)
    log = DiagnosticsLog(tmp_path, rules)
    first = log.record(1, params, state)
    log.record(2, params, state)
    log.record(2, params, state)  # a resumed run repeats a step: the last line counts
    rows = log.read()
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["params"] == first
    assert first["spectral"]["ns_error"] > 0 and "ns_error" not in first["col"]
    png = log.plot(title="test")
    assert png == tmp_path / "diagnostics.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_recorder_without_an_average_gives_norms_only(tmp_path):
    from lmo_optax.example.diagnostics_log import DiagnosticsLog

    rules = _with_default_ns(EXACT_NORMS)
    params = _params(rules)
    tx = L.scion(0.1, rules, gradient_weight=1.0)  # keeps no average
    values = DiagnosticsLog(tmp_path, rules).record(1, params, tx.init(params))
    assert all(set(v) == {"norm_over_radius"} for v in values.values())


def test_training_records_diagnostics_only_when_asked(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import dataclasses
    import json

    from lmo_optax.example.config import load_config
    from lmo_optax.example.model import GPTConfig
    from lmo_optax.example.train import train

    cfg = dataclasses.replace(
        load_config("tiny"),
        model=GPTConfig(context=16, width=16, depth=1, heads=2),
        batch_size=2,
        steps=4,
        eval_every=4,
        eval_batches=1,
        sample_bytes=0,
    )
    off = train(cfg, "scion", tmp_path / "off")
    assert off.diagnostics_time_s == 0 and not (tmp_path / "off" / "diagnostics.jsonl").exists()
    on = train(dataclasses.replace(cfg, diagnostics_every=2), "scion", tmp_path / "on")
    lines = (tmp_path / "on" / "diagnostics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    assert (tmp_path / "on" / "diagnostics.png").exists()
    assert 0 < on.diagnostics_time_s < on.wall_time_s
    assert json.loads((tmp_path / "on" / "result.json").read_text())["diagnostics_time_s"] > 0
    assert "diagnostics: 2 calls" in capsys.readouterr().out


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_sharded_parameters_give_the_single_device_values(axis_type):
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    rules = (
        L.Rule("w", L.Spectral(), 3.0),
        L.Rule("s", L.Spectral(), 2.0),
        L.Rule("c", L.ColNorm(), 1.0),
        L.Rule("b", L.RMS(), 1.0),
    )
    specs = {"w": P("x", None), "s": P(None, "x", None), "c": P("x", None), "b": P("x")}
    shapes = {"w": (16, 24), "s": (2, 16, 8), "c": (16, 8), "b": (16,)}
    keys = dict(zip(shapes, jax.random.split(jax.random.key(3), len(shapes))))
    params = {k: jax.random.normal(keys[k], s) for k, s in shapes.items()}
    average = {k: 0.1 * jnp.cos(x) + x for k, x in params.items()}
    want = diagnostics(params, rules, average)
    mesh = jax.make_mesh((8,), ("x",), axis_types=(getattr(AxisType, axis_type),))
    with jax.set_mesh(mesh):
        put = lambda t: {k: jax.device_put(x, NamedSharding(mesh, specs[k])) for k, x in t.items()}
        got = diagnostics(put(params), rules, put(average))
    for path in want:
        for key in want[path]:
            assert float(got[path][key]) == pytest.approx(float(want[path][key]), rel=1e-4)
