// Bit-for-bit comparison of two safetensors files, as the tests of resumed and
// data-parallel runs need it: the same tensors, in the same order, with the same bytes.
#pragma once

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>

#include "engine/io/safetensors.h"

namespace polyak::testing {

// Whether the files' metadata must match too. A data-parallel run's checkpoint
// records its ranks and --accum-steps, so it is compared without.
enum class Metadata { Compare, Ignore };

inline void check_same_tensors(const std::filesystem::path& a, const std::filesystem::path& b,
                               Metadata metadata = Metadata::Compare) {
  CAPTURE(a.string());
  const auto x = io::load_safetensors(a.string());
  const auto y = io::load_safetensors(b.string());
  REQUIRE(x.tensors.size() == y.tensors.size());
  for (size_t i = 0; i < x.tensors.size(); ++i) {
    const std::string& name = x.tensors[i].first;
    const Tensor& tx = x.tensors[i].second;
    const Tensor& ty = y.tensors[i].second;
    CAPTURE(name);
    REQUIRE(name == y.tensors[i].first);
    REQUIRE(tx.shape() == ty.shape());
    CHECK(std::memcmp(tx.raw_data(), ty.raw_data(), static_cast<size_t>(tx.numel()) * dtype_size(tx.dtype())) == 0);
  }
  if (metadata == Metadata::Compare) CHECK(x.metadata == y.metadata);
}

}  // namespace polyak::testing
