#include "apps/bench/summary.h"

#include <algorithm>
#include <cstdio>

namespace polyak::bench {

namespace {

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// The windows of `key` over every run of `implementation` at `threads`.
std::vector<double> pooled(const std::vector<Run>& runs, const std::string& implementation, int threads,
                           const char* key) {
  std::vector<double> values;
  for (const Run& run : runs) {
    if (run.implementation != implementation || run.numbers.at("threads") != threads) continue;
    for (const double v : run.numbers.at(key)) values.push_back(v);
  }
  return values;
}

std::string format(const char* pattern, double value) {
  char text[64];
  std::snprintf(text, sizeof text, pattern, value);
  return text;
}

}  // namespace

nlohmann::ordered_json summarize(const std::vector<Run>& runs, int64_t batch) {
  nlohmann::ordered_json summary = nlohmann::ordered_json::array();
  for (const Run& run : runs) {
    const int threads = run.numbers.at("threads");
    const bool seen = std::any_of(summary.begin(), summary.end(), [&](const nlohmann::ordered_json& s) {
      return s["implementation"] == run.implementation && s["threads"] == threads;
    });
    if (seen) continue;
    nlohmann::ordered_json entry = {{"implementation", run.implementation}, {"threads", threads}};
    for (const char* key : {"train_images_per_s", "eval_images_per_s", "ema_update_us", "bn_recompute_us_per_image"})
      entry[key] = median(pooled(runs, run.implementation, threads, key));
    const double step_us = 1e6 * static_cast<double>(batch) / entry["train_images_per_s"].get<double>();
    entry["ema_share_of_step"] = entry["ema_update_us"].get<double>() / step_us;
    if (run.numbers.contains("phema_update_us")) {  // polyak's post-hoc EMA tracking
      for (const char* key : {"phema_update_us", "snapshot_ms"}) entry[key] = median(pooled(runs, run.implementation, threads, key));
      entry["phema_share_of_step"] = entry["phema_update_us"].get<double>() / step_us;
      entry["snapshot_bytes"] = run.numbers["snapshot_bytes"];
    }
    int64_t peak_kib = 0;
    for (const Run& other : runs) {
      if (other.implementation != run.implementation || other.numbers.at("threads") != threads) continue;
      peak_kib = std::max(peak_kib, other.numbers.at("peak_rss_kib").get<int64_t>());
      if (other.numbers.contains("peak_device_mib")) entry["peak_device_mib"] = other.numbers["peak_device_mib"];
    }
    entry["peak_rss_mib"] = static_cast<double>(peak_kib) / 1024.0;
    summary.push_back(entry);
  }
  return summary;
}

nlohmann::ordered_json ratios(const nlohmann::ordered_json& summary) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const nlohmann::ordered_json& ours : summary) {
    if (ours["implementation"] != "polyak") continue;
    for (const nlohmann::ordered_json& theirs : summary) {
      if (theirs["implementation"] == "polyak" || theirs["threads"] != ours["threads"]) continue;
      const auto faster = [&](const char* key) { return ours[key].get<double>() / theirs[key].get<double>(); };
      const auto shorter = [&](const char* key) { return theirs[key].get<double>() / ours[key].get<double>(); };
      out.push_back({{"threads", ours["threads"]},
                     {"against", theirs["implementation"]},
                     {"train", faster("train_images_per_s")},
                     {"eval", faster("eval_images_per_s")},
                     {"ema_update", shorter("ema_update_us")},
                     {"bn_recompute", shorter("bn_recompute_us_per_image")},
                     {"peak_rss", 1.0 / shorter("peak_rss_mib")}});
    }
  }
  return out;
}

std::string table(const nlohmann::ordered_json& summary, const nlohmann::ordered_json& ratios) {
  std::string text;
  char line[256];
  std::snprintf(line, sizeof line, "%7s  %-16s %11s %10s %9s %9s %11s %12s\n", "threads", "implementation",
                "train img/s", "eval img/s", "5-EMA us", "EMA/step", "BN us/img", "peak RSS MiB");
  text += line;
  for (const nlohmann::ordered_json& s : summary) {
    std::snprintf(line, sizeof line, "%7d  %-16s %11.0f %10.0f %9.1f %8.3f%% %11.2f %12.1f\n", s["threads"].get<int>(),
                  s["implementation"].get<std::string>().c_str(), s["train_images_per_s"].get<double>(),
                  s["eval_images_per_s"].get<double>(), s["ema_update_us"].get<double>(),
                  100.0 * s["ema_share_of_step"].get<double>(), s["bn_recompute_us_per_image"].get<double>(),
                  s["peak_rss_mib"].get<double>());
    text += line;
    if (s.contains("peak_device_mib"))
      text += "         peak device memory: " + format("%.1f MiB in use, ", s["peak_device_mib"]["in_use"]) +
              format("%.1f MiB reserved\n", s["peak_device_mib"]["reserved"]);
  }
  for (const nlohmann::ordered_json& s : summary)
    if (s.contains("phema_update_us"))
      text += format("%7.0f  polyak post-hoc EMA: 5 EMAs + 2 power averages ", s["threads"].get<double>()) +
              format("%.1f us per step", s["phema_update_us"].get<double>()) +
              format(" (%.3f%% of a step), ", 100.0 * s["phema_share_of_step"].get<double>()) +
              format("a snapshot %.1f ms", s["snapshot_ms"].get<double>()) +
              format(" and %.2f MiB\n", s["snapshot_bytes"].get<double>() / (1 << 20));
  if (ratios.empty()) return text;
  text += "\npolyak / PyTorch (speed: > 1 polyak is faster; peak RSS: < 1 polyak uses less)\n";
  for (const nlohmann::ordered_json& r : ratios) {
    std::snprintf(line, sizeof line,
                  "%7d  vs %-16s train %5.2fx  eval %5.2fx  5-EMA %5.2fx  BN %5.2fx  peak RSS %5.2fx\n",
                  r["threads"].get<int>(), r["against"].get<std::string>().c_str(), r["train"].get<double>(),
                  r["eval"].get<double>(), r["ema_update"].get<double>(), r["bn_recompute"].get<double>(),
                  r["peak_rss"].get<double>());
    text += line;
  }
  return text;
}

}  // namespace polyak::bench
