// Thread-block cluster building blocks (sm_90+): the split arrive/wait form of
// the cluster barrier. Plain inline PTX; no torch headers.
#pragma once

namespace clusterfusion::device {

// Marks this thread as started without ordering any memory access. Paired with
// cluster_wait(): once that returns, every CTA of the cluster is running, so its
// shared memory may be written through distributed shared memory.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}

// Waits for every thread of the cluster to arrive at the current barrier phase.
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait;" ::: "memory");
}

}  // namespace clusterfusion::device
