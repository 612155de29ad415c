#include "apps/speedrun/recipe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <stdexcept>

#include "apps/common/evaluate.h"
#include "data/loader.h"
#include "ema/lookahead.h"
#include "engine/ops.h"
#include "models/registry.h"
#include "models/whitening.h"

namespace polyak::app {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double kilostep_scale(const AirbenchRecipe& recipe) { return 1024.0 * (1.0 + 1.0 / (1.0 - recipe.momentum)); }
double sgd_lr(const AirbenchRecipe& recipe) { return recipe.lr / kilostep_scale(recipe); }
// The decay per step at learning-rate factor 1, which PyTorch's SGD multiplies by the lr.
double decay_per_step(const AirbenchRecipe& recipe) {
  return recipe.weight_decay * static_cast<double>(recipe.batch_size) / kilostep_scale(recipe);
}

bool ends_with(const std::string& text, const std::string& end) {
  return text.size() >= end.size() && text.compare(text.size() - end.size(), end.size(), end) == 0;
}

// The first `count` training images, normalised: the whitening layer's statistics.
void init_whitening(const AirbenchRecipe& recipe, nn::Module& model, const data::ImageSet& train) {
  std::vector<int64_t> first(static_cast<size_t>(std::min<int64_t>(recipe.whitening_images, train.count)));
  std::iota(first.begin(), first.end(), int64_t{0});
  const Tensor filters = models::whitening_filters(data::to_tensor(train, first), 2, recipe.whitening_eps);
  for (auto& [name, p] : model.named_parameters())
    if (name == "0.weight") Tensor(p).copy_(filters.to(p.device()));
}

data::LoaderOptions training_loader(const AirbenchRecipe& recipe, uint64_t seed, Device device) {
  data::LoaderOptions o;
  o.batch_size = recipe.batch_size;
  o.shuffle = true;
  o.drop_last = true;
  o.augment = true;
  o.augment_options = {.crop = true, .pad = recipe.translate, .flip = true, .reflect = true, .alternate_flip = true};
  o.seed = seed;
  o.device = device;
  return o;
}

}  // namespace

int64_t total_steps(const AirbenchRecipe& recipe, int64_t train_images) {
  const int64_t per_epoch = train_images / recipe.batch_size;
  return static_cast<int64_t>(std::ceil(static_cast<double>(per_epoch) * recipe.epochs));
}

double triangle_factor(const AirbenchRecipe& recipe, int64_t step, int64_t total) {
  const auto peak = static_cast<int64_t>(recipe.schedule_peak * static_cast<double>(total));  // int() as the recipe
  const double s = static_cast<double>(std::clamp<int64_t>(step, 0, total));
  if (step < peak) return recipe.schedule_start + (1.0 - recipe.schedule_start) * s / static_cast<double>(peak);
  return 1.0 + (recipe.schedule_end - 1.0) * (s - static_cast<double>(peak)) / static_cast<double>(total - peak);
}

double lookahead_decay(const AirbenchRecipe& recipe, int64_t step, int64_t total) {
  return std::pow(recipe.lookahead_decay_base, static_cast<double>(recipe.lookahead_every)) *
         std::pow(static_cast<double>(step) / static_cast<double>(total), recipe.lookahead_decay_power);
}

SgdOptions airbench_sgd_options(const AirbenchRecipe& recipe) {
  return {.lr = static_cast<float>(sgd_lr(recipe)),
          .momentum = static_cast<float>(recipe.momentum),
          .weight_decay = static_cast<float>(decay_per_step(recipe) / sgd_lr(recipe)),
          .nesterov = true};
}

namespace {

bool frozen(const std::string& name, bool train_whitening_bias) {
  const bool norm_weight = name.find(".norm") != std::string::npos && ends_with(name, ".weight");
  return name == "0.weight" || norm_weight || (name == "0.bias" && !train_whitening_bias);
}

}  // namespace

void set_trainable(nn::Module& model, bool train_whitening_bias) {
  for (auto& [name, p] : model.named_parameters()) Tensor(p).requires_grad_(!frozen(name, train_whitening_bias));
}

std::vector<SgdGroup> airbench_sgd_groups(const AirbenchRecipe& recipe, const nn::Module& model,
                                          bool train_whitening_bias) {
  const double bias_lr = sgd_lr(recipe) * recipe.bias_scaler;
  std::vector<SgdGroup> groups;
  int64_t offset = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    const int64_t begin = offset;
    offset += p.numel();
    const bool norm = name.find(".norm") != std::string::npos;
    SgdGroup group{.begin = begin, .end = offset};
    if (frozen(name, train_whitening_bias))
      group.lr_scale = 0;
    else if (norm)
      group = {begin, offset, static_cast<float>(recipe.bias_scaler), static_cast<float>(decay_per_step(recipe) / bias_lr)};
    else
      continue;  // the default group
    groups.push_back(group);
  }
  return groups;
}

namespace {

// What a run carries from epoch to epoch.
struct Training {
  const AirbenchRecipe& recipe;
  nn::Module& model;
  Sgd sgd;
  float base_lr = 0;
  int64_t total = 0, step = 0;
  std::optional<ema::Lookahead> lookahead{};
};

// One optimiser step on the loss summed over the batch, at the schedule's learning rate,
// then Lookahead's update every lookahead_every steps from its first epoch (the first
// one starts the average).
void train_step(Training& t, const data::Batch& batch, int64_t epoch, EpochRecord& record) {
  const AirbenchRecipe& recipe = t.recipe;
  t.sgd.options().lr = static_cast<float>(t.base_lr * triangle_factor(recipe, t.step, t.total));
  t.model.zero_grad();
  const Tensor logits = t.model(batch.images);
  const auto n = static_cast<float>(batch.labels.numel());
  const Tensor loss = mul_scalar(cross_entropy(logits, batch.labels, recipe.label_smoothing), n);
  loss.backward();
  t.sgd.step();
  ++t.step;
  if (recipe.lookahead && epoch >= recipe.lookahead_start_epoch && t.step % recipe.lookahead_every == 0) {
    if (!t.lookahead)
      t.lookahead.emplace(t.model);
    else
      t.lookahead->update(static_cast<float>(lookahead_decay(recipe, t.step, t.total)));
  }
  ++record.steps;
  record.last_batch_loss = loss.item() / n;
  record.last_batch_accuracy = 100.0 * static_cast<double>(argmax_matches(logits, batch.labels)) / n;
}

// An epoch (or what is left of the run's steps), ending on Lookahead's average.
EpochRecord train_epoch(Training& t, data::Loader& loader, int64_t epoch) {
  const auto start = Clock::now();
  const bool train_whitening_bias = epoch < t.recipe.whiten_bias_epochs;
  t.sgd.set_groups(airbench_sgd_groups(t.recipe, t.model, train_whitening_bias));
  set_trainable(t.model, train_whitening_bias);
  EpochRecord record{.epoch = epoch + 1};
  for (auto waited = Clock::now(); t.step < t.total; waited = Clock::now()) {
    std::optional<data::Batch> batch = loader.next();
    record.data_wait_seconds += seconds_since(waited);
    if (!batch) break;
    train_step(t, *batch, epoch, record);
  }
  if (t.lookahead) t.lookahead->update(1.0f);
  record.seconds = seconds_since(start);
  return record;
}

}  // namespace

SpeedrunResult run_airbench(const AirbenchRecipe& recipe, const data::ImageSet& train, const data::ImageSet& test,
                            uint64_t seed, Device device) {
  SpeedrunResult result;
  Rng rng(seed);
  std::shared_ptr<nn::Module> model = models::create_model("airbench94", train.num_classes, rng);
  model->to(device);
  model->pack_arenas();
  auto start = Clock::now();
  init_whitening(recipe, *model, train);
  result.whitening_seconds = seconds_since(start);

  std::vector<int64_t> indices(static_cast<size_t>(train.count));
  std::iota(indices.begin(), indices.end(), int64_t{0});
  data::Loader loader(train, indices, training_loader(recipe, seed, device));
  const SgdOptions sgd_options = airbench_sgd_options(recipe);
  Training t{.recipe = recipe,
             .model = *model,
             .sgd = Sgd(*model, sgd_options),
             .base_lr = sgd_options.lr,
             .total = total_steps(recipe, train.count)};
  model->train();
  for (int64_t epoch = 0; t.step < t.total; ++epoch) {
    const EpochRecord record = train_epoch(t, loader, epoch);
    result.training_seconds += record.seconds;
    result.epochs.push_back(record);
    std::printf("epoch %2lld  steps %lld  last batch: loss %.4f acc %.2f%%  (%.1f s, %.2f s waiting for data)\n",
                static_cast<long long>(record.epoch), static_cast<long long>(t.step), record.last_batch_loss,
                record.last_batch_accuracy, record.seconds, record.data_wait_seconds);
    std::fflush(stdout);
  }
  start = Clock::now();
  result.accuracy = top1_accuracy(predict(*model, test, {}, 1000, device, recipe.tta_level));
  result.tta_seconds = seconds_since(start);
  result.accuracy_without_tta =
      recipe.tta_level == 0 ? result.accuracy : top1_accuracy(predict(*model, test, {}, 1000, device, 0));
  return result;
}

}  // namespace polyak::app
