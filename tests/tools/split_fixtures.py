"""Copies FIXTURES_DIR/expected/preprocess.safetensors into tests/data/expected/ as three files of a
few MB each (split by case; keys unchanged), so the repository stays free of large blobs. A
regeneration tool: FIXTURES_DIR is the fixtures folder of the Hugging Face reference run (its
expected/ outputs and tools/vitmsn_ref.py), which the tests themselves never need.

    /usr/bin/python3 tests/tools/split_fixtures.py FIXTURES_DIR tests/data
"""
import os
import sys

sys.path.insert(0, os.path.join(sys.argv[1], "tools"))
import vitmsn_ref as R  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
sd, _ = R.read_safetensors(os.path.join(src, "expected", "preprocess.safetensors"))
cases = sorted({k.rsplit(".", 1)[0] for k in sd})
parts = [[], [], []]
sizes = [0, 0, 0]
for c in cases:
    n = sum(v.nbytes for k, v in sd.items() if k.rsplit(".", 1)[0] == c)
    i = sizes.index(min(sizes))
    parts[i].append(c)
    sizes[i] += n
for i, p in enumerate(parts):
    R.write_safetensors(os.path.join(dst, "expected", f"preprocess.{i}.safetensors"),
                        {k: v for k, v in sd.items() if k.rsplit(".", 1)[0] in p},
                        {"source": "shared/fixtures/expected/preprocess.safetensors", "part": f"{i + 1}/3"})
    print(i, sizes[i], p)
