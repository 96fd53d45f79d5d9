// The rules that decide which token clusterfusion.sample_tokens picks, shared by
// the CUDA kernel and the CPU backend so that both pick the same token, bit for
// bit: which rows can be sampled, the token order, each token's weight as an
// integer, the limits that end the kept prefix and the draw. Only IEEE
// operations with one rounding each (no library exp, explicit fmas), so host and
// device compute the same bits. No torch headers.
//
// The rule: a row can be sampled when its settings are in range and its logits
// hold no NaN, no +inf and at least one finite value (row_fault). Tokens rank
// by their logits' order keys, highest first, equal keys by lower index: the
// logits' order, with -0 below +0. That is the order of logit / temperature
// for a positive temperature except where the division rounds two logits to
// one score; those still rank by logit (the ranking never divides). A token's
// weight is exp(score - max score), score = logit / temperature, in fixed
// point, and a prefix's tally is its token count and weight sum. The kept
// prefix is the highest-ranked token for a temperature <= 0, else it ends at
// the first token where the count reaches top_k or the weight reaches
// top_p * total; the drawn token is the first of the kept prefix whose
// running weight exceeds uniform * (the kept weight).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "clusterfusion/scalar_kind.h"

namespace clusterfusion::sample_tokens {

// The largest vocabulary: a tally keeps 16 fraction bits of weight for it.
constexpr int64_t kMaxVocab = (int64_t{1} << 24) - 1;

CLUSTERFUSION_HOST_DEVICE inline uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

// 2^n for -126 <= n <= 127, exactly.
CLUSTERFUSION_HOST_DEVICE inline float power_of_two(int n) {
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// An unsigned key whose order is the value's order (sign flipped for positives,
// all bits for negatives); the bit pattern of the value's IEEE encoding.
template <typename Bits>
CLUSTERFUSION_HOST_DEVICE inline Bits order_key(Bits bits) {
  constexpr Bits kSign = Bits(Bits(1) << (8 * sizeof(Bits) - 1));
  return (bits & kSign) ? Bits(~bits) : Bits(bits | kSign);
}

template <typename Bits>
CLUSTERFUSION_HOST_DEVICE inline Bits key_bits(Bits key) {
  constexpr Bits kSign = Bits(Bits(1) << (8 * sizeof(Bits) - 1));
  return (key & kSign) ? Bits(key ^ kSign) : Bits(~key);
}

// Why a row cannot be sampled (kNone: it can). The CUDA kernel returns token
// -1 for such a row, the CPU backend raises.
enum class Fault { kNone, kNanLogit, kInfiniteLogit, kNoFiniteLogit, kUniform, kTemperature, kTopP };

// The settings' part of the rule (NaN fails each range test: its comparisons
// are false). A temperature <= 0 is in range (it picks the highest-ranked
// token), so is any top_k (<= 0: no limit).
CLUSTERFUSION_HOST_DEVICE inline Fault settings_fault(float uniform, float temperature, float top_p) {
  if (!(uniform >= 0.0f && uniform < 1.0f)) return Fault::kUniform;
  if (temperature != temperature) return Fault::kTemperature;
  if (!(top_p > 0.0f && top_p <= 1.0f)) return Fault::kTopP;
  return Fault::kNone;
}

// The logits' part of the rule, on the order keys of one IEEE format. A NaN's
// key lies outside [key(-inf), key(+inf)]: a positive NaN's above, a negative
// NaN's below, where a maximum of the keys does not see it. So a row's summary
// is the maximum of its keys, or all ones (a positive NaN's key) when a key
// lies below key(-inf); slices' summaries combine by maximum, and the pass that
// finds the highest key anyway takes one more compare per token.
template <typename Bits>
struct KeyRange {
  Bits lowest;   // -inf's key
  Bits highest;  // +inf's key

  // For the format whose +inf has bits `infinity`.
  CLUSTERFUSION_HOST_DEVICE static KeyRange of_infinity(Bits infinity) {
    constexpr Bits kSign = Bits(Bits(1) << (8 * sizeof(Bits) - 1));
    return {order_key(Bits(infinity | kSign)), order_key(infinity)};
  }
  CLUSTERFUSION_HOST_DEVICE bool below(Bits key) const { return key < lowest; }
  CLUSTERFUSION_HOST_DEVICE Bits summary(Bits max_key, bool any_below) const {
    return any_below ? Bits(~Bits(0)) : max_key;
  }
  CLUSTERFUSION_HOST_DEVICE Fault fault(Bits summary) const {
    if (summary > highest) return Fault::kNanLogit;
    if (summary == highest) return Fault::kInfiniteLogit;
    return summary > lowest ? Fault::kNone : Fault::kNoFiniteLogit;
  }
};

// The rule: the settings' fault if any, else the logits' (from their summary).
template <typename Bits>
CLUSTERFUSION_HOST_DEVICE inline Fault row_fault(float uniform, float temperature, float top_p,
                                                 const KeyRange<Bits>& range, Bits summary) {
  const Fault fault = settings_fault(uniform, temperature, top_p);
  return fault != Fault::kNone ? fault : range.fault(summary);
}

// exp(d) for d = score - max score (<= 0): 2^n * e^r with n = round(d / ln 2)
// and a degree-7 Taylor polynomial for e^r, |r| <= ln 2 / 2 (error below one
// float ulp). 0 for d <= -87 and for NaN.
CLUSTERFUSION_HOST_DEVICE inline float relative_weight(float d) {
  if (!(d > -87.0f)) return 0.0f;
  const float n = rintf(d * 1.44269504f);
  float r = fmaf(-n, 0.693359375f, d);  // ln 2 split in a short head and a tail
  r = fmaf(-n, -2.12194440e-4f, r);
  float p = 1.98412698e-4f;  // 1/7!
  p = fmaf(p, r, 1.38888889e-3f);
  p = fmaf(p, r, 8.33333333e-3f);
  p = fmaf(p, r, 4.16666667e-2f);
  p = fmaf(p, r, 1.66666667e-1f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  return p * power_of_two(static_cast<int>(n));
}

// Temperatures <= 0 pick the highest-ranked token (NaN is a fault); their
// weights are computed at temperature 1 so that they stay in [0, 1].
CLUSTERFUSION_HOST_DEVICE inline float weight_temperature(float temperature) {
  return temperature > 0.0f ? temperature : 1.0f;
}

// A set of tokens' count and weight sum in one integer, so that one atomic add
// (and one scan) carries both: the count above bit `count_shift`, the weight in
// fixed point below it with `count_shift - bits(vocab)` fraction bits. Sums over
// the whole vocabulary carry from neither field into the other.
struct Tally {
  int count_shift;

  CLUSTERFUSION_HOST_DEVICE static Tally for_vocab(int64_t vocab) {
    int bits = 0;
    while ((int64_t{1} << bits) <= vocab) ++bits;
    return {64 - bits};
  }
  CLUSTERFUSION_HOST_DEVICE int fraction_bits() const { return 2 * count_shift - 64; }
  // One token of weight w in [0, 1] (truncated to the fixed point).
  CLUSTERFUSION_HOST_DEVICE uint64_t token(float weight) const {
    const float scaled = weight * power_of_two(fraction_bits());
    return (uint64_t{1} << count_shift) | static_cast<uint64_t>(scaled);
  }
  CLUSTERFUSION_HOST_DEVICE uint64_t count(uint64_t tally) const { return tally >> count_shift; }
  CLUSTERFUSION_HOST_DEVICE uint64_t weight(uint64_t tally) const {
    return tally & ((uint64_t{1} << count_shift) - 1);
  }
};

// A prefix of the ranking ends at its first token (the first always counts)
// whose running count reaches `count` or running weight reaches `weight`.
struct Limits {
  uint64_t count;
  uint64_t weight;

  CLUSTERFUSION_HOST_DEVICE bool reached(const Tally& tally, uint64_t running) const {
    return tally.count(running) >= count || tally.weight(running) >= weight;
  }
};

// The kept prefix: top_k tokens (0 or below: off) or top_p of the total weight,
// for settings without a fault (top_p in (0, 1]).
CLUSTERFUSION_HOST_DEVICE inline Limits kept_limits(float temperature, int64_t top_k, float top_p,
                                                    uint64_t total_weight, int64_t vocab) {
  if (!(temperature > 0.0f)) return {1, 0};
  const uint64_t count = static_cast<uint64_t>(top_k > 0 && top_k < vocab ? top_k : vocab);
  if (top_p >= 1.0f) return {count, total_weight};
  return {count, static_cast<uint64_t>(ceil(static_cast<double>(top_p) * static_cast<double>(total_weight)))};
}

// The draw: the first kept token whose running weight exceeds uniform * kept
// weight, for a uniform without a fault (in [0, 1)). The target stays below the
// kept weight: uniform <= 1 - 2^-24 lies far further below 1 than the double
// product's rounding reaches.
CLUSTERFUSION_HOST_DEVICE inline Limits draw_limits(float uniform, uint64_t kept_count, uint64_t kept_weight) {
  const uint64_t target = static_cast<uint64_t>(floor(static_cast<double>(uniform) * static_cast<double>(kept_weight)));
  return {kept_count, target + 1};
}

}  // namespace clusterfusion::sample_tokens
