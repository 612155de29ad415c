#include "apps/report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/report/svg.h"
#include "engine/io/atomic_file.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------- reading

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path.string() + ": cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The JSON object in `path`, or null when the file does not exist.
json read_optional_json(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nullptr;
  const json value = json::parse(read_text(path), nullptr, false);
  if (value.is_discarded() || !value.is_object())
    throw std::invalid_argument(path.string() + ": not a JSON object");
  return value;
}

double number(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_number() ? it->get<double>() : kNaN;
}

std::string text(const json& object, const char* key, const std::string& otherwise) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : otherwise;
}

// ---------------------------------------------------------------- series: identity, order, colour

struct SeriesKey {
  std::string model, bn;
  bool operator==(const SeriesKey&) const = default;
};

// The decay of "ema0.998", NaN for any other name.
double ema_decay(const std::string& model) {
  if (model.rfind("ema", 0) != 0) return kNaN;
  try {
    size_t used = 0;
    const double a = std::stod(model.substr(3), &used);
    return used + 3 == model.size() ? a : kNaN;
  } catch (const std::exception&) {
    return kNaN;
  }
}

bool is_ema(const std::string& model) { return model.rfind("ema", 0) == 0; }

// sgd first, then the EMAs by decay, then anything else by name.
int model_rank(const std::string& model) { return model == "sgd" ? 0 : is_ema(model) ? 1 : 2; }

bool model_before(const std::string& a, const std::string& b) {
  if (model_rank(a) != model_rank(b)) return model_rank(a) < model_rank(b);
  const double da = ema_decay(a), db = ema_decay(b);
  if (std::isfinite(da) && std::isfinite(db) && da != db) return da < db;
  return a < b;
}

int bn_rank(const std::string& bn) { return bn == "running" ? 0 : bn == "recomputed" ? 1 : 2; }

bool key_before(const SeriesKey& a, const SeriesKey& b) {
  if (a.model != b.model) return model_before(a.model, b.model);
  if (bn_rank(a.bn) != bn_rank(b.bn)) return bn_rank(a.bn) < bn_rank(b.bn);
  return a.bn < b.bn;
}

std::string series_label(const SeriesKey& key) {
  if (key.bn == "running") return key.model;
  if (key.bn == "recomputed") return key.model + " (BN recomputed)";
  return key.model + " (" + key.bn + ")";
}

// One colour per model, the same in every plot: near-black for SGD, the Tableau
// palette for the rest in model order. BN recompute is told apart by a dashed line.
class Palette {
 public:
  explicit Palette(const std::vector<RunData>& runs) {
    std::vector<std::string> models;
    for (const RunData& run : runs)
      for (const MetricRow& row : run.rows)
        if (std::find(models.begin(), models.end(), row.model) == models.end()) models.push_back(row.model);
    std::sort(models.begin(), models.end(), model_before);
    static const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                          "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
    size_t next = 0;
    for (const std::string& m : models) colors_[m] = m == "sgd" ? "#222222" : kColors[next++ % std::size(kColors)];
  }
  std::string operator()(const std::string& model) const {
    const auto it = colors_.find(model);
    return it == colors_.end() ? "#7f7f7f" : it->second;
  }

 private:
  std::map<std::string, std::string> colors_;
};

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

// ---------------------------------------------------------------- curves over runs

// Per epoch: the mean over the runs that have a value, and its min and max.
struct Curve {
  std::vector<double> epochs, mean, low, high;
};

template <class Select, class Field>
Curve make_curve(const std::vector<RunData>& runs, Select select, Field field) {
  std::map<int64_t, std::vector<double>> values;
  for (const RunData& run : runs) {
    std::map<int64_t, double> per_epoch;  // a repeated epoch (a resumed run): the last row wins
    for (const MetricRow& row : run.rows)
      if (row.epoch >= 0 && select(row) && std::isfinite(field(row))) per_epoch[row.epoch] = field(row);
    for (const auto& [epoch, v] : per_epoch) values[epoch].push_back(v);
  }
  Curve c;
  for (const auto& [epoch, v] : values) {
    c.epochs.push_back(static_cast<double>(epoch));
    double sum = 0;
    for (double x : v) sum += x;
    c.mean.push_back(sum / static_cast<double>(v.size()));
    c.low.push_back(*std::min_element(v.begin(), v.end()));
    c.high.push_back(*std::max_element(v.begin(), v.end()));
  }
  return c;
}

svg::Series to_series(const Curve& c, std::string name, std::string color, bool dashed, bool band) {
  svg::Series s;
  s.name = std::move(name);
  s.color = std::move(color);
  s.dashed = dashed;
  s.markers = c.epochs.size() <= 12;  // beyond that they clutter
  s.x = c.epochs;
  s.y = c.mean;
  if (band) s.low = c.low, s.high = c.high;
  return s;
}

double field_of(const MetricRow& row, const std::string& field) {
  if (field == "accuracy") return row.accuracy;
  if (field == "loss") return row.loss;
  if (field == "ece") return row.ece;
  if (field == "ece15") return row.ece15;
  if (field == "lr") return row.lr;
  if (field == "memorised") return row.memorised;
  if (field == "corrected") return row.corrected;
  return kNaN;
}

// ---------------------------------------------------------------- HTML pieces

std::string figure(const std::string& svg_text, const std::string& caption) {
  return "<figure>\n" + svg_text + "<figcaption>" + caption + "</figcaption>\n</figure>\n";
}

std::string note(const std::string& html) { return "<p class=\"note\">" + html + "</p>\n"; }

std::string format(double v, int decimals) {
  if (!std::isfinite(v)) return "&#8211;";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string band_caption(size_t runs) {
  return runs > 1 ? " Mean over " + std::to_string(runs) + " runs; the shaded band spans their min and max." : "";
}

// A plot of `field` on `split` vs epoch, from `first_epoch` on: one line per (model, bn).
std::string metric_plot(const std::vector<RunData>& runs, const Palette& palette, const std::string& split,
                        const std::string& field, const std::string& title, const std::string& y_label,
                        int64_t first_epoch = 0) {
  auto value = [&](const MetricRow& row) { return field_of(row, field); };
  std::vector<svg::Series> series;
  for (const SeriesKey& key : keys_with(runs, split, value)) {
    const Curve c = make_curve(
        runs,
        [&](const MetricRow& row) {
          return row.split == split && row.model == key.model && row.bn == key.bn && row.epoch >= first_epoch;
        },
        value);
    series.push_back(to_series(c, series_label(key), palette(key.model), key.bn != "running", runs.size() > 1));
  }
  svg::PlotSpec spec;
  spec.title = title;
  spec.x_label = "epoch";
  spec.y_label = y_label;
  spec.x_integer = true;
  return svg::line_plot(series, spec);
}

bool has_field(const std::vector<RunData>& runs, const std::string& split, const std::string& field) {
  for (const RunData& run : runs)
    for (const MetricRow& row : run.rows)
      if (row.split == split && row.epoch >= 0 && std::isfinite(field_of(row, field))) return true;
  return false;
}

// ---------------------------------------------------------------- model selection

// The EMA (model, bn) with the highest validation accuracy at any epoch (test when
// there is no validation split), averaged over the runs.
std::optional<SeriesKey> best_ema(const std::vector<RunData>& runs) {
  const std::string split = has_field(runs, "val", "accuracy") ? "val" : "test";
  auto accuracy = [](const MetricRow& row) { return row.accuracy; };
  std::optional<SeriesKey> best;
  double best_value = -1;
  for (const SeriesKey& key : keys_with(runs, split, accuracy)) {
    if (!is_ema(key.model)) continue;
    double sum = 0;
    int counted = 0;
    for (const RunData& run : runs) {
      double top = -1;
      for (const MetricRow& row : run.rows)
        if (row.split == split && row.model == key.model && row.bn == key.bn && std::isfinite(row.accuracy))
          top = std::max(top, row.accuracy);
      if (top >= 0) sum += top, ++counted;
    }
    if (counted && sum / counted > best_value) best_value = sum / counted, best = key;
  }
  return best;
}

const MetricRow* find_row(const RunData& run, const SeriesKey& key, const std::string& split, int64_t epoch) {
  const MetricRow* found = nullptr;
  for (const MetricRow& row : run.rows)
    if (row.split == split && row.epoch == epoch && row.model == key.model && row.bn == key.bn) found = &row;
  return found;
}

void put_if_finite(json& object, const char* key, double v) {
  if (std::isfinite(v)) object[key] = v;
}

// Selection rows derived from one run's metrics (see the header for what they hold).
std::vector<json> derived_selection(const RunData& run) {
  const std::vector<RunData> one = {run};
  auto accuracy = [](const MetricRow& row) { return row.accuracy; };
  const bool have_val = has_field(one, "val", "accuracy");
  std::vector<json> rows;
  auto make = [&](const SeriesKey& key, const std::string& criterion, int64_t epoch) {
    json r = {{"model", key.model}, {"bn", key.bn}, {"criterion", criterion}, {"epoch", epoch}};
    if (const MetricRow* v = find_row(run, key, "val", epoch)) {
      put_if_finite(r, "val_accuracy", v->accuracy);
      put_if_finite(r, "val_loss", v->loss);
    }
    if (const MetricRow* t = find_row(run, key, "test", epoch)) {
      put_if_finite(r, "test_accuracy", t->accuracy);
      put_if_finite(r, "test_loss", t->loss);
      put_if_finite(r, "test_ece", t->ece);
      put_if_finite(r, "test_ece15", t->ece15);
    }
    rows.push_back(r);
  };
  // The first epoch where `better` prefers the row over all earlier ones.
  auto pick = [&](const SeriesKey& key, const std::string& split, auto better) {
    const MetricRow* chosen = nullptr;
    for (const MetricRow& row : run.rows)
      if (row.split == split && row.model == key.model && row.bn == key.bn && row.epoch >= 0 &&
          (!chosen || better(row, *chosen)))
        chosen = &row;
    return chosen;
  };
  std::vector<SeriesKey> keys = keys_with(one, have_val ? "val" : "test", accuracy);
  for (const SeriesKey& key : keys_with(one, "test", accuracy))
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  std::sort(keys.begin(), keys.end(), key_before);
  for (const SeriesKey& key : keys) {
    const std::string split = have_val ? "val" : "test";
    if (const MetricRow* r = pick(key, split, [](const MetricRow& a, const MetricRow& b) {
          return std::isfinite(a.accuracy) && (!std::isfinite(b.accuracy) || a.accuracy > b.accuracy);
        }))
      make(key, have_val ? "best_val_accuracy" : "best_test_accuracy", r->epoch);
    if (have_val)
      if (const MetricRow* r = pick(key, "val", [](const MetricRow& a, const MetricRow& b) {
            return std::isfinite(a.loss) && (!std::isfinite(b.loss) || a.loss < b.loss);
          }))
        make(key, "lowest_val_loss", r->epoch);
    if (const MetricRow* r = pick(key, "test", [](const MetricRow& a, const MetricRow& b) { return a.epoch > b.epoch; }))
      make(key, "last_epoch", r->epoch);
  }
  return rows;
}

// Copies the fields of `object` into `row`, nested objects flattened with their path
// as prefix ("test": {"accuracy"} -> "test_accuracy"); image counts are left out.
void flatten_into(json& row, const json& object, const std::string& prefix) {
  for (const auto& [key, value] : object.items()) {
    const std::string name = prefix.empty() ? (key == "file" ? "checkpoint" : key) : prefix + "_" + key;
    if (value.is_object()) {
      flatten_into(row, value, name);
    } else if (key != "images") {
      row[name] = value;
    }
  }
}

// The table rows of one run: selection.json flattened (see the header), or derived.
std::vector<json> selection_rows(const RunData& run) {
  if (run.selection.is_null()) return derived_selection(run);
  std::vector<json> rows;
  const json& models = run.selection.contains("models") ? run.selection["models"] : run.selection;
  for (const auto& [model, criteria] : models.items()) {
    if (!criteria.is_object()) continue;
    for (const auto& [criterion, chosen] : criteria.items()) {
      if (!chosen.is_object()) continue;
      json row = {{"model", model}, {"criterion", criterion}};
      flatten_into(row, chosen, "");
      rows.push_back(row);
    }
  }
  return rows;
}

std::string criterion_label(const std::string& criterion) {
  if (criterion == "best_val_accuracy" || criterion == "best_acc") return "best val accuracy";
  if (criterion == "lowest_val_loss" || criterion == "best_loss") return "lowest val loss";
  if (criterion == "last_epoch") return "last epoch";
  if (criterion == "best_test_accuracy") return "best test accuracy";
  return criterion;
}

int criterion_rank(const std::string& criterion) {
  const std::string label = criterion_label(criterion);
  return label == "best val accuracy" ? 0 : label == "lowest val loss" ? 1 : label == "last epoch" ? 2 : 3;
}

struct Column {
  std::string key, header;
  int decimals;  // for numbers; -1: %.4g
};

const std::vector<Column>& known_columns() {
  static const std::vector<Column> columns = {
      {"model", "model", 0},
      {"bn", "BN statistics", 0},
      {"criterion", "selected by", 0},
      {"epoch", "epoch", 0},
      {"val_accuracy", "val acc (%)", 2},
      {"val_loss", "val loss", 4},
      {"test_accuracy", "test acc (%)", 2},
      {"test_loss", "test loss", 4},
      {"test_ece", "test ECE (%)", 2},
      {"test_ece15", "test ECE15 (%)", 2},
      {"recomputed_test_accuracy", "test acc, BN recomputed at the end (%)", 2},
      {"recomputed_test_ece", "test ECE, BN recomputed at the end (%)", 2},
      {"temperature", "temperature", 3},
      {"test_ece_ts", "test ECE after TS (%)", 2},
      {"checkpoint", "checkpoint", 0},
  };
  return columns;
}

// One cell over the runs: numbers as their mean (with the min-max range when they
// differ), anything else as its distinct values.
std::string cell(const std::vector<const json*>& values, const Column& column) {
  std::vector<double> numbers;
  std::vector<std::string> texts;
  for (const json* v : values) {
    if (!v) continue;
    if (v->is_number()) {
      numbers.push_back(v->get<double>());
    } else {
      std::string t = v->is_string() ? v->get<std::string>() : v->dump();
      if (column.key == "criterion") t = criterion_label(t);
      if (std::find(texts.begin(), texts.end(), t) == texts.end()) texts.push_back(t);
    }
  }
  auto show = [&](double v) {
    if (column.decimals >= 0) return format(v, column.decimals);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return std::string(buf);
  };
  std::string out;
  if (!numbers.empty()) {
    const double lo = *std::min_element(numbers.begin(), numbers.end());
    const double hi = *std::max_element(numbers.begin(), numbers.end());
    if (column.key == "epoch" && lo != hi) {
      for (double v : numbers) out += (out.empty() ? "" : ", ") + show(v);
    } else {
      double sum = 0;
      for (double v : numbers) sum += v;
      out = show(sum / static_cast<double>(numbers.size()));
      if (lo != hi) out += " <span class=\"range\">(" + show(lo) + "&#8211;" + show(hi) + ")</span>";
    }
  }
  for (const std::string& t : texts) out += (out.empty() ? "" : ", ") + svg::escape(t);
  return out.empty() ? "&#8211;" : out;
}

std::string selection_table(const std::vector<RunData>& runs) {
  // Rows of every run, grouped by (model, bn, criterion), in model order.
  struct Group {
    SeriesKey key;
    std::string criterion;
    std::vector<json> rows;
  };
  std::vector<Group> groups;
  for (const RunData& run : runs)
    for (const json& r : selection_rows(run)) {
      const SeriesKey key{text(r, "model", "?"), text(r, "bn", "")};
      const std::string criterion = text(r, "criterion", "");
      auto it = std::find_if(groups.begin(), groups.end(),
                             [&](const Group& g) { return g.key == key && g.criterion == criterion; });
      if (it == groups.end()) it = groups.insert(groups.end(), Group{key, criterion, {}});
      it->rows.push_back(r);
    }
  if (groups.empty()) return note("No models to tabulate: metrics.jsonl has no validation or test rows.");
  std::stable_sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) {
    if (!(a.key == b.key)) return key_before(a.key, b.key);
    return criterion_rank(a.criterion) < criterion_rank(b.criterion);
  });

  std::vector<Column> columns;
  for (const Column& c : known_columns())
    for (const Group& g : groups)
      if (std::any_of(g.rows.begin(), g.rows.end(), [&](const json& r) { return r.contains(c.key); })) {
        columns.push_back(c);
        break;
      }
  // Extra columns: fields the report does not know, except the further flattened
  // val/test metrics (their curves are in the plots; the table stays narrow).
  std::set<std::string> extra;
  for (const Group& g : groups)
    for (const json& r : g.rows)
      for (const auto& item : r.items()) {
        const std::string& k = item.key();
        const bool known =
            std::any_of(known_columns().begin(), known_columns().end(), [&](const Column& c) { return c.key == k; });
        const bool metric = k.rfind("val_", 0) == 0 || k.rfind("test_", 0) == 0 || k.rfind("recomputed_", 0) == 0;
        if (!known && !metric) extra.insert(k);
      }
  for (const std::string& k : extra) columns.push_back({k, k, -1});

  // The best test accuracy (mean over runs) is set in bold.
  double best_test = -1;
  for (const Group& g : groups) {
    double sum = 0;
    int n = 0;
    for (const json& r : g.rows)
      if (std::isfinite(number(r, "test_accuracy"))) sum += number(r, "test_accuracy"), ++n;
    if (n) best_test = std::max(best_test, sum / n);
  }

  std::string html = "<table class=\"selection\">\n<thead><tr>";
  for (const Column& c : columns) html += "<th>" + svg::escape(c.header) + "</th>";
  html += "</tr></thead>\n<tbody>\n";
  for (const Group& g : groups) {
    const std::vector<json>& rows = g.rows;
    html += "<tr>";
    for (const Column& c : columns) {
      std::vector<const json*> values;
      for (const json& r : rows)
        if (r.contains(c.key)) values.push_back(&r[c.key]);
      bool bold = false;
      if (c.key == "test_accuracy" && !values.empty()) {
        double sum = 0;
        int n = 0;
        for (const json* v : values)
          if (v->is_number()) sum += v->get<double>(), ++n;
        bold = n && std::abs(sum / n - best_test) < 1e-12;
      }
      const bool numeric = !values.empty() && values.front()->is_number();
      html += std::string("<td") + (numeric ? " class=\"num\"" : "") + ">" + (bold ? "<b>" : "") + cell(values, c) +
              (bold ? "</b>" : "") + "</td>";
    }
    html += "</tr>\n";
  }
  html += "</tbody>\n</table>\n";
  return html;
}

// The paper's rows (selection.json's "reported"), one table row per row of the paper,
// over the runs: means with their ranges, the models each run chose.
std::string reported_html_table(const std::vector<RunData>& runs) {
  static const std::vector<Column> columns = {
      {"model", "model", 0},          {"epoch", "epoch", 0},           {"bn", "BN statistics", 0},
      {"val_accuracy", "val acc (%)", 2}, {"test_accuracy", "test acc (%)", 2}, {"test_loss", "test loss", 4},
      {"test_ece", "test ECE (%)", 2}, {"checkpoint", "checkpoint", 0}};
  std::string html = "<table class=\"selection\">\n<thead><tr><th>row</th>";
  for (const Column& c : columns) html += "<th>" + svg::escape(c.header) + "</th>";
  html += "</tr></thead>\n<tbody>\n";
  for (const auto& [key, label] : reported_row_labels()) {
    std::vector<json> rows;
    for (const RunData& run : runs)
      if (run.selection.contains("reported") && run.selection["reported"].contains(key)) {
        json row;
        flatten_into(row, run.selection["reported"][key], "");
        rows.push_back(row);
      }
    if (rows.empty()) continue;
    html += "<tr><td>" + svg::escape(label) + "</td>";
    for (const Column& c : columns) {
      std::vector<const json*> values;
      for (const json& r : rows)
        if (r.contains(c.key)) values.push_back(&r[c.key]);
      const bool numeric = !values.empty() && values.front()->is_number();
      html += std::string("<td") + (numeric ? " class=\"num\"" : "") + ">" + cell(values, c) + "</td>";
    }
    html += "</tr>\n";
  }
  return html + "</tbody>\n</table>\n";
}

// The aggregate of train --seeds (aggregate.json): per reported row, mean ± std over the
// seeds of the test metrics, and over the pairs of seeds of churn and JS divergence.
std::string aggregate_html(const json& aggregate) {
  const auto cell = [](const json& row, const char* metric, int decimals) {
    if (!row.contains(metric) || !row[metric].contains("mean")) return std::string("&#8211;");
    return format(row[metric]["mean"].get<double>(), decimals) + " &#177; " + format(row[metric]["std"].get<double>(), decimals);
  };
  std::string html = "<h2>Over the seeds</h2>\n<p>The paper's rows over " + std::to_string(aggregate["seeds"].size()) +
                     " seeds, test set: mean &#177; standard deviation; churn (% of test images classified "
                     "differently) and Jensen-Shannon divergence (bits) between every pair of seeds (Table 3); ECE "
                     "with 100 equal-mass bins before and after temperature scaling fitted on each seed's validation "
                     "split (Table 5).</p>\n<table class=\"selection\">\n<thead><tr><th>row</th><th>models</th>"
                     "<th>test acc (%)</th><th>test loss</th><th>ECE (%)</th><th>ECE after TS (%)</th>"
                     "<th>churn (%)</th><th>JS (bits)</th></tr></thead>\n<tbody>\n";
  for (const auto& [key, label] : reported_row_labels()) {
    if (!aggregate["rows"].contains(key)) continue;
    const json& row = aggregate["rows"][key];
    std::string models;
    for (const json& seed : row.value("seeds", json::array()))
      models += (models.empty() ? "" : ", ") + svg::escape(seed.value("model", "?")) + " @" + seed.value("epoch", json()).dump();
    html += "<tr><td>" + svg::escape(label) + "</td><td>" + models + "</td>";
    for (const auto& [metric, decimals] : {std::pair{"accuracy", 2}, std::pair{"loss", 4}, std::pair{"ece", 2},
                                           std::pair{"ece_ts", 2}, std::pair{"churn", 2}, std::pair{"js_bits", 4}})
      html += "<td class=\"num\">" + cell(row, metric, decimals) + "</td>";
    html += "</tr>\n";
  }
  return html + "</tbody>\n</table>\n";
}

// ---------------------------------------------------------------- reliability diagrams

// The entry's binning object (see the header's leniencies), or null.
json binning_of(const json& entry, const std::string& binning) {
  if (!entry.is_object()) return nullptr;
  if (entry.contains(binning) && entry[binning].is_object()) return entry[binning];
  if (binning == "equal_width" && entry.contains("bins")) return entry;
  return nullptr;
}

json models_of(const json& reliability) {
  if (!reliability.is_object()) return json::object();
  if (reliability.contains("models") && reliability["models"].is_object()) return reliability["models"];
  return reliability;
}

// One model's points in a reliability diagram, pooled over the runs bin by bin
// (count-weighted), with the mean ECE over the runs.
struct Pooled {
  std::vector<double> confidence, accuracy;
  double ece = kNaN;
  int runs = 0;
};

Pooled pool(const std::vector<RunData>& runs, const std::string& model, const std::string& binning) {
  std::vector<double> count, conf_sum, acc_sum;
  double ece_sum = 0;
  int ece_runs = 0;
  Pooled p;
  for (const RunData& run : runs) {
    const json models = models_of(run.reliability);
    if (!models.contains(model)) continue;
    const json b = binning_of(models[model], binning);
    if (b.is_null() || !b.contains("bins") || !b["bins"].is_array()) continue;
    ++p.runs;
    if (std::isfinite(number(b, "ece"))) ece_sum += number(b, "ece"), ++ece_runs;
    const json& bins = b["bins"];
    if (count.size() < bins.size()) count.resize(bins.size()), conf_sum.resize(bins.size()), acc_sum.resize(bins.size());
    for (size_t i = 0; i < bins.size(); ++i) {
      const double n = number(bins[i], "count"), conf = number(bins[i], "confidence"), acc = number(bins[i], "accuracy");
      if (!(n > 0) || !std::isfinite(conf) || !std::isfinite(acc)) continue;
      count[i] += n, conf_sum[i] += n * conf, acc_sum[i] += n * acc;
    }
  }
  for (size_t i = 0; i < count.size(); ++i)
    if (count[i] > 0) p.confidence.push_back(conf_sum[i] / count[i]), p.accuracy.push_back(acc_sum[i] / count[i]);
  if (ece_runs) p.ece = ece_sum / ece_runs;
  return p;
}

std::string reliability_section(const std::vector<RunData>& runs, const Palette& palette,
                                const std::optional<SeriesKey>& best) {
  std::vector<std::string> available;
  for (const RunData& run : runs) {
    const json models = models_of(run.reliability);  // named: items() refers to it
    for (const auto& [name, entry] : models.items())
      if (entry.is_object() && std::find(available.begin(), available.end(), name) == available.end())
        available.push_back(name);
  }
  if (available.empty())
    return note("No <code>reliability.json</code> in the run folder" + std::string(runs.size() > 1 ? "s" : "") +
                ": the reliability diagram is skipped.");
  std::sort(available.begin(), available.end(), model_before);
  // SGD and the best EMA; failing that, the EMAs the file has.
  std::vector<std::string> shown;
  if (std::find(available.begin(), available.end(), "sgd") != available.end()) shown.push_back("sgd");
  if (best && std::find(available.begin(), available.end(), best->model) != available.end()) {
    shown.push_back(best->model);
  } else {
    for (const std::string& model : available)
      if (is_ema(model)) shown.push_back(model);
  }
  if (shown.empty()) shown.push_back(available.front());

  const json& first = runs.front().reliability;
  std::string where;
  if (first.is_object() && first.contains("split")) where += " on the " + svg::escape(text(first, "split", "")) + " split";
  if (first.is_object() && first.contains("epoch") && first["epoch"].is_number())
    where += " at epoch " + std::to_string(first["epoch"].get<int64_t>());

  std::string html = "<div class=\"grid\">\n";
  for (const auto& [binning, title] : {std::pair<std::string, std::string>{"equal_width", "equal-width bins"},
                                       std::pair<std::string, std::string>{"equal_mass", "equal-mass bins"}}) {
    std::vector<svg::Series> series;
    size_t bins = 0;
    for (const std::string& model : shown) {
      const Pooled p = pool(runs, model, binning);
      if (p.runs == 0) continue;
      for (const RunData& run : runs) {
        const json b = binning_of(models_of(run.reliability).value(model, json()), binning);
        if (!b.is_null() && b.contains("bins") && b["bins"].is_array()) bins = std::max(bins, b["bins"].size());
      }
      svg::Series s;
      const json entry = models_of(runs.front().reliability).value(model, json::object());
      const std::string bn = entry.is_object() ? text(entry, "bn", "running") : "running";
      s.name = series_label({model, bn}) + ", ECE " + format(p.ece, 2) + "%";
      s.color = palette(model);
      s.markers = p.confidence.size() <= 30;
      s.x = p.confidence;
      s.y = p.accuracy;
      series.push_back(s);
    }
    if (series.empty()) continue;
    svg::PlotSpec spec;
    spec.title = "Reliability, " + std::to_string(bins) + " " + title;
    spec.x_label = "confidence (max softmax probability)";
    spec.y_label = "accuracy";
    spec.x_min = spec.y_min = 0;
    spec.x_max = spec.y_max = 1;
    spec.diagonal = true;
    html += figure(svg::line_plot(series, spec),
                   "Accuracy vs mean confidence per bin" + where + "; on the dotted diagonal a model is calibrated." +
                       (runs.size() > 1 ? " Bins pooled over the runs, ECE averaged." : ""));
  }
  html += "</div>\n";
  return html;
}

// ---------------------------------------------------------------- configuration

std::string config_table(const std::vector<RunData>& runs) {
  std::set<std::string> keys;
  for (const RunData& run : runs)
    for (const auto& [k, v] : run.config.items()) keys.insert(k);
  if (keys.empty()) return note("No <code>config.json</code> in the run folder.");
  std::string html = "<table class=\"config\">\n<tbody>\n";
  for (const std::string& k : keys) {
    std::vector<std::string> values;
    for (const RunData& run : runs) {
      const auto it = run.config.find(k);
      const std::string v = it == run.config.end() ? "-" : it->is_string() ? it->get<std::string>() : it->dump();
      values.push_back(v);
    }
    const bool differ = std::any_of(values.begin(), values.end(), [&](const std::string& v) { return v != values[0]; });
    std::string shown;
    if (differ) {
      for (const std::string& v : values) shown += (shown.empty() ? "" : " / ") + svg::escape(v);
    } else {
      shown = svg::escape(values[0]);
    }
    html += std::string("<tr") + (differ ? " class=\"differs\"" : "") + "><th>" + svg::escape(k) + "</th><td>" + shown +
            "</td></tr>\n";
  }
  html += "</tbody>\n</table>\n";
  return html;
}

const char* kStyle = R"(
body { font-family: Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1260px; color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.meta { color: #555; margin-top: 0; }
p.note { color: #7a5b00; background: #fff8e1; border-left: 3px solid #e0b000; padding: 6px 10px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #555; max-width: 600px; margin-top: 2px; }
svg.plot { display: block; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; }
thead th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
span.range { color: #888; font-size: 11px; }
table.config th { font-weight: normal; color: #555; }
tr.differs td { color: #a0522d; }
code { background: #f4f4f4; padding: 0 3px; }
)";

}  // namespace

// ---------------------------------------------------------------- public

RunData load_run(const std::string& dir) {
  const fs::path root(dir);
  if (!is_folder(dir)) throw std::invalid_argument(dir + ": no such run folder");
  const fs::path metrics = root / "metrics.jsonl";
  std::error_code ec;
  if (!fs::exists(metrics, ec))
    throw std::invalid_argument(dir + ": no metrics.jsonl (is this a run folder written by train?)");
  RunData run;
  run.dir = dir;
  if (json config = read_optional_json(root / "config.json"); !config.is_null()) run.config = config;
  run.reliability = read_optional_json(root / "reliability.json");
  run.selection = read_optional_json(root / "selection.json");

  std::istringstream lines(read_text(metrics));
  std::vector<std::string> all;
  for (std::string line; std::getline(lines, line);) all.push_back(line);
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    const json row = json::parse(all[i], nullptr, false);
    if (row.is_discarded() || !row.is_object()) {
      const std::string where = metrics.string() + ":" + std::to_string(i + 1);
      if (i + 1 == all.size()) {  // a run still writing its last line
        run.notes.push_back(where + ": an incomplete last line was skipped");
        continue;
      }
      throw std::invalid_argument(where + ": not a JSON object");
    }
    if (row.contains("phase")) continue;  // end-of-training re-evaluations: in selection.json
    MetricRow r;
    if (row.contains("epoch") && row["epoch"].is_number()) r.epoch = row["epoch"].get<int64_t>();
    r.lr = number(row, "lr");
    r.accuracy = number(row, "accuracy");
    r.loss = number(row, "loss");
    r.ece = number(row, "ece");
    r.ece15 = number(row, "ece15");
    r.memorised = number(row, "memorised");
    r.corrected = number(row, "corrected");
    r.model = text(row, "model", "sgd");
    r.bn = text(row, "bn", "running");
    r.split = text(row, "split", "");
    run.rows.push_back(std::move(r));
  }
  return run;
}

std::string render_report(const std::vector<RunData>& runs, const json& aggregate) {
  if (runs.empty()) throw std::invalid_argument("report: no run folders given");
  const Palette palette(runs);
  const json& config = runs.front().config;
  const std::string model = text(config, "model", ""), dataset = text(config, "dataset", "");
  std::string title = "polyak report";
  if (!model.empty()) title += ": " + model + (dataset.empty() ? "" : " on " + dataset);

  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>" +
                     svg::escape(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n";
  html += "<h1>" + svg::escape(title) + "</h1>\n<p class=\"meta\">";
  for (size_t i = 0; i < runs.size(); ++i) {
    html += (i ? ", " : "") + std::string("<code>") + svg::escape(runs[i].dir) + "</code>";
    if (runs[i].config.contains("seed")) html += " (seed " + svg::escape(runs[i].config["seed"].dump()) + ")";
  }
  int64_t last_epoch = 0;
  for (const RunData& run : runs)
    for (const MetricRow& row : run.rows) last_epoch = std::max(last_epoch, row.epoch);
  html += " &#8212; " + std::to_string(last_epoch) + " epoch" + (last_epoch == 1 ? "" : "s") + " logged";
  if (runs.size() > 1) html += "; curves are the mean over the " + std::to_string(runs.size()) + " runs";
  html += ".</p>\n";
  for (const RunData& run : runs)
    for (const std::string& n : run.notes) html += note(svg::escape(n));

  const std::optional<SeriesKey> best = best_ema(runs);
  // Headline: the last epoch's test accuracy of SGD and of the best EMA.
  {
    std::string line;
    for (const std::optional<SeriesKey>& key : {std::optional<SeriesKey>(SeriesKey{"sgd", "running"}), best}) {
      if (!key) continue;
      const Curve c = make_curve(
          runs, [&](const MetricRow& r) { return r.split == "test" && r.model == key->model && r.bn == key->bn; },
          [](const MetricRow& r) { return r.accuracy; });
      if (c.mean.empty()) continue;
      line += std::string(line.empty() ? "" : "; ") + "<b>" + svg::escape(series_label(*key)) + "</b> " +
              format(c.mean.back(), 2) + "%";
    }
    if (!line.empty())
      html += "<p>Test accuracy at the last epoch: " + line +
              (best ? " (the best EMA: highest validation accuracy at any epoch)." : ".") + "</p>\n";
  }

  const std::string legend_note = " Solid lines: BN running statistics; dashed: BN statistics recomputed.";
  html += "<h2>Accuracy</h2>\n<div class=\"grid\">\n";
  if (has_field(runs, "val", "accuracy"))
    html += figure(metric_plot(runs, palette, "val", "accuracy", "Validation accuracy", "accuracy (%)"),
                   "Top-1 accuracy on the validation split." + legend_note + band_caption(runs.size()));
  if (has_field(runs, "test", "accuracy"))
    html += figure(metric_plot(runs, palette, "test", "accuracy", "Test accuracy", "accuracy (%)"),
                   "Top-1 accuracy on the test set." + legend_note + band_caption(runs.size()));
  html += "</div>\n";
  if (!has_field(runs, "val", "accuracy") && !has_field(runs, "test", "accuracy"))
    html += note("No validation or test rows in metrics.jsonl yet.");
  // The differences between the models are a point or two late in training: the
  // second half again, on its own scale.
  if (last_epoch >= 8) {
    const int64_t from = last_epoch / 2 + 1;
    const std::string caption = "The same, from epoch " + std::to_string(from) + " on." + band_caption(runs.size());
    html += "<div class=\"grid\">\n";
    if (has_field(runs, "val", "accuracy"))
      html += figure(metric_plot(runs, palette, "val", "accuracy", "Validation accuracy, second half", "accuracy (%)", from),
                     caption);
    if (has_field(runs, "test", "accuracy"))
      html += figure(metric_plot(runs, palette, "test", "accuracy", "Test accuracy, second half", "accuracy (%)", from),
                     caption);
    html += "</div>\n";
  }

  html += "<h2>Loss</h2>\n<div class=\"grid\">\n";
  if (has_field(runs, "val", "loss"))
    html += figure(metric_plot(runs, palette, "val", "loss", "Validation loss", "NLL"),
                   "Mean negative log-likelihood on the validation split." + band_caption(runs.size()));
  if (has_field(runs, "test", "loss"))
    html += figure(metric_plot(runs, palette, "test", "loss", "Test loss", "NLL"),
                   "Mean negative log-likelihood on the test set." + band_caption(runs.size()));
  html += "</div>\n";

  if (has_field(runs, "train_noisy", "memorised")) {
    html += "<h2>Memorisation of noisy labels</h2>\n<div class=\"grid\">\n";
    html += figure(metric_plot(runs, palette, "train_noisy", "memorised", "Predicted as their wrong label", "images (%)"),
                   "Of the training images whose (noisy) label is wrong, the percent each model predicts as that "
                   "wrong label: memorisation (the paper's Fig. 7)." + legend_note + band_caption(runs.size()));
    html += figure(metric_plot(runs, palette, "train_noisy", "corrected", "Predicted as their clean label", "images (%)"),
                   "The same images, predicted as their true label." + legend_note + band_caption(runs.size()));
    html += "</div>\n";
  }

  html += "<h2>Calibration</h2>\n";
  {
    // Test ECE in both binnings (validation ECE when there is no test set).
    const std::string split = has_field(runs, "test", "ece") || has_field(runs, "test", "ece15") ? "test" : "val";
    const std::string name = split == "test" ? "Test" : "Validation";
    std::string plots;
    if (has_field(runs, split, "ece"))
      plots += figure(metric_plot(runs, palette, split, "ece", name + " ECE, 100 equal-mass bins", "ECE (%)"),
                      "Expected calibration error with the paper's binning." + band_caption(runs.size()));
    if (has_field(runs, split, "ece15"))
      plots += figure(metric_plot(runs, palette, split, "ece15", name + " ECE, 15 equal-width bins", "ECE (%)"),
                      "Expected calibration error with the common binning." + band_caption(runs.size()));
    if (!plots.empty()) html += "<div class=\"grid\">\n" + plots + "</div>\n";
  }
  html += reliability_section(runs, palette, best);

  html += "<h2>Training</h2>\n<div class=\"grid\">\n";
  if (has_field(runs, "train", "lr") || has_field(runs, "test", "lr") || has_field(runs, "val", "lr")) {
    const Curve lr = make_curve(runs, [](const MetricRow& r) { return r.model == "sgd" && r.bn == "running"; },
                                [](const MetricRow& r) { return r.lr; });
    svg::PlotSpec spec;
    spec.title = "Learning rate";
    spec.x_label = "epoch";
    spec.y_label = "learning rate";
    spec.x_integer = true;
    spec.legend = false;
    svg::Series s = to_series(lr, "lr", "#222222", false, false);
    html += figure(svg::line_plot({s}, spec), "The learning rate logged with each epoch's rows (its last step).");
  }
  if (has_field(runs, "train", "loss")) {
    const Curve loss = make_curve(
        runs, [](const MetricRow& r) { return r.split == "train" && r.model == "sgd" && r.bn == "running"; },
        [](const MetricRow& r) { return r.loss; });
    svg::PlotSpec spec;
    spec.title = "Training loss (SGD)";
    spec.x_label = "epoch";
    spec.y_label = "NLL";
    spec.x_integer = true;
    spec.legend = false;
    html += figure(svg::line_plot({to_series(loss, "sgd", palette("sgd"), false, runs.size() > 1)}, spec),
                   "Mean training loss over each epoch's batches (augmented images, train mode)." +
                       band_caption(runs.size()));
  }
  html += "</div>\n";

  const bool reported = std::any_of(runs.begin(), runs.end(), [](const RunData& r) {
    return r.selection.is_object() && r.selection.contains("reported") && !r.selection["reported"].empty();
  });
  if (reported) {
    html += "<h2>The paper's rows</h2>\n<p>As the paper reports them (Sec. 4.1, Tables 1 and 6): SGD at the last "
            "epoch and at its best validation accuracy; EMA (acc.) and EMA (loss), the decay and epoch best on "
            "validation by accuracy and by loss, with running BN statistics; EMA (acc.)(BN) and EMA (loss)(BN), "
            "the slowest decay at its selected epochs with the statistics recomputed after training. Early "
            "stopping is always judged on running statistics.</p>\n";
    if (runs.size() > 1) html += "<p>Mean over the runs, with the min&#8211;max range in grey.</p>\n";
    html += reported_html_table(runs);
  }
  if (aggregate.is_object() && aggregate.contains("rows")) html += aggregate_html(aggregate);
  html += "<h2>Selected models</h2>\n";
  const bool from_file = std::all_of(runs.begin(), runs.end(), [](const RunData& r) { return !r.selection.is_null(); });
  html += from_file ? "<p>From <code>selection.json</code>: per model, the checkpoints kept by model selection.</p>\n"
                    : "<p>Derived from <code>metrics.jsonl</code>: per model and BN setting, the epoch of best "
                      "validation accuracy, of lowest validation loss, and the last epoch, each with the test "
                      "metrics of that epoch. Test accuracy in bold: the highest.</p>\n";
  if (!has_field(runs, "val", "accuracy") && !from_file)
    html += note("No validation split: the best test accuracy is an optimistic selection.");
  if (runs.size() > 1) html += "<p>Mean over the runs, with the min&#8211;max range in grey.</p>\n";
  html += selection_table(runs);

  html += "<h2>Configuration</h2>\n" + config_table(runs);
  html += "</body>\n</html>\n";
  return html;
}

std::string render_report(const std::vector<std::string>& run_dirs) {
  std::vector<RunData> runs;
  json aggregate;
  std::error_code ec;
  const fs::path root = run_dirs.empty() ? fs::path() : fs::path(run_dirs.front());
  if (run_dirs.size() == 1 && fs::exists(root / "aggregate.json", ec) && !fs::exists(root / "metrics.jsonl", ec)) {
    // A folder of train --seeds: the seed runs it names, and their aggregate.
    aggregate = read_optional_json(root / "aggregate.json");
    if (!aggregate.contains("runs") || !aggregate["runs"].is_array())
      throw std::invalid_argument((root / "aggregate.json").string() + ": no list of runs");
    for (const json& name : aggregate["runs"]) runs.push_back(load_run((root / name.get<std::string>()).string()));
  } else {
    for (const std::string& dir : run_dirs) runs.push_back(load_run(dir));
  }
  return render_report(runs, aggregate);
}

void write_report(const std::vector<std::string>& run_dirs, const std::string& output) {
  io::write_file_atomically(output, render_report(run_dirs));
}

const std::vector<std::pair<std::string, std::string>>& reported_row_labels() {
  static const std::vector<std::pair<std::string, std::string>> labels = {
      {"sgd_final", "SGD final"},   {"sgd_best", "SGD best"},          {"ema_acc", "EMA (acc.)"},
      {"ema_loss", "EMA (loss)"},   {"ema_acc_bn", "EMA (acc.)(BN)"},  {"ema_loss_bn", "EMA (loss)(BN)"}};
  return labels;
}

std::string reported_table(const json& reported) {
  const auto metric = [](const json& row, const char* split, const char* name, int decimals) {
    if (!row.contains(split) || !row[split].contains(name)) return std::string("-");
    return format(row[split][name].get<double>(), decimals);
  };
  std::string text = "the paper's rows (early stopping on validation, running BN statistics):\n";
  char line[200];
  std::snprintf(line, sizeof line, "  %-15s %-12s %5s  %-10s %8s %9s %10s %9s\n", "row", "model", "epoch", "BN", "val acc",
                "test acc", "test loss", "test ECE");
  text += line;
  for (const auto& [key, label] : reported_row_labels()) {
    if (!reported.contains(key)) continue;
    const json& row = reported[key];
    std::snprintf(line, sizeof line, "  %-15s %-12s %5s  %-10s %8s %9s %10s %9s\n", label.c_str(),
                  row.value("model", "?").c_str(), row.contains("epoch") ? row["epoch"].dump().c_str() : "-",
                  row.value("bn", "?").c_str(), metric(row, "val", "accuracy", 2).c_str(),
                  metric(row, "test", "accuracy", 2).c_str(), metric(row, "test", "loss", 4).c_str(),
                  metric(row, "test", "ece", 2).c_str());
    text += line;
  }
  return text;
}

std::string ReportConfig::output_file() const {
  return output.empty() ? (std::filesystem::path(runs.front()) / "report.html").string() : output;
}

void add_report_flags(CLI::App& app, ReportConfig& config) {
  app.add_option("runs", config.runs, "run folders (several: seeds of one configuration)")->required();
  app.add_option("-o,--output", config.output, "the HTML file to write (default: FIRST_RUN/report.html)");
}

json reliability_to_json(const Reliability& r) {
  json bins = json::array();
  for (const CalibrationBin& b : r.bins)
    bins.push_back({{"lower", b.lower}, {"upper", b.upper}, {"count", b.count}, {"confidence", b.confidence},
                    {"accuracy", b.accuracy}});
  return {{"binning", binning_name(r.binning)}, {"ece", r.ece}, {"total", r.total}, {"bins", bins}};
}

json reliability_entry(const Predictions& p, const std::string& bn) {
  return {{"bn", bn},
          {"equal_width", reliability_to_json(reliability(p, Binning::EqualWidth, 15))},
          {"equal_mass", reliability_to_json(reliability(p, Binning::EqualMass, 100))}};
}

}  // namespace polyak::app
