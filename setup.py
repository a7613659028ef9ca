"""Builds the Python module vitmsn with CMake (pyproject.toml has the metadata).

The extension vitmsn._core is the CMake target vitmsn_python (python/CMakeLists.txt), configured with
the interpreter running this build and written straight into the wheel's vitmsn/ folder; the Python
files come from python/vitmsn. Environment: CMAKE_BUILD_PARALLEL_LEVEL (jobs, default: all CPUs),
VITMSN_CMAKE_ARGS (extra configure arguments, e.g. -DVITMSN_WITH_TURBOJPEG=ON).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def version():
    text = (ROOT / "include/vitmsn/version.hpp").read_text()
    return re.search(r'kVersionString = "([^"]+)"', text).group(1)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        args = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DVITMSN_BUILD_PYTHON=ON",
            "-DVITMSN_BUILD_TESTS=OFF",
            "-DVITMSN_BUILD_EXAMPLES=OFF",
            "-DVITMSN_INSTALL=OFF",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DVITMSN_PYTHON_OUTPUT_DIR={out_dir}",
        ]
        try:  # pybind11 from PyPI (an isolated build); otherwise CMake finds Debian's pybind11-dev
            import pybind11
            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        args += shlex.split(os.environ.get("VITMSN_CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "vitmsn_python", "-j", jobs], check=True)


setup(
    version=version(),
    packages=["vitmsn"],
    package_dir={"": "python"},
    package_data={"vitmsn": ["__init__.pyi", "py.typed"]},
    ext_modules=[Extension("vitmsn._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": "build/python-package"}},
    zip_safe=False,
)
