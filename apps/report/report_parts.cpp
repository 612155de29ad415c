#include "apps/report/report_parts.h"

#include <cstdio>
#include <iterator>

namespace polyak::app::report_parts {

namespace {

int model_rank(const std::string& model) { return model == "sgd" ? 0 : is_ema(model) ? 1 : 2; }
int bn_rank(const std::string& bn) { return bn == "running" ? 0 : bn == "recomputed" ? 1 : 2; }

}  // namespace

double number(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_number() ? it->get<double>() : kNaN;
}

std::string text(const json& object, const char* key, const std::string& otherwise) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : otherwise;
}

double ema_decay(const std::string& model) {
  if (!is_ema(model)) return kNaN;
  try {
    size_t used = 0;
    const double a = std::stod(model.substr(3), &used);
    return used + 3 == model.size() ? a : kNaN;
  } catch (const std::exception&) {
    return kNaN;
  }
}

bool is_ema(const std::string& model) { return model.rfind("ema", 0) == 0; }

bool model_before(const std::string& a, const std::string& b) {
  if (model_rank(a) != model_rank(b)) return model_rank(a) < model_rank(b);
  const double da = ema_decay(a), db = ema_decay(b);
  if (std::isfinite(da) && std::isfinite(db) && da != db) return da < db;
  return a < b;
}


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

Palette::Palette(const std::vector<RunData>& runs) {
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
std::string Palette::operator()(const std::string& model) const {
  const auto it = colors_.find(model);
  return it == colors_.end() ? "#7f7f7f" : it->second;
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

bool has_field(const std::vector<RunData>& runs, const std::string& split, const std::string& field) {
  for (const RunData& run : runs)
    for (const MetricRow& row : run.rows)
      if (row.split == split && row.epoch >= 0 && std::isfinite(field_of(row, field))) return true;
  return false;
}

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

}  // namespace polyak::app::report_parts
