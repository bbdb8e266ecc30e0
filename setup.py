"""Build the C kernels (kernels/csrc) into kernels._kernels during `pip install`.

Everything else about the distribution is in pyproject.toml. The AVX2/FMA code is
compiled with per-function target attributes, so one build runs on any x86-64 and picks
the fast path at run time; NEON is the aarch64 baseline.
"""

import glob

from setuptools import Extension, setup

ext = Extension(
    "kernels._kernels",
    sources=sorted(glob.glob("kernels/csrc/**/*.c", recursive=True)),
    include_dirs=["kernels/csrc"],
    extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext])
