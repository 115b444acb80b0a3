"""Start-up cost of the ``clusterh5`` command and of a small conversion, for two
checkouts of this repository side by side (say, before and after a change).

Each measurement runs in a fresh child process with ``PYTHONPATH`` pointing at
the checkout, alternating between the checkouts so that background load hits
both alike; the median and the minimum are printed with their ratio.

Usage::

    python benchmarks/bench_startup.py                       # this checkout only
    python benchmarks/bench_startup.py --compare OTHER_CHECKOUT --subjects 50

``--subjects N`` also times ``clusterh5 to-modelarray`` on an N-subject
91k-greyordinate cohort built by ``bench_modelarray.make_cohort``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def timed(cmd: list[str], checkout: Path, cwd: Path | None = None) -> float:
    # cwd outside any checkout: "python -m" puts the cwd before PYTHONPATH
    cwd = cwd or Path(tempfile.gettempdir())
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def compare(
    label: str, cmd: list[str], checkouts: dict[str, Path], repeat: int, **kw: object
) -> None:
    times: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(repeat):
        for name, path in checkouts.items():
            times[name].append(timed(cmd, path, **kw))  # type: ignore[arg-type]
    print(f"\n{label} ({repeat} runs each, alternating)")
    first = None
    for name, ts in times.items():
        med = statistics.median(ts)
        first = first or med
        print(
            f"  {name:<8} median {med * 1000:8.1f} ms   min {min(ts) * 1000:8.1f} ms"
            f"   ratio to {next(iter(checkouts))}: {med / first:5.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", type=Path, help="another checkout to time beside")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--subjects", type=int, default=0)
    args = p.parse_args(argv)
    checkouts = {"this": REPO}
    if args.compare:
        checkouts["other"] = args.compare.resolve()
    exe = [sys.executable, "-m", "xarray_clusterh5"]
    compare("clusterh5 --version", [*exe, "--version"], checkouts, args.repeat)
    compare(
        "import xarray_clusterh5.backend (engine discovery)",
        [sys.executable, "-c", "import xarray_clusterh5.backend"],
        checkouts,
        args.repeat,
    )
    if args.subjects:
        sys.path.insert(0, str(HERE))
        from bench_modelarray import make_cohort

        folder = make_cohort(args.subjects)
        out = folder / "startup.h5"
        cmd = [*exe, "to-modelarray", "--cohort-file", "cohort.csv"]
        compare(
            f"clusterh5 to-modelarray, {args.subjects} subjects",
            [*cmd, "--output", str(out)],
            checkouts,
            max(3, args.repeat // 5),
            cwd=folder,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
