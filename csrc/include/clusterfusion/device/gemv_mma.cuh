// Tensor-core GEMV over one stage of swizzled tiles: ldmatrix loads and the
// m16n8k16 MMA with fp32 accumulation, for fp16 and bf16 operands, and one
// warp's walk over a [16 x 64] slice of a weight tile against an input tile of
// 8 or 16 tokens, both written by TMA with the 128-byte swizzle. The weight is
// the MMA's A operand (outputs as rows), the tokens are B. No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "tma.cuh"

namespace clusterfusion::device {

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr));
}

// d += a * b for a 16x16 row-major A, a 16x8 column-major B and a 16x8 fp32 D.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One warp's share of a stage: 16 outputs (weight rows) starting at `warp_n`,
// a 64-wide chunk of the reduction, and kMTiles tiles of 8 tokens.
template <typename T, int kMTiles>
class SwizzledGemvWarp {
 public:
  static constexpr int kTokensPerTile = 8;
  static constexpr int kOutputs = 16;
  static constexpr int kChunkK = 64;
  static constexpr int kSteps = kChunkK / 16;
  static_assert(kMTiles == 1 || kMTiles == 2, "one ldmatrix.x4 covers at most two token tiles");

  // Fragments of one stage, loaded before the stage is released.
  struct Fragments {
    uint32_t a[kSteps][4];
    uint32_t b[kSteps][kMTiles][2];
  };
  // Even and odd k-steps accumulate separately: two independent MMA chains
  // per chunk instead of one of four.
  using Accumulators = float[2][kMTiles][4];

  __device__ SwizzledGemvWarp(int warp_n, int lane)
      : warp_n_(warp_n),
        lane_(lane),
        a_row_(warp_n + (lane & 7) + ((lane >> 3) & 1) * 8),
        a_half_(lane >> 4),
        b_row_((lane & 7) + (kMTiles == 2 ? (lane >> 4) * 8 : 0)),
        b_half_((lane >> 3) & 1) {}

  // Shared-memory addresses of the stage's weight tile and input tile.
  __device__ void load(uint32_t weight_tile, uint32_t input_tile, Fragments& f) const {
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      ldmatrix_x4(f.a[step], weight_tile + swizzle_128b(a_row_, 2 * step + a_half_));
      const uint32_t b_addr = input_tile + swizzle_128b(b_row_, 2 * step + b_half_);
      if constexpr (kMTiles == 1) {
        ldmatrix_x2(f.b[step][0], b_addr);
      } else {
        uint32_t r[4];
        ldmatrix_x4(r, b_addr);
        f.b[step][0][0] = r[0];
        f.b[step][0][1] = r[1];
        f.b[step][1][0] = r[2];
        f.b[step][1][1] = r[3];
      }
    }
  }

  // As load, for one token whose input is a plain shared-memory vector (the
  // chunk's elements from `input`, 4-byte aligned) instead of a swizzled
  // tile: lanes 0..3 hold token 0's column of B, the other columns are zero.
  // A chunk may be narrower than 64: `span` bytes per weight row (32, 64 or
  // 128, with the matching swizzle); the k-steps past it are zero.
  __device__ void load_one_token(uint32_t weight_tile, const T* input, Fragments& f, int span = 128) const {
    static_assert(kMTiles == 1, "one token fills one token tile");
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      if (32 * step < span) {
        ldmatrix_x4(f.a[step], weight_tile + swizzle_span(a_row_, 2 * step + a_half_, span));
        const uint32_t* pairs = reinterpret_cast<const uint32_t*>(input + 16 * step);
        f.b[step][0][0] = lane_ < 4 ? pairs[lane_] : 0u;
        f.b[step][0][1] = lane_ < 4 ? pairs[lane_ + 4] : 0u;
      } else {
        for (uint32_t& a : f.a[step]) a = 0u;
        f.b[step][0][0] = 0u;
        f.b[step][0][1] = 0u;
      }
    }
  }

  __device__ void accumulate(const Fragments& f, Accumulators& acc) const {
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
#pragma unroll
      for (int t = 0; t < kMTiles; ++t) mma_m16n8k16<T>(acc[step & 1][t], f.a[step], f.b[step][t]);
    }
  }

  // Adds the odd chain into the even one, which then holds the results.
  __device__ static void combine_chains(Accumulators& acc) {
#pragma unroll
    for (int t = 0; t < kMTiles; ++t) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[0][t][r] += acc[1][t][r];
    }
  }

  // After combine_chains: calls f(m, n, value) for each of this lane's
  // results, outputs warp_n + lane / 4 and + 8, tokens 2 * (lane % 4) and + 1
  // of each tile.
  template <typename F>
  __device__ void for_each_result(const Accumulators& acc, F&& f) const {
    const int n = warp_n_ + lane_ / 4;
#pragma unroll
    for (int t = 0; t < kMTiles; ++t) {
      const int m = t * kTokensPerTile + 2 * (lane_ % 4);
      f(m, n, acc[0][t][0]);
      f(m + 1, n, acc[0][t][1]);
      f(m, n + 8, acc[0][t][2]);
      f(m + 1, n + 8, acc[0][t][3]);
    }
  }

 private:
  int warp_n_;
  int lane_;
  int a_row_;
  int a_half_;
  int b_row_;
  int b_half_;
};

}  // namespace clusterfusion::device
