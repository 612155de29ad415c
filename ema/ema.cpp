#include "ema/ema.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "ema/power_profile.h"
#include "engine/backend.h"

namespace polyak::ema {

BufferPolicy parse_buffer_policy(const std::string& name) {
  if (name == "average") return BufferPolicy::Average;
  if (name == "copy") return BufferPolicy::Copy;
  throw std::invalid_argument("--ema-buffers " + name + ": expected average or copy");
}

const char* buffer_policy_name(BufferPolicy policy) { return policy == BufferPolicy::Average ? "average" : "copy"; }

namespace {

// x > 0 rounded to `digits` significant decimal digits.
double round_significant(double x, int digits) {
  const double scale = std::pow(10.0, digits - 1 - std::floor(std::log10(x)));
  return std::round(x * scale) / scale;
}

}  // namespace

EmaOptions scaled_to_run(const EmaOptions& paper, int64_t total_steps, int64_t every) {
  constexpr double kPaperSteps = 200.0 * 391.0, kPaperEvery = 16.0, kFastestUpdates = 30.0;
  const double steps = static_cast<double>(std::max<int64_t>(total_steps, 1));
  // Each window's share of the run, f_k = T / ((1 - a_k) N), in the paper.
  std::vector<double> shares;
  for (float a : paper.decays) shares.push_back(kPaperEvery / ((1.0 - a) * kPaperSteps));
  EmaOptions scaled = paper;
  const double fastest_window = *std::min_element(shares.begin(), shares.end()) * steps;
  scaled.every = every > 0 ? every
                           : static_cast<int64_t>(std::clamp(std::floor(fastest_window / kFastestUpdates), 1.0, kPaperEvery));
  scaled.decays.clear();
  for (double share : shares) {
    const double one_minus = round_significant(static_cast<double>(scaled.every) / (share * steps), 2);
    scaled.decays.push_back(static_cast<float>(std::clamp(1.0 - one_minus, 0.5, 0.99999)));
  }
  // A very short run can clamp or round several decays to one value: keep each once.
  scaled.decays.erase(std::unique(scaled.decays.begin(), scaled.decays.end()), scaled.decays.end());
  return scaled;
}

EmaSet::EmaSet(nn::Module& model, EmaOptions options, dist::Communicator* ranks)
    : model_(model), options_(std::move(options)) {
  if (size() == 0) throw std::invalid_argument("an EMA set needs at least one decay or power average");
  if (size() > static_cast<size_t>(kMaxLerpTargets))
    throw std::invalid_argument("at most " + std::to_string(kMaxLerpTargets) + " averages in all, got " +
                                std::to_string(options_.decays.size()) + " decays and " +
                                std::to_string(options_.power_sigma_rels.size()) + " power averages");
  for (float sigma : options_.power_sigma_rels) gammas_.push_back(power_gamma(sigma));
  for (float a : options_.decays)
    if (!(a > 0.0f && a < 1.0f)) throw std::invalid_argument("EMA decay " + std::to_string(a) + ": expected a number in (0, 1)");
  if (options_.every < 1) throw std::invalid_argument("--ema-every " + std::to_string(options_.every) + ": expected >= 1");
  for (size_t k = 0; k < size(); ++k)
    for (size_t j = 0; j < k; ++j)
      if (name(j) == name(k)) throw std::invalid_argument("EMA decays " + name(j) + " and " + name(k) + " coincide");
  const Tensor& live = model_.parameter_arena();
  shard_ = {0, live.numel()};
  if (ranks && ranks->size() > 1) {
    ranks_ = ranks;
    shard_ = dist::aligned_share(live.numel(), ranks->rank(), ranks->size(), kShardAlign);
  }
  for (size_t k = 0; k < size(); ++k) {
    params_.push_back(live.slice(shard_.begin, shard_.end).clone());
    buffers_.push_back(model_.buffer_arena().clone());
  }
}

std::string EmaSet::name(size_t k) const {
  char buf[32];
  if (is_power(k))
    std::snprintf(buf, sizeof buf, "phema%g", static_cast<double>(sigma_rel(k)));
  else
    std::snprintf(buf, sizeof buf, "ema%g", static_cast<double>(decay(k)));
  return buf;
}

float warmed_up_decay(float a, int64_t every, bool warmup, int64_t t) {
  if (!warmup) return a;
  const float cap = static_cast<float>(t + 1) / static_cast<float>(t + 10);  // the paper's, at T = 16
  if (every == 16) return std::min(a, cap);
  return std::min(a, static_cast<float>(std::pow(static_cast<double>(cap), static_cast<double>(every) / 16.0)));
}

float EmaSet::effective_decay(size_t k, int64_t t) const {
  if (is_power(k)) return static_cast<float>(power_beta(gammas_[k - exponential_count()], t));
  return warmed_up_decay(decay(k), options_.every, options_.warmup, t);
}

bool EmaSet::after_step(int64_t t) {
  if (t <= 0) return false;
  const bool exponential_due = t % options_.every == 0;
  // Every average due moves towards the live weights in one pass: average = decay *
  // average + (1 - decay) * live is a lerp that keeps `decay` of the target.
  MultiLerp params, buffers;
  std::vector<size_t> due;
  for (size_t k = 0; k < size(); ++k) {
    if (!is_power(k) && !exponential_due) continue;
    due.push_back(k);
    const int slot = params.count++;
    buffers.count = params.count;
    params.kept[slot] = buffers.kept[slot] = effective_decay(k, t);
    params.target[slot] = params_[k].data<float>();
    buffers.target[slot] = buffers_[k].data<float>();
  }
  if (params.count == 0) return false;
  const Tensor& live = model_.parameter_arena();
  const Kernels& be = kernels(live.device());
  be.multi_lerp(params, shard_.size(), live.data<float>() + shard_.begin);
  const Tensor& live_buffers = model_.buffer_arena();
  if (live_buffers.numel() > 0) {
    if (options_.buffers == BufferPolicy::Average) {
      be.multi_lerp(buffers, live_buffers.numel(), live_buffers.data<float>());
    } else {
      for (size_t k : due) buffers_[k].copy_(live_buffers);
    }
  }
  if (!exponential_due) return false;
  ++updates_;
  return true;
}

Tensor EmaSet::whole_parameters(size_t k) const {
  if (!sharded()) return params_.at(k);
  return dist::gather_shards(*ranks_, params_.at(k), model_.parameter_arena().numel(), kShardAlign);
}

// Swapping storage is O(1) and exact both ways: in the model the average's memory, in
// the set (meanwhile) the live weights'.
EmaSet::Use::Use(EmaSet& set, size_t k) : set_(set), k_(k), whole_(set.whole_parameters(k)) {
  nn::swap_storage_data(set_.model_.parameter_arena(), whole_);
  if (set_.model_.buffer_arena().numel() > 0) nn::swap_storage_data(set_.model_.buffer_arena(), set_.buffers_.at(k_));
}

EmaSet::Use::~Use() {
  nn::swap_storage_data(set_.model_.parameter_arena(), whole_);
  if (set_.model_.buffer_arena().numel() > 0) nn::swap_storage_data(set_.model_.buffer_arena(), set_.buffers_.at(k_));
}

std::vector<nn::NamedTensor> EmaSet::state_tensors() const {
  std::vector<nn::NamedTensor> out;
  for (size_t k = 0; k < size(); ++k) {
    out.emplace_back("polyak.ema." + name(k) + ".params", whole_parameters(k));
    out.emplace_back("polyak.ema." + name(k) + ".buffers", buffers_[k]);
  }
  return out;
}

std::map<std::string, std::string> EmaSet::state_metadata() const {
  std::ostringstream decays, power;
  decays.precision(9);
  power.precision(9);
  for (size_t k = 0; k < exponential_count(); ++k) decays << (k ? "," : "") << decay(k);
  for (size_t k = exponential_count(); k < size(); ++k) power << (k > exponential_count() ? "," : "") << sigma_rel(k);
  std::map<std::string, std::string> metadata = {{"polyak.ema.decays", decays.str()},
                                                 {"polyak.ema.every", std::to_string(options_.every)},
                                                 {"polyak.ema.warmup", options_.warmup ? "on" : "off"},
                                                 {"polyak.ema.buffers", buffer_policy_name(options_.buffers)},
                                                 {"polyak.ema.updates", std::to_string(updates_)}};
  // Only when there are power averages: checkpoints from before them stay loadable.
  if (!options_.power_sigma_rels.empty()) metadata["polyak.ema.power"] = power.str();
  return metadata;
}

void EmaSet::load_state(const std::vector<nn::NamedTensor>& tensors, const std::map<std::string, std::string>& metadata) {
  const std::map<std::string, std::string> mine = state_metadata();
  const auto setting = [](const std::map<std::string, std::string>& m, const char* key) {
    const auto it = m.find(key);
    return it == m.end() ? std::string("(none)") : it->second;
  };
  for (const char* key :
       {"polyak.ema.decays", "polyak.ema.every", "polyak.ema.warmup", "polyak.ema.buffers", "polyak.ema.power"}) {
    if (setting(metadata, key) != setting(mine, key))
      throw std::invalid_argument(std::string("checkpoint EMA setting ") + key + " is " + setting(metadata, key) +
                                  ", this run has " + setting(mine, key));
  }
  // The update count, read before anything is copied: a malformed one leaves the set as it was.
  const auto count = metadata.find("polyak.ema.updates");
  if (count == metadata.end()) throw std::invalid_argument("checkpoint has no polyak.ema.updates");
  char* end = nullptr;
  errno = 0;
  const long long updates = std::strtoll(count->second.c_str(), &end, 10);
  if (count->second.empty() || *end != '\0' || errno == ERANGE || updates < 0)
    throw std::invalid_argument("checkpoint polyak.ema.updates is '" + count->second + "', expected an integer >= 0");
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = &t;
  // Every tensor is checked before any is copied: a bad checkpoint leaves the set as it was.
  std::vector<std::pair<Tensor, Tensor>> copies;  // (the set's tensor, the checkpoint's part of it)
  const auto find = [&](const std::string& n, const Shape& shape) {
    const auto it = by_name.find(n);
    if (it == by_name.end()) throw std::invalid_argument("checkpoint has no EMA tensor '" + n + "'");
    if (it->second->dtype() != DType::F32)
      throw std::invalid_argument("checkpoint EMA tensor '" + n + "' is not of the averages' type (float32)");
    if (it->second->shape() != shape)
      throw std::invalid_argument("checkpoint EMA tensor '" + n + "' has shape " + shape_str(it->second->shape()) +
                                  ", expected " + shape_str(shape));
    return *it->second;
  };
  for (size_t k = 0; k < size(); ++k) {
    const Tensor params = find("polyak.ema." + name(k) + ".params", model_.parameter_arena().shape());
    copies.emplace_back(params_[k], params.slice(shard_.begin, shard_.end));
    copies.emplace_back(buffers_[k], find("polyak.ema." + name(k) + ".buffers", buffers_[k].shape()));
  }
  for (auto& [dst, src] : copies) dst.copy_(src);
  updates_ = updates;
}

}  // namespace polyak::ema
