"""Build the C kernels (kernels/csrc) into kernels._kernels during `pip install`.

Everything else about the distribution is in pyproject.toml. The AVX2/FMA code is
compiled with per-function target attributes, so one build runs on any x86-64 and picks
the fast path at run time; NEON is the aarch64 baseline.
"""

import glob

import numpy
from setuptools import Extension, setup

ext = Extension(
    "kernels._kernels",
    sources=sorted(glob.glob("kernels/csrc/**/*.c", recursive=True)),
    depends=sorted(glob.glob("kernels/csrc/**/*.h", recursive=True)),
    # numpy's headers: the binding reads numpy arrays through the NumPy C API (binding.c).
    include_dirs=["kernels/csrc", numpy.get_include()],
    # _GNU_SOURCE: POSIX calls (posix_memalign, sysconf) under strict -std=c11.
    # -ffp-contract=off: no silent a*b+c -> fma contraction, so the scalar reference and the
    # SIMD kernels round float epilogues identically and can be compared bit for bit.
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall",
                        "-Wextra", "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["m"],
)

setup(ext_modules=[ext])
