// IEEE half <-> float (engine/io/half.h) and safetensors' F16 storage: every half
// survives the round trip, narrowing rounds to nearest even with the right overflow and
// subnormals, and a file stored as F16 has the reference layout and loads as float32.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "engine/io/half.h"
#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "support/temp_dir.h"

using namespace polyak;
using io::float_to_half;
using io::half_to_float;

TEST_CASE("half: every half widens exactly and narrows back to itself") {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    CAPTURE(h);
    if (nan) {
      CHECK(std::isnan(f));
      CHECK(std::isnan(half_to_float(float_to_half(f))));
    } else {
      CHECK(float_to_half(f) == h);
    }
  }
  CHECK(half_to_float(0x3c00) == 1.0f);
  CHECK(half_to_float(0x7bff) == 65504.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_to_float(0xfc00) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("half: narrowing rounds to nearest, ties to even, overflows to infinity") {
  CHECK(float_to_half(65519.0f) == 0x7bff);  // below the midpoint 65520: the largest half
  CHECK(float_to_half(65520.0f) == 0x7c00);  // the midpoint, whose even neighbour is 2^16: infinity
  CHECK(float_to_half(-1e6f) == 0xfc00);
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);                       // tie: to even 1.0
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);                   // tie: to even 1 + 2^-9
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);                              // tie between 0 and 2^-24
  CHECK(float_to_half(3 * std::ldexp(1.0f, -25)) == 0x0002);                          // tie: to even 2 * 2^-24
  CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);                              // the smallest normal
  CHECK(float_to_half(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)) == 0x0400);      // rounds up into it
  CHECK(float_to_half(-0.0f) == 0x8000);
  // Random floats across the range: the result is a nearest half (no neighbour closer).
  Rng rng(5);
  for (int i = 0; i < 100000; ++i) {
    const float f = std::ldexp(rng.uniform(-1.0f, 1.0f), static_cast<int>(rng.uniform(-26.0f, 15.0f)));
    const uint16_t h = float_to_half(f);
    const double error = std::abs(static_cast<double>(half_to_float(h)) - f);
    for (int step : {-1, 1}) {
      const uint16_t neighbour = static_cast<uint16_t>(h + step);
      if ((neighbour & 0x7c00) == 0x7c00 || ((neighbour ^ h) & 0x8000)) continue;  // past inf or across the sign
      CHECK(error <= std::abs(static_cast<double>(half_to_float(neighbour)) - f));
    }
  }
}

TEST_CASE("safetensors: float32 tensors stored as F16 keep the layout and load back as float32") {
  polyak::testing::TempDir dir("polyak_f16");
  const std::string path = (dir.path / "h.safetensors").string();
  const float a[3] = {1.0f, -2.5f, 0.1f};
  const int64_t n[1] = {7};
  const uint8_t u[1] = {9};
  io::save_safetensors(path, {{"a", Tensor::from_data(a, {3})}, {"n", Tensor::from_data(n, {1})},
                              {"u", Tensor::from_data(u, {1})}},
                       {}, io::FloatStorage::F16);
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  // I64 first, then F16 (after I32, before U8 in the reference order), 2 bytes each.
  CHECK(bytes.str().find(R"("n":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                         R"("a":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},)"
                         R"("u":{"dtype":"U8","shape":[1],"data_offsets":[14,15]})") != std::string::npos);
  const io::SafetensorsFile file = io::load_safetensors(path);
  const Tensor& loaded = file.at("a");
  CHECK(loaded.dtype() == DType::F32);
  CHECK(loaded.to_vector<float>() == std::vector<float>{1.0f, -2.5f, half_to_float(float_to_half(0.1f))});
  CHECK(file.at("n").item<int64_t>() == 7);
  CHECK(std::filesystem::file_size(path) < 200);
}
