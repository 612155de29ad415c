// Pieces the report's files share: reading JSON fields, the identity, order and colour
// of a plotted series (a model with its BN statistics), and small HTML helpers. The
// files: report.cpp (the page and its curves), tables.cpp (the selection, paper's-row
// and seed tables), reliability.cpp (reliability diagrams). Internal to apps/report.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "apps/report/report.h"

namespace polyak::app::report_parts {

using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The number or string at `key`; NaN or `otherwise` when it is absent or of another type.
double number(const json& object, const char* key);
std::string text(const json& object, const char* key, const std::string& otherwise);

// ---- series: identity, order, colour

struct SeriesKey {
  std::string model, bn;
  bool operator==(const SeriesKey&) const = default;
};

// The decay of "ema0.998", NaN for any other name.
double ema_decay(const std::string& model);
bool is_ema(const std::string& model);
// sgd first, then the EMAs by decay, then anything else by name.
bool model_before(const std::string& a, const std::string& b);
// By model, then running statistics before recomputed ones.
bool key_before(const SeriesKey& a, const SeriesKey& b);
std::string series_label(const SeriesKey& key);

// One colour per model, the same in every plot: near-black for SGD, the Tableau
// palette for the rest in model order. BN recompute is told apart by a dashed line.
class Palette {
 public:
  explicit Palette(const std::vector<RunData>& runs);
  std::string operator()(const std::string& model) const;

 private:
  std::map<std::string, std::string> colors_;
};

// A metric of a row by name ("accuracy", "loss", "ece", "ece15", "lr", "memorised",
// "corrected"); NaN for any other name.
double field_of(const MetricRow& row, const std::string& field);

// Keys of the rows of `split` that have a finite `field`, in display order.
template <class Field>
std::vector<SeriesKey> keys_with(const std::vector<RunData>& runs, const std::string& split, Field field) {
  std::vector<SeriesKey> keys;
  for (const RunData& run : runs)
    for (const MetricRow& row : run.rows) {
      const SeriesKey key{row.model, row.bn};
      if (row.split == split && row.epoch >= 0 && std::isfinite(field(row)) &&
          std::find(keys.begin(), keys.end(), key) == keys.end())
        keys.push_back(key);
    }
  std::sort(keys.begin(), keys.end(), key_before);
  return keys;
}

// Whether any epoch row of `split` has a finite `field`.
bool has_field(const std::vector<RunData>& runs, const std::string& split, const std::string& field);

// ---- HTML pieces

std::string figure(const std::string& svg_text, const std::string& caption);
std::string note(const std::string& html);
std::string format(double v, int decimals);  // an en dash for NaN

// ---- the sections of the page built in tables.cpp and reliability.cpp

// The models kept by selection, one row per (model, BN, criterion) over the runs.
std::string selection_table(const std::vector<RunData>& runs);
// The paper's rows (selection.json's "reported") over the runs.
std::string reported_html_table(const std::vector<RunData>& runs);
// train --seeds' aggregate.json: mean ± std over seeds, churn and JS over pairs.
std::string aggregate_html(const json& aggregate);
// Reliability diagrams of SGD and `best` (or the EMAs reliability.json has).
std::string reliability_section(const std::vector<RunData>& runs, const Palette& palette,
                                const std::optional<SeriesKey>& best);

}  // namespace polyak::app::report_parts
