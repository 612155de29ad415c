// Learning-rate schedules: values at known steps.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "engine/optim/schedule.h"

using namespace polyak;

TEST_CASE("schedule: linear warm-up then cosine to zero") {
  Schedule s;
  s.kind = ScheduleKind::Cosine;
  s.base_lr = 0.1f;
  s.warmup_steps = 10;
  s.total_steps = 110;
  CHECK(s.lr_at(0) == doctest::Approx(0.01));
  CHECK(s.lr_at(4) == doctest::Approx(0.05));
  CHECK(s.lr_at(9) == doctest::Approx(0.1));
  CHECK(s.lr_at(10) == doctest::Approx(0.1));                  // cosine starts at the base
  CHECK(s.lr_at(60) == doctest::Approx(0.05));                 // halfway
  CHECK(s.lr_at(35) == doctest::Approx(0.05 * (1 + std::cos(3.14159265358979 / 4))));
  CHECK(s.lr_at(110) == doctest::Approx(0.0).scale(1));
  CHECK(s.lr_at(500) == doctest::Approx(0.0).scale(1));        // clamps past the end
}

TEST_CASE("schedule: multistep divides by 5 at the milestones, constant stays") {
  Schedule s;
  s.kind = ScheduleKind::MultiStep;
  s.base_lr = 0.1f;
  s.milestone_steps = {60, 120, 160};
  s.gamma = 0.2f;
  CHECK(s.lr_at(0) == doctest::Approx(0.1));
  CHECK(s.lr_at(59) == doctest::Approx(0.1));
  CHECK(s.lr_at(60) == doctest::Approx(0.02));
  CHECK(s.lr_at(130) == doctest::Approx(0.004));
  CHECK(s.lr_at(199) == doctest::Approx(0.0008));
  Schedule c;
  c.kind = ScheduleKind::Constant;
  c.base_lr = 0.3f;
  c.warmup_steps = 2;
  CHECK(c.lr_at(0) == doctest::Approx(0.15));
  CHECK(c.lr_at(1000) == doctest::Approx(0.3));
  CHECK(parse_schedule_kind("multistep") == ScheduleKind::MultiStep);
  CHECK_THROWS_AS(parse_schedule_kind("step"), std::invalid_argument);
}
