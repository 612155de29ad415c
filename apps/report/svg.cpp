#include "apps/report/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace polyak::app::svg {

namespace {

constexpr double kLeft = 64, kRight = 20, kTop = 34, kBottom = 48;  // margins around the plot area
constexpr double kLegendRow = 18;

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

bool finite(double v) { return std::isfinite(v); }

// Data extent of the series along x or y (bands included for y).
struct Extent {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (finite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// One axis: ticks, and the affine map from data to pixels.
struct Axis {
  std::vector<double> ticks;
  double lo = 0, hi = 1, step = 1;
  double pixel_lo = 0, pixel_hi = 1;  // pixels of lo and hi (hi < lo for the y axis)
  double map(double v) const { return pixel_lo + (v - lo) / (hi - lo) * (pixel_hi - pixel_lo); }
};

Axis make_axis(Extent data, std::optional<double> fixed_lo, std::optional<double> fixed_hi, bool integer,
               double pixel_lo, double pixel_hi) {
  if (fixed_lo) data.lo = *fixed_lo;
  if (fixed_hi) data.hi = *fixed_hi;
  if (data.empty()) data.lo = 0, data.hi = 1;
  Axis axis;
  axis.ticks = nice_ticks(data.lo, data.hi, 6, integer);
  axis.step = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1;
  axis.lo = fixed_lo ? *fixed_lo : axis.ticks.front();
  axis.hi = fixed_hi ? *fixed_hi : axis.ticks.back();
  if (!(axis.hi > axis.lo)) axis.hi = axis.lo + 1;
  const double slack = 1e-9 * (axis.hi - axis.lo);
  std::erase_if(axis.ticks, [&](double t) { return t < axis.lo - slack || t > axis.hi + slack; });
  axis.pixel_lo = pixel_lo;
  axis.pixel_hi = pixel_hi;
  return axis;
}

// The legend is a grid filled column by column (so it reads in the series' order):
// every column as wide as the widest entry (sample line, gap, text at about 6.2 px per
// character of the 11 px font), as many columns as fit.
struct LegendGrid {
  double column_width = 0;
  size_t columns = 1, rows = 0;
};

LegendGrid legend_grid(const std::vector<Series>& series, double width) {
  LegendGrid g;
  if (series.empty()) return g;
  for (const Series& s : series) g.column_width = std::max(g.column_width, 32 + 6.2 * static_cast<double>(s.name.size()) + 16);
  g.columns = std::max<size_t>(1, static_cast<size_t>(width / g.column_width));
  g.rows = (series.size() + g.columns - 1) / g.columns;
  g.columns = (series.size() + g.rows - 1) / g.rows;  // no empty column at the end
  return g;
}

std::string stroke_attributes(const Series& s) {
  std::string out = "stroke=\"" + escape(s.color) + "\" stroke-width=\"1.8\"";
  if (s.dashed) out += " stroke-dasharray=\"6 4\"";
  return out;
}

std::string circle(double x, double y, const std::string& color) {
  return "<circle cx=\"" + fmt(x) + "\" cy=\"" + fmt(y) + "\" r=\"2.6\" fill=\"" + escape(color) + "\"/>";
}

// Maximal runs of consecutive indices where `ok(i)` holds.
template <class Ok>
std::vector<std::pair<size_t, size_t>> segments(size_t n, Ok ok) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < n;) {
    if (!ok(i)) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && ok(j)) ++j;
    out.emplace_back(i, j);
    i = j;
  }
  return out;
}

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target, bool integer_steps) {
  if (!finite(lo) || !finite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo <= 1e-12 * std::max(1.0, std::abs(lo))) {
    const double pad = integer_steps ? 1.0 : (lo != 0 ? 0.05 * std::abs(lo) : 1.0);
    lo -= pad, hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
  if (integer_steps) step = std::max(1.0, std::round(step));
  const double first = std::floor(lo / step + 1e-9) * step;
  const int64_t count = static_cast<int64_t>(std::ceil((hi - first) / step - 1e-9));
  std::vector<double> ticks;
  for (int64_t i = 0; i <= count; ++i) {
    double t = first + static_cast<double>(i) * step;
    if (std::abs(t) < 1e-9 * step) t = 0;  // no "-0"
    ticks.push_back(t);
  }
  return ticks;
}

std::string tick_label(double value, double step) {
  const int decimals = step > 0 ? std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9))) : 0;
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

std::string line_plot(const std::vector<Series>& series, const PlotSpec& spec) {
  const double width = spec.width, height = spec.height;
  Extent ex, ey;
  for (const Series& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!finite(s.x[i])) continue;
      if (i < s.y.size() && finite(s.y[i])) ex.add(s.x[i]), ey.add(s.y[i]);
      if (i < s.low.size()) ey.add(s.low[i]);
      if (i < s.high.size()) ey.add(s.high[i]);
    }
  }
  const bool no_data = ex.empty();
  const Axis ax = make_axis(ex, spec.x_min, spec.x_max, spec.x_integer, kLeft, width - kRight);
  const Axis ay = make_axis(ey, spec.y_min, spec.y_max, false, height - kBottom, kTop);

  const LegendGrid legend = spec.legend ? legend_grid(series, width - kLeft - kRight) : LegendGrid{};
  const double total_height = height + (legend.rows ? static_cast<double>(legend.rows) * kLegendRow + 6 : 0);

  std::string out;
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" width=\"" + fmt(width) + "\" height=\"" +
         fmt(total_height) + "\" viewBox=\"0 0 " + fmt(width) + " " + fmt(total_height) +
         "\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"11\" role=\"img\">\n";
  out += "<title>" + escape(spec.title) + "</title>\n";
  out += "<rect x=\"0\" y=\"0\" width=\"" + fmt(width) + "\" height=\"" + fmt(total_height) + "\" fill=\"#ffffff\"/>\n";
  out += "<text x=\"" + fmt(width / 2) + "\" y=\"20\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
         escape(spec.title) + "</text>\n";

  // Grid, ticks and their labels.
  out += "<g class=\"grid\" stroke=\"#e6e6e6\" stroke-width=\"1\">\n";
  for (double t : ax.ticks)
    out += "<line x1=\"" + fmt(ax.map(t)) + "\" y1=\"" + fmt(ay.pixel_hi) + "\" x2=\"" + fmt(ax.map(t)) + "\" y2=\"" +
           fmt(ay.pixel_lo) + "\"/>\n";
  for (double t : ay.ticks)
    out += "<line x1=\"" + fmt(ax.pixel_lo) + "\" y1=\"" + fmt(ay.map(t)) + "\" x2=\"" + fmt(ax.pixel_hi) + "\" y2=\"" +
           fmt(ay.map(t)) + "\"/>\n";
  out += "</g>\n<g class=\"ticks\" fill=\"#444444\">\n";
  for (double t : ax.ticks)
    out += "<text x=\"" + fmt(ax.map(t)) + "\" y=\"" + fmt(ay.pixel_lo + 16) + "\" text-anchor=\"middle\">" +
           tick_label(t, ax.step) + "</text>\n";
  for (double t : ay.ticks)
    out += "<text x=\"" + fmt(ax.pixel_lo - 6) + "\" y=\"" + fmt(ay.map(t) + 4) + "\" text-anchor=\"end\">" +
           tick_label(t, ay.step) + "</text>\n";
  out += "</g>\n";
  out += "<rect x=\"" + fmt(ax.pixel_lo) + "\" y=\"" + fmt(ay.pixel_hi) + "\" width=\"" + fmt(ax.pixel_hi - ax.pixel_lo) +
         "\" height=\"" + fmt(ay.pixel_lo - ay.pixel_hi) + "\" fill=\"none\" stroke=\"#999999\"/>\n";
  out += "<text x=\"" + fmt((ax.pixel_lo + ax.pixel_hi) / 2) + "\" y=\"" + fmt(height - 12) +
         "\" text-anchor=\"middle\">" + escape(spec.x_label) + "</text>\n";
  const double y_mid = (ay.pixel_lo + ay.pixel_hi) / 2;
  out += "<text x=\"16\" y=\"" + fmt(y_mid) + "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " + fmt(y_mid) +
         ")\">" + escape(spec.y_label) + "</text>\n";

  if (spec.diagonal) {
    const double a = std::max(ax.lo, ay.lo), b = std::min(ax.hi, ay.hi);
    if (b > a)
      out += "<line class=\"diagonal\" x1=\"" + fmt(ax.map(a)) + "\" y1=\"" + fmt(ay.map(a)) + "\" x2=\"" +
             fmt(ax.map(b)) + "\" y2=\"" + fmt(ay.map(b)) + "\" stroke=\"#aaaaaa\" stroke-dasharray=\"3 3\"/>\n";
  }
  if (no_data)
    out += "<text x=\"" + fmt((ax.pixel_lo + ax.pixel_hi) / 2) + "\" y=\"" + fmt(y_mid) +
           "\" text-anchor=\"middle\" fill=\"#888888\">no data</text>\n";

  // Bands first, so every line is drawn over them.
  for (const Series& s : series) {
    if (s.low.size() != s.x.size() || s.high.size() != s.x.size()) continue;
    auto ok = [&](size_t i) { return finite(s.x[i]) && finite(s.low[i]) && finite(s.high[i]); };
    for (const auto& [begin, end] : segments(s.x.size(), ok)) {
      std::string points;
      for (size_t i = begin; i < end; ++i) points += fmt(ax.map(s.x[i])) + "," + fmt(ay.map(s.high[i])) + " ";
      for (size_t i = end; i-- > begin;) points += fmt(ax.map(s.x[i])) + "," + fmt(ay.map(s.low[i])) + " ";
      points.pop_back();
      out += "<polygon class=\"band\" fill=\"" + escape(s.color) + "\" fill-opacity=\"0.15\" stroke=\"none\" points=\"" +
             points + "\"/>\n";
    }
  }
  for (const Series& s : series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    auto ok = [&](size_t i) { return finite(s.x[i]) && finite(s.y[i]); };
    out += "<g class=\"series\">\n<title>" + escape(s.name) + "</title>\n";
    for (const auto& [begin, end] : segments(n, ok)) {
      if (end - begin > 1) {
        std::string points;
        for (size_t i = begin; i < end; ++i) points += fmt(ax.map(s.x[i])) + "," + fmt(ay.map(s.y[i])) + " ";
        points.pop_back();
        out += "<polyline fill=\"none\" " + stroke_attributes(s) + " stroke-linejoin=\"round\" points=\"" + points +
               "\"/>\n";
      }
      if (s.markers || end - begin == 1)
        for (size_t i = begin; i < end; ++i) out += circle(ax.map(s.x[i]), ay.map(s.y[i]), s.color) + "\n";
    }
    out += "</g>\n";
  }

  // The legend below the frame.
  for (size_t i = 0; legend.rows && i < series.size(); ++i) {
    const Series& s = series[i];
    const double x = kLeft + static_cast<double>(i / legend.rows) * legend.column_width;
    const double cy = height + 6 + static_cast<double>(i % legend.rows) * kLegendRow + kLegendRow / 2;
    out += "<line x1=\"" + fmt(x) + "\" y1=\"" + fmt(cy) + "\" x2=\"" + fmt(x + 26) + "\" y2=\"" + fmt(cy) + "\" " +
           stroke_attributes(s) + "/>";
    if (s.markers) out += circle(x + 13, cy, s.color);
    out += "<text x=\"" + fmt(x + 32) + "\" y=\"" + fmt(cy + 4) + "\">" + escape(s.name) + "</text>\n";
  }
  out += "</svg>\n";
  return out;
}

}  // namespace polyak::app::svg
