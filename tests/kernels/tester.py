"""Shared tester for the native kernels: run a computation under every ISA this CPU has and
compare each with the numpy reference (kernels.quant). An ISA the CPU lacks is skipped, not
failed, so the same tests run on x86 (scalar, avx2) and aarch64 (scalar, neon)."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import quant

ALL_ISAS = ("scalar", "avx2", "avxvnni", "avx512", "amx", "neon")


def isa_params():
    """pytest params over every ISA, each skipped where unavailable."""
    have = set(kernels.available_isas())
    return [pytest.param(isa, marks=pytest.mark.skipif(isa not in have, reason=f"CPU lacks {isa}")) for isa in ALL_ISAS]


def run_all_isas(fn):
    """{isa: fn()} for every available ISA, restoring auto dispatch afterwards."""
    results = {}
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            results[isa] = fn()
    return results


def assert_bitexact(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Same dtype, shape and bits (for floats: identical bit patterns, so -0.0 != +0.0)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if got.dtype == np.float32:
        g, w = got.view(np.int32), want.view(np.int32)
    else:
        g, w = got, want
    bad = np.argwhere(g != w)
    assert bad.size == 0, f"{what}: {len(bad)} mismatches, first at {tuple(bad[0])}: {got[tuple(bad[0])]} != {want[tuple(bad[0])]}"


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, what: str = "") -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bound = atol + rtol * np.abs(want.astype(np.float64))
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), f"{what}: |err| {err.flat[worst]:.3g} > {bound.flat[worst]:.3g} at {np.unravel_index(worst, err.shape)}"



def assert_per_tensor_bitexact(linear, packed, a: np.ndarray, a_zp: int, w: np.ndarray, w_scale: np.ndarray,
                               bias: np.ndarray, isa: str) -> None:
    """An int8 linear (kernels.qs8_linear or bsr_linear on `packed`, symmetric weights w) with
    one activation scale and zero point for every row, fp32 out through ReLU6 and int8 out,
    bit-exact under `isa` against quant.qs8_gemm_ref."""
    with kernels.use_isa(isa):
        got = linear(a, 0.02, a_zp, packed, activation="relu6")
        got_q = linear(a, 0.02, a_zp, packed, out_scale=0.3, out_zero_point=-5)
    assert_bitexact(got, quant.qs8_gemm_ref(a, 0.02, a_zp, w, w_scale, None, bias, clamp=(0.0, 6.0)), isa)
    assert_bitexact(got_q, quant.qs8_gemm_ref(a, 0.02, a_zp, w, w_scale, None, bias, False, 0.3, -5), isa)
