// Reliability diagrams: the report's section (reliability.json pooled over the runs)
// and the writers of reliability.json for the apps that evaluate models.
#include <algorithm>

#include "apps/report/report_parts.h"
#include "apps/report/svg.h"

namespace polyak::app {

using nlohmann::json;

namespace report_parts {
namespace {

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

}  // namespace

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

}  // namespace report_parts

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
