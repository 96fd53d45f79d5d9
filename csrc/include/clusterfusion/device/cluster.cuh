// Thread-block cluster primitives (sm_90+): the split arrive/wait form of the
// cluster barrier and asynchronous stores into a peer's shared memory.
// Plain inline PTX; no torch headers.
#pragma once

#include <cstdint>

namespace clusterfusion::device {

// Marks this thread as started without ordering any memory access. Paired with
// cluster_wait(): once that returns, every CTA of the cluster is running, so its
// shared memory (and the barriers initialized before the arrive) may be used
// through distributed shared memory.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}

// Waits for every thread of the cluster to arrive at the current barrier phase.
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait;" ::: "memory");
}

// The address of the same shared-memory location in the CTA of rank `rank`.
__device__ __forceinline__ uint32_t map_to_rank(uint32_t smem_addr, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr), "r"(rank));
  return remote;
}

// Stores `value` at `remote_addr` (a mapped address, see map_to_rank) and
// completes 4 transaction bytes on the mbarrier at `remote_bar` in the same CTA.
__device__ __forceinline__ void st_async_f32(uint32_t remote_addr, float value, uint32_t remote_bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote_addr),
      "r"(__float_as_uint(value)), "r"(remote_bar)
      : "memory");
}

}  // namespace clusterfusion::device
