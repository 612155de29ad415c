// The table-driven kernel test: every kernel of the CPU table, and of the GPU table
// where there is one, against its reference (engine/ref), on random data over shapes
// that include the edge cases (one element, odd sizes, stride 2, batch 1, many
// channels, ragged ends). A fused kernel is checked against the composition of the
// references it fuses. Adding a kernel adds one check function and one entry to
// kKernelChecks; the checks live in kernel_checks_*.cpp, by family.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ref/kernels.h"
#include "engine/rng.h"
#include "engine/kernel_checks.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

using namespace polyak::kernel_checks;

namespace {

// ---------------------------------------------------------------- the table

struct KernelCheck {
  const char* kernels;
  void (*check)(const Kernels&, Device, Rng&);
};

const KernelCheck kKernelChecks[] = {
    {"fill", check_fill},
    {"copy_strided", check_copy_strided},
    {"binary", check_binary},
    {"scalar, unary", check_scalar_and_unary},
    {"axpy, multi_lerp", check_axpy_and_multi_lerp},
    {"increment_counter", check_increment_counter},
    {"relu_forward, relu_backward", check_relu},
    {"gelu_forward, gelu_backward", check_gelu},
    {"reduce_sum", check_reduce_sum},
    {"gemm", check_gemm},
    {"conv2d_forward, conv2d_backward_data, conv2d_backward_filter", check_conv2d},
    {"conv2d fused: epilogue, plane moments, data gradient in place and added", check_conv2d_fused},
    {"batchnorm_forward_train, batchnorm_forward_eval, batchnorm_backward", check_batchnorm},
    {"batchnorm fused: plane moments, epilogue, backward through the ReLU", check_batchnorm_fused},
    {"max_pool2d, avg_pool2d", check_pool},
    {"log_softmax, cross_entropy", check_loss},
    {"sgd_step", check_sgd_step},
    {"dropout_forward, dropout_backward", check_dropout},
};

// The device's own table (not the reference that POLYAK_KERNELS=reference puts in the
// CPU's place: this test is about the fast kernels).
void check_table(Device device) {
  const Kernels& table = backend(device).native_kernels();
  for (const KernelCheck& check : kKernelChecks) {
    const std::string what = std::string(check.kernels) + " on " + device_name(device);
    INFO(what);
    Rng rng(11);
    check.check(table, device, rng);
  }
}

}  // namespace

TEST_CASE("kernels: every kernel of the CPU table agrees with its reference") { check_table(Device::CPU); }

TEST_CASE("kernels: the reference table has every kernel, and POLYAK_KERNELS=reference puts it in the CPU's place") {
  const Kernels& ref_table = reference_kernels();
#define POLYAK_CHECK_PRESENT(name, type)       \
  {                                            \
    const bool present = ref_table.name != nullptr; \
    CHECK_MESSAGE(present, #name);             \
  }
  POLYAK_KERNELS(POLYAK_CHECK_PRESENT)
#undef POLYAK_CHECK_PRESENT
  const bool fused = ref_table.conv2d_forward_epilogue != nullptr;
  CHECK_FALSE(fused);  // the fusions are the fast tables' own
  const bool was = using_reference_kernels();
  use_reference_kernels(true);
  CHECK(&kernels(Device::CPU) == &ref_table);
  use_reference_kernels(false);
  CHECK(&kernels(Device::CPU) == &backend(Device::CPU).native_kernels());
  use_reference_kernels(was);
}

TEST_CASE("kernels: every kernel of the GPU table agrees with its reference") {
  polyak::testing::for_each_accelerator(check_table);
}
