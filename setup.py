"""Build script for the clusterfusion CUDA/C++ extension.

Builds on a machine with nvcc and no GPU. CLUSTERFUSION_CUDA_ARCHS selects the
GPU targets as a ';'-separated list (default "90a;120a": H100/H200 and RTX 5090).
"""

import os
from pathlib import Path

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "90a;120a"


def cuda_archs() -> list[str]:
    archs = [a.strip() for a in os.environ.get("CLUSTERFUSION_CUDA_ARCHS", DEFAULT_ARCHS).split(";")]
    archs = [a for a in archs if a]
    for arch in archs:
        digits = arch.rstrip("a")
        if not digits.isdigit() or int(digits) < 90:
            raise SystemExit(
                f"CLUSTERFUSION_CUDA_ARCHS: {arch!r} is not a supported target; use entries like "
                f"'90a' or '120a' (compute capability 9.0 or newer, TMA and clusters needed)"
            )
    if not archs:
        raise SystemExit("CLUSTERFUSION_CUDA_ARCHS is empty; expected e.g. '90a;120a'")
    return archs


def sources() -> list[str]:
    """Every C++ and CUDA source under csrc/: a new op folder needs no edit here."""
    files = sorted(p for ext in ("*.cpp", "*.cu") for p in (ROOT / "csrc").rglob(ext))
    return [str(p.relative_to(ROOT)) for p in files]


def extensions():
    archs = cuda_archs()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    # Stringified in C++; spaces and quotes do not survive the build's shell.
    arch_list = "-DCLUSTERFUSION_CUDA_ARCHS=" + "/".join(f"sm_{a}" for a in archs)
    return [
        CUDAExtension(
            name="clusterfusion._C",
            sources=sources(),
            include_dirs=[str(ROOT / "csrc"), str(ROOT / "csrc" / "include")],
            extra_compile_args={
                "cxx": ["-O3", "-std=c++17", arch_list],
                "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", arch_list, *gencode],
            },
        )
    ]


setup(
    packages=find_packages(include=["clusterfusion", "clusterfusion.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
