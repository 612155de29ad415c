// The paper's evaluation protocol, run after each evaluated epoch and at the end:
//
// - the SGD model and every EMA are evaluated on the validation split (if any) and the
//   test set; with --bn-recompute epoch each EMA also after recomputing its BatchNorm
//   statistics. Each evaluation is a row of metrics.jsonl: epoch, step, lr, model
//   ("sgd", "ema0.998"), bn ("running" | "recomputed"), split, accuracy, loss, ece
//   (100 equal-mass bins, the paper's), ece15 (15 equal-width bins), images. Trained
//   on noisy labels, each evaluation also has a row of split "train_noisy": of the
//   training images whose label is wrong, the percent predicted as that wrong label
//   ("memorised") and as the clean one ("corrected"), the paper's Fig. 7.
// - model selection (the paper's early stopping, Sec. 4.1): for every model, the epoch
//   of best validation accuracy and the one of lowest validation loss, both judged on
//   the running BN statistics (with --bn-recompute epoch the recomputed evaluations are
//   logged, not selected); those weights are kept as best_acc_<model>.safetensors /
//   best_loss_<model>.safetensors (model only, running statistics) and summarised in
//   selection.json under "models".
// - at the end, with --bn-recompute end or epoch, every kept model gets its BN
//   statistics recomputed once and is evaluated again (rows with "phase": "end"), kept
//   too as best_acc_<model>_bn.safetensors / best_loss_<model>_bn.safetensors;
//   reliability.json holds the reliability diagrams of SGD and the best EMA.
// - the paper's reported rows, in selection.json under "reported" and as the table
//   printed at the end: SGD final (the last epoch), SGD best (best validation
//   accuracy), EMA (acc.) / EMA (loss) (the decay and epoch best on validation, by
//   accuracy / loss, running statistics), and EMA (acc.)(BN) / EMA (loss)(BN) (the
//   slowest decay at its selected epochs, statistics recomputed after training).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/common/datasets.h"
#include "apps/train/config.h"
#include "data/labels.h"
#include "data/loader.h"
#include "data/split.h"
#include "ema/ema.h"

namespace polyak::app {

class MetricsLog;

class Protocol {
 public:
  // `noise`: the labels training sees when they are noisy (nullptr: the clean ones).
  // In a job of several `ranks` every rank evaluates alike (BN recompute shares its
  // batches out; the averages are gathered) and rank 0 writes the files.
  Protocol(const TrainConfig& config, nn::Module& model, ema::EmaSet* averages, const Datasets& sets,
           const data::Split& split, std::filesystem::path out_dir, dist::Communicator& ranks,
           const data::NoisyLabels* noise = nullptr);

  // Evaluates every model after `epoch` (1-based, completed); appends the rows to
  // `log`, updates the selection and its files. Returns a one-line summary.
  std::string evaluate_epoch(int64_t epoch, int64_t step, float lr, MetricsLog& log);
  // After training: recomputed evaluations of the kept models, reliability.json.
  void finish(int64_t epoch, int64_t step, float lr, MetricsLog& log);

  // The selection so far, for checkpoints (a resumed run continues it exactly).
  nlohmann::json selection() const { return selection_; }
  void set_selection(nlohmann::json selection) { selection_ = std::move(selection); }

 private:
  struct Evaluation {
    std::string model, bn;
    std::optional<nlohmann::json> val, test;  // metric objects
    std::optional<nlohmann::json> memorisation;  // on the wrongly labelled training images
  };
  Evaluation evaluate_current(const std::string& name, const std::string& bn);
  // Recomputes `model`'s BN statistics on training batches (the recompute loader's
  // stream for `epoch`).
  void recompute(nn::Module& model, int64_t epoch);
  void select(const Evaluation& e, int64_t epoch);
  // Every kept model with its BN statistics recomputed once, after training, in a
  // model instance of its own (the live weights and the averages stay as they are):
  // kept as <criterion>_<model>_bn.safetensors, evaluated, and its numbers added to its
  // selection entry as "recomputed".
  void recompute_kept(int64_t epoch, const nlohmann::json& base, MetricsLog& log);
  // A selection entry as a row of the reported table, with its running or recomputed
  // numbers; nullopt when there is no such entry.
  std::optional<nlohmann::json> kept_row(const std::string& model, const std::string& criterion, bool recomputed) const;
  nlohmann::json reported_rows(const Evaluation& final_sgd, int64_t epoch) const;
  void write_reliability(int64_t epoch);
  void write_selection() const;

  const TrainConfig& config_;
  nn::Module& model_;
  ema::EmaSet* averages_;
  const Datasets& sets_;
  const data::Split& split_;
  std::filesystem::path out_dir_;
  dist::Communicator& ranks_;
  const bool writer_;
  data::Loader recompute_loader_;
  // The training images whose label is wrong, with that label and the clean one.
  std::vector<int64_t> mislabelled_, wrong_labels_, clean_labels_;
  nlohmann::json selection_ = nlohmann::json::object();
  nlohmann::json reported_ = nlohmann::json::object();  // the paper's rows, at the end
};

// Appends rows to metrics.jsonl (each written at once, so a crash loses nothing reported;
// a failed write is io::FileWriteError naming the file and the system's reason).
class MetricsLog {
 public:
  explicit MetricsLog(std::filesystem::path path) : path_(std::move(path)) {}
  void start_fresh();
  // Drops rows of epochs after `epoch`, left by a run that stopped before its next
  // checkpoint, so that a resumed run's log equals an uninterrupted run's.
  void keep_through_epoch(int64_t epoch);
  void append(const nlohmann::json& row);

 private:
  std::filesystem::path path_;
};

}  // namespace polyak::app
