"""`make bench`: run every benchmark in turn (each writes `benchmarks/results/<name>.json` and prints its table).

python -m benchmarks.run_all                    # all, default sizes (~15 minutes on 2 CPU cores)
python -m benchmarks.run_all --only retrieval   # a subset: student_step, pixel_cache, regions, retrieval, scaling
"""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = {
    "student_step": ("benchmarks.bench_student_step", []),  # issue 8, benchmarks 1-3
    "pixel_cache": ("benchmarks.bench_pixel_cache", []),  # student data loading, before/after the pixel cache
    "regions": ("benchmarks.bench_regions", []),  # benchmark 4
    "retrieval": ("benchmarks.bench_retrieval", []),  # benchmark 5
    "scaling": ("benchmarks.bench_scaling", []),  # benchmark 6
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        module_name, module_args = BENCHMARKS[name]
        print(f"\n===== {name} ({module_name}) =====", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(module_name).main(module_args)
        except Exception as error:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            print(f"{name} failed: {type(error).__name__}: {error}")
        print(f"----- {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"\nFailed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
