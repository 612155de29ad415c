#include "apps/train/data_parallel.h"

namespace polyak::app {

std::vector<Part> split_parts(const data::Batch& mine, int rank, int ranks, int64_t accum_steps) {
  const int64_t whole = mine.whole_size > 0 ? mine.whole_size : mine.images.size(0);
  const int64_t parts = static_cast<int64_t>(ranks) * accum_steps;
  const auto boundary = [&](int64_t p) { return whole * p / parts; };
  const int64_t first = static_cast<int64_t>(rank) * accum_steps, offset = boundary(first);
  std::vector<Part> out;
  for (int64_t p = first; p < first + accum_steps; ++p) {
    const int64_t begin = boundary(p) - offset, end = boundary(p + 1) - offset;
    if (accum_steps == 1 && ranks == 1) {
      out.push_back({mine.images, mine.labels, 1.0f});  // the whole batch, untouched
      break;
    }
    out.push_back({mine.images.slice(begin, end), mine.labels.slice(begin, end),
                   static_cast<float>(static_cast<double>(end - begin) / static_cast<double>(whole))});
  }
  return out;
}

std::vector<PartResult> gather_results(dist::Communicator& ranks, const std::vector<PartResult>& mine) {
  if (ranks.size() == 1) return mine;
  std::vector<double> flat;
  for (const PartResult& r : mine) flat.insert(flat.end(), {r.loss, r.correct, r.images});
  const std::vector<double> all = ranks.all_gather(flat.data(), static_cast<int64_t>(flat.size()));
  std::vector<PartResult> out;
  for (size_t i = 0; i + 2 < all.size(); i += 3) out.push_back({all[i], all[i + 1], all[i + 2]});
  return out;
}

void PartSum::add(const Tensor& t) {
  if (sum_.defined())
    sum_.add_(t);
  else
    sum_ = t.clone();
}

void combine_parts(dist::Communicator& ranks, nn::Module& model, const PartSum& gradients, const PartSum& statistics,
                   int64_t total_parts) {
  Tensor gradient = model.gradient_arena();
  if (!gradients.empty()) gradient.copy_(gradients.sum());
  dist::sum_in_rank_order(ranks, gradient);
  Tensor buffers = model.buffer_arena();
  if (buffers.numel() == 0) return;
  if (!statistics.empty()) buffers.copy_(statistics.sum());
  dist::sum_in_rank_order(ranks, buffers);
  buffers.mul_(static_cast<float>(1.0 / static_cast<double>(total_parts)));
}

}  // namespace polyak::app
