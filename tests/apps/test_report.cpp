// The HTML report: rendered from synthetic run folders, it holds a plot per metric
// with a line per (model, bn), the reliability diagrams when reliability.json exists,
// the selection table (from selection.json or derived), and it is well-formed markup.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "apps/report/report.h"
#include "apps/report/svg.h"

namespace fs = std::filesystem;
using namespace polyak::app;
using nlohmann::json;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("polyak_report_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A synthetic run of 10 epochs: SGD, ema0.99 and ema0.999 (each with running and
// recomputed BN), validation and test rows. Validation accuracy peaks at epoch 7 for
// SGD, 8 for ema0.99 and 9 for ema0.999; validation loss is lowest at epoch 5.
// ema0.999 with recomputed BN is the best EMA (84% at epoch 9).
fs::path synthetic_run(const std::string& name, int seed) {
  const fs::path dir = fresh_dir(name);
  std::ofstream(dir / "config.json") << json{{"model", "resnet20"}, {"dataset", "cifar10"}, {"seed", seed},
                                            {"epochs", 10}, {"ema_decays", {0.99, 0.999}}}.dump(2);
  std::ofstream out(dir / "metrics.jsonl");
  const double shift = 0.5 * seed;
  for (int e = 1; e <= 10; ++e) {
    const double lr = 0.05 * (1 + std::cos(3.14159265358979 * e / 10));
    auto row = [&](const std::string& model, const std::string& bn, const std::string& split, double acc, double loss) {
      json r = {{"epoch", e}, {"step", 40 * e}, {"lr", lr},     {"model", model},  {"bn", bn},
                {"split", split}, {"accuracy", acc}, {"loss", loss}, {"images", 1000}};
      if (split == "test") r["ece"] = 2.0 + 0.1 * e, r["ece15"] = 1.0 + 0.1 * e;
      out << r.dump() << "\n";
    };
    const double loss = 0.5 + 0.01 * (e - 5) * (e - 5);
    row("sgd", "running", "train", 50 + 4 * e, 1.5 - 0.1 * e);
    struct Model {
      const char* name;
      const char* bn;
      double top;
      int peak;
    };
    for (const Model& m : {Model{"sgd", "running", 80, 7}, Model{"ema0.99", "running", 82, 8},
                           Model{"ema0.99", "recomputed", 83, 8}, Model{"ema0.999", "running", 60, 9},
                           Model{"ema0.999", "recomputed", 84, 9}}) {
      const double acc = m.top + shift - (e - m.peak) * (e - m.peak);
      row(m.name, m.bn, "val", acc, loss);
      row(m.name, m.bn, "test", acc - 1, loss + 0.02);
    }
  }
  // An end-of-training re-evaluation: in selection.json, not in the curves.
  out << json{{"epoch", 10}, {"phase", "end"}, {"model", "sgd"}, {"bn", "recomputed"}, {"split", "test"},
              {"accuracy", 99.0}, {"loss", 0.1}}.dump()
      << "\n";
  return dir;
}

// Checks that every element is closed in order (XHTML-style: void elements written
// as <x/>); returns the first problem, or "" when the markup is balanced.
std::string unbalanced_tags(const std::string& html) {
  std::vector<std::string> open;
  size_t i = 0;
  while ((i = html.find('<', i)) != std::string::npos) {
    const size_t end = html.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    const std::string tag = html.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty() || tag[0] == '!') continue;  // <!DOCTYPE html>
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name)
        return "</" + name + "> closes <" + (open.empty() ? std::string("nothing") : open.back()) + ">";
      open.pop_back();
      continue;
    }
    if (tag.back() == '/') continue;  // self-closing
    const std::string name = tag.substr(0, tag.find_first_of(" \n\t"));
    if (name == "style") {  // CSS: skip to its end tag
      i = html.find("</style>", i);
      if (i == std::string::npos) return "<style> not closed";
      i += 8;
      continue;
    }
    open.push_back(name);
  }
  return open.empty() ? "" : "<" + open.back() + "> not closed";
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

// The <tr> of the table whose cells start with model, bn label and criterion label.
std::string table_row(const std::string& html, const std::string& model, const std::string& bn,
                      const std::string& criterion) {
  const std::string start = "<tr><td>" + model + "</td><td>" + bn + "</td><td>" + criterion + "</td>";
  const size_t at = html.find(start);
  if (at == std::string::npos) return "";
  return html.substr(at, html.find("</tr>", at) - at);
}

}  // namespace

TEST_CASE("svg helpers: ticks, labels, escaping, a well-formed plot") {
  const std::vector<double> unit = svg::nice_ticks(0, 1);
  REQUIRE(unit.size() == 6);
  for (size_t i = 0; i < unit.size(); ++i) CHECK(unit[i] == doctest::Approx(0.2 * static_cast<double>(i)));
  const std::vector<double> epochs = svg::nice_ticks(1, 20, 6, true);
  CHECK(epochs.front() == 0);
  CHECK(epochs.back() == 20);
  CHECK(epochs[1] - epochs[0] == 5);
  CHECK(svg::nice_ticks(1, 3, 6, true) == std::vector<double>{1, 2, 3});  // integer steps, never 0.5
  CHECK(svg::nice_ticks(5, 5).size() >= 2);                                  // a degenerate range is widened
  CHECK(svg::tick_label(0.4, 0.2) == "0.4");
  CHECK(svg::tick_label(15, 5) == "15");
  CHECK(svg::tick_label(0.05, 0.05) == "0.05");
  CHECK(svg::escape("a<b & \"c\"") == "a&lt;b &amp; &quot;c&quot;");

  svg::Series s;
  s.name = "ema<0.9>";
  s.x = {1, 2, 3, 4};
  s.y = {1, NAN, 3, 4};  // the gap splits the line: a lone point and a polyline
  s.low = {0.5, 1.5, 2.5, 3.5};
  s.high = {1.5, 2.5, 3.5, 4.5};
  svg::PlotSpec spec;
  spec.title = "T";
  const std::string plot = svg::line_plot({s}, spec);
  CHECK(unbalanced_tags(plot) == "");
  CHECK(count(plot, "<polyline") == 1);
  CHECK(count(plot, "<circle") == 1);
  CHECK(count(plot, "class=\"band\"") == 1);
  CHECK(plot.find("ema&lt;0.9&gt;") != std::string::npos);
  CHECK(plot.find("ema<0.9>") == std::string::npos);
  CHECK(plot.find("nan") == std::string::npos);
  CHECK(svg::line_plot({}, spec).find("no data") != std::string::npos);
}

TEST_CASE("report: one run folder gives plots with a line per (model, bn) and the derived selection table") {
  const fs::path dir = synthetic_run("one", 0);
  const std::string html = render_report(std::vector<std::string>{dir.string()});
  CHECK(unbalanced_tags(html) == "");
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("polyak report: resnet20 on cifar10") != std::string::npos);

  // Plots: val/test accuracy (all epochs and the second half), val/test loss, test ECE
  // in both binnings, learning rate, training loss.
  CHECK(count(html, "<svg") == 10);
  CHECK(count(html, "</svg>") == 10);
  for (const char* title : {">Validation accuracy<", ">Test accuracy<", ">Validation accuracy, second half<",
                            ">Test accuracy, second half<", ">Validation loss<", ">Test loss<",
                            ">Test ECE, 100 equal-mass bins<", ">Test ECE, 15 equal-width bins<", ">Learning rate<",
                            ">Training loss (SGD)<"})
    CHECK_MESSAGE(html.find(title) != std::string::npos, title);
  // Five series in each of the six accuracy/loss plots and the two ECE plots, each
  // with a <title> (a tooltip) and a legend entry; SGD also has the training-loss plot.
  // The "phase": "end" row (sgd, recomputed) is not a series.
  for (const std::string name : {"sgd", "ema0.99", "ema0.99 (BN recomputed)", "ema0.999", "ema0.999 (BN recomputed)"}) {
    CHECK_MESSAGE(count(html, "<title>" + name + "</title>") == (name == "sgd" ? 9 : 8), name);
    CHECK_MESSAGE(count(html, "\">" + name + "</text>") == 8, name);
  }
  CHECK(html.find("sgd (BN recomputed)") == std::string::npos);
  CHECK(count(html, "stroke-dasharray=\"6 4\"") > 0);  // recomputed BN: dashed
  CHECK(count(html, "class=\"band\"") == 0);           // one run: no bands

  CHECK(html.find("reliability diagram is skipped") != std::string::npos);
  CHECK(html.find("Test accuracy at the last epoch: <b>sgd</b> 70.00%; <b>ema0.999 (BN recomputed)</b> 82.00%") !=
        std::string::npos);

  // The derived table: best val accuracy at the series' peak, lowest val loss at 5.
  const std::string sgd_best = table_row(html, "sgd", "running", "best val accuracy");
  REQUIRE(!sgd_best.empty());
  CHECK(sgd_best.find("<td class=\"num\">7</td><td class=\"num\">80.00</td>") != std::string::npos);
  CHECK(sgd_best.find("<td class=\"num\">79.00</td>") != std::string::npos);  // its test accuracy
  const std::string ema_best = table_row(html, "ema0.999", "recomputed", "best val accuracy");
  CHECK(ema_best.find("<td class=\"num\">9</td><td class=\"num\">84.00</td>") != std::string::npos);
  CHECK(ema_best.find("<b>83.00</b>") != std::string::npos);  // the best test accuracy, bold
  CHECK(table_row(html, "ema0.99", "running", "lowest val loss").find("<td class=\"num\">5</td>") != std::string::npos);
  CHECK(table_row(html, "ema0.99", "recomputed", "last epoch").find("<td class=\"num\">10</td>") != std::string::npos);
  CHECK(count(html, "<tr><td>") == 5 * 3);
  // The configuration table.
  CHECK(html.find("<th>ema_decays</th><td>[0.99,0.999]</td>") != std::string::npos);
  // Rendering is deterministic.
  CHECK(render_report(std::vector<std::string>{dir.string()}) == html);
}

TEST_CASE("report: several runs give mean curves with min-max bands and ranges in the table") {
  const fs::path a = synthetic_run("seed0", 0), b = synthetic_run("seed1", 1);
  const std::string html = render_report(std::vector<std::string>{a.string(), b.string()});
  CHECK(unbalanced_tags(html) == "");
  CHECK(count(html, "class=\"band\"") > 0);
  CHECK(html.find("(seed 0)") != std::string::npos);
  CHECK(html.find("(seed 1)") != std::string::npos);
  CHECK(html.find("Mean over 2 runs") != std::string::npos);
  // Best val accuracy of SGD: 80 and 80.5 -> mean 80.25 with its range.
  const std::string sgd_best = table_row(html, "sgd", "running", "best val accuracy");
  CHECK(sgd_best.find("80.25 <span class=\"range\">(80.00&#8211;80.50)</span>") != std::string::npos);
  CHECK(html.find("<tr class=\"differs\"><th>seed</th><td>0 / 1</td></tr>") != std::string::npos);
}

TEST_CASE("report: reliability.json and selection.json are shown when present") {
  const fs::path dir = synthetic_run("files", 0);
  // reliability.json from predictions: SGD overconfident, the EMA right on.
  Predictions sgd, ema;
  sgd.classes = ema.classes = 2;
  for (int i = 0; i < 200; ++i) {
    const int64_t label = i % 4 == 0 ? 1 : 0;  // 75% of the images are class 0
    sgd.labels.push_back(label), ema.labels.push_back(label);
    sgd.logits.insert(sgd.logits.end(), {static_cast<float>(std::log(0.99)), static_cast<float>(std::log(0.01))});
    ema.logits.insert(ema.logits.end(), {static_cast<float>(std::log(0.75)), static_cast<float>(std::log(0.25))});
  }
  const json entry = reliability_entry(ema, "recomputed");
  CHECK(entry["equal_width"]["bins"].size() == 15);
  CHECK(entry["equal_mass"]["bins"].size() == 100);
  CHECK(entry["equal_width"]["ece"].get<double>() == doctest::Approx(0.0).scale(1).epsilon(1e-4));
  CHECK(reliability_entry(sgd)["equal_width"]["ece"].get<double>() == doctest::Approx(24.0).epsilon(1e-4));
  std::ofstream(dir / "reliability.json")
      << json{{"split", "test"}, {"epoch", 10}, {"models", {{"sgd", reliability_entry(sgd)}, {"ema0.999", entry},
                                                            {"ema0.99", reliability_entry(ema)}}}}.dump();
  // selection.json as the train app writes it: model -> criterion -> selection.
  const json val = {{"accuracy", 84.0}, {"loss", 0.5}, {"ece", 3.0}, {"ece15", 2.0}, {"images", 1000}};
  const json test = {{"accuracy", 83.0}, {"loss", 0.52}, {"ece", 1.5}, {"ece15", 1.1}, {"images", 1000}};
  std::ofstream(dir / "selection.json")
      << json{{"ema0.999",
               {{"best_acc",
                 {{"epoch", 9}, {"bn", "recomputed"}, {"file", "best_acc_ema0.999.safetensors"}, {"val", val},
                  {"test", test}, {"recomputed", {{"val", val}, {"test", {{"accuracy", 82.5}, {"ece", 1.25}}}}},
                  {"temperature", 1.2}, {"flops", 41}}},
                {"best_loss", {{"epoch", 5}, {"bn", "recomputed"}, {"file", "best_loss_ema0.999.safetensors"}}}}},
              {"sgd", {{"best_loss", {{"epoch", 5}, {"bn", "running"}, {"test", {{"accuracy", 75.0}}}}}}}}
             .dump(2);
  const std::string html = render_report(std::vector<std::string>{dir.string()});
  CHECK(unbalanced_tags(html) == "");
  CHECK(html.find("reliability diagram is skipped") == std::string::npos);
  CHECK(html.find(">Reliability, 15 equal-width bins<") != std::string::npos);
  CHECK(html.find(">Reliability, 100 equal-mass bins<") != std::string::npos);
  CHECK(html.find(">sgd, ECE 24.00%<") != std::string::npos);
  // The best EMA by validation accuracy is shown next to SGD, the other EMA is not.
  CHECK(html.find(">ema0.999 (BN recomputed), ECE 0.00%<") != std::string::npos);
  CHECK(html.find(">ema0.99, ECE") == std::string::npos);
  CHECK(html.find("on the test split at epoch 10") != std::string::npos);
  CHECK(count(html, "<svg") == 12);

  // The selection table comes from the file: its rows in model order (sgd first), the
  // flattened metrics, the extra field; the further val metrics and image counts not.
  CHECK(count(html, "<tr><td>") == 3);
  CHECK(html.find("<tr><td>sgd</td>") < html.find("<tr><td>ema0.999</td>"));
  CHECK(html.find("From <code>selection.json</code>") != std::string::npos);
  CHECK(html.find("<th>temperature</th>") != std::string::npos);
  CHECK(html.find("<th>flops</th>") != std::string::npos);
  CHECK(html.find("<th>test ECE15 (%)</th>") != std::string::npos);
  CHECK(html.find("<th>test acc, BN recomputed at the end (%)</th>") != std::string::npos);
  CHECK(html.find("val_ece") == std::string::npos);
  CHECK(html.find("images</th>") == std::string::npos);
  CHECK(html.find("<td>best_acc_ema0.999.safetensors</td>") != std::string::npos);
  const std::string row = table_row(html, "ema0.999", "recomputed", "best val accuracy");
  CHECK(row.find("<td class=\"num\">9</td><td class=\"num\">84.00</td><td class=\"num\">0.5000</td>"
                 "<td class=\"num\"><b>83.00</b></td><td class=\"num\">0.5200</td><td class=\"num\">1.50</td>"
                 "<td class=\"num\">1.10</td><td class=\"num\">82.50</td><td class=\"num\">1.25</td>"
                 "<td class=\"num\">1.200</td>") != std::string::npos);
  CHECK(table_row(html, "ema0.999", "recomputed", "lowest val loss").find("<td>&#8211;</td>") != std::string::npos);
}

TEST_CASE("report: clear errors for bad run folders, and a partial last line is skipped") {
  CHECK_THROWS_WITH_AS(load_run("/nonexistent/polyak_run"), doctest::Contains("no such run folder"),
                       std::invalid_argument);
  const fs::path empty = fresh_dir("empty");
  CHECK_THROWS_WITH_AS(load_run(empty.string()), doctest::Contains("no metrics.jsonl"), std::invalid_argument);

  const fs::path broken = synthetic_run("broken", 0);
  {
    std::ofstream out(broken / "metrics.jsonl", std::ios::app);
    out << "{\"epoch\": 11, \"mod";  // a run still writing
  }
  const RunData run = load_run(broken.string());
  CHECK(run.rows.size() == 10 * 11);  // the "phase": "end" row is not among them
  REQUIRE(run.notes.size() == 1);
  CHECK(run.notes[0].find("metrics.jsonl:112") != std::string::npos);
  {
    std::ofstream out(broken / "metrics.jsonl", std::ios::app);
    out << "\n{\"epoch\": 12}\n";  // now the bad line is in the middle
  }
  CHECK_THROWS_WITH_AS(load_run(broken.string()), doctest::Contains("metrics.jsonl:112: not a JSON object"),
                       std::invalid_argument);
  std::ofstream(empty / "metrics.jsonl") << "";
  std::ofstream(empty / "config.json") << "[1, 2";
  CHECK_THROWS_WITH_AS(load_run(empty.string()), doctest::Contains("config.json: not a JSON object"),
                       std::invalid_argument);
  CHECK_THROWS_AS(render_report(std::vector<std::string>{}), std::invalid_argument);
}

TEST_CASE("report: write_report writes the file the binary would") {
  const fs::path dir = synthetic_run("write", 0);
  const fs::path output = dir / "report.html";
  write_report({dir.string()}, output.string());
  std::ifstream in(output);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == render_report(std::vector<std::string>{dir.string()}));
  CHECK(!fs::exists(output.string() + ".tmp"));
}
