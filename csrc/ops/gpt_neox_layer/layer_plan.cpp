// The dealing of clusterfusion/_layer_plan.py (deal), for clusters that do at
// most one head: MLP rows in proportion to what each CTA lacks of its fair share
// of weight bytes once its head is streamed, then each head cluster's dense
// outputs shared so its ranks even out.
#include "layer_plan.h"

#include <algorithm>
#include <cmath>

namespace clusterfusion::gpt_neox_layer {
namespace {

constexpr int kOutputStep = 8;   // dense outputs and summed outputs
constexpr int kMlpRowStep = 8;   // MLP slices

struct Range {
  int begin;
  int end;
  int size() const { return end - begin; }
};

// [0, n) cut in proportion to `wants` at whole steps (the last ends at n): the
// boundaries are the running total rounded (Python's round: half to even).
std::vector<Range> split_by(int n, std::vector<double> wants, int step) {
  double total = 0;
  for (double w : wants) total += w;
  if (total <= 0) {
    std::fill(wants.begin(), wants.end(), 1.0);
    total = static_cast<double>(wants.size());
  }
  std::vector<int> bounds{0};
  double running = 0;
  for (size_t p = 0; p + 1 < wants.size(); ++p) {
    running += wants[p] * n / total;
    const int rounded = static_cast<int>(std::nearbyint(running / step)) * step;
    bounds.push_back(std::min(n, std::max(bounds.back(), rounded)));
  }
  bounds.push_back(n);
  std::vector<Range> ranges;
  for (size_t p = 0; p + 1 < bounds.size(); ++p) ranges.push_back({bounds[p], bounds[p + 1]});
  return ranges;
}

std::vector<Range> split(int n, int parts, int step) { return split_by(n, std::vector<double>(parts, 1.0), step); }

}  // namespace

std::vector<CtaWork> deal(const LayerShape& shape, int ctas, int cluster_size) {
  const int clusters = ctas / cluster_size;
  const int hd = shape.head_dim();
  const std::vector<Range> qkv = split(shape.hidden, cluster_size, kChunkK);  // whole reduction tiles
  const std::vector<Range> even_dense = split(shape.hidden, cluster_size, kOutputStep);
  auto head_of = [&](int cta) { return cta / cluster_size < shape.heads ? cta / cluster_size : -1; };
  // Weight elements of each CTA's head work with the even dense split.
  auto head_elements = [&](int cta, const Range& dense) {
    return head_of(cta) < 0 ? 0.0 : static_cast<double>(hd) * (3 * qkv[cta % cluster_size].size() + dense.size());
  };
  const double fair = shape.fair_share(ctas);
  std::vector<double> lacks(ctas);
  for (int cta = 0; cta < ctas; ++cta) {
    lacks[cta] = std::max(0.0, fair - head_elements(cta, even_dense[cta % cluster_size]));
  }
  const std::vector<Range> slices = split_by(shape.ffn, lacks, kMlpRowStep);
  const std::vector<Range> sums = split(shape.hidden, ctas, kOutputStep);

  std::vector<CtaWork> work(ctas);
  for (int cluster = 0; cluster < clusters; ++cluster) {
    std::vector<Range> dense = even_dense;
    if (cluster < shape.heads) {  // even out the ranks by how they share the dense outputs
      std::vector<double> others(cluster_size);
      double sum = 0;
      for (int rank = 0; rank < cluster_size; ++rank) {
        const int cta = cluster * cluster_size + rank;
        others[rank] = 2.0 * shape.hidden * slices[cta].size() + 3.0 * hd * qkv[rank].size();
        sum += others[rank];
      }
      const double level = (sum + static_cast<double>(hd) * shape.hidden) / cluster_size;
      std::vector<double> wants(cluster_size);
      for (int rank = 0; rank < cluster_size; ++rank) wants[rank] = std::max(0.0, level - others[rank]);
      dense = split_by(shape.hidden, wants, kOutputStep);
    }
    for (int rank = 0; rank < cluster_size; ++rank) {
      const int cta = cluster * cluster_size + rank;
      CtaWork& w = work[cta];
      w.head = head_of(cta);
      w.qkv_begin = qkv[rank].begin;
      w.qkv_end = qkv[rank].end;
      w.mlp_begin = slices[cta].begin;
      w.mlp_end = slices[cta].end;
      w.dense_begin = w.head < 0 ? 0 : dense[rank].begin;
      w.dense_end = w.head < 0 ? 0 : dense[rank].end;
      w.sum_begin = sums[cta].begin;
      w.sum_end = sums[cta].end;
    }
  }
  return work;
}

}  // namespace clusterfusion::gpt_neox_layer
