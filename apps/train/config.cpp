#include "apps/common/cli.h"
#include "apps/train/config.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "apps/common/datasets.h"
#include "ema/power_profile.h"
#include "engine/optim/schedule.h"
#include "models/registry.h"

namespace polyak::app {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrainConfig, model, dataset, data_dir, epochs, batch_size, accum_steps, lr,
                                                momentum, nesterov, weight_decay, sched, warmup_epochs, milestones, gamma, seed, seeds,
                                                threads, val_split, labels_file, label_noise, noise_type, output, resume,
                                                init, augment, shuffle, max_steps, save_every, on_nonfinite, max_skips,
                                                eval_every, train_subset, test_subset, device, tf32, deterministic,
                                                ema_decays, ema_every, ema_warmup, ema_buffers, phema, phema_every, phema_dtype,
                                                bn_recompute, bn_recompute_batches)

void add_train_flags(CLI::App& app, TrainConfig& c) {
  app.add_option("--model", c.model, "architecture")->capture_default_str();
  app.add_option("--dataset", c.dataset, "cifar10, cifar100 or folder")->capture_default_str();
  app.add_option("--data", c.data_dir, "dataset folder (default: $POLYAK_DATA/<dataset> or ../shared/data/<dataset>)");
  app.add_option("--epochs", c.epochs, "training epochs")->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "images per step (over all ranks under mpirun)")->capture_default_str();
  app.add_option("--accum-steps", c.accum_steps,
                 "micro-batches per step on each rank, their gradients summed (gradient accumulation)")
      ->capture_default_str();
  app.add_option("--lr", c.lr, "peak learning rate")->capture_default_str();
  app.add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app.add_flag("--nesterov,!--no-nesterov", c.nesterov, "Nesterov momentum (default on)");
  // These two hold -1 for "not given" (resolve() fills in the default), so a negative
  // value typed by the user is refused while parsing, before it could pass for one.
  const CLI::Validator non_negative(
      [](std::string& value) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(value.c_str(), &end);
        return end != value.c_str() && x < 0 ? "expected a number >= 0, got " + value : std::string();
      },
      "NUMBER >= 0");
  app.add_option("--weight-decay", c.weight_decay, "L2 weight decay (default: 1e-4 ResNets, 5e-4 others)")
      ->check(non_negative);
  app.add_option("--sched", c.sched, "cosine, multistep or constant")->capture_default_str();
  app.add_option("--warmup-epochs", c.warmup_epochs, "linear warm-up epochs (default: 5/200 of the run)")
      ->check(non_negative);
  app.add_option("--milestones", c.milestones, "multistep epochs (default: 30%,60%,80% of the run)")->delimiter(',');
  app.add_option("--gamma", c.gamma, "multistep factor")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of initialisation, shuffling, augmentation, split and noise")->capture_default_str();
  app.add_option("--seeds", c.seeds,
                 "train once per seed (e.g. 0,1,2) into OUTPUT/seed<s>, then aggregate them (OUTPUT/aggregate.json); "
                 "the same command again resumes")
      ->delimiter(',');
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
  app.add_option("--val-split", c.val_split, "fraction of the training images held out for validation")->capture_default_str();
  app.add_option("--labels", c.labels_file, "training labels from a file (e.g. CIFAR-N .u8: one byte per image)");
  app.add_option("--label-noise", c.label_noise, "synthetic label-noise rate")->capture_default_str();
  app.add_option("--noise-type", c.noise_type, "sym or asym")->capture_default_str();
  app.add_option("--output", c.output, "run folder (default: runs/<model>_<dataset>_s<seed>)");
  app.add_option("--resume", c.resume, "continue the run of this training checkpoint (last.safetensors)");
  app.add_option("--init", c.init, "start from the weights of this checkpoint");
  app.add_flag("!--no-augment", c.augment, "no random crop and flip");
  app.add_flag("!--no-shuffle", c.shuffle, "keep the training images in order");
  app.add_option("--max-steps", c.max_steps, "stop after this many optimiser steps (0: no limit)")->capture_default_str();
  app.add_option("--save-every", c.save_every,
                 "also write the checkpoint last.safetensors every N optimiser steps (0: at the end of each epoch only)")
      ->capture_default_str();
  app.add_option("--on-nonfinite", c.on_nonfinite,
                 "a non-finite loss or gradient: stop (exit code 3) or skip the step (no update, a warning)")
      ->capture_default_str();
  app.add_option("--max-skips", c.max_skips, "with --on-nonfinite skip: stop after more than N skipped steps in a row")
      ->capture_default_str();
  app.add_option("--eval-every", c.eval_every, "evaluate every N epochs")->capture_default_str();
  app.add_option("--train-subset", c.train_subset, "use only the first N training images (0: all)")->capture_default_str();
  app.add_option("--test-subset", c.test_subset, "evaluate on the first N test images only (0: all)")->capture_default_str();
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_flag("--tf32", c.tf32, "GPU: TF32 tensor-core math for products and convolutions (default: exact FP32)");
  app.add_flag("--deterministic", c.deterministic, "GPU: only deterministic cuDNN algorithms (bit-identical reruns)");
  app.add_option("--ema-decays", c.ema_decays,
                 "EMA decays: a list (0.99,0.999), 'paper' (0.968..0.998 at T=16), 'scaled' (the paper's, scaled to "
                 "the run's length) or 'none'")->capture_default_str();
  app.add_option("--ema-every", c.ema_every, "EMA period T in optimiser steps (0: 16, or derived from the run's length with 'scaled')")->capture_default_str();
  app.add_option_function<std::string>(
         "--ema-warmup", [&c](const std::string& v) { c.ema_warmup = v == "on"; },
         "decay warm-up min(a, (t+1)/(t+10)): on or off")
      ->check(CLI::IsMember({"on", "off"}))
      ->default_str("on");
  app.add_option("--ema-buffers", c.ema_buffers, "BN buffers of the averages: average or copy")->capture_default_str();
  app.add_option("--phema", c.phema,
                 "power-function averages to track for post-hoc EMA: sigma_rel values in (0, 0.288), e.g. 0.05,0.10")
      ->capture_default_str();
  app.add_option("--phema-every", c.phema_every, "snapshot the power averages every N steps (0: about 20 per run)")
      ->capture_default_str();
  app.add_option("--phema-dtype", c.phema_dtype, "snapshots' floats: f32, or f16 (IEEE half: half the size)")
      ->capture_default_str();
  app.add_option("--bn-recompute", c.bn_recompute, "recompute BN statistics of the averages: none, epoch or end")->capture_default_str();
  app.add_option("--bn-recompute-batches", c.bn_recompute_batches, "batches per recompute (0: one full pass)")->capture_default_str();
}

void TrainConfig::resolve() {
  if (data_dir.empty()) data_dir = default_data_dir(dataset);
  if (weight_decay < 0) weight_decay = models::default_weight_decay(model);
  if (warmup_epochs < 0) warmup_epochs = 5.0f * static_cast<float>(epochs) / 200.0f;
  if (milestones.empty() && sched == "multistep")
    for (double f : {0.3, 0.6, 0.8}) milestones.push_back(static_cast<int>(std::lround(f * epochs)));
  if (output.empty()) output = "runs/" + model + "_" + dataset + "_s" + std::to_string(seed);
}

void TrainConfig::validate() const {
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--data", data_dir}, {"--labels", labels_file},
                                   {"--output", output}, {"--resume", resume}, {"--init", init}})
    if (!is_utf8(path)) bad_flag(flag, path, "a path in UTF-8 (the run's configuration is stored as JSON)");
  const auto& names = models::model_names();
  if (std::find(names.begin(), names.end(), model) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    bad_flag("--model", model, "one of " + known);
  }
  if (dataset != "cifar10" && dataset != "cifar100" && dataset != "folder") bad_flag("--dataset", dataset, "cifar10, cifar100 or folder");
  if (epochs < 1 || epochs > 100000) bad_flag("--epochs", std::to_string(epochs), "an integer from 1 to 100000");
  if (batch_size < 1 || batch_size > 65536) bad_flag("--batch-size", std::to_string(batch_size), "an integer from 1 to 65536");
  if (accum_steps < 1 || accum_steps > batch_size)
    bad_flag("--accum-steps", std::to_string(accum_steps), "an integer from 1 to --batch-size (" + std::to_string(batch_size) + ")");
  if (!(lr > 0) || !std::isfinite(lr)) bad_flag("--lr", number_str(lr), "a positive number");
  if (!(momentum >= 0 && momentum < 1)) bad_flag("--momentum", number_str(momentum), "a number in [0, 1)");
  if (nesterov && momentum == 0) bad_flag("--nesterov with --momentum", "0", "momentum > 0 (or --no-nesterov)");
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) bad_flag("--weight-decay", number_str(weight_decay), "a number >= 0");
  parse_schedule_kind(sched);
  if (!(warmup_epochs >= 0 && warmup_epochs <= epochs)) bad_flag("--warmup-epochs", number_str(warmup_epochs), "a number in [0, --epochs]");
  for (int m : milestones)
    if (m < 1 || m > epochs) bad_flag("--milestones", std::to_string(m), "epochs in [1, --epochs]");
  if (!(gamma > 0 && gamma <= 1)) bad_flag("--gamma", number_str(gamma), "a number in (0, 1]");
  if (threads < 0 || threads > 1024) bad_flag("--threads", std::to_string(threads), "an integer from 1 to 1024 (0: all cores)");
  if (!(val_split >= 0 && val_split < 1)) bad_flag("--val-split", number_str(val_split), "a fraction in [0, 1)");
  if (!(label_noise >= 0 && label_noise <= 1)) bad_flag("--label-noise", number_str(label_noise), "a rate in [0, 1]");
  if (noise_type != "sym" && noise_type != "asym") bad_flag("--noise-type", noise_type, "sym or asym");
  if (label_noise > 0 && !labels_file.empty()) bad_flag("--label-noise with --labels", number_str(label_noise), "only one label source");
  if (max_steps < 0) bad_flag("--max-steps", std::to_string(max_steps), "an integer >= 0");
  if (save_every < 0) bad_flag("--save-every", std::to_string(save_every), "an integer >= 0 (0: at epoch ends only)");
  if (on_nonfinite != "stop" && on_nonfinite != "skip") bad_flag("--on-nonfinite", on_nonfinite, "stop or skip");
  if (max_skips < 1 || max_skips > 1000000) bad_flag("--max-skips", std::to_string(max_skips), "an integer from 1 to 1000000");
  if (eval_every < 1) bad_flag("--eval-every", std::to_string(eval_every), "an integer >= 1");
  if (train_subset < 0) bad_flag("--train-subset", std::to_string(train_subset), "an integer >= 0");
  if (test_subset < 0) bad_flag("--test-subset", std::to_string(test_subset), "an integer >= 0");
  if (!resume.empty() && !init.empty()) bad_flag("--init with --resume", init, "only one of them");
  if (seeds.size() > 100) bad_flag("--seeds", std::to_string(seeds.size()) + " seeds", "at most 100");
  for (size_t i = 0; i < seeds.size(); ++i)
    if (std::find(seeds.begin(), seeds.begin() + static_cast<std::ptrdiff_t>(i), seeds[i]) != seeds.begin() + static_cast<std::ptrdiff_t>(i))
      bad_flag("--seeds", std::to_string(seeds[i]), "each seed once");
  if (!seeds.empty() && !resume.empty())
    bad_flag("--seeds with --resume", resume, "the same --seeds command again (it resumes each seed)");
  if (!init.empty()) require_file("--init", init);
  if (device != "cpu" && device != "cuda") bad_flag("--device", device, "cpu or cuda");
  (void)ema_options(1);  // parses and range-checks the decays
  if (ema_every < 0) bad_flag("--ema-every", std::to_string(ema_every), "an integer >= 1 (0: 16)");
  if (phema_every < 0) bad_flag("--phema-every", std::to_string(phema_every), "an integer >= 0 (0: about 20 per run)");
  if (phema_dtype != "f32" && phema_dtype != "f16") bad_flag("--phema-dtype", phema_dtype, "f32 or f16");
  if (ema_buffers != "average" && ema_buffers != "copy") bad_flag("--ema-buffers", ema_buffers, "average or copy");
  if (bn_recompute != "none" && bn_recompute != "epoch" && bn_recompute != "end")
    bad_flag("--bn-recompute", bn_recompute, "none, epoch or end");
  if (bn_recompute_batches < 0) bad_flag("--bn-recompute-batches", std::to_string(bn_recompute_batches), "an integer >= 0");
}

namespace {

std::vector<float> parse_sigma_rels(const std::string& list_text) {
  std::vector<float> sigmas;
  std::stringstream list(list_text);
  std::string item;
  const char* expected = "sigma_rel values in (0, 1/sqrt(12) = 0.2887) separated by commas, e.g. 0.05,0.10";
  while (std::getline(list, item, ',')) {
    char* end = nullptr;
    const float sigma = std::strtof(item.c_str(), &end);
    if (item.empty() || *end != '\0') bad_flag("--phema", list_text, expected);
    try {
      (void)ema::power_gamma(sigma);
    } catch (const std::invalid_argument&) {
      bad_flag("--phema", list_text, expected);
    }
    if (std::find(sigmas.begin(), sigmas.end(), sigma) != sigmas.end()) bad_flag("--phema", list_text, "each value once");
    sigmas.push_back(sigma);
  }
  return sigmas;
}

}  // namespace

int64_t TrainConfig::phema_period(int64_t total_steps) const {
  return phema_every > 0 ? phema_every : std::max<int64_t>(1, (total_steps + 19) / 20);
}

std::optional<ema::EmaOptions> TrainConfig::ema_options(int64_t total_steps) const {
  const std::vector<float> sigmas = parse_sigma_rels(phema);
  if (ema_decays == "none" || ema_decays.empty()) {
    if (sigmas.empty()) return std::nullopt;
    ema::EmaOptions power_only;
    power_only.decays.clear();
    power_only.buffers = ema::parse_buffer_policy(ema_buffers);
    power_only.power_sigma_rels = sigmas;
    return power_only;
  }
  ema::EmaOptions options;  // the paper's decays at T = 16
  options.warmup = ema_warmup;
  options.buffers = ema::parse_buffer_policy(ema_buffers);
  if (ema_decays == "scaled") {
    options = ema::scaled_to_run(options, total_steps, ema_every);
  } else if (ema_decays != "paper") {
    options.decays.clear();
    std::stringstream list(ema_decays);
    std::string item;
    while (std::getline(list, item, ',')) {
      char* end = nullptr;
      const float a = std::strtof(item.c_str(), &end);
      if (item.empty() || *end != '\0' || !(a > 0.0f && a < 1.0f))
        bad_flag("--ema-decays", ema_decays, "decays in (0, 1) separated by commas, or paper, scaled or none");
      options.decays.push_back(a);
    }
    if (options.decays.empty() || options.decays.size() > 8)
      bad_flag("--ema-decays", ema_decays, "1 to 8 decays");
  }
  if (ema_every > 0) options.every = ema_every;
  options.power_sigma_rels = sigmas;
  if (options.decays.size() + sigmas.size() > 8)
    bad_flag("--phema", phema, "at most 8 averages in all with --ema-decays (" + std::to_string(options.decays.size()) + " decays)");
  return options;
}

TrainConfig TrainConfig::definition() const {
  TrainConfig d = *this;
  d.resume.clear();
  d.output.clear();
  d.max_steps = 0;
  d.threads = 0;
  return d;
}

std::string TrainConfig::to_json() const { return nlohmann::json(*this).dump(2); }

namespace {

// Whether `value` may be read into the setting whose default is `like` without a
// cast that loses or invents anything: the same JSON kind, an integer for an integer
// setting (nlohmann would truncate 10.7 to 10), a finite number within float's range
// for a real one (a larger one does not convert: undefined behaviour), and integers in
// a list of integers.
bool same_kind(const nlohmann::json& value, const nlohmann::json& like) {
  if (like.is_number_integer()) return value.is_number_integer();
  if (like.is_number_float())
    return value.is_number() && std::isfinite(value.get<double>()) &&
           std::fabs(value.get<double>()) <= std::numeric_limits<float>::max();
  if (like.is_array())
    return value.is_array() && std::all_of(value.begin(), value.end(), [](const auto& x) { return x.is_number_integer(); });
  return value.type() == like.type();
}

}  // namespace

TrainConfig TrainConfig::from_json(const std::string& text) {
  // Read strictly: a hand-edited or damaged configuration must fail with a reason,
  // never continue as a silently different run. Settings it lacks keep their defaults
  // (a checkpoint of an older version, written before the setting existed).
  const nlohmann::json given = nlohmann::json::parse(text, nullptr, false);
  if (given.is_discarded() || !given.is_object()) throw std::invalid_argument("bad run configuration: not a JSON object");
  const nlohmann::json defaults = TrainConfig{};
  for (const auto& [key, value] : given.items()) {
    if (!defaults.contains(key)) throw std::invalid_argument("bad run configuration: unknown setting '" + key + "'");
    if (!same_kind(value, defaults[key]))
      throw std::invalid_argument("bad run configuration: " + key + " is " + value.dump() + ", expected a value like " +
                                  defaults[key].dump());
  }
  TrainConfig config = given.get<TrainConfig>();
  // Integers that do not fit their setting (a seed below 0, epochs past 2^31) come out
  // changed: what was read must write back as it was given.
  const nlohmann::json read = config;
  for (const auto& [key, value] : given.items())
    if (!defaults[key].is_number_float() && read[key].dump() != value.dump())  // dump: nlohmann finds -1 == 2^64 - 1
      throw std::invalid_argument("bad run configuration: " + key + " " + value.dump() + " is out of range");
  return config;
}

}  // namespace polyak::app
