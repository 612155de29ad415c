// The report's tables: the models kept by selection (selection.json, or derived from
// metrics.jsonl), the paper's rows, and train --seeds' aggregate; and the paper's rows
// as plain text for the end of a training run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "apps/report/report_parts.h"
#include "apps/report/svg.h"

namespace polyak::app {

using nlohmann::json;

namespace report_parts {
namespace {

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

}  // namespace

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

}  // namespace report_parts

using namespace report_parts;

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

}  // namespace polyak::app
