// A one-line progress bar for a terminal (redrawn in place) that degrades to a line
// every 10% of the epoch when the output is a file or a pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace polyak::app {

class ProgressBar {
 public:
  // `label` prefixes the line (e.g. "epoch 3/10"); `total` is the number of steps.
  ProgressBar(std::string label, int64_t total, int64_t batch_size);
  // After step `done` (1-based) with the running loss and accuracy of the epoch.
  void update(int64_t done, double loss, double accuracy_percent);
  // Ends the line; returns the images/s of the whole epoch.
  double finish();
  double seconds() const;

 private:
  std::string label_;
  int64_t total_, batch_size_, done_ = 0, last_decile_ = -1;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

// "1:05" or "1:02:03".
std::string format_duration(double seconds);

}  // namespace polyak::app
