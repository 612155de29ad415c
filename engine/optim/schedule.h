// Learning-rate schedules, evaluated per optimiser step (not per epoch), so a warm-up
// and a cosine decay are smooth within an epoch and a resumed run continues exactly.
//
//   warm-up (any kind): lr(s) = base * (s + 1) / W          for s < W warm-up steps
//   cosine:  lr(s) = base * (1 + cos(pi * (s - W) / (T - W))) / 2, reaching 0 at s = T
//   multistep: lr(s) = base * gamma^(number of milestones <= s)
//   constant: lr(s) = base
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace polyak {

enum class ScheduleKind { Cosine, MultiStep, Constant };

// Parses "cosine", "multistep", "constant"; throws std::invalid_argument otherwise.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);

struct Schedule {
  ScheduleKind kind = ScheduleKind::Cosine;
  float base_lr = 0.1f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;                 // cosine reaches 0 here
  std::vector<int64_t> milestone_steps;    // multistep, ascending
  float gamma = 0.2f;                      // multistep factor

  float lr_at(int64_t step) const;
};

}  // namespace polyak
