// The HTML report of one training run, or of several runs that differ only in the
// seed: one self-contained page (inline CSS and SVG, no scripts, no external
// resources) with
//   - validation and test accuracy, and loss, vs epoch for SGD and every EMA, with
//     and without BN recompute (a line per (model, bn) of metrics.jsonl); the
//     accuracy again over the second half of training, on its own scale;
//   - ECE vs epoch (both binnings) when the rows carry "ece" / "ece15";
//   - the learning rate and the SGD training loss vs epoch;
//   - reliability diagrams of SGD and the best EMA (reliability.json);
//   - the table of the selected models (selection.json, or derived from metrics.jsonl);
//   - the run's configuration.
// Several runs: every curve is the mean over the runs that have the epoch, with a
// shaded min-max band; table cells are means with the min-max range.
//
// ---- The files of a run folder that the report reads ----
//
// config.json     the train app's configuration (any JSON object; shown as a table).
//
// metrics.jsonl   required; one JSON object per line, as the train app writes them:
//   {"epoch": 3, "step": 1173, "lr": 0.098, "model": "sgd" | "ema0.998" | ...,
//    "bn": "running" | "recomputed", "split": "train" | "val" | "test",
//    "accuracy": 71.2 (percent), "loss": 0.83 (NLL), "images": 10000,
//    "ece": 4.1 (100 equal-mass bins, percent), "ece15": 3.2 (15 equal-width bins)}
//   ("ece", "ece15" optional). Split "train_noisy" rows (training on noisy labels)
//   hold "memorised" and "corrected" percents instead, plotted as memorisation.
//   Missing "model" reads as "sgd", missing "bn" as
//   "running"; rows without an epoch, and rows with a "phase" (the end-of-training
//   re-evaluations, summarised in selection.json), are not plotted; unknown fields
//   are ignored. A malformed last line (a run still writing) is skipped with a note.
//
// reliability.json   optional; reliability-diagram data of the final models on one split:
//   {"split": "test", "epoch": 20,                   (both optional, shown in the caption)
//    "models": {
//      "sgd":      {"bn": "running",    "equal_width": BINNING, "equal_mass": BINNING},
//      "ema0.998": {"bn": "recomputed", "equal_width": BINNING, "equal_mass": BINNING},
//      ...}}
//   BINNING = {"bins": [{"lower": 0.8667, "upper": 0.9333, "count": 812,
//                        "confidence": 0.902, "accuracy": 0.871}, ...],   (fractions)
//              "ece": 3.1 (percent), "total": 10000 (optional)}
//   as written by reliability_to_json(); reliability_entry() makes one model's entry
//   (15 equal-width and 100 equal-mass bins) from its predictions. The report draws
//   SGD and the best EMA (highest validation accuracy in metrics.jsonl; when the file
//   lacks it, the EMAs the file has). Leniencies: without "models" the top-level
//   object is the models map; an entry with "bins" directly is its equal-width binning.
//
// selection.json   optional; the models kept by model selection, as the train app
//   writes it: under "models", per model, per criterion, the selected epoch and its
//   metrics; under "reported", the paper's rows (reported_row_labels(); each as a kept
//   entry with its model, criterion and BN statistics), shown as a table of their own:
//   {"models": {"ema0.998": {
//      "best_acc":  {"epoch": 17, "bn": "running", "file": "best_acc_ema0.998.safetensors",
//                    "val":  {"accuracy": 91.2, "loss": 0.31, "ece": 2.5, "ece15": 1.9, "images": 10000},
//                    "test": {"accuracy": 90.8, "loss": 0.33, "ece": 2.1, "ece15": 1.2, "images": 10000},
//                    "recomputed": {"file": ..., "val": {...}, "test": {...}}},  (optional: BN
//      "best_loss": {...}},                                                      recomputed after
//    "sgd": {...}, ...},                                                          training)
//    "reported": {"sgd_final": {"model": "sgd", "criterion": "last epoch", "epoch": 200, "bn": "running",
//                               "val": {...}, "test": {...}}, "ema_acc_bn": {...}, ...}}
//   A file without "models" is read as the models map itself (older runs). Criteria: "best_acc" (best validation accuracy), "best_loss" (lowest validation
//   loss), or any other name. Each selection becomes a table row: scalars as they are
//   ("file" as the checkpoint column), nested objects flattened with their path as
//   prefix ("test" -> test_accuracy, "recomputed"."test" -> recomputed_test_accuracy);
//   "images" counts are left out. Known columns come first, any other field becomes an
//   extra column. Without selection.json the table is derived from metrics.jsonl: per
//   (model, bn), the epoch of best validation accuracy, the one of lowest validation
//   loss and the last epoch, with the test metrics of that epoch (best test accuracy
//   when there is no validation split).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "apps/common/metrics.h"

namespace CLI {
class App;
}

namespace polyak::app {

// One row of metrics.jsonl; absent numbers are NaN.
struct MetricRow {
  int64_t epoch = -1;  // -1: none
  double lr = std::numeric_limits<double>::quiet_NaN();
  double accuracy = std::numeric_limits<double>::quiet_NaN();
  double loss = std::numeric_limits<double>::quiet_NaN();
  double ece = std::numeric_limits<double>::quiet_NaN();    // 100 equal-mass bins
  double ece15 = std::numeric_limits<double>::quiet_NaN();  // 15 equal-width bins
  // Split "train_noisy": of the wrongly labelled training images, percent predicted as
  // the wrong label and as the clean one.
  double memorised = std::numeric_limits<double>::quiet_NaN();
  double corrected = std::numeric_limits<double>::quiet_NaN();
  std::string model = "sgd", bn = "running", split;
};

struct RunData {
  std::string dir;
  nlohmann::json config = nlohmann::json::object();  // empty when config.json is missing
  std::vector<MetricRow> rows;
  nlohmann::json reliability;  // null when reliability.json is missing
  nlohmann::json selection;    // null when selection.json is missing
  nlohmann::ordered_json phema;  // null when phema_out/phema.json (apps/phema) is missing
  std::vector<std::string> notes;  // what was skipped while reading
};

// The post-hoc EMA sweep of a phema.json (apps/phema) as an <svg>, "" with fewer than
// two rebuilt power averages; and the report's section on it (phema_section.cpp).
std::string phema_sweep_svg(const nlohmann::ordered_json& phema);
std::string phema_section(const std::vector<RunData>& runs);

// Reads a run folder. Throws std::invalid_argument naming the file for a missing
// folder or metrics.jsonl, or a malformed line or JSON file.
RunData load_run(const std::string& dir);

// The HTML page of the runs (one or more seeds of one configuration).
// `aggregate`: train --seeds' aggregate.json of these runs (null: none).
std::string render_report(const std::vector<RunData>& runs, const nlohmann::json& aggregate = nullptr);
// A single folder written by train --seeds (aggregate.json, no metrics.jsonl) stands
// for its seed runs, with their aggregate.
std::string render_report(const std::vector<std::string>& run_dirs);
// Renders and writes `output` (through a temporary file and a rename).
void write_report(const std::vector<std::string>& run_dirs, const std::string& output);

// The paper's reported rows, in the order of its tables: the keys of
// selection.json's "reported" object and their labels ("ema_acc_bn" -> "EMA (acc.)(BN)").
const std::vector<std::pair<std::string, std::string>>& reported_row_labels();
// Those rows as a plain-text table, for the end of a training run.
std::string reported_table(const nlohmann::json& reported);

// The report app's command line.
struct ReportConfig {
  std::vector<std::string> runs;  // run folders (several: seeds of one configuration)
  std::string output;             // "" = FIRST_RUN/report.html
  std::string output_file() const;
};
void add_report_flags(CLI::App& app, ReportConfig& config);

// ---- writers of reliability.json, for the apps that evaluate models ----

// {"binning": "equal_width", "ece": ..., "total": ..., "bins": [...]} (the BINNING above).
nlohmann::json reliability_to_json(const Reliability& r);
// One model's entry: {"bn": bn, "equal_width": 15 bins, "equal_mass": 100 bins}.
nlohmann::json reliability_entry(const Predictions& p, const std::string& bn = "running");

}  // namespace polyak::app
