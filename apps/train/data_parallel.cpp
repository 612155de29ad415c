#include "apps/train/data_parallel.h"

#include <chrono>
#include <cmath>
#include <stdexcept>

#include "apps/common/evaluate.h"
#include "engine/ops.h"

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

std::vector<Tensor> copy_buffers(const nn::Module& model) {
  std::vector<Tensor> copies;
  for (const auto& [name, b] : model.named_buffers()) copies.push_back(b.clone());
  return copies;
}

void restore_buffers(const nn::Module& model, const std::vector<Tensor>& copies) {
  size_t i = 0;
  for (const auto& [name, b] : model.named_buffers()) Tensor(b).copy_(copies.at(i++));
}

std::string ExchangeTimes::per_step() const {
  if (steps == 0) return "";
  const auto ms = [&](double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", 1e3 * seconds / static_cast<double>(steps));
    return std::string(text);
  };
  return ", per step: wait " + ms(wait_seconds) + " ms, all-reduce " + ms(reduce_seconds) + " ms";
}

std::vector<PartResult> forward_backward(dist::Communicator& ranks, nn::Module& model, const std::vector<Part>& parts,
                                         const PartLoss& loss_of, const std::vector<Tensor>& buffers_before,
                                         ExchangeTimes& times) {
  const bool split = ranks.size() > 1 || parts.size() > 1;
  std::vector<PartResult> results;
  PartSum gradients, statistics;
  for (size_t p = 0; p < parts.size(); ++p) {
    if (p > 0) restore_buffers(model, buffers_before);
    model.zero_grad();
    const Tensor logits = model(parts[p].images);
    const Tensor loss = loss_of(logits, parts[p].labels);
    const float loss_value = loss.item();
    if (std::isfinite(loss_value)) (split ? mul_scalar(loss, parts[p].share) : loss).backward();
    results.push_back({loss_value, static_cast<double>(argmax_matches(logits, parts[p].labels)),
                       static_cast<double>(parts[p].labels.numel())});
    if (parts.size() > 1) {
      gradients.add(model.gradient_arena());
      statistics.add(model.buffer_arena());
    }
  }
  if (!split) return results;
  const auto start = std::chrono::steady_clock::now();
  results = gather_results(ranks, results);
  const auto gathered = std::chrono::steady_clock::now();
  combine_parts(ranks, model, gradients, statistics, static_cast<int64_t>(results.size()));
  times.wait_seconds += std::chrono::duration<double>(gathered - start).count();
  times.reduce_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - gathered).count();
  return results;
}

void check_same_start(dist::Communicator& ranks, const std::string& config_json, const nn::Module& model) {
  const auto differs = [&](const std::string& mine) {
    std::string roots = mine;
    dist::broadcast_string(ranks, roots, 0);
    return roots != mine;
  };
  const auto bytes = [](const Tensor& t) {
    const Tensor host = t.to(Device::CPU);
    return std::string(static_cast<const char*>(host.raw_data()), static_cast<size_t>(host.numel()) * sizeof(float));
  };
  // Every broadcast on every rank before any rank may throw.
  const bool settings = differs(config_json);
  const bool weights = differs(bytes(model.parameter_arena()));
  const bool statistics = differs(bytes(model.buffer_arena()));
  if (settings) throw std::invalid_argument("the run's settings differ from rank 0's");
  if (weights || statistics)
    throw std::invalid_argument("its initial weights differ from rank 0's: do all ranks run the same build of train?");
}

}  // namespace polyak::app
