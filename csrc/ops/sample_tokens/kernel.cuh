// The token sampler: a cluster of CTAs per row, each over its own slice of the
// row, finds where the kept prefix of the ranking ends, then where the draw
// ends, each by radix selection over the logits'
// order keys (4 bits a level, highest first) instead of a sort. A level is one
// pass over the row that tallies the tokens under the key bits fixed so far
// per digit; a tally holds count and fixed-point weight in one integer
// (rules.h), so sums are exact in any order. Each thread tallies into its own
// column of buckets (no atomics, no conflicts: logits crowd a few buckets),
// and the columns are summed after the pass; every CTA then sums the cluster's
// levels in rank order through distributed shared memory and takes the same
// decisions. The draw reuses the kept prefix's levels while its key bits are
// the same. Each CTA first copies its slice to shared memory when it fits (the
// passes then read it at shared-memory latency), else every pass reads it from
// global memory. The pass that finds the highest key also summarizes the
// logits for the rule of rules.h (a NaN, +inf, no finite logit); every CTA
// takes the same decision from the cluster's summary and the row's settings,
// and for a row that cannot be sampled all of them write token -1 and leave
// together. No torch headers.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "clusterfusion/device/reduce.cuh"
#include "launch.h"
#include "rules.h"

namespace clusterfusion::sample_tokens {

namespace cg = cooperative_groups;

constexpr int kClusterCtas = 8;  // CTAs per row (the portable cluster size)
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 8;  // tokens each thread loads before it works on them
constexpr int kDigitBits = 4;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kMergeGroups = kThreads / kBuckets;  // columns summed per thread in the first merge step
constexpr uint32_t kNoIndex = 0xffffffffu;
constexpr int64_t kNoToken = -1;  // a row that cannot be sampled (rules.h: row_fault)
constexpr unsigned kFullWarp = 0xffffffffu;
static_assert(kBuckets <= 32, "warp 0 scans the buckets, one per lane");
static_assert(kThreads % kBuckets == 0 && kMergeGroups <= kThreads, "the merge's two steps cover every column");

// Each logit type's own bits are its key; kInfinity: +inf's bits.
template <typename Logit>
struct LogitBits;

template <>
struct LogitBits<__half> {
  using Key = uint16_t;
  static constexpr Key kInfinity = 0x7c00;
  __device__ static Key bits(__half x) { return __half_as_ushort(x); }
  __device__ static float value(Key bits) { return __half2float(__ushort_as_half(bits)); }
};

template <>
struct LogitBits<__nv_bfloat16> {
  using Key = uint16_t;
  static constexpr Key kInfinity = 0x7f80;
  __device__ static Key bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
  __device__ static float value(Key bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
};

template <>
struct LogitBits<float> {
  using Key = uint32_t;
  static constexpr Key kInfinity = 0x7f800000u;
  __device__ static Key bits(float x) { return __float_as_uint(x); }
  __device__ static float value(Key bits) { return __uint_as_float(bits); }
};

// One level: each digit's tally.
struct Histogram {
  uint64_t tally[kBuckets];
};

// Where a prefix of the ranking ends, as far as the levels so far tell: the key
// bits fixed so far and the tally of every token ranked above them.
struct Boundary {
  uint32_t key;
  uint64_t before;
};

// A level to read: its tallies and, at the last level, each digit's lowest token index.
struct LevelView {
  const Histogram* histogram;
  const uint32_t* first;
};

// This CTA's share of a level, read by the whole cluster.
struct LocalLevel {
  uint64_t tally[kBuckets];
  uint32_t first[kBuckets];
};

template <int kLevels>
struct SharedState {
  uint64_t columns[kBuckets][kThreads];      // the level being built, one column per thread
  LocalLevel local[2];                       // alternate levels: a peer may still read the previous one
  int builds;
  uint32_t local_max;
  uint32_t local_ties;
  uint64_t merged[kMergeGroups][kBuckets];   // the columns summed by groups
  Histogram path[kLevels];                   // the kept prefix's levels; level 0 tallies every token
  Histogram detour;                          // the draw's level once its key bits leave the kept prefix's
  uint32_t path_first[kBuckets];             // last levels only
  uint32_t detour_first[kBuckets];
  uint32_t path_keys[kLevels];               // the kept prefix's key bits entering each level
  Boundary boundary;
  uint32_t partials[kWarps + 1];
  uint64_t total;
  uint32_t token;
};

// A row's logits as the selection sees them.
template <typename Logit>
struct Row {
  using Bits = LogitBits<Logit>;
  using Key = typename Bits::Key;
  static constexpr int kLevels = 8 * sizeof(Key) / kDigitBits;

  const Logit* logits;  // this CTA's slice
  int vocab;            // the slice's tokens
  int begin;            // the slice's first token in the row
  float temperature;    // the weights' (weight_temperature)
  float max_score;
  Tally tally;

  __device__ Key key(int i) const { return order_key(Bits::bits(logits[i])); }
  __device__ float score(Key key) const { return __fdiv_rn(Bits::value(key_bits(key)), temperature); }
  __device__ uint64_t token_tally(Key key) const { return tally.token(relative_weight(score(key) - max_score)); }
};

// Calls f(index in the slice, key) for every token of the slice, consecutive tokens on
// consecutive threads, kUnroll loads in flight per thread.
template <typename Logit, typename F>
__device__ __forceinline__ void for_each_token(const Row<Logit>& row, F&& f) {
  for (int base = threadIdx.x; base < row.vocab; base += kThreads * kUnroll) {
    uint32_t keys[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kThreads;
      keys[u] = i < row.vocab ? row.key(i) : 0u;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kThreads;
      if (i < row.vocab) f(i, keys[u]);
    }
  }
}

// Copies the row to `staged` (16-byte aligned), 16 bytes a load when the row
// is aligned, four loads in flight per thread.
template <typename Logit>
__device__ void stage_row(const Logit* source, Logit* staged, int vocab) {
  constexpr int kPerVector = 16 / sizeof(Logit);
  constexpr int kInFlight = 4;
  const bool aligned = reinterpret_cast<uintptr_t>(source) % 16 == 0;
  const int vectors = aligned ? vocab / kPerVector : 0;
  const uint4* from = reinterpret_cast<const uint4*>(source);
  uint4* to = reinterpret_cast<uint4*>(staged);
  for (int v = threadIdx.x; v < vectors; v += kThreads * kInFlight) {
    uint4 values[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (v + u * kThreads < vectors) values[u] = from[v + u * kThreads];
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (v + u * kThreads < vectors) to[v + u * kThreads] = values[u];
    }
  }
  for (int i = vectors * kPerVector + threadIdx.x; i < vocab; i += kThreads) staged[i] = source[i];
  __syncthreads();
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T value) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const T up = __shfl_up_sync(kFullWarp, value, offset);
    if (lane >= offset) value += up;
  }
  return value;
}

// Tallies the tokens whose key matches `key` above this level's digit, per
// digit, into h (the cluster's sum); at the last level also each digit's
// lowest token index into `first`.
template <typename Logit, int kLevels>
__device__ void build_level(const Row<Logit>& row, int level, uint32_t key, Histogram& h, uint32_t* first,
                            SharedState<kLevels>& s) {
  const cg::cluster_group cluster = cg::this_cluster();
  LocalLevel& local = s.local[s.builds % 2];
  const bool last = level == kLevels - 1;
  for (int b = 0; b < kBuckets; ++b) s.columns[b][threadIdx.x] = 0;
  if (threadIdx.x < kBuckets) local.first[threadIdx.x] = kNoIndex;
  __syncthreads();
  const int shift = kDigitBits * (kLevels - 1 - level);
  for_each_token(row, [&](int i, uint32_t token_key) {
    if (level > 0 && (token_key >> (shift + kDigitBits)) != (key >> (shift + kDigitBits))) return;
    const int digit = (token_key >> shift) & (kBuckets - 1);
    s.columns[digit][threadIdx.x] += row.token_tally(token_key);
    if (last) atomicMin(&local.first[digit], static_cast<uint32_t>(row.begin + i));
  });
  __syncthreads();
  {  // every group of kBuckets threads sums kBuckets-wide stripes of the columns, then kBuckets threads the groups
    const int digit = threadIdx.x % kBuckets;
    const int group = threadIdx.x / kBuckets;
    uint64_t sum = 0;
    for (int t = group; t < kThreads; t += kMergeGroups) sum += s.columns[digit][t];
    s.merged[group][digit] = sum;
  }
  __syncthreads();
  if (threadIdx.x < kBuckets) {
    uint64_t sum = 0;
    for (int g = 0; g < kMergeGroups; ++g) sum += s.merged[g][threadIdx.x];
    local.tally[threadIdx.x] = sum;
  }
  cluster.sync();  // every CTA's share is complete
  if (threadIdx.x < kBuckets) {
    uint64_t tallies[kClusterCtas];
    uint32_t firsts[kClusterCtas];
#pragma unroll
    for (int r = 0; r < kClusterCtas; ++r) {  // every load in flight, then the sums in rank order
      const LocalLevel* peer = cluster.map_shared_rank(&local, r);
      tallies[r] = peer->tally[threadIdx.x];
      firsts[r] = peer->first[threadIdx.x];
    }
    uint64_t sum = 0;
    uint32_t lowest = kNoIndex;
#pragma unroll
    for (int r = 0; r < kClusterCtas; ++r) {
      sum += tallies[r];
      lowest = min(lowest, firsts[r]);
    }
    h.tally[threadIdx.x] = sum;
    if (last) first[threadIdx.x] = lowest;
  }
  if (threadIdx.x == 0) ++s.builds;
  __syncthreads();
}

// Warp 0's lane l owns digit kBuckets - 1 - l (highest digits first); lanes past the buckets own none.
__device__ __forceinline__ uint64_t lane_bucket(const Histogram& h) {
  const int lane = threadIdx.x % 32;
  return lane < kBuckets ? h.tally[kBuckets - 1 - lane] : 0u;
}

// The sum of a level's tallies (level 0's: every token's), to every thread.
__device__ uint64_t level_total(const Histogram& h, uint64_t* total) {
  if (threadIdx.x < 32) {
    uint64_t sum = lane_bucket(h);
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullWarp, sum, offset);
    if (threadIdx.x == 0) *total = sum;
  }
  __syncthreads();
  return *total;
}

// Fixes this level's digit of the boundary: the first non-empty bucket, from
// the highest digit down, at whose end the running tally reaches the limits.
// One exists: the bucket fixed by the level above reached them at its end.
__device__ void fix_digit(const Histogram& h, const Limits& limits, const Tally& tally, int shift, Boundary& b) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const uint64_t own = lane_bucket(h);
    const uint64_t before = b.before + warp_inclusive_sum(own) - own;
    const bool found = tally.count(own) > 0 && limits.reached(tally, before + own);
    const uint32_t hits = __ballot_sync(kFullWarp, found);
    if (hits != 0 && lane == __ffs(hits) - 1) {
      b.key |= static_cast<uint32_t>(kBuckets - 1 - lane) << shift;
      b.before = before;
    }
  }
  __syncthreads();
}

// Which of the `ties` tokens that share the boundary key, in index order, ends
// the prefix (1-based); `one` is one of them's tally.
__device__ uint64_t rank_in_ties(const Limits& limits, const Tally& tally, uint64_t before, uint64_t one,
                                 uint64_t ties) {
  const uint64_t count = tally.count(before);
  const uint64_t weight = tally.weight(before);
  const uint64_t w = tally.weight(one);
  uint64_t rank = ties;
  if (limits.count > count) rank = min(rank, limits.count - count);
  else rank = 1;
  if (limits.weight <= weight) rank = 1;
  else if (w > 0) rank = min(rank, (limits.weight - weight + w - 1) / w);
  return max(rank, uint64_t{1});
}

// Descends the levels to the key where the prefix that `limits` ends lies. The
// kept prefix builds its levels into `path` (level 0 is built already); the
// draw reads them while its key bits are the kept prefix's and builds its own
// after. Returns the last level; leaves the result in s.boundary.
template <typename Logit, int kLevels>
__device__ LevelView descend(const Row<Logit>& row, const Limits& limits, bool kept, SharedState<kLevels>& s) {
  __syncthreads();  // every thread has read the previous descent's boundary
  if (threadIdx.x == 0) s.boundary = {0u, 0u};
  __syncthreads();
  LevelView view{&s.path[0], s.path_first};
  for (int level = 0; level < kLevels; ++level) {
    const uint32_t key = s.boundary.key;
    __syncthreads();  // every thread has read it before warp 0 extends it
    if (kept) {
      if (threadIdx.x == 0) s.path_keys[level] = key;
      if (level > 0) build_level(row, level, key, s.path[level], s.path_first, s);
      view = {&s.path[level], s.path_first};
    } else if (key == s.path_keys[level]) {
      view = {&s.path[level], s.path_first};
    } else {
      build_level(row, level, key, s.detour, s.detour_first, s);
      view = {&s.detour, s.detour_first};
    }
    fix_digit(*view.histogram, limits, row.tally, kDigitBits * (kLevels - 1 - level), s.boundary);
  }
  return view;
}

// Writes the index of the rank-th (1-based) token with `key` in index order to
// *token from the CTA whose slice holds it. Each warp owns a contiguous span of
// the slice and counts its matches 32 tokens at a time (ballots keep the
// order); scans of the warps' and then the CTAs' counts find the span, whose
// warp walks it again to the token.
template <typename Logit, int kLevels>
__device__ void write_tie(const Row<Logit>& row, uint32_t key, uint32_t rank, SharedState<kLevels>& s,
                          int64_t* token) {
  constexpr int kChunks = kUnroll;  // 32-token chunks loaded before their ballots
  const cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int span = (row.vocab + kWarps * 32 * kChunks - 1) / (kWarps * 32 * kChunks) * (32 * kChunks);
  const int begin = warp * span;
  const int end = min(begin + span, row.vocab);
  // Bit lane of hits[c]: whether token start + 32 * c + lane matches.
  auto matches = [&](int start, uint32_t (&hits)[kChunks]) {
    bool match[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int i = start + 32 * c + lane;
      match[c] = i < end && row.key(i) == key;
    }
#pragma unroll
    for (int c = 0; c < kChunks; ++c) hits[c] = __ballot_sync(kFullWarp, match[c]);
  };
  uint32_t count = 0;
  for (int start = begin; start < end; start += 32 * kChunks) {
    uint32_t hits[kChunks];
    matches(start, hits);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) count += __popc(hits[c]);
  }
  if (lane == 0) s.partials[warp] = count;
  __syncthreads();
  if (warp == 0) {
    const uint32_t own = lane < kWarps ? s.partials[lane] : 0u;
    const uint32_t inclusive = warp_inclusive_sum(own);
    if (lane < kWarps) s.partials[lane] = inclusive - own;
    if (lane == kWarps - 1) s.local_ties = inclusive;
  }
  cluster.sync();  // every CTA's count is complete
  uint32_t seen = s.partials[warp];
#pragma unroll
  for (int r = 0; r < kClusterCtas; ++r) {
    const uint32_t ties = *cluster.map_shared_rank(&s.local_ties, r);
    if (r < static_cast<int>(cluster.block_rank())) seen += ties;
  }
  if (seen < rank && rank <= seen + count) {
    for (int start = begin; start < end && seen < rank; start += 32 * kChunks) {
      uint32_t hits[kChunks];
      matches(start, hits);
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        if (seen < rank && seen + __popc(hits[c]) >= rank) {
          uint32_t rest = hits[c];  // the (rank - seen)-th set bit
          for (uint32_t n = seen + 1; n < rank; ++n) rest &= rest - 1;
          if (lane == 0) *token = row.begin + start + 32 * c + __ffs(rest) - 1;
        }
        seen += __popc(hits[c]);
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ T setting(const RowSetting<T>& s, int row) {
  return s.values[row * s.stride];
}

// The slice of `vocab` tokens each of `ctas` CTAs takes: whole 16-byte vectors.
template <typename Logit>
__host__ __device__ constexpr int slice_tokens(int vocab, int ctas) {
  constexpr int kPerVector = 16 / sizeof(Logit);
  return ((vocab + ctas - 1) / ctas + kPerVector - 1) / kPerVector * kPerVector;
}

template <typename Logit>
__global__ void __launch_bounds__(kThreads) sample_tokens_kernel(SampleParams p) {
  using R = Row<Logit>;
  using Key = typename R::Key;
  constexpr int kLevels = R::kLevels;
  __shared__ SharedState<kLevels> s;
  const cg::cluster_group cluster = cg::this_cluster();
  const int r = blockIdx.y;
  const float temperature = setting(p.temperature, r);
  const int slice = slice_tokens<Logit>(p.vocab, kClusterCtas);
  const int begin = min(static_cast<int>(cluster.block_rank()) * slice, p.vocab);
  const Logit* source = static_cast<const Logit*>(p.logits) + r * p.row_stride + begin;
  R row{source, min(slice, p.vocab - begin), begin, weight_temperature(temperature), 0.f, Tally::for_vocab(p.vocab)};
  if (threadIdx.x == 0) s.builds = 0;
  if (p.staged) {
    extern __shared__ uint4 staged[];
    row.logits = reinterpret_cast<const Logit*>(staged);
    stage_row(source, reinterpret_cast<Logit*>(staged), row.vocab);
  }

  // Weights are relative to the highest-ranked token's score. The same pass
  // summarizes the slice for the rule (a negative NaN's key is the only one
  // below -inf's), and the cluster's maximum of the summaries is the row's.
  const KeyRange<Key> range = KeyRange<Key>::of_infinity(R::Bits::kInfinity);
  uint32_t best = 0;
  bool below = false;
  for_each_token(row, [&](int, uint32_t key) {
    best = max(best, key);
    below |= range.below(static_cast<Key>(key));
  });
  best = device::block_max(static_cast<uint32_t>(range.summary(static_cast<Key>(best), below)), s.partials);
  if (threadIdx.x == 0) s.local_max = best;
  cluster.sync();
#pragma unroll
  for (int c = 0; c < kClusterCtas; ++c) best = max(best, *cluster.map_shared_rank(&s.local_max, c));
  // Every CTA reads the same settings and summary: all of them leave here, or none.
  if (row_fault(setting(p.uniform, r), temperature, setting(p.top_p, r), range, static_cast<Key>(best)) !=
      Fault::kNone) {
    if (cluster.block_rank() == 0 && threadIdx.x == 0) p.tokens[r] = kNoToken;
    cluster.sync();  // no CTA leaves while a peer may read its shared memory
    return;
  }
  row.max_score = row.score(static_cast<Key>(best));

  build_level(row, 0, 0u, s.path[0], s.path_first, s);
  const uint64_t total = level_total(s.path[0], &s.total);
  const Limits kept = kept_limits(temperature, setting(p.top_k, r), setting(p.top_p, r), row.tally.weight(total),
                                  p.vocab);
  const LevelView kept_last = descend(row, kept, true, s);
  const Boundary kept_end = s.boundary;
  const uint64_t one = row.token_tally(static_cast<Key>(kept_end.key));
  const uint64_t kept_rank = rank_in_ties(kept, row.tally, kept_end.before, one,
                                          row.tally.count(kept_last.histogram->tally[kept_end.key % kBuckets]));
  const Limits draw = draw_limits(setting(p.uniform, r), row.tally.count(kept_end.before) + kept_rank,
                                  row.tally.weight(kept_end.before) + kept_rank * row.tally.weight(one));

  const LevelView draw_last = descend(row, draw, false, s);
  const Boundary drawn = s.boundary;
  const uint32_t digit = drawn.key % kBuckets;
  const uint64_t rank = rank_in_ties(draw, row.tally, drawn.before, row.token_tally(static_cast<Key>(drawn.key)),
                                     row.tally.count(draw_last.histogram->tally[digit]));
  if (rank > 1) {
    write_tie(row, drawn.key, static_cast<uint32_t>(rank), s, p.tokens + r);
  } else if (cluster.block_rank() == 0 && threadIdx.x == 0) {
    p.tokens[r] = draw_last.first[digit];
  }
  cluster.sync();  // no CTA leaves while a peer may read its shared memory
}

}  // namespace clusterfusion::sample_tokens
