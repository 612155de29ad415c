// The report's post-hoc EMA section, from RUN/phema_out/phema.json (apps/phema): the
// sweep of test accuracy against the averaging length, with the combined running BN
// statistics and with recomputed ones, and the table of every target's fit.
#include <cmath>
#include <cstdio>

#include "apps/report/report.h"
#include "apps/report/svg.h"

namespace polyak::app {

namespace {

using json = nlohmann::ordered_json;

double accuracy(const json& target, const char* evaluation) {
  return target.contains(evaluation) ? target[evaluation].value("accuracy", NAN) : NAN;
}

std::string cell(double value, const char* format) {
  if (!std::isfinite(value)) return "<td>&#8211;</td>";
  char buf[48];
  std::snprintf(buf, sizeof buf, format, value);
  return std::string("<td>") + buf + "</td>";
}

}  // namespace

std::string phema_sweep_svg(const json& phema) {
  svg::Series recomputed{"BN recomputed", "#d62728", false, true, {}, {}, {}, {}};
  svg::Series running{"running statistics (combined)", "#1f77b4", true, true, {}, {}, {}, {}};
  if (phema.is_object() && phema.contains("targets"))
    for (const json& t : phema["targets"]) {
      if (t.value("kind", "") != "power" || t.value("refused", true)) continue;
      const double sigma = t.value("sigma_rel", NAN);
      recomputed.x.push_back(sigma);
      recomputed.y.push_back(accuracy(t, "test_recomputed_bn"));
      running.x.push_back(sigma);
      running.y.push_back(accuracy(t, "test_running_bn"));
    }
  if (recomputed.x.size() < 2) return "";
  svg::PlotSpec spec;
  spec.title = "Post-hoc EMA: test accuracy against the averaging length";
  spec.x_label = "sigma_rel (width of the average over the length of the run)";
  spec.y_label = "test accuracy (%)";
  return svg::line_plot({recomputed, running}, spec);
}

std::string phema_section(const std::vector<RunData>& runs) {
  std::string html;
  for (const RunData& run : runs) {
    if (!run.phema.is_object() || !run.phema.contains("targets")) continue;
    html += "<h2>Post-hoc EMA</h2>\n<p>Averages rebuilt after training from the snapshots of the power averages in " +
            svg::escape(run.dir) + "/phema (apps/phema), at step " + std::to_string(run.phema.value("step", 0)) +
            ": residual is the share of the target's profile the combination misses; refused targets were not "
            "rebuilt.</p>\n";
    html += phema_sweep_svg(run.phema);
    html += "<table>\n<tr><th>target</th><th>residual</th><th>condition</th><th>test acc. (running BN)</th>"
            "<th>test acc. (recomputed BN)</th></tr>\n";
    for (const json& t : run.phema["targets"]) {
      html += "<tr><td>" + svg::escape(t.value("target", "?")) + (t.value("refused", false) ? " (refused)" : "") +
              "</td>" + cell(t.value("residual", NAN), "%.2e") + cell(t.value("condition", NAN), "%.2e") +
              cell(accuracy(t, "test_running_bn"), "%.2f") + cell(accuracy(t, "test_recomputed_bn"), "%.2f") +
              "</tr>\n";
    }
    html += "</table>\n";
  }
  return html;
}

}  // namespace polyak::app
