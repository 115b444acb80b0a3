"""Mutation testing: how many plausible one-line bugs do the tests catch?

Each mutant changes one expression of one core module, the kind of slip a
person makes: a comparison turned (``<`` into ``<=``, ``==`` into ``!=``), an
arithmetic operator swapped (``+``/``-``, ``*``/``/``), an integer off by one,
``and``/``or`` swapped, a ``not`` dropped, a sign flipped, ``True``/``False``
swapped, or a check removed (``if bad: raise ...`` never raising). A line
marked ``# pragma: no mutate`` (mutmut's marker) is left alone: it is kept
for tuning knobs whose every value gives the same results, and the comment
says why.

Each mutant is run, in a scratch copy of the repository with ``pytest -x``,
against the tests that execute its line: one coverage run (pytest-cov, one
context per test) of the whole suite maps every line to its tests first. A
line no test runs (module-level code, which runs at import) falls back to the
module's own test files (``MODULE_TESTS``). A mutant is
*killed* if the tests fail or time out and *survives* if they pass. Tests
marked ``slow`` are left out.

The mutants are a deterministic random sample (``--seed``) of every possible
site, stratified by module in proportion to its number of sites. Not in CI:
it is CPU-heavy. Run from the repository root::

    python benchmarks/mutation_test.py --sample 150 --workers 2 --budget 1200

It prints each survivor (module, line, the mutated line) and the kill rate,
and writes them to ``benchmarks/_work/mutation_results.json``. Survivors
must be read: some are equivalent (the mutant behaves like the original, e.g.
a changed default that every caller overrides) and no test can kill them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "xarray_clusterh5"

#: core module -> the test files that exercise it
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "fmristore/layout.py": ("test_fmristore_read_fixtures", "test_fmristore_write"),
    "fmristore/read.py": (
        "test_fmristore_read_fixtures",
        "test_fmristore_layout_variants",
        "test_fmristore_bad_input",
        "test_fmristore_mutation_gaps",
    ),
    "fmristore/write.py": ("test_fmristore_write", "test_fmristore_validation"),
    "fmristore/arrays.py": (
        "test_fmristore_arrays_property",
        "test_fmristore_read_fixtures",
    ),
    "fmristore/views.py": (
        "test_fmristore_read_fixtures",
        "test_engine_xarray",
        "test_fmristore_views_interop",
    ),
    "fmristore/index.py": (
        "test_engine_xarray",
        "test_fmristore_views_interop",
        "test_fmristore_mutation_gaps",
    ),
    "fmristore/ops.py": (
        "test_fmristore_read_fixtures",
        "test_engine_xarray",
        "test_fmristore_views_interop",
    ),
    "fmristore/from_nifti.py": (
        "test_fmristore_from_nifti",
        "test_fmristore_validation",
        "test_fmristore_mutation_gaps",
    ),
    "fmristore/to_h5.py": ("test_fmristore_to_h5", "test_fmristore_validation"),
    "_hdf5/chunk_read.py": ("test_hdf5_chunk_read",),
    "_hdf5/chunk_write.py": ("test_hdf5_chunk_write",),
    "modelarray/h5.py": ("test_modelarray_h5",),
    "modelarray/cohort.py": ("test_modelarray_cohort",),
    "cifti/read.py": ("test_cifti_io",),
    "cifti/write.py": ("test_cifti_io",),
    "mif/header.py": ("test_mif_io",),
    "mif/read.py": ("test_mif_io",),
    "mif/write.py": ("test_mif_io",),
    "modelarray/voxels.py": ("test_modelarray_voxels",),
    "modelarray/fixels.py": ("test_modelarray_fixels",),
    "modelarray/lm.py": ("test_modelarray_lm",),
    "stats/formula.py": ("test_stats_formula",),
    "stats/ols.py": ("test_stats_ols",),
    "stats/padjust.py": ("test_stats_padjust",),
}

SWAP_CMP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
SWAP_BIN = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


@dataclass
class Mutant:
    """One mutation: the ``index``-th site of ``module``."""

    module: str
    index: int
    line: int
    end_line: int
    kind: str
    before: str = ""
    after: str = ""
    status: str = ""  # killed / survived / timeout / error
    seconds: float = 0.0


QUIET_CALLS = {"warn", "debug", "info", "print", "tqdm", "set_postfix"}


def _unmutated(tree: ast.Module) -> set[int]:
    """ids of nodes not worth mutating: annotations, f-strings, log/warn calls."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.JoinedStr):
            roots.append(node)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in QUIET_CALLS:
                roots.append(node)
    return {id(n) for root in roots for n in ast.walk(root)}


class _Sites(ast.NodeTransformer):
    """Counts mutation sites; mutates the ``target``-th one if given."""

    def __init__(
        self,
        skip: set[int],
        target: int = -1,
        quiet_lines: frozenset[int] = frozenset(),
    ) -> None:
        self.skip = skip
        self.quiet_lines = quiet_lines
        self.target = target
        self.count = 0
        self.found: list[tuple[int, int, str]] = []

    def _site(self, node: ast.AST, kind: str) -> bool:
        if id(node) in self.skip or getattr(node, "lineno", 0) in self.quiet_lines:
            return False
        hit = self.count == self.target
        line = getattr(node, "lineno", 0)
        self.found.append((line, getattr(node, "end_lineno", line) or line, kind))
        self.count += 1
        return hit

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
            op = type(node.ops[0])
            if self._site(node, f"compare {op.__name__}"):
                node.ops = [SWAP_CMP[op]()]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        op = type(node.op)
        if op in SWAP_BIN and self._site(node, f"binop {op.__name__}"):
            node.op = SWAP_BIN[op]()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        if self._site(node, f"boolop {type(node.op).__name__}"):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not | ast.USub) and self._site(
            node, f"drop {type(node.op).__name__}"
        ):
            return node.operand
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "swap bool"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int) and 0 <= value <= 16 and self._site(node, "int +1"):
            return ast.copy_location(ast.Constant(value + 1), node)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        raises = bool(node.body) and isinstance(node.body[0], ast.Raise)
        if raises and self._site(node, "remove check"):
            node.test = ast.copy_location(ast.Constant(False), node.test)
        return node


#: mutmut's marker for a line whose mutants are equivalent; the comment must say why
NO_MUTATE = "pragma: no mutate"


def _parse(path: Path) -> tuple[ast.Module, set[int], frozenset[int]]:
    text = path.read_text(encoding="utf-8")
    quiet = frozenset(
        n for n, line in enumerate(text.splitlines(), 1) if NO_MUTATE in line
    )
    tree = ast.parse(text)
    return tree, _unmutated(tree), quiet


def sites(path: Path) -> list[tuple[int, int, str]]:
    """(line, end line, kind) of every mutation site of a module, in visiting order."""
    tree, skip, quiet = _parse(path)
    finder = _Sites(skip, quiet_lines=quiet)
    finder.visit(tree)
    return finder.found


def mutated_source(path: Path, index: int) -> str:
    """The module's source with its ``index``-th site mutated."""
    tree, skip, quiet = _parse(path)
    _Sites(skip, index, quiet).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


def sample(n: int, seed: int) -> list[Mutant]:
    """``n`` mutants over MODULE_TESTS' modules, proportional to their sites."""
    per_module = {m: sites(ROOT / PACKAGE / m) for m in MODULE_TESTS}
    total = sum(len(s) for s in per_module.values())
    rng = random.Random(seed)
    chosen: list[Mutant] = []
    for module, found in per_module.items():
        k = max(1, round(n * len(found) / total))
        for i in sorted(rng.sample(range(len(found)), min(k, len(found)))):
            chosen.append(Mutant(module, i, *found[i]))
    rng.shuffle(chosen)  # a time budget then cuts a sample of every module
    return chosen


def at_lines(places: list[str]) -> list[Mutant]:
    """Every mutant whose site starts on one of ``module:line``."""
    out = []
    for place in places:
        module, line = place.rsplit(":", 1)
        found = sites(ROOT / PACKAGE / module)
        out += [Mutant(module, i, *s) for i, s in enumerate(found) if s[0] == int(line)]
    return out


def _scratch_copies(n: int) -> Iterator[Path]:
    for _ in range(n):
        d = Path(tempfile.mkdtemp(prefix="clusterh5_mut_"))
        # the whole checkout: some tests read the README, notebooks and docs
        skip = shutil.ignore_patterns(
            ".git", "_work", "_build", "__pycache__", "*.egg-info", ".*_cache"
        )
        shutil.copytree(ROOT, d, ignore=skip, dirs_exist_ok=True)
        yield d


def _pytest(copy: Path, args: list[str], timeout: float) -> int | None:
    """Exit status of pytest run in ``copy`` (None on timeout)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    # slow tests (distributed clusters, large files) would triple the run time
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", "not slow", *args]
    try:
        return subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, timeout=timeout
        ).returncode
    except subprocess.TimeoutExpired:
        return None


def _test_files(modules: Iterable[str]) -> list[str]:
    return sorted({f"tests/{t}.py" for m in modules for t in MODULE_TESTS[m]})


def _all_test_files() -> list[str]:
    return sorted(f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py"))


COVERAGE_CACHE = ROOT / "benchmarks" / "_work" / "mutation_coverage.json"


def coverage_map(
    copy: Path, modules: list[str], reuse: bool = False
) -> dict[str, dict[int, set[str]]]:
    """module -> line -> ids of the tests that run it (one pytest-cov run).

    Saved to COVERAGE_CACHE; ``reuse`` reads it back instead (same code only).
    """
    from coverage import CoverageData

    if reuse and COVERAGE_CACHE.exists():
        saved = json.loads(COVERAGE_CACHE.read_text())
        return {
            m: {int(n): set(ids) for n, ids in saved[m].items()}
            for m in modules
            if m in saved
        }

    args = [f"--cov={PACKAGE}", "--cov-context=test", "--cov-report="]
    # the whole suite: a mutant counts as caught by any test that runs its line
    if _pytest(copy, [*args, *_all_test_files()], 3600) != 0:
        # once more without coverage, to show what fails
        env = dict(os.environ, PYTHONPATH=str(copy))
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
        done = subprocess.run(
            [*cmd, "-m", "not slow", *_all_test_files()],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        print(done.stdout[-4000:])
        raise SystemExit("the unmutated tests fail: fix them first")
    data = CoverageData(basename=str(copy / ".coverage"))
    data.read()
    lines: dict[str, dict[int, set[str]]] = {}
    for module in modules:
        path = str((copy / PACKAGE / module).resolve())
        by_line = data.contexts_by_lineno(path)
        lines[module] = {
            n: {c.rsplit("|", 1)[0] for c in ctx if c} for n, ctx in by_line.items()
        }
    COVERAGE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    COVERAGE_CACHE.write_text(
        json.dumps({m: {n: sorted(i) for n, i in d.items()} for m, d in lines.items()})
    )
    return lines


def tests_of(m: Mutant, cover: dict[str, dict[int, set[str]]]) -> list[str]:
    """The tests that run the mutant's lines, else (lines run at import, such
    as a class's decorator, which no single test owns) its module's test files
    and the package-wide rules of ``tests/test_package_*.py``."""
    by_line = cover.get(m.module, {})
    ids = set().union(*(by_line.get(n, set()) for n in range(m.line, m.end_line + 1)))
    return sorted(ids) or _test_files([m.module]) + _package_test_files()


def _package_test_files() -> list[str]:
    return sorted(f"tests/{p.name}" for p in (ROOT / "tests").glob("test_package_*.py"))


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """Run ``tests`` in ``copy``: 'killed', 'survived' or 'timeout'."""
    start = time.perf_counter()
    code = _pytest(copy, ["-x", *tests], timeout)
    seconds = time.perf_counter() - start
    if code is None:
        return "timeout", seconds
    # any failure counts, also a collection error or crash the mutant caused
    return ("survived" if code == 0 else "killed"), seconds


def run_mutant(copy: Path, m: Mutant, tests: list[str], timeout: float) -> Mutant:
    """Mutate the copy's module, run its tests, restore it."""
    target = copy / PACKAGE / m.module
    original = target.read_text(encoding="utf-8")
    original_lines = ast.unparse(ast.parse(original)).splitlines()
    mutated = mutated_source(target, m.index)  # the copy: ROOT may change meanwhile
    changed = [
        (a, b)
        for a, b in zip(original_lines, mutated.splitlines(), strict=False)
        if a != b
    ]
    if changed:
        m.before, m.after = changed[0][0].strip(), changed[0][1].strip()
    try:
        target.write_text(mutated, encoding="utf-8")
        m.status, m.seconds = run_tests(copy, tests, timeout)
    finally:
        target.write_text(original, encoding="utf-8")
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=150, help="number of mutants")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--workers", type=int, default=2, help="mutants run at once")
    ap.add_argument(
        "--timeout", type=float, default=300, help="seconds per mutant (then killed)"
    )
    ap.add_argument(
        "--budget", type=float, default=1200, help="stop starting mutants after this"
    )
    ap.add_argument("--only", nargs="*", help="restrict to these modules")
    ap.add_argument(
        "--rerun",
        type=Path,
        help="run again the survivors listed in this results JSON (after new tests)",
    )
    ap.add_argument(
        "--at",
        nargs="*",
        metavar="MODULE:LINE",
        help="instead of a sample: every mutant on these lines (fmristore/read.py:432)",
    )
    ap.add_argument(
        "--tests",
        nargs="*",
        help="run these test files for every mutant instead of a coverage map",
    )
    ap.add_argument(
        "--reuse-coverage",
        action="store_true",
        help="reuse the saved line-to-tests map of an earlier run",
    )
    ap.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "_work" / "mutation_results.json",
        help="results JSON to write",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="only run each module's tests unmutated (they must pass) and time them",
    )
    args = ap.parse_args()
    if args.baseline:
        return baseline(args.timeout)

    mutants = sample(args.sample, args.seed)
    if args.rerun:
        old = json.loads(args.rerun.read_text())
        mutants = [
            Mutant(**{**m, "status": "", "seconds": 0.0})
            for m in old
            if m["status"] == "survived"
        ]
    if args.at:
        mutants = at_lines(args.at)
    if args.only:
        mutants = [m for m in mutants if m.module in args.only]
    modules = sorted({m.module for m in mutants})
    print(f"{len(mutants)} mutants over {len(modules)} modules")
    copies = list(_scratch_copies(args.workers))
    try:
        _run_all(mutants, modules, copies, args)
    finally:
        for c in copies:
            shutil.rmtree(c, ignore_errors=True)
    return 0


def _run_all(
    mutants: list[Mutant], modules: list[str], copies: list[Path], args: Any
) -> list[Mutant]:
    start = time.perf_counter()
    if args.tests:
        cover: dict[str, dict[int, set[str]]] = {}
    else:
        cover = coverage_map(copies[0], modules, reuse=args.reuse_coverage)
        print(
            f"coverage map of {len(_all_test_files())} test files in "
            f"{time.perf_counter() - start:.0f} s"
        )
    free = list(copies)
    start = time.perf_counter()
    results: list[Mutant] = []

    def work(m: Mutant) -> Mutant | None:
        if time.perf_counter() - start > args.budget:
            return None
        copy = free.pop()
        try:
            tests = args.tests or tests_of(m, cover)
            return run_mutant(copy, m, tests, args.timeout)
        finally:
            free.append(copy)

    with ThreadPoolExecutor(args.workers) as pool:
        for done in pool.map(work, mutants):
            if done is None:
                continue
            results.append(done)
            print("." if done.status != "survived" else "S", end="", flush=True)
    report(results, time.perf_counter() - start, args.output)
    return results


def baseline(timeout: float) -> int:
    """Each module's tests on the unmutated code: all must pass."""
    (copy,) = _scratch_copies(1)
    failed = 0
    try:
        for module in MODULE_TESTS:
            status, seconds = run_tests(copy, _test_files([module]), timeout)
            failed += status != "survived"
            print(
                f"{module:28s} {'pass' if status == 'survived' else status:8s}"
                f" {seconds:6.1f} s"
            )
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return int(failed > 0)


def report(results: list[Mutant], seconds: float, out: Path) -> None:
    """Print the kill rate and each survivor; save everything as JSON."""
    killed = [m for m in results if m.status in ("killed", "timeout")]
    survivors = [m for m in results if m.status == "survived"]
    rate = 100 * len(killed) / max(len(results), 1)
    print(
        f"\n{len(killed)}/{len(results)} killed ({rate:.1f}%) in {seconds / 60:.1f} min"
    )
    by_module: dict[str, list[int]] = {}
    for m in results:
        by_module.setdefault(m.module, [0, 0])
        by_module[m.module][0] += m.status != "survived"
        by_module[m.module][1] += 1
    for module, (k, n) in sorted(by_module.items()):
        print(f"  {module:28s} {k}/{n}")
    for m in survivors:
        print(
            f"SURVIVED {m.module}:{m.line} [{m.kind}]\n   - {m.before}\n   + {m.after}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(m) for m in results], indent=1))


if __name__ == "__main__":
    sys.exit(main())
