// The dynamic shared memory of the layer kernel, the one description both the
// kernel (offsets) and the launcher (sizes) use:
//
//   [stage 0 .. stage S-1]   weight tiles [kTileRows x 64] (16-bit elements)
//   [ln1][ln2]               the two normalized inputs, T[hidden] each
//   [mlp input]              GELU(up) of the CTA's slice, T[mlp_capacity], zero past the slice
//   [attention output]       the head's output, T[head_dim rounded up to 64], zero past head_dim
//   [qkv]                    the head's q, k, v, T[3 * head_dim]
//   [partial]                the CTA's partial sum of every output, fp32 [hidden]
//   [qkv slots]              every rank's split-K partial of q, k, v, fp32 [cluster][3 * head_dim]
//   [attention slots]        every rank's running softmax, fp32 [cluster][head_dim + 2]
//   [attention local]        this rank's, before it is sent, fp32 [head_dim + 2]
//   [full x S][empty x S][qkv barrier][attention barrier]   mbarriers
//
// The base is aligned up to 1024 bytes at run time; the request includes that slack.
#pragma once

#include <cstddef>
#include <cstdint>

#include "clusterfusion/scalar_kind.h"

namespace clusterfusion::gpt_neox_layer {

constexpr int kElementBytes = 2;  // fp16 and bf16
constexpr uint32_t kSmemAlignment = 1024;

CLUSTERFUSION_HOST_DEVICE constexpr uint32_t round_up(uint32_t value, uint32_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

struct LayerSmemLayout {
  uint32_t ln1, ln2, mlp_input, attention_output, qkv, partial, qkv_slots, attention_slots, attention_local;
  uint32_t full, empty, qkv_barrier, attention_barrier, end;

  CLUSTERFUSION_HOST_DEVICE constexpr LayerSmemLayout(int head_dim, int hidden, int mlp_capacity, int cluster_size,
                                                      int stages, uint32_t stage_bytes)
      : ln1(static_cast<uint32_t>(stages) * stage_bytes),
        ln2(ln1 + round_up(hidden * kElementBytes, 16)),
        mlp_input(ln2 + round_up(hidden * kElementBytes, 16)),
        attention_output(mlp_input + round_up(mlp_capacity * kElementBytes, 16)),
        qkv(attention_output + round_up(head_dim, 64) * kElementBytes),
        partial(qkv + round_up(3 * head_dim * kElementBytes, 16)),
        qkv_slots(partial + static_cast<uint32_t>(hidden) * 4),
        attention_slots(qkv_slots + static_cast<uint32_t>(cluster_size * 3 * head_dim) * 4),
        attention_local(attention_slots + round_up(cluster_size * (head_dim + 2) * 4, 16)),
        full(attention_local + round_up((head_dim + 2) * 4, 16)),
        empty(full + static_cast<uint32_t>(stages) * 8),
        qkv_barrier(empty + static_cast<uint32_t>(stages) * 8),
        attention_barrier(qkv_barrier + 8),
        end(attention_barrier + 8) {}

  CLUSTERFUSION_HOST_DEVICE constexpr size_t request_bytes() const {
    return static_cast<size_t>(end) + kSmemAlignment;
  }
};

}  // namespace clusterfusion::gpt_neox_layer
