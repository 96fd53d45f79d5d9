"""The Decoder's random numbers: SplitMix64 of int64 keys as float32 uniforms, a
counter-based generator that gives the same numbers on every device (what
:func:`clusterfusion.sample_tokens` draws at)."""

from __future__ import annotations

import torch


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 torch computes with (wrapping multiplication)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)  # logical: int64 shifts sign-extend


def splitmix64_uniform(key: torch.Tensor) -> torch.Tensor:
    """SplitMix64 of int64 keys, as float32 uniforms in (0, 1): a counter-based
    generator, the same numbers on every device for the same keys."""
    z = key + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return (_shift_right(z, 40).float() + 0.5) * 2.0**-24
