// Split-K reduction across a thread-block cluster through distributed shared
// memory. Each CTA (rank) of a cluster owns a contiguous share of the
// cluster's outputs. Every rank sends its fp32 partial sum of each owned
// (token, output) pair straight into the owner's inbox with st.async, which
// completes on the owner's inbox mbarrier. The owner armed that barrier with
// exactly the bytes it will receive, so it waits for its own data only: no
// cluster barrier, no fence, and a sender never waits for a slower peer. The
// owner adds the slots in rank order: no atomics, bitwise reproducible.
// No torch headers.
#pragma once

#include <cstdint>

#include "cluster.cuh"
#include "mbarrier.cuh"

namespace clusterfusion::device {

// kM: tokens per slot row (padded); kMaxRanks: the largest cluster it serves.
template <int kM, int kMaxRanks>
class ClusterInbox {
 public:
  // `slots` holds [cluster_size][kM][share] floats; `barrier` one mbarrier.
  // This rank owns outputs [rank * share, rank * share + owned) of the cluster.
  __device__ ClusterInbox(float* slots, uint64_t* barrier, int rank, int cluster_size, int share,
                          int owned)
      : slots_(slots), barrier_(barrier), rank_(rank), cluster_size_(cluster_size), share_(share),
        owned_(owned) {}

  static constexpr int slot_floats(int cluster_size, int share) { return cluster_size * kM * share; }

  // One thread, before the cluster arrive that peers wait on before sending:
  // every rank sends one fp32 per owned output and each of the m tokens.
  __device__ void init(int m) const {
    mbarrier_init(barrier_, 1);
    mbarrier_arrive_expect_tx(barrier_, cluster_size_ * m * owned_ * sizeof(float));
  }

  // Sends this rank's partial sum for token `m` and output `n_local` of the
  // cluster's block to the rank that owns that output. Every peer must have
  // passed init (cluster_wait after the arrive).
  __device__ void send(int m, int n_local, float value) const {
    const int owner = n_local / share_;
    const int j = n_local - owner * share_;
    const uint32_t slot = smem_address(slots_) + ((rank_ * kM + m) * share_ + j) * sizeof(float);
    st_async_f32(map_to_rank(slot, owner), value, map_to_rank(smem_address(barrier_), owner));
  }

  // Waits for every peer's bytes. Nobody touches this CTA's shared memory
  // afterwards, so it may exit without a cluster barrier.
  __device__ void wait() const { mbarrier_wait(barrier_, 0); }

  // The sum of every rank's partial for owned output j (0..owned) and token m, in rank order.
  __device__ float total(int m, int j) const {
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < kMaxRanks; ++q) {
      if (q < cluster_size_) sum += slots_[(q * kM + m) * share_ + j];
    }
    return sum;
  }

  // Calls f(m, j) for every (token m < tokens, owned output j) pair that
  // `thread` of `threads` handles. Walks the same pairs each time, so a thread
  // that stored per-pair data in one walk reads back only its own in the next.
  template <typename F>
  __device__ void for_each_owned(int tokens, int thread, int threads, F&& f) const {
    for (int idx = thread; idx < owned_ * tokens; idx += threads) f(idx / owned_, idx % owned_);
  }

  __device__ int first_owned() const { return rank_ * share_; }

 private:
  float* slots_;
  uint64_t* barrier_;
  int rank_;
  int cluster_size_;
  int share_;
  int owned_;
};

}  // namespace clusterfusion::device
