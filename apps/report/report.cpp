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
#include "apps/report/report_parts.h"
#include "apps/report/svg.h"
#include "engine/io/atomic_file.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace report_parts;

namespace {

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

// ---------------------------------------------------------------- plots

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

// ---------------------------------------------------------------- the page's sections

// The page's head, title and what was read (run folders, seeds, epochs, notes).
std::string page_top(const std::vector<RunData>& runs, int64_t last_epoch) {
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
  html += " &#8212; " + std::to_string(last_epoch) + " epoch" + (last_epoch == 1 ? "" : "s") + " logged";
  if (runs.size() > 1) html += "; curves are the mean over the " + std::to_string(runs.size()) + " runs";
  html += ".</p>\n";
  for (const RunData& run : runs)
    for (const std::string& n : run.notes) html += note(svg::escape(n));
  return html;
}

// Headline: the last epoch's test accuracy of SGD and of the best EMA.
std::string headline(const std::vector<RunData>& runs, const std::optional<SeriesKey>& best) {
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
  if (line.empty()) return "";
  return "<p>Test accuracy at the last epoch: " + line +
         (best ? " (the best EMA: highest validation accuracy at any epoch)." : ".") + "</p>\n";
}

// Accuracy and loss vs epoch on validation and test, and memorisation of noisy labels.
std::string curve_sections(const std::vector<RunData>& runs, const Palette& palette, int64_t last_epoch) {
  std::string html;
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
  return html;
}

// ECE vs epoch in both binnings, and the reliability diagrams.
std::string calibration_section(const std::vector<RunData>& runs, const Palette& palette,
                                const std::optional<SeriesKey>& best) {
  std::string html;
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
  return html;
}

// The learning rate and SGD's training loss vs epoch.
std::string training_section(const std::vector<RunData>& runs, const Palette& palette) {
  std::string html;
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
  return html;
}

// The paper's rows, the seeds' aggregate and every selected model.
std::string table_sections(const std::vector<RunData>& runs, const json& aggregate) {
  std::string html;
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
  return html;
}

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
  run.phema = read_optional_json(root / "phema_out" / "phema.json");

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
  int64_t last_epoch = 0;
  for (const RunData& run : runs)
    for (const MetricRow& row : run.rows) last_epoch = std::max(last_epoch, row.epoch);
  const std::optional<SeriesKey> best = best_ema(runs);
  return page_top(runs, last_epoch) + headline(runs, best) + curve_sections(runs, palette, last_epoch) +
         calibration_section(runs, palette, best) + training_section(runs, palette) + table_sections(runs, aggregate) + phema_section(runs) +
         "<h2>Configuration</h2>\n" + config_table(runs) + "</body>\n</html>\n";
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

std::string ReportConfig::output_file() const {
  return output.empty() ? (std::filesystem::path(runs.front()) / "report.html").string() : output;
}

void add_report_flags(CLI::App& app, ReportConfig& config) {
  app.add_option("runs", config.runs, "run folders (several: seeds of one configuration)")->required();
  app.add_option("-o,--output", config.output, "the HTML file to write (default: FIRST_RUN/report.html)");
}

}  // namespace polyak::app
