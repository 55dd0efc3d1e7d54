"""Regenerates every benchmark and ``docs/benchmarks.md`` in one command.

    .venv/bin/python benchmarks/run_all.py              # full mode: the published numbers (hours)
    .venv/bin/python benchmarks/run_all.py --quick      # smoke test of every script (minutes)
    .venv/bin/python benchmarks/run_all.py --docs-only  # rebuild the page from the JSON

Full mode writes ``benchmarks/results/*.json``, ``docs/img/*.png`` and ``docs/benchmarks.md``.
Quick mode, or any ``--results`` folder, writes the reports, plots and page under that folder
(quick mode's default: a temporary one) and leaves the published files alone; ``.ci/run`` runs
``--quick``. The training sweeps cache their runs (``benchmarks/results/runs/``), so an
interrupted full run resumes where it stopped. A missing or malformed report stops the page
with an error naming the file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import _page


def run_script(name: str, results: Path, img: Path, quick: bool) -> float:
    """Runs ``benchmarks/<name>.py`` and returns its wall time; exits if it fails."""
    command = [sys.executable, f"benchmarks/{name}.py", "--results", str(results)]
    command += ["--quick"] if quick else []
    command += ["--img", str(img)] if name in _page.PLOTS else []
    print(f"\n=== {name}: {' '.join(map(_common.portable, command[1:]))}", flush=True)
    t0 = time.perf_counter()
    code = subprocess.call(command, cwd=_common.ROOT)
    if code != 0:
        raise SystemExit(f"run_all: benchmarks/{name}.py failed with exit code {code}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script in --quick mode")
    parser.add_argument("--docs-only", action="store_true", help="only rebuild the page")
    parser.add_argument("--results", type=Path, default=None, help="folder for JSON and page")
    parser.add_argument(
        "--only", default=None, help=f"run a subset of {','.join(_page.REPORTS)}; no page"
    )
    args = parser.parse_args(argv)
    if args.quick or args.results is not None:
        results = args.results or Path(tempfile.mkdtemp(prefix="lmo_optax_bench_"))
        img, page = results / "img", results / "benchmarks.md"
    else:
        results, img, page = _common.RESULTS, _common.IMG, _common.ROOT / "docs" / "benchmarks.md"
    chosen = args.only.split(",") if args.only else _page.REPORTS
    if unknown := set(chosen) - set(_page.REPORTS):
        parser.error(f"--only: unknown {sorted(unknown)}")
    if not args.docs_only:
        timings = {name: run_script(name, results, img, args.quick) for name in chosen}
        print("\n" + "\n".join(f"{name}: {s:.0f} s" for name, s in timings.items()))
        if args.only:
            print("page not rebuilt (--only ran a subset): rebuild it with --docs-only")
            return 0
    try:
        _page.write_page(results, img, page, args.quick)
    except _page.ReportError as e:
        print(f"run_all: cannot write {_common.portable(str(page))}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {_common.portable(str(page))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
