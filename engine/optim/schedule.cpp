#include "engine/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace polyak {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "cosine") return ScheduleKind::Cosine;
  if (name == "multistep") return ScheduleKind::MultiStep;
  if (name == "constant") return ScheduleKind::Constant;
  throw std::invalid_argument("unknown schedule '" + name + "' (expected cosine, multistep or constant)");
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::Cosine: return "cosine";
    case ScheduleKind::MultiStep: return "multistep";
    case ScheduleKind::Constant: return "constant";
  }
  return "?";
}

float Schedule::lr_at(int64_t step) const {
  if (step < warmup_steps) return base_lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  switch (kind) {
    case ScheduleKind::Cosine: {
      const int64_t span = std::max<int64_t>(total_steps - warmup_steps, 1);
      const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
      return static_cast<float>(0.5 * base_lr * (1.0 + std::cos(std::numbers::pi * progress)));
    }
    case ScheduleKind::MultiStep: {
      const auto passed = std::upper_bound(milestone_steps.begin(), milestone_steps.end(), step) - milestone_steps.begin();
      return base_lr * std::pow(gamma, static_cast<float>(passed));
    }
    case ScheduleKind::Constant: return base_lr;
  }
  return base_lr;
}

}  // namespace polyak
