// CPU backend of clusterfusion::sample_tokens: the rules of rules.h applied
// plainly (a stable sort of the ranking, then running tallies), so code built on
// the op runs without a GPU and the CUDA kernel has a reference that picks the
// same tokens. Float64 logits are rounded to float32 first. A row that cannot
// be sampled raises ValueError naming the row and why (the CUDA kernel, which
// cannot raise without a host synchronization, returns token -1 for it).
#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
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

template <typename T>
T at_row(const at::Tensor& setting, int64_t row) {
  return setting.const_data_ptr<T>()[setting.numel() == 1 ? 0 : row];
}

std::string fault_message(Fault fault, int64_t row, const Settings& s) {
  switch (fault) {
    case Fault::kNanLogit:
      return c10::str("row ", row, " of 'logits' holds a NaN");
    case Fault::kInfiniteLogit:
      return c10::str("row ", row, " of 'logits' holds +inf");
    case Fault::kNoFiniteLogit:
      return c10::str("row ", row, " of 'logits' has no finite logit (all are -inf)");
    case Fault::kUniform:
      return c10::str("argument 'uniform' must be in [0, 1); got ", s.uniform, " for row ", row);
    case Fault::kTemperature:
      return c10::str("argument 'temperature' must not be NaN; got ", s.temperature, " for row ", row);
    case Fault::kTopP:
      return c10::str("argument 'top_p' must be in (0, 1]; got ", s.top_p, " for row ", row);
    case Fault::kNone:
      break;
  }
  return "";
}

int64_t sample_row(const float* logits, int64_t vocab, const Settings& s, int64_t row) {
  const KeyRange<uint32_t> range = KeyRange<uint32_t>::of_infinity(float_bits(INFINITY));
  std::vector<uint32_t> keys(vocab);
  uint32_t top = 0;
  bool below = false;
  for (int64_t i = 0; i < vocab; ++i) {
    keys[i] = order_key(float_bits(logits[i]));
    top = std::max(top, keys[i]);
    below = below || range.below(keys[i]);
  }
  const Fault fault = row_fault(s.uniform, s.temperature, s.top_p, range, range.summary(top, below));
  TORCH_CHECK_VALUE(fault == Fault::kNone, kOp, ": ", fault_message(fault, row, s));
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
  const SettingTensors flat = flat_settings(uniform, temperature, top_k, top_p);
  int64_t* out = tokens.data_ptr<int64_t>();
  for (int64_t row = 0; row < shape.rows; ++row) {
    const Settings s{at_row<float>(flat.uniform, row), at_row<float>(flat.temperature, row),
                     at_row<int64_t>(flat.top_k, row), at_row<float>(flat.top_p, row)};
    out[row] = sample_row(rows.data_ptr<float>() + row * shape.vocab, shape.vocab, s, row);
  }
  return tokens;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) { m.impl("sample_tokens", &sample_tokens_cpu); }

}  // namespace clusterfusion::sample_tokens
