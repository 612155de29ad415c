// uint8 pixels to normalised float32: y = (x/255 - mean[c]) / stddev[c].
//
// A Normalizer holds one 256-entry lookup table per channel, so converting an image is
// one table read per pixel. data::to_tensor and the batch loader both go through it,
// so a batch from the loader and the same images through to_tensor match bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "data/cifar.h"

namespace polyak::data {

class Normalizer {
 public:
  // Empty mean and stddev mean plain x/255. Otherwise both need `channels` entries;
  // std::invalid_argument if not, or if a stddev is not positive.
  Normalizer(int channels, const std::vector<float>& mean, const std::vector<float>& stddev);
  // The set's channels, mean and stddev.
  explicit Normalizer(const ImageSet& set);

  int channels() const { return channels_; }
  float value(int channel, uint8_t x) const { return table_[channel * 256 + x]; }

  // One CHW image of `plane` pixels per channel: dst[c*plane + p] = value(c, src[c*plane + p]).
  void image(const uint8_t* src, int64_t plane, float* dst) const;

 private:
  int channels_;
  std::vector<float> table_;  // channels * 256
};

}  // namespace polyak::data
