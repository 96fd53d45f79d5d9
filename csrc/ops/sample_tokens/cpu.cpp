// CPU backend of clusterfusion::sample_tokens: the rules of rules.h applied
// plainly (a stable sort of the ranking, then running tallies), so code built on
// the op runs without a GPU and the CUDA kernel has a reference that picks the
// same tokens. Float64 logits are rounded to float32 first.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

#include "checks.h"

namespace clusterfusion::sample_tokens {
namespace {

struct Settings {
  float uniform;
  float temperature;
  int64_t top_k;
  float top_p;
};

int64_t sample_row(const float* logits, int64_t vocab, const Settings& s) {
  std::vector<uint32_t> keys(vocab);
  for (int64_t i = 0; i < vocab; ++i) keys[i] = order_key(float_bits(logits[i]));
  std::vector<int64_t> ranking(vocab);
  std::iota(ranking.begin(), ranking.end(), int64_t{0});
  std::stable_sort(ranking.begin(), ranking.end(), [&](int64_t a, int64_t b) { return keys[a] > keys[b]; });

  const Tally tally = Tally::for_vocab(vocab);
  const float temperature = weight_temperature(s.temperature);
  const float max_score = logits[ranking[0]] / temperature;
  std::vector<uint64_t> tallies(vocab);
  uint64_t total = 0;
  for (int64_t n = 0; n < vocab; ++n) {
    tallies[n] = tally.token(relative_weight(logits[ranking[n]] / temperature - max_score));
    total += tallies[n];
  }
  // The position where a prefix of the ranking ends, and its running tally.
  auto end_of = [&](const Limits& limits) {
    uint64_t running = 0;
    for (int64_t n = 0; n < vocab; ++n) {
      running += tallies[n];
      if (limits.reached(tally, running)) return std::make_pair(n, running);
    }
    return std::make_pair(vocab - 1, running);
  };
  const uint64_t kept = end_of(kept_limits(s.temperature, s.top_k, s.top_p, tally.weight(total), vocab)).second;
  const Limits draw = draw_limits(s.uniform, tally.count(kept), tally.weight(kept));
  return ranking[end_of(draw).first];
}

at::Tensor sample_tokens_cpu(const at::Tensor& logits, const at::Tensor& uniform, const at::Tensor& temperature,
                             const at::Tensor& top_k, const at::Tensor& top_p) {
  const Shape shape = check_args(logits, uniform, temperature, top_k, top_p);
  check_dtype_allowed(kOp, "logits", logits, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble}, "CPU");
  at::Tensor tokens = at::empty(logits.sizes().slice(0, logits.dim() - 1), logits.options().dtype(at::kLong));
  const at::Tensor rows = logits.reshape({shape.rows, shape.vocab}).to(at::kFloat).contiguous();
  const at::Tensor u = uniform.reshape({-1}).contiguous();
  const at::Tensor t = temperature.reshape({-1}).contiguous();
  const at::Tensor k = top_k.reshape({-1}).contiguous();
  const at::Tensor p = top_p.reshape({-1}).contiguous();
  auto at_row = [](const at::Tensor& setting, auto* values, int64_t row) { return values[setting.numel() == 1 ? 0 : row]; };
  int64_t* out = tokens.data_ptr<int64_t>();
  for (int64_t row = 0; row < shape.rows; ++row) {
    const Settings s{at_row(u, u.data_ptr<float>(), row), at_row(t, t.data_ptr<float>(), row),
                     at_row(k, k.data_ptr<int64_t>(), row), at_row(p, p.data_ptr<float>(), row)};
    out[row] = sample_row(rows.data_ptr<float>() + row * shape.vocab, shape.vocab, s);
  }
  return tokens;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) { m.impl("sample_tokens", &sample_tokens_cpu); }

}  // namespace clusterfusion::sample_tokens
