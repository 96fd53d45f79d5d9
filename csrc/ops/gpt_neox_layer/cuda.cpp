// CUDA backend of clusterfusion.gpt_neox_layer: the one-launch layer kernel
// (layer_kernel.cuh) with layer_plan="one_launch" where it serves the arguments;
// otherwise the two block ops ("auto" picks them while they are the faster). The position is read on the device
// only and every buffer comes from PyTorch's allocator: no host synchronization,
// safe inside CUDA-graph capture.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../../host/backend.h"
#include "../../host/checks.h"
#include "../../host/device_model.h"
#include "../../host/dtype.h"
#include "../../host/flat_kernel.h"
#include "../../host/tensor_map.h"
#include "../../host/tensors.h"
#include "../attention_block/checks.h"
#include "blocks.h"
#include "layer_kernel.h"
#include "layer_plan.h"
#include "layer_smem.h"
#include "op.h"

namespace clusterfusion::gpt_neox_layer {
namespace {

// How the one-launch kernel runs a shape on a device, or why it does not.
struct Setup {
  std::string reason;  // empty when the kernel serves the shape
  int cluster_size = 0;
  int ctas = 0;
  int stages = 0;
  int mlp_capacity = 0;
  size_t smem_bytes = 0;
  WorkTable work{};
};

// Whether a head's share of the QKV and dense weights stays within a CTA's fair share
// of the layer's bytes in clusters of `cluster_size` (Pythia-1b's heads of 256 need 8).
bool balanced(const LayerShape& shape, int sm_count, int cluster_size) {
  return 4.0 * shape.head_dim() * shape.hidden / cluster_size <= shape.fair_share(sm_count);
}

int largest_slice(const std::vector<CtaWork>& work) {
  int rows = 0;
  for (const CtaWork& w : work) rows = std::max(rows, w.mlp_end - w.mlp_begin);
  return static_cast<int>(round_up(std::max(rows, 1), kChunkK));
}

// The setup for clusters of `cluster_size`: as many as fit at once, dealt the layer.
Setup plan_for_cluster_size(const DeviceModel& device, ScalarKind kind, const LayerShape& shape, int cluster_size,
                            size_t static_bytes) {
  Setup s;
  s.cluster_size = cluster_size;
  const int head_dim = shape.head_dim();
  int clusters = std::min(device.sm_count, kMaxCtas) / cluster_size;
  // Deal for the CTAs that fit at once; the slices' size feeds back into shared memory, so settle it.
  for (int attempt = 0; attempt < 3 && clusters > 0; ++attempt) {
    s.ctas = clusters * cluster_size;
    const std::vector<CtaWork> work = deal(shape, s.ctas, cluster_size);
    s.mlp_capacity = largest_slice(work);
    const size_t fixed =
        LayerSmemLayout(head_dim, shape.hidden, s.mlp_capacity, cluster_size, 0, kStageBytes).request_bytes() +
        static_bytes;
    const size_t per_stage = kStageBytes + 16;  // a stage and its two mbarriers
    s.stages = fixed < device.smem_per_block_optin
                   ? static_cast<int>(std::min<size_t>(kMaxStages, (device.smem_per_block_optin - fixed) / per_stage))
                   : 0;
    if (s.stages < kMinStages) {
      s.reason = c10::str("hidden ", shape.hidden, " leaves room for fewer than ", kMinStages,
                          " weight stages in shared memory");
      return s;
    }
    s.smem_bytes =
        LayerSmemLayout(head_dim, shape.hidden, s.mlp_capacity, cluster_size, s.stages, kStageBytes).request_bytes();
    int resident = 0;
    C10_CUDA_CHECK(max_layer_clusters(kind, head_dim, cluster_size, s.smem_bytes, &resident));
    if (resident >= clusters) {
      if (shape.heads > clusters) {
        s.reason = c10::str(shape.heads, " heads on the ", clusters, " clusters of ", cluster_size,
                            " that fit at once (the layer kernel does one head per cluster)");
        return s;
      }
      // The producer loads a stage's rows as boxes of 128, 64, ..., 8 rows: every row count a multiple of 8.
      for (const CtaWork& w : work) {
        TORCH_INTERNAL_ASSERT((w.mlp_end - w.mlp_begin) % kBoxRows == 0 && (w.dense_end - w.dense_begin) % kBoxRows == 0,
                              kOp, ": a layer plan with rows not in steps of ", kBoxRows);
      }
      std::copy(work.begin(), work.end(), s.work.cta);
      return s;
    }
    clusters = resident;
  }
  s.reason = c10::str("no residency for ", cluster_size, "-CTA clusters of the layer kernel on ", device.name);
  return s;
}

// Clusters of 4, else 2, else 8 (the first that holds every head and keeps the CTAs balanced).
Setup plan_setup(int device_index, ScalarKind kind, const LayerShape& shape) {
  Setup s;
  const int head_dim = shape.head_dim();
  if (!head_dim_supported(head_dim)) {
    s.reason = c10::str("head_dim ", head_dim, " (the layer kernel serves 64, 80, 96 and 128)");
    return s;
  }
  if (shape.hidden % kChunkK != 0 || shape.hidden > kMaxHidden) {
    s.reason = c10::str("hidden ", shape.hidden, " (the layer kernel serves multiples of 64 up to ", kMaxHidden, ")");
    return s;
  }
  const DeviceModel& device = device_model(device_index);
  size_t static_bytes = 0;
  check_device_supported(kOp, device, layer_static_smem_bytes(kind, head_dim, &static_bytes));
  s.reason = c10::str("a head's share of the weights exceeds a CTA's fair share in clusters of 2, 4 and 8");
  for (int cluster_size : {4, 2, 8}) {
    if (!balanced(shape, device.sm_count, cluster_size)) continue;
    s = plan_for_cluster_size(device, kind, shape, cluster_size, static_bytes);
    if (s.reason.empty()) return s;
  }
  return s;
}

// The setup for a shape on a device, planned once per process.
const Setup& setup_for(int device_index, ScalarKind kind, const LayerShape& shape) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int, int>, Setup> setups;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device_index, static_cast<int>(kind), shape.hidden, shape.heads, shape.ffn);
  auto found = setups.find(key);
  if (found == setups.end()) found = setups.emplace(key, plan_setup(device_index, kind, shape)).first;
  return found->second;
}

// Why the one-launch kernel does not serve these arguments (the two blocks do), or "".
std::string fused_reason(const Args& a, const attention_block::Shape& shape) {
  std::string reason = failure_message([&] {
    for (const auto& [name, weight, inner] :
         {std::make_tuple("qkv_weight", &a.qkv_weight, "hidden"), std::make_tuple("dense_weight", &a.dense_weight, "hidden"),
          std::make_tuple("up_weight", &a.up_weight, "hidden"), std::make_tuple("down_weight", &a.down_weight, "ffn")}) {
      TORCH_CHECK_VALUE(weight->is_cuda(), kOp, ": argument '", name, "' must be a CUDA tensor");
      check_dtype_allowed(kOp, name, *weight, kCudaDtypes, "CUDA");
      check_tma_streamable(kOp, name, *weight, inner);
    }
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(a.key_cache.data_ptr()) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(a.value_cache.data_ptr()) % 16 == 0,
                      kOp, ": the caches must start at 16-byte aligned addresses");
  });
  if (!reason.empty()) return reason;
  const c10::cuda::CUDAGuard guard(a.qkv_weight.device());
  return setup_for(a.qkv_weight.device().index(), scalar_kind(a.qkv_weight),
                   {static_cast<int>(shape.hidden), static_cast<int>(shape.heads),
                    static_cast<int>(a.up_weight.size(0))})
      .reason;
}


// One weight's boxes of `width` reduction elements (64, or a tail's 32 or 16) with the swizzle of its bytes.
WeightMaps weight_maps(const at::Tensor& weight, int width = kChunkK) {
  const CUtensorMapSwizzle swizzle = width == 64   ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : width == 32 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                   : CU_TENSOR_MAP_SWIZZLE_32B;
  WeightMaps maps;
  for (int i = 0; i < kBoxHeights; ++i) {
    maps.box[i] = tiled_tensor_map({weight.data_ptr(), tma_dtype(scalar_kind(weight)),
                                    static_cast<uint64_t>(weight.size(1)), static_cast<uint64_t>(weight.size(0)),
                                    static_cast<uint64_t>(weight.stride(0) * weight.element_size()),
                                    static_cast<uint32_t>(width), static_cast<uint32_t>(kTileRows >> i), swizzle});
  }
  return maps;
}

attention_block::Shape check_attention_args(const Args& a) {
  return attention_block::check_args({a.hidden_states, a.attn_ln_weight, a.attn_ln_bias, a.qkv_weight, a.qkv_bias,
                                      a.dense_weight, a.dense_bias, a.cos, a.sin, a.key_cache, a.value_cache,
                                      a.cache_position, a.attention_mask, a.eps, a.attention_plan, a.pdl});
}

at::Tensor gpt_neox_layer_cuda(const Args& a) {
  // "auto" runs the blocks while they are the faster (docs/history.md, the one-launch layer);
  // pinned block plans ask for the blocks: the layer kernel has no plan of theirs to pin.
  auto is = [](c10::string_view v, const char* what) { return std::string(v.data(), v.size()) == what; };
  if (!is(a.layer_plan, "one_launch") || !is(a.attention_plan, "auto") || !is(a.block_plan, "auto")) {
    return through_blocks(a);  // which checks the arguments, the layer plan's too
  }
  check_layer_args(a);
  const attention_block::Shape shape = check_attention_args(a);
  if (!fused_reason(a, shape).empty()) return through_blocks(a);
  const c10::cuda::CUDAGuard guard(a.qkv_weight.device());
  const ScalarKind kind = scalar_kind(a.qkv_weight);
  const Setup& setup = setup_for(a.qkv_weight.device().index(), kind,
                                 {static_cast<int>(shape.hidden), static_cast<int>(shape.heads),
                                  static_cast<int>(a.up_weight.size(0))});

  // The result first: it takes the block a caller just freed (scratch after it).
  at::Tensor out = at::empty_like(a.hidden_states, at::MemoryFormat::Contiguous);
  const at::TensorOptions options = a.hidden_states.options();
  const at::Tensor partials = at::empty({setup.ctas, shape.hidden}, options.dtype(at::kFloat));
  const at::Tensor counts = at::zeros({2}, options.dtype(at::kInt));
  auto aligned = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(contiguous_aligned(t->reshape({-1}))) : std::nullopt;
  };
  auto pointer = [](const std::optional<at::Tensor>& t) -> const void* { return t.has_value() ? t->data_ptr() : nullptr; };
  const at::Tensor x = contiguous_aligned(a.hidden_states.reshape({-1}));
  const at::Tensor attn_ln_weight = contiguous_aligned(a.attn_ln_weight);
  const at::Tensor mlp_ln_weight = contiguous_aligned(a.mlp_ln_weight);
  const std::optional<at::Tensor> attn_ln_bias = aligned(a.attn_ln_bias), mlp_ln_bias = aligned(a.mlp_ln_bias),
                                  qkv_bias = aligned(a.qkv_bias), dense_bias = aligned(a.dense_bias),
                                  up_bias = aligned(a.up_bias), down_bias = aligned(a.down_bias),
                                  mask = aligned(a.attention_mask);
  const at::Tensor c = a.cos.reshape({-1}).contiguous();
  const at::Tensor s = a.sin.reshape({-1}).contiguous();

  LayerParams p{};
  p.x = x.data_ptr();
  p.attn_ln_weight = attn_ln_weight.data_ptr();
  p.attn_ln_bias = pointer(attn_ln_bias);
  p.mlp_ln_weight = mlp_ln_weight.data_ptr();
  p.mlp_ln_bias = pointer(mlp_ln_bias);
  p.qkv_bias = pointer(qkv_bias);
  p.dense_bias = pointer(dense_bias);
  p.up_bias = pointer(up_bias);
  p.down_bias = pointer(down_bias);
  p.terms.cos = c.data_ptr();
  p.terms.sin = s.data_ptr();
  p.terms.mask = pointer(mask);
  p.terms.mask_kind = attention_block::mask_kind(mask);
  p.terms.rotary_dims = static_cast<int>(shape.rotary_dims);
  p.terms.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  p.key_cache = a.key_cache.data_ptr();
  p.value_cache = a.value_cache.data_ptr();
  p.position = a.cache_position.data_ptr<int64_t>();
  p.partials = partials.data_ptr<float>();
  p.counts = reinterpret_cast<unsigned int*>(counts.data_ptr<int>());
  p.out = out.data_ptr();
  p.hidden = static_cast<int>(shape.hidden);
  p.max_len = static_cast<int>(shape.max_len);
  p.ctas = setup.ctas;
  p.stages = setup.stages;
  p.mlp_capacity = setup.mlp_capacity;
  p.eps = static_cast<float>(a.eps);
  const LayerMaps maps{weight_maps(a.qkv_weight),
                       weight_maps(a.dense_weight),
                       weight_maps(a.up_weight),
                       weight_maps(a.down_weight),
                       {weight_maps(a.dense_weight, kTailWidths[0]), weight_maps(a.dense_weight, kTailWidths[1])},
                       {weight_maps(a.down_weight, kTailWidths[0]), weight_maps(a.down_weight, kTailWidths[1])}};
  C10_CUDA_CHECK(launch_layer(kind, static_cast<int>(shape.head_dim), maps, p, setup.work, setup.cluster_size,
                              setup.smem_bytes, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// [cluster_size, ctas, stages, smem_bytes], then per CTA: head, qkv_begin, qkv_end,
// mlp_begin, mlp_end, dense_begin, dense_end, sum_begin, sum_end.
std::vector<int64_t> plan_cuda(const at::Tensor& qkv_weight, const at::Tensor& up_weight, int64_t heads) {
  const int64_t hidden = attention_block::check_qkv_weight(kOp, qkv_weight);
  TORCH_CHECK_VALUE(qkv_weight.is_cuda(), kOp, ": argument 'qkv_weight' must be a CUDA tensor; got ",
                    qkv_weight.device());
  check_dtype_allowed(kOp, "qkv_weight", qkv_weight, kCudaDtypes, "CUDA");
  TORCH_CHECK_VALUE(heads >= 1 && hidden % heads == 0, kOp, ": argument 'heads' must divide hidden = ", hidden,
                    "; got ", heads);
  TORCH_CHECK_VALUE(up_weight.dim() == 2 && up_weight.size(1) == hidden, kOp,
                    ": argument 'up_weight' must be [ffn, ", hidden, "]; got shape ", up_weight.sizes());
  const c10::cuda::CUDAGuard guard(qkv_weight.device());
  const Setup& setup = setup_for(qkv_weight.device().index(), scalar_kind(qkv_weight),
                                 {static_cast<int>(hidden), static_cast<int>(heads), static_cast<int>(up_weight.size(0))});
  TORCH_CHECK_VALUE(setup.reason.empty(), kOp, ": the one-launch kernel does not serve ", setup.reason,
                    "; the layer runs as its two block ops");
  std::vector<int64_t> fields{setup.cluster_size, setup.ctas, setup.stages, static_cast<int64_t>(setup.smem_bytes)};
  for (int cta = 0; cta < setup.ctas; ++cta) {
    const CtaWork& w = setup.work.cta[cta];
    fields.insert(fields.end(), {w.head, w.qkv_begin, w.qkv_end, w.mlp_begin, w.mlp_end, w.dense_begin, w.dense_end,
                                 w.sum_begin, w.sum_end});
  }
  return fields;
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CUDA, m) {
  m.impl("gpt_neox_layer", &FlatKernel<OpSignature>::of<Args, &gpt_neox_layer_cuda>);
  m.impl("gpt_neox_layer_plan", &plan_cuda);
}

}  // namespace clusterfusion::gpt_neox_layer
