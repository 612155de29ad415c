#include "apps/train/protocol.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "apps/common/checkpoint.h"
#include "apps/common/cli.h"
#include "apps/common/evaluate.h"
#include "apps/common/metrics.h"
#include "apps/report/report.h"
#include "ema/bn_recompute.h"
#include "engine/io/atomic_file.h"
#include "models/registry.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Device device_of(const TrainConfig& c) { return device_from_flag(c.device); }

json metric_object(const Predictions& p) {
  return {{"accuracy", top1_accuracy(p)}, {"loss", mean_nll(p)}, {"ece", ece_equal_mass(p)}, {"ece15", ece_equal_width(p)},
          {"images", p.count()}};
}

}  // namespace

void MetricsLog::start_fresh() { io::write_file_atomically(path_.string(), ""); }

void MetricsLog::keep_through_epoch(int64_t epoch) {
  std::ifstream in(path_);
  std::string kept, line;
  while (std::getline(in, line)) {
    const json row = json::parse(line, nullptr, false);
    if (!row.is_discarded() && row.value("epoch", int64_t{0}) <= epoch && !row.contains("phase")) kept += line + "\n";
  }
  io::write_file_atomically(path_.string(), kept);
}

void MetricsLog::append(const json& row) {
  // The line goes out in one write() (more only on a short write): a run killed
  // meanwhile leaves at most a partial last line, which keep_through_epoch drops.
  const std::string line = row.dump() + "\n";
  const int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  int err = fd < 0 ? errno : 0;
  for (std::string_view rest = line; fd >= 0 && !err && !rest.empty();) {
    const ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0 && errno != EINTR) err = errno;
    if (n > 0) rest.remove_prefix(static_cast<size_t>(n));
  }
  if (fd >= 0 && ::close(fd) != 0 && !err) err = errno;
  if (err) throw io::FileWriteError(path_.string(), std::string("cannot append a row: ") + std::strerror(err));
}

Protocol::Protocol(const TrainConfig& config, nn::Module& model, ema::EmaSet* averages, const Datasets& sets,
                   const data::Split& split, fs::path out_dir, dist::Communicator& ranks,
                   const data::NoisyLabels* noise)
    : config_(config), model_(model), averages_(averages), sets_(sets), split_(split), out_dir_(std::move(out_dir)),
      ranks_(ranks), writer_(ranks.rank() == 0),
      recompute_loader_(sets.train, split.train,
                        recompute_loader_options(config.batch_size, config.augment, config.seed, device_of(config))) {
  for (const int64_t i : split.train)
    if (noise && noise->is_noisy(i)) {
      mislabelled_.push_back(i);
      wrong_labels_.push_back(noise->labels[static_cast<size_t>(i)]);
      clean_labels_.push_back(noise->clean[static_cast<size_t>(i)]);
    }
}

Protocol::Evaluation Protocol::evaluate_current(const std::string& name, const std::string& bn) {
  Evaluation e{name, bn, std::nullopt, std::nullopt, std::nullopt};
  const Device device = device_of(config_);
  if (!split_.val.empty()) e.val = metric_object(predict(model_, sets_.train, split_.val, 500, device));
  if (sets_.test.count) e.test = metric_object(predict(model_, sets_.test, {}, 500, device));
  if (!mislabelled_.empty()) {
    const Memorisation m =
        memorisation(predict(model_, sets_.train, mislabelled_, 500, device), wrong_labels_, clean_labels_);
    e.memorisation = {{"memorised", m.memorised_percent()}, {"corrected", m.corrected_percent()}, {"images", m.noisy}};
  }
  return e;
}

void Protocol::recompute(nn::Module& model, int64_t epoch) {
  recompute_loader_.start_epoch(epoch);
  recompute_bn_on(model, recompute_loader_, config_.bn_recompute_batches, &ranks_);
}

void Protocol::select(const Evaluation& e, int64_t epoch) {
  if (!e.val) return;
  json& entry = selection_[e.model];
  const auto improves = [&](const char* key, bool higher_is_better, const char* metric) {
    if (!entry.contains(key)) return true;
    const double best = entry[key]["val"][metric].get<double>(), now = (*e.val)[metric].get<double>();
    return higher_is_better ? now > best : now < best;
  };
  for (const auto& [key, higher, metric] : {std::tuple{"best_acc", true, "accuracy"}, std::tuple{"best_loss", false, "loss"}}) {
    if (!improves(key, higher, metric)) continue;
    const std::string file = std::string(key) + "_" + e.model + ".safetensors";
    if (writer_)
      save_model((out_dir_ / file).string(), model_,
                 {{"polyak.model", config_.model}, {"polyak.epoch", std::to_string(epoch)}, {"polyak.bn", e.bn}});
    entry[key] = {{"epoch", epoch}, {"bn", e.bn}, {"file", file}, {"val", *e.val}};
    if (e.test) entry[key]["test"] = *e.test;
  }
}

void Protocol::write_selection() const {
  if (!writer_) return;
  const json file = {{"reported", reported_}, {"models", selection_}};
  io::write_file_atomically((out_dir_ / "selection.json").string(), file.dump(2) + "\n");
}

std::string Protocol::evaluate_epoch(int64_t epoch, int64_t step, float lr, MetricsLog& log) {
  const json base = {{"epoch", epoch}, {"step", step}, {"lr", lr}};
  std::vector<Evaluation> evaluations;
  const auto record = [&](const Evaluation& e, bool selectable) {
    for (const auto& [split, metrics] :
         {std::pair{"val", e.val}, std::pair{"test", e.test}, std::pair{"train_noisy", e.memorisation}}) {
      if (!metrics) continue;
      json row = base;
      row.update({{"model", e.model}, {"bn", e.bn}, {"split", split}});
      row.update(*metrics);
      if (writer_) log.append(row);
    }
    if (selectable) select(e, epoch);
    evaluations.push_back(e);
  };
  // Early stopping is selected on the running statistics (the paper, Sec. 4.1): the
  // recomputed evaluations are logged for the curves, and the selected epochs get their
  // statistics recomputed once, after training (finish()).
  record(evaluate_current("sgd", "running"), true);
  for (size_t k = 0; averages_ && k < averages_->size(); ++k) {
    ema::EmaSet::Use use(*averages_, k);
    record(evaluate_current(averages_->name(k), "running"), true);
    if (config_.bn_recompute == "epoch") {
      ema::BufferBackup keep(model_);
      recompute(model_, epoch);
      record(evaluate_current(averages_->name(k), "recomputed"), false);
    }
  }
  write_selection();

  // Summary: SGD against the best average (by validation accuracy when there is a
  // validation split, else by test accuracy).
  const auto score = [](const Evaluation& e) {
    const auto& m = e.val ? e.val : e.test;
    return m ? (*m)["accuracy"].get<double>() : 0.0;
  };
  const auto test_acc = [](const Evaluation& e) { return e.test ? (*e.test)["accuracy"].get<double>() : 0.0; };
  const Evaluation* best = nullptr;
  for (const Evaluation& e : evaluations)
    if (e.model != "sgd" && (!best || score(e) > score(*best))) best = &e;
  char buf[200];
  const Evaluation& sgd = evaluations.front();
  if (sgd.val)
    std::snprintf(buf, sizeof buf, "  | sgd val %.2f%% test %.2f%%", score(sgd), test_acc(sgd));
  else
    std::snprintf(buf, sizeof buf, "  | sgd test %.2f%%", test_acc(sgd));
  std::string summary = buf;
  if (best) {
    std::snprintf(buf, sizeof buf, "  best %s (%s) %s %.2f%% test %.2f%%", best->model.c_str(), best->bn.c_str(),
                  best->val ? "val" : "test", score(*best), test_acc(*best));
    summary += buf;
  }
  return summary;
}

void Protocol::finish(int64_t epoch, int64_t step, float lr, MetricsLog& log) {
  const json base = {{"epoch", epoch}, {"step", step}, {"lr", lr}, {"phase", "end"}};
  const Evaluation final_sgd = evaluate_current("sgd", "running");  // the live weights are SGD's last
  if (config_.bn_recompute != "none") recompute_kept(epoch, base, log);
  reported_ = reported_rows(final_sgd, epoch);
  write_selection();
  std::printf("%s", reported_table(reported_).c_str());
  write_reliability(epoch);
}

void Protocol::recompute_kept(int64_t epoch, const json& base, MetricsLog& log) {
  const Device device = device_of(config_);
  Rng unused(0);
  const auto kept = models::create_model(config_.model, sets_.train.num_classes, unused);
  kept->to(device);
  kept->pack_arenas();
  for (auto& [name, entry] : selection_.items()) {
    for (const char* key : {"best_acc", "best_loss"}) {
      if (!entry.contains(key)) continue;
      json& chosen = entry[key];
      // Rank 0 kept the weights in its run folder; it reads them and sends them round.
      if (writer_) load_model((out_dir_ / chosen["file"].get<std::string>()).string(), *kept);
      for (Tensor arena : {kept->parameter_arena(), kept->buffer_arena()}) dist::broadcast(ranks_, arena, 0);
      recompute(*kept, epoch);
      const std::string file = std::string(key) + "_" + name + "_bn.safetensors";
      if (writer_)
        save_model((out_dir_ / file).string(), *kept,
                   {{"polyak.model", config_.model}, {"polyak.epoch", chosen["epoch"].dump()}, {"polyak.bn", "recomputed"}});
      json recomputed = {{"file", file}};
      for (const auto& [split, set, indices] : {std::tuple{"val", &sets_.train, &split_.val},
                                                std::tuple{"test", &sets_.test, (const std::vector<int64_t>*)nullptr}}) {
        if (indices ? indices->empty() : set->count == 0) continue;
        const json metrics = metric_object(predict(*kept, *set, indices ? *indices : std::vector<int64_t>{}, 500, device));
        json row = base;
        row.update({{"selection", key}, {"selected_epoch", chosen["epoch"]}, {"model", name}, {"bn", "recomputed"},
                    {"split", split}});
        row.update(metrics);
        if (writer_) log.append(row);
        recomputed[split] = metrics;
      }
      chosen["recomputed"] = recomputed;
    }
  }
}

std::optional<json> Protocol::kept_row(const std::string& model, const std::string& criterion, bool recomputed) const {
  if (!selection_.contains(model) || !selection_[model].contains(criterion)) return std::nullopt;
  const json& chosen = selection_[model][criterion];
  if (recomputed && !chosen.contains("recomputed")) return std::nullopt;
  const json& numbers = recomputed ? chosen["recomputed"] : chosen;
  json row = {{"model", model}, {"criterion", criterion}, {"epoch", chosen["epoch"]},
              {"bn", recomputed ? "recomputed" : "running"}};
  for (const char* field : {"val", "test", "file"})
    if (numbers.contains(field)) row[field] = numbers[field];
  return row;
}

json Protocol::reported_rows(const Evaluation& final_sgd, int64_t epoch) const {
  json rows = json::object();
  json& last = rows["sgd_final"] = {{"model", "sgd"}, {"criterion", "last epoch"}, {"epoch", epoch}, {"bn", "running"}};
  if (final_sgd.val) last["val"] = *final_sgd.val;
  if (final_sgd.test) last["test"] = *final_sgd.test;
  if (auto row = kept_row("sgd", "best_acc", false)) rows["sgd_best"] = *row;
  if (!averages_) return rows;
  // EMA (acc.) and EMA (loss): whichever decay was best on validation, at its selected
  // epoch, with running statistics.
  std::string most_accurate, lowest_loss;
  const auto val = [&](const std::string& model, const char* criterion, const char* metric) {
    return selection_[model][criterion]["val"][metric].get<double>();
  };
  // The paper's rows are about its exponential averages; power ones (post-hoc EMA) are
  // reported on their own.
  if (averages_->exponential_count() == 0) return rows;
  for (size_t k = 0; k < averages_->exponential_count(); ++k) {
    const std::string name = averages_->name(k);
    if (!selection_.contains(name)) continue;
    if (most_accurate.empty() || val(name, "best_acc", "accuracy") > val(most_accurate, "best_acc", "accuracy"))
      most_accurate = name;
    if (lowest_loss.empty() || val(name, "best_loss", "loss") < val(lowest_loss, "best_loss", "loss")) lowest_loss = name;
  }
  if (auto row = kept_row(most_accurate, "best_acc", false)) rows["ema_acc"] = *row;
  if (auto row = kept_row(lowest_loss, "best_loss", false)) rows["ema_loss"] = *row;
  // EMA (acc.)(BN) and EMA (loss)(BN): the slowest decay at its selected epochs, with
  // the statistics recomputed once after training.
  size_t slowest = 0;
  for (size_t k = 1; k < averages_->exponential_count(); ++k)
    if (averages_->decay(k) > averages_->decay(slowest)) slowest = k;
  if (auto row = kept_row(averages_->name(slowest), "best_acc", true)) rows["ema_acc_bn"] = *row;
  if (auto row = kept_row(averages_->name(slowest), "best_loss", true)) rows["ema_loss_bn"] = *row;
  return rows;
}

void Protocol::write_reliability(int64_t epoch) {
  // Reliability diagrams on the test set: SGD and the best average by validation
  // accuracy (or test accuracy without a validation split), final weights.
  if (sets_.test.count == 0) return;
  const Device device = device_of(config_);
  json diagrams;
  diagrams["sgd"] = reliability_entry(predict(model_, sets_.test, {}, 500, device), "running");
  if (averages_ && averages_->size() > 0) {
    size_t best = 0;
    double best_score = -1;
    for (size_t k = 0; k < averages_->size(); ++k) {
      ema::EmaSet::Use use(*averages_, k);
      ema::BufferBackup keep(model_);
      if (config_.bn_recompute != "none") recompute(model_, epoch);
      const Predictions p = split_.val.empty() ? predict(model_, sets_.test, {}, 500, device)
                                               : predict(model_, sets_.train, split_.val, 500, device);
      if (top1_accuracy(p) > best_score) {
        best_score = top1_accuracy(p);
        best = k;
      }
    }
    ema::EmaSet::Use use(*averages_, best);
    ema::BufferBackup keep(model_);
    if (config_.bn_recompute != "none") recompute(model_, epoch);
    diagrams[averages_->name(best)] = reliability_entry(predict(model_, sets_.test, {}, 500, device),
                                                        config_.bn_recompute != "none" ? "recomputed" : "running");
  }
  if (writer_)
    io::write_file_atomically((out_dir_ / "reliability.json").string(),
                            json{{"split", "test"}, {"epoch", epoch}, {"models", diagrams}}.dump(2) + "\n");
}

}  // namespace polyak::app
