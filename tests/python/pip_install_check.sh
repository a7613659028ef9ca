#!/usr/bin/env bash
# `pip install --no-build-isolation .` of the Python module into a fresh venv (--system-site-packages:
# numpy, Pillow from Debian; nothing is downloaded), then `import vitmsn` from outside the source tree
# on the tiny model. The package is built from a copy of the files it needs, so the checkout gets no
# build/ or .egg-info from pip. As in the consumer test, that build is unoptimised (-O0, no debug
# info): what it proves (setup.py runs CMake, the wheel holds the extension, the .py files, the stub
# and py.typed; the installed module works) does not depend on optimisation.
# usage: pip_install_check.sh SOURCE_DIR WORK_DIR PYTHON
set -euo pipefail
src="$1"; work="$2"; python="$3"
rm -rf "$work" && mkdir -p "$work/src"
for f in CMakeLists.txt pyproject.toml setup.py README.md LICENSE cmake include src python; do
  cp -r "$src/$f" "$work/src/"
done
rm -rf "$work/src/python/vitmsn.egg-info" "$work/src/python/vitmsn/__pycache__"

"$python" -m venv --system-site-packages "$work/venv"
VITMSN_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0" \
  "$work/venv/bin/pip" install --no-build-isolation --no-index --no-cache-dir "$work/src" > "$work/pip.log" 2>&1 \
  || { tail -40 "$work/pip.log"; exit 1; }

cd "$work"  # not the source tree: the import must find the installed package
"$work/venv/bin/python" - "$src" "$work/venv" <<'PY'
import os, sys
import vitmsn
src, venv = sys.argv[1], sys.argv[2]
package = os.path.dirname(vitmsn.__file__)
assert package.startswith(venv), f"imported {package}, not the venv's package"
files = sorted(os.listdir(package))
for f in ("__init__.py", "__init__.pyi", "py.typed"):
    assert f in files, f"{f} missing from the installed package: {files}"
assert any(f.startswith("_core.") and f.endswith(".so") for f in files), files
model = vitmsn.Model(os.path.join(src, "tests/data/models/tiny"))
features = model.extract_features(os.path.join(src, "tests/data/images/chelsea.png"))
assert features.last_hidden_state.shape == (1025, 64)
print(f"installed vitmsn {vitmsn.__version__} in {package}: {', '.join(files)}; CLS[:3] {features.cls[:3]}")
PY
echo "pip install OK"
