// IEEE 754 binary16 ("half", safetensors' F16) to and from float, for files that store
// floats in 2 bytes. The format: 1 sign bit, 5 exponent bits (bias 15), 10 fraction
// bits; exponent 0 holds zero and the subnormals (fraction * 2^-24), exponent 31
// infinity (fraction 0) and NaN. Every half is a float exactly, so widening is exact;
// narrowing rounds to the nearest half, ties to even, as a float to half conversion
// instruction (F16C's vcvtps2ph) does, with values beyond the largest half (65504,
// after rounding) becoming infinity and NaN staying NaN.
#pragma once

#include <bit>
#include <cstdint>

namespace polyak::io {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, fraction = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: fraction * 2^-24, exact in float
    const float magnitude = static_cast<float>(fraction) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (fraction << 13));  // inf, NaN
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (fraction << 13));  // rebias 15 -> 127
}

inline uint16_t float_to_half(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u)  // inf stays inf; NaN keeps its top fraction bits and stays NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u | ((magnitude >> 13) & 0x3ffu) : 0));
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504: infinity
  if (magnitude < 0x38800000u) {
    // Below the smallest normal half (2^-14): a multiple of 2^-24. Adding 0.5 (2^-1)
    // leaves the multiple of 2^-24 in the low bits of the float's fraction, rounded to
    // nearest even by the float addition itself.
    const float shifted = std::bit_cast<float>(magnitude) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(shifted) - 0x3f000000u));
  }
  // Normal: rebias the exponent and round the 13 dropped fraction bits to nearest even
  // (a carry out of the fraction correctly bumps the exponent).
  const uint32_t odd = (magnitude >> 13) & 1u;
  const uint32_t rounded = magnitude + 0xfffu + odd;
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

}  // namespace polyak::io
