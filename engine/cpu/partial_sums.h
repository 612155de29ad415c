// A sum over items (a filter gradient's images, or Winograd's tasks) computed in parts
// across the thread team, and the same on every run with the same thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cpu/scratch.h"
#include "engine/parallel.h"

namespace polyak::cpu {

// out (size floats) = the sum over items [0, items), where accumulate(begin, end, acc)
// overwrites acc (size floats) with the sum over items [begin, end). One slot per
// thread (at most one per item); parallel_for hands each thread a contiguous run of
// slots, and the run's first slot holds the sum over its items. The partials are then
// added in slot order, so the sum does not depend on which thread finished first.
template <class Accumulate>
void sum_in_slots(int64_t items, int64_t size, int64_t cost_per_item, float* out, Accumulate&& accumulate) {
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(num_threads(), items));
  // The partials belong to the calling thread; the workers reach them through this
  // pointer (naming a thread_local inside the parallel body would give each worker its own).
  thread_local std::vector<std::vector<float>> partial_buffers;
  if (static_cast<int64_t>(partial_buffers.size()) < slots) partial_buffers.resize(static_cast<size_t>(slots));
  for (int64_t t = 0; t < slots; ++t) scratch(partial_buffers[t], size);
  std::vector<float>* const partials = partial_buffers.data();
  std::vector<char> used(static_cast<size_t>(slots), 0);

  if (items > 0) {
    parallel_for(slots, cost_per_item * items / slots, [&](int64_t slot_begin, int64_t slot_end) {
      float* acc = partials[slot_begin].data();
      const int64_t begin = items * slot_begin / slots, end = items * slot_end / slots;
      if (end > begin) accumulate(begin, end, acc);
      used[slot_begin] = end > begin;
    });
  }

  std::vector<const float*> sources;
  for (int64_t t = 0; t < slots; ++t)
    if (used[t]) sources.push_back(partials[t].data());
  parallel_for(size, static_cast<int64_t>(sources.size()) + 1, [&](int64_t begin, int64_t end) {
    if (sources.empty()) {
      std::fill(out + begin, out + end, 0.0f);
      return;
    }
    std::copy(sources[0] + begin, sources[0] + end, out + begin);
    for (size_t t = 1; t < sources.size(); ++t) {
      const float* src = sources[t];
      for (int64_t i = begin; i < end; ++i) out[i] += src[i];
    }
  });
}

}  // namespace polyak::cpu
