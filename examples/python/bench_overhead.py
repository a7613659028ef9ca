#!/usr/bin/env python3
"""What calling vitmsn from Python costs: seconds per image of the forward pass through the Python API
against the same forward pass timed inside C++, in one process, on one loaded model.

    python3 examples/python/bench_overhead.py --model /path/to/vit-l7 --rounds 5

Each round times, in alternation (so that a busy machine slows all alike; the order rotates by round):
  python    model(pixel_values[None])              Python call, argument checks, result array
  features  model.extract_features(pixel_values)   the same through extract_features
  c++       Model::extract_features(PixelValuesView) timed with std::chrono inside the module
            (Model._forward_seconds: no Python between the clock reads)
and prints the medians and the overhead of each Python path against the C++ one. Then the fixed cost
of a call, apart from the forward pass: the same three paths on the smallest input the model takes
([3, P, P], 2 tokens), up to 1000 calls each, medians in microseconds (skipped for a large model,
whose every call still reads all its weights).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import vitmsn


def main():
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(repo / "tests/data/models/tiny"))
    parser.add_argument("--image", default=str(repo / "tests/data/images/chelsea.png"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = vitmsn.Model(args.model, threads=args.threads)
    load = time.perf_counter() - t0
    px = model.preprocessor(args.image)
    print(f"{model!r}\nload {load:.2f} s; input {args.image} -> pixel values {list(px.shape)}; "
          f"{args.rounds} rounds; python {sys.version.split()[0]}", flush=True)

    def python_call():
        t = time.perf_counter()
        model(px[None])
        return time.perf_counter() - t

    def features_call():
        t = time.perf_counter()
        model.extract_features(px)
        return time.perf_counter() - t

    def cpp_call():
        return model._forward_seconds(px, 1)[0]

    paths = {"python": python_call, "features": features_call, "c++": cpp_call}
    for f in paths.values():  # warm-up: first-touch of the weights' pages, buffers
        f()
    times = {name: [] for name in paths}
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:  # the order rotates: no path always runs after another
            times[name].append(paths[name]())
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.4f} s" for n in paths), flush=True)

    import numpy as np
    patch = model.config["patch_size"]
    small = np.zeros((3, patch, patch), np.float32)
    fixed = {"python": lambda: model(small[None]), "features": lambda: model.extract_features(small)}
    one = model._forward_seconds(small, 2)[1]
    calls = min(1000, int(3.0 / one))
    glue = {}
    if calls >= 200:
        for name, f in fixed.items():
            ts = []
            for _ in range(calls):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            glue[name] = statistics.median(ts)
        glue["c++"] = statistics.median(model._forward_seconds(small, calls))

    ref = statistics.median(times["c++"])
    print(f"\nmedian seconds per image over {args.rounds} rounds:")
    for name in paths:
        med = statistics.median(times[name])
        pairs = [a - b for a, b in zip(times[name], times["c++"])]
        extra = "" if name == "c++" else (f"  overhead {100 * (med / ref - 1):+.2f} % "
                                          f"(median of per-round differences {1e3 * statistics.median(pairs):+.3f} ms)")
        print(f"  {name:<9} {med:.4f} s  (min {min(times[name]):.4f}){extra}")
    if glue:
        print(f"fixed cost per call ([3, {patch}, {patch}] input, median of {calls}): " +
              ", ".join(f"{n} {1e6 * glue[n]:.1f} us" for n in glue) +
              f"; Python adds {1e6 * (glue['python'] - glue['c++']):.1f} us (model(x)), "
              f"{1e6 * (glue['features'] - glue['c++']):.1f} us (extract_features), "
              f"{100 * (glue['python'] - glue['c++']) / ref:.3f} % of this model's forward")
    else:
        print(f"fixed cost per call: not measured here (a call on [3, {patch}, {patch}] takes {1e3 * one:.0f} ms with "
              "this model, too long to resolve microseconds; run with the tiny model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
