#include "engine/ops/op_helpers.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace polyak {

namespace {
std::mutex g_fallback_mutex;
bool g_strict = [] {
  const char* strict = std::getenv("POLYAK_STRICT_KERNELS");
  return strict && *strict && std::strcmp(strict, "0") != 0;
}();
}  // namespace

void set_strict_kernels(bool on) {
  std::lock_guard<std::mutex> lock(g_fallback_mutex);
  g_strict = on;
}

namespace detail {

void apply_epilogue(const Kernels& k, const Epilogue& epilogue, int64_t n, float* y) {
  if (epilogue.residual) {
    BroadcastGeom same;
    same.ndim = 1;
    same.shape[0] = n;
    same.a_strides[0] = same.b_strides[0] = 1;
    k.binary(BinaryOp::Add, same, y, epilogue.residual, y);
  }
  if (epilogue.relu) k.relu_forward(n, y, y);
}

void report_host_fallback(Device device, const char* kernel) {
  static std::set<std::string> reported;
  std::lock_guard<std::mutex> lock(g_fallback_mutex);
  const std::string what = std::string(kernel) + " on " + device_name(device);
  if (g_strict)
    throw std::runtime_error("the " + std::string(device_name(device)) + " kernel table has no " + kernel +
                             " and POLYAK_STRICT_KERNELS forbids running it on the host");
  if (reported.insert(what).second)
    std::fprintf(stderr, "polyak: %s has no kernel %s; running its reference on the host (copies each call)\n",
                 device_name(device), kernel);
}

}  // namespace detail

}  // namespace polyak
