#include "data/normalize.h"

#include <stdexcept>
#include <string>

namespace polyak::data {

Normalizer::Normalizer(int channels, const std::vector<float>& mean, const std::vector<float>& stddev)
    : channels_(channels) {
  if (channels <= 0) throw std::invalid_argument("Normalizer: channels must be positive, got " + std::to_string(channels));
  const bool normalise = !mean.empty() || !stddev.empty();
  if (normalise && (static_cast<int>(mean.size()) != channels || static_cast<int>(stddev.size()) != channels)) {
    throw std::invalid_argument("normalisation: the set has " + std::to_string(channels) + " channels but " +
                                std::to_string(mean.size()) + " means and " + std::to_string(stddev.size()) +
                                " standard deviations");
  }
  for (size_t c = 0; c < stddev.size(); ++c) {
    if (!(stddev[c] > 0.0f)) {
      throw std::invalid_argument("normalisation: the standard deviation of channel " + std::to_string(c) +
                                  " is " + std::to_string(stddev[c]) + "; it must be positive");
    }
  }
  table_.resize(static_cast<size_t>(channels) * 256);
  for (int c = 0; c < channels; ++c) {
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      table_[c * 256 + v] = normalise ? (x - mean[c]) / stddev[c] : x;
    }
  }
}

Normalizer::Normalizer(const ImageSet& set) : Normalizer(set.channels, set.mean, set.stddev) {}

void Normalizer::image(const uint8_t* src, int64_t plane, float* dst) const {
  for (int c = 0; c < channels_; ++c) {
    const float* t = table_.data() + c * 256;
    const uint8_t* s = src + c * plane;
    float* d = dst + c * plane;
    for (int64_t p = 0; p < plane; ++p) d[p] = t[s[p]];
  }
}

}  // namespace polyak::data
