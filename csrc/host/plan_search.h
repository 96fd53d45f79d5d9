// The search every op's planner runs: enumerate the op's candidate layouts,
// drop those that do not fit the device, keep the cheapest by the op's cost
// model, and cache the result per problem. An op supplies the traits:
//
//   struct Traits {
//     using Candidate = ...;
//     using Scored = ...;                    // has a `cost` member with operator<
//     template <class F> void for_each_candidate(F&& visit) const;
//     std::optional<Scored> evaluate(const Candidate&) const;  // nullopt: does not fit
//   };
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <utility>

namespace clusterfusion {

// The cheapest scored candidate; on equal cost the first one visited.
template <typename Traits>
std::optional<typename Traits::Scored> search_plan(const Traits& traits) {
  std::optional<typename Traits::Scored> best;
  traits.for_each_candidate([&](const typename Traits::Candidate& candidate) {
    std::optional<typename Traits::Scored> scored = traits.evaluate(candidate);
    if (scored && (!best || scored->cost < best->cost)) best = std::move(scored);
  });
  return best;
}

// Plans by problem key, computed once per process and key.
template <typename Key, typename Plan>
class PlanCache {
 public:
  template <typename Make>
  const Plan& get(const Key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, make()).first;
    return it->second;  // map nodes never move
  }

 private:
  std::mutex mutex_;
  std::map<Key, Plan> plans_;
};

}  // namespace clusterfusion
