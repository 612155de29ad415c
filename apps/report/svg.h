// Small SVG plotting helpers for the HTML report: "nice" axis ticks, a frame with a
// grid, polylines (optionally dashed, with markers), min-max bands and a legend. The
// output is plain inline SVG text, valid XML, with no scripts and no external resources.
//
// A plot maps data (x, y) to pixels inside a plot area framed by margins for the tick
// labels and the axis titles; the legend flows below the plot area in rows, so the
// SVG's height grows with the number of series.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace polyak::app::svg {

// Text made safe for XML character data and attribute values (& < > " ').
std::string escape(std::string_view text);

// Ticks at multiples of a 1-2-5 step covering [lo, hi] with about `target` intervals;
// the first tick is <= lo and the last >= hi. A degenerate range is widened first.
std::vector<double> nice_ticks(double lo, double hi, int target = 6, bool integer_steps = false);

// A tick label: as many decimals as the step between ticks needs (0.25 -> "0.25").
std::string tick_label(double value, double step);

struct Series {
  std::string name;
  std::string color = "#1f77b4";
  bool dashed = false;
  bool markers = false;
  std::vector<double> x, y;       // a non-finite y breaks the line
  std::vector<double> low, high;  // optional band around the line (empty, or one per x)
};

struct PlotSpec {
  std::string title, x_label, y_label;
  int width = 600;
  int height = 340;  // of the frame and its labels; the legend adds below
  std::optional<double> x_min, x_max, y_min, y_max;  // fixed ends of the axes
  bool x_integer = false;  // integer tick steps on x (epochs)
  bool diagonal = false;   // the y = x reference line (reliability diagrams)
  bool legend = true;
};

// One complete <svg> element.
std::string line_plot(const std::vector<Series>& series, const PlotSpec& spec);

}  // namespace polyak::app::svg
