#include "apps/common/progress.h"

#include <unistd.h>

#include <cstdio>

namespace polyak::app {

std::string format_duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, int64_t batch_size)
    : label_(std::move(label)), total_(total), batch_size_(batch_size), tty_(isatty(fileno(stdout)) != 0),
      start_(std::chrono::steady_clock::now()) {}

double ProgressBar::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressBar::update(int64_t done, double loss, double accuracy) {
  done_ = done;
  const double elapsed = seconds();
  const double rate = static_cast<double>(done * batch_size_) / std::max(elapsed, 1e-9);
  const double eta = elapsed / static_cast<double>(done) * static_cast<double>(total_ - done);
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * done / std::max<int64_t>(total_, 1));
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    std::printf("\r%s [%s] %lld/%lld  loss %.3f  acc %5.1f%%  %6.0f img/s  ETA %s ", label_.c_str(), bar.c_str(),
                static_cast<long long>(done), static_cast<long long>(total_), loss, accuracy, rate,
                format_duration(eta).c_str());
  } else {
    const int64_t decile = done * 10 / std::max<int64_t>(total_, 1);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::printf("%s %lld/%lld  loss %.3f  acc %.1f%%  %.0f img/s  ETA %s\n", label_.c_str(),
                static_cast<long long>(done), static_cast<long long>(total_), loss, accuracy, rate,
                format_duration(eta).c_str());
  }
  std::fflush(stdout);
}

double ProgressBar::finish() {
  if (tty_) std::printf("\n");
  std::fflush(stdout);
  return static_cast<double>(done_ * batch_size_) / std::max(seconds(), 1e-9);
}

}  // namespace polyak::app
