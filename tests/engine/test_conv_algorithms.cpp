// The fast CPU convolutions (shifted rows: implicit im2col on a zero-padded image;
// Winograd's F(2x2, 3x3)) against the im2col reference on random shapes: odd sizes,
// channels that are not multiples of the vector width, batch 1 to 9, 1x1 to 5x5 filters,
// padding 0 to R-1, strides 1 to 3 (shifted rows), 1 to 3 threads; their results repeat
// bit for bit. And the indirect-B product shifted rows rest on (sgemm_indirect_b)
// against the reference product, on every instruction set.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/sgemm.h"
#include "engine/ref/kernels.h"
#include "engine/parallel.h"
#include "support/threads_scope.h"

using namespace polyak;
using polyak::testing::ThreadsScope;
using cpu::ConvAlgorithm;
using cpu::SgemmIsa;

namespace {

std::vector<float> random_vector(int64_t n, std::mt19937& gen) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = uniform(gen);
  return v;
}

std::string describe(const Conv2dGeom& g) {
  std::ostringstream out;
  out << "N" << g.N << " C" << g.C << " " << g.H << "x" << g.W << " K" << g.K << " " << g.R << "x" << g.S << " pad "
      << g.pad_h << "," << g.pad_w << " stride " << g.stride_h << "," << g.stride_w;
  return out.str();
}

// How far an algorithm may round from im2col. Element by element, relative to the
// element (floor 1) for all but F(4x4, 3x3) (WinogradLanes), whose transforms scale by
// up to 8 and 1/24: its error is about 1e-6 of the outputs' RMS (about 6 times F(2x2,
// 3x3)'s; tools/winograd_error.py), so an element near zero is judged against the RMS.
enum class Scale { Element, Rms };
Scale scale_of(ConvAlgorithm algorithm) {
  return algorithm == ConvAlgorithm::WinogradLanes ? Scale::Rms : Scale::Element;
}

// |got - want| <= 1e-4 max(1, |want|) elementwise, or 1e-4 max(1, |want|, RMS(want));
// reports the first mismatch.
void check_near(const std::vector<float>& got, const std::vector<float>& want, const std::string& what,
                Scale scale = Scale::Element) {
  REQUIRE(got.size() == want.size());
  double squares = 0;
  for (float v : want) squares += static_cast<double>(v) * v;
  const float floor =
      scale == Scale::Rms && !want.empty() ? std::max(1.0f, static_cast<float>(std::sqrt(squares / want.size()))) : 1.0f;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::abs(got[i] - want[i]) <= 1e-4f * std::max(floor, std::abs(want[i])))) {
      FAIL_CHECK(what << ": element " << i << " = " << got[i] << ", reference " << want[i]);
      return;
    }
  }
}

struct ConvOutputs {
  std::vector<float> y, dx, dw, db;
  std::vector<float> y_epilogue;  // relu(y + dy): dy doubles as the residual
  std::vector<float> x_plus_dx;   // x + dx where conv2d_backward_data_add adds, x where it declines
  bool added;
  std::vector<float> y_with_moments, plane_moments;  // from conv2d_forward_moments, where it writes them
  bool moments_written;
  std::vector<float> dy_then_dx;  // dx written over dy, where conv2d_backward_data_in_place can; dy where not
  bool in_place;
};

ConvOutputs run(ConvAlgorithm algorithm, const Conv2dGeom& g, const std::vector<float>& x,
                const std::vector<float>& w, const std::vector<float>& b, const std::vector<float>& dy) {
  const float nan = std::numeric_limits<float>::quiet_NaN();  // the kernels must overwrite every element
  ConvOutputs out{std::vector<float>(dy.size(), nan), std::vector<float>(x.size(), nan),
                  std::vector<float>(w.size(), nan), std::vector<float>(b.size(), nan),
                  std::vector<float>(dy.size(), nan), {}, false, std::vector<float>(dy.size(), nan),
                  std::vector<float>(static_cast<size_t>(g.N * g.K * kPlaneMoments), nan), false, dy, false};
  cpu::conv2d_forward(algorithm, g, x.data(), w.data(), b.data(), {}, out.y.data());
  cpu::conv2d_forward(algorithm, g, x.data(), w.data(), b.data(), {dy.data(), true}, out.y_epilogue.data());
  cpu::conv2d_backward_data(algorithm, g, dy.data(), w.data(), out.dx.data());
  cpu::conv2d_backward_filter(algorithm, g, x.data(), dy.data(), out.dw.data(), out.db.data());
  out.x_plus_dx = x;
  out.added = cpu::conv2d_backward_data_add(algorithm, g, dy.data(), w.data(), out.x_plus_dx.data());
  out.moments_written = cpu::conv2d_forward_moments(algorithm, g, x.data(), w.data(), b.data(),
                                                    out.y_with_moments.data(), out.plane_moments.data());
  out.in_place = cpu::conv2d_backward_data_in_place(algorithm, g, out.dy_then_dx.data(), w.data());
  return out;
}

// A convolution drawn at random: batch, channels in and out, height, width, filter
// sides and strides from the options, padding from 0 to the filter side - 1. P or Q
// may come out below 1 (the caller skips those).
struct ShapeOptions {
  std::vector<int64_t> batches, channels, sizes, filters, strides{1};
};
Conv2dGeom random_geometry(const ShapeOptions& o, std::mt19937& gen) {
  const auto pick = [&gen](const std::vector<int64_t>& options) {
    return options[std::uniform_int_distribution<size_t>(0, options.size() - 1)(gen)];
  };
  Conv2dGeom g{};
  g.N = pick(o.batches), g.C = pick(o.channels), g.K = pick(o.channels);
  g.H = pick(o.sizes), g.W = pick(o.sizes), g.R = pick(o.filters), g.S = pick(o.filters);
  g.stride_h = pick(o.strides), g.stride_w = pick(o.strides);
  g.pad_h = std::uniform_int_distribution<int64_t>(0, g.R - 1)(gen);
  g.pad_w = std::uniform_int_distribution<int64_t>(0, g.S - 1)(gen);
  const auto out = [](int64_t in, int64_t pad, int64_t taps, int64_t stride) {
    return in + 2 * pad < taps ? 0 : (in + 2 * pad - taps) / stride + 1;
  };
  g.P = out(g.H, g.pad_h, g.R, g.stride_h), g.Q = out(g.W, g.pad_w, g.S, g.stride_w);
  return g;
}

// One trial of `algorithm` against im2col on g, with random data drawn from gen, on
// `threads` threads: every output within tolerance, and a second run equal bit for bit.
// Returns the reference's outputs and dy (also the epilogue's residual).
struct Trial {
  ConvOutputs want;
  std::vector<float> dy;
};
Trial check_against_im2col(ConvAlgorithm algorithm, const Conv2dGeom& g, int threads, std::mt19937& gen) {
  ThreadsScope scope(threads);
  INFO(describe(g) << ", " << threads << " threads");
  const std::vector<float> x = random_vector(g.N * g.C * g.H * g.W, gen);
  const std::vector<float> w = random_vector(g.K * g.C * g.R * g.S, gen), b = random_vector(g.K, gen);
  std::vector<float> dy = random_vector(g.N * g.K * g.P * g.Q, gen);
  ConvOutputs want = run(ConvAlgorithm::Im2col, g, x, w, b, dy);
  const ConvOutputs got = run(algorithm, g, x, w, b, dy);
  const Scale scale = scale_of(algorithm);
  check_near(got.y, want.y, "forward", scale);
  check_near(got.y_epilogue, want.y_epilogue, "forward with residual and ReLU", scale);
  check_near(got.dx, want.dx, "backward data", scale);
  check_near(got.dw, want.dw, "backward filter", scale);
  check_near(got.db, want.db, "bias gradient");
  // The data gradients that are stride-1 forwards add into dx as they write it.
  const bool stride_1 = g.stride_h == 1 && g.stride_w == 1;
  const bool winograd = algorithm == ConvAlgorithm::Winograd || algorithm == ConvAlgorithm::WinogradLanes;
  CHECK(got.added == (winograd || (algorithm == ConvAlgorithm::ShiftedRows && stride_1)));
  if (got.added) {
    std::vector<float> x_plus_dx = x;
    for (size_t i = 0; i < x_plus_dx.size(); ++i) x_plus_dx[i] += want.dx[i];
    check_near(got.x_plus_dx, x_plus_dx, "backward data added to x", scale);
  } else {
    CHECK(got.x_plus_dx == x);  // declined: untouched
  }
  // Shifted rows' stride-1 data gradient can write over dy when dx has its shape.
  const bool same_shape = g.C == g.K && g.H == g.P && g.W == g.Q;
  CHECK(got.in_place == (algorithm == ConvAlgorithm::ShiftedRows && stride_1 && same_shape));
  if (got.in_place) {
    check_near(got.dy_then_dx, want.dx, "backward data over dy");
  } else {
    CHECK(got.dy_then_dx == dy);  // declined: untouched
  }
  // Shifted rows' forward sums each output plane's moments as it writes the plane.
  CHECK(got.moments_written == (algorithm == ConvAlgorithm::ShiftedRows));
  if (got.moments_written) {
    CHECK(got.y_with_moments == got.y);
    const int64_t plane = g.P * g.Q;
    for (int64_t i = 0; i < g.N * g.K; ++i) {
      double sum = 0.0, squares = 0.0;
      for (int64_t s = 0; s < plane; ++s) sum += got.y[i * plane + s];
      const double mean = sum / static_cast<double>(plane);
      for (int64_t s = 0; s < plane; ++s) squares += std::pow(got.y[i * plane + s] - mean, 2);
      const float* m = got.plane_moments.data() + i * kPlaneMoments;
      INFO("plane " << i);
      CHECK(static_cast<double>(m[0]) + m[1] == doctest::Approx(mean).epsilon(1e-5).scale(1.0));
      CHECK(m[2] == doctest::Approx(squares).epsilon(1e-4).scale(1.0));
    }
  } else {
    CHECK(std::all_of(got.plane_moments.begin(), got.plane_moments.end(), [](float v) { return std::isnan(v); }));
  }
  const ConvOutputs again = run(algorithm, g, x, w, b, dy);
  CHECK(again.y == got.y);
  CHECK(again.dx == got.dx);
  CHECK(again.dw == got.dw);
  return {std::move(want), std::move(dy)};
}

}  // namespace

TEST_CASE("conv algorithms: shifted rows covers strides, and stride 1 with padding below the filter size") {
  const Conv2dGeom same{2, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 32, 32};
  CHECK(cpu::conv_supports(ConvAlgorithm::ShiftedRows, same));
  CHECK(cpu::conv_algorithm(same) == ConvAlgorithm::ShiftedRows);
  const Conv2dGeom strided{2, 16, 32, 32, 32, 3, 3, 2, 2, 1, 1, 16, 16};
  CHECK(cpu::conv_supports(ConvAlgorithm::ShiftedRows, strided));
  CHECK(cpu::conv_algorithm(strided) == ConvAlgorithm::ShiftedRows);
  const Conv2dGeom strided_pointwise{2, 64, 32, 32, 128, 1, 1, 2, 2, 0, 0, 16, 16};
  CHECK(cpu::conv_supports(ConvAlgorithm::ShiftedRows, strided_pointwise));
  CHECK(cpu::conv_algorithm(strided_pointwise) == ConvAlgorithm::Im2col);  // the strided sample is its column matrix
  const Conv2dGeom strided_tiny{8, 256, 8, 8, 512, 3, 3, 2, 2, 1, 1, 4, 4};  // 4 x 5 columns per image
  CHECK(cpu::conv_algorithm(strided_tiny) == ConvAlgorithm::Im2col);
  const Conv2dGeom wide_pad{1, 2, 5, 5, 2, 3, 3, 1, 1, 3, 3, 9, 9};
  CHECK_FALSE(cpu::conv_supports(ConvAlgorithm::ShiftedRows, wide_pad));
  const Conv2dGeom pointwise{2, 8, 6, 6, 8, 1, 1, 1, 1, 0, 0, 6, 6};
  CHECK(cpu::conv_supports(ConvAlgorithm::ShiftedRows, pointwise));
  CHECK(cpu::conv_algorithm(pointwise) == ConvAlgorithm::Im2col);  // its image is its column matrix already
  // 4x4 maps: rows of 5 make 20 columns per image, enough with 4 images side by side
  // (80); but not on 2x2 maps (4 x 3 x 2 = 24 columns), nor for a strided layer, whose
  // data gradient multiplies one image at a time.
  const Conv2dGeom tiny{8, 512, 4, 4, 512, 3, 3, 1, 1, 1, 1, 4, 4};
  CHECK(cpu::conv_algorithm(tiny) == ConvAlgorithm::ShiftedRows);
  const Conv2dGeom tinier{8, 512, 2, 2, 512, 3, 3, 1, 1, 1, 1, 2, 2};
  CHECK(cpu::conv_supports(ConvAlgorithm::ShiftedRows, tinier));
  CHECK(cpu::conv_algorithm(tinier) == ConvAlgorithm::Im2col);
  const Conv2dGeom onto_tiny{8, 256, 8, 8, 512, 3, 3, 2, 2, 1, 1, 4, 4};
  CHECK(cpu::conv_algorithm(onto_tiny) == ConvAlgorithm::Im2col);
  const Conv2dGeom small{8, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 8, 8};
  CHECK(cpu::conv_algorithm(small) == ConvAlgorithm::ShiftedRows);
  // Winograd for 3x3 with many channels on maps that are not tiny (ResNet-18's stages 1-3).
  for (const int64_t channels : {64, 128, 256}) {
    const int64_t size = 2048 / channels;
    const Conv2dGeom deep{8, channels, size, size, channels, 3, 3, 1, 1, 1, 1, size, size};
    CHECK(cpu::conv_supports(ConvAlgorithm::Winograd, deep));
    CHECK(cpu::conv_algorithm(deep) == ConvAlgorithm::Winograd);
  }
  // With AVX-512, 16 images in the lanes on ResNet-20's stride-1 layers at 16x16 and
  // 8x8 and ResNet-18's from 16x16 to 4x4; not on a batch that leaves a quarter of the
  // lanes empty, nor on 32x32 maps or with 16 channels.
  if (cpu::sgemm_active_isa() == SgemmIsa::Avx512) {
    for (const int64_t channels : {32, 64, 128, 256, 512}) {
      const int64_t size = channels <= 64 ? 512 / channels : 2048 / channels;
      const Conv2dGeom batch{128, channels, size, size, channels, 3, 3, 1, 1, 1, 1, size, size};
      CHECK(cpu::conv_algorithm(batch) == ConvAlgorithm::WinogradLanes);
      Conv2dGeom sparse = batch;
      sparse.N = 20;  // 12 of 32 lanes empty
      CHECK(cpu::conv_algorithm(sparse) != ConvAlgorithm::WinogradLanes);
    }
    CHECK(cpu::conv_algorithm(Conv2dGeom{128, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, 32, 32}) == ConvAlgorithm::ShiftedRows);
    CHECK(cpu::conv_algorithm(Conv2dGeom{128, 64, 32, 32, 64, 3, 3, 1, 1, 1, 1, 32, 32}) == ConvAlgorithm::Winograd);
  }
  CHECK(cpu::conv_supports(ConvAlgorithm::WinogradLanes, same) == cpu::winograd_lanes_available());
  CHECK_FALSE(cpu::conv_supports(ConvAlgorithm::WinogradLanes, strided));
  CHECK_FALSE(cpu::conv_supports(ConvAlgorithm::Winograd, strided));
  CHECK_FALSE(cpu::conv_supports(ConvAlgorithm::Winograd, pointwise));
  CHECK_FALSE(cpu::conv_supports(ConvAlgorithm::Winograd, Conv2dGeom{1, 4, 8, 8, 4, 5, 5, 1, 1, 2, 2, 8, 8}));
}

TEST_CASE("conv algorithms: shifted rows matches im2col on random shapes, repeatably") {
  std::mt19937 gen(2024);
  const ShapeOptions options{{1, 3}, {1, 3, 5, 16, 17, 20, 33}, {1, 2, 5, 7, 8, 11, 16}, {1, 2, 3, 5}, {1, 1, 2, 3}};
  int tested = 0, strided = 0;
  for (int trial = 0; trial < 90; ++trial) {
    const Conv2dGeom g = random_geometry(options, gen);
    if (g.P < 1 || g.Q < 1) continue;
    REQUIRE(cpu::conv_supports(ConvAlgorithm::ShiftedRows, g));
    const Trial result = check_against_im2col(ConvAlgorithm::ShiftedRows, g, 1 + trial % 3, gen);
    // The epilogue is relu(y + residual) on both paths.
    const ConvOutputs& want = result.want;
    std::vector<float> expected(want.y.size());
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = std::max(want.y[i] + result.dy[i], 0.0f);
    check_near(want.y_epilogue, expected, "im2col epilogue");
    ++tested;
    strided += g.stride_h > 1 || g.stride_w > 1;
  }
  CHECK(tested >= 60);
  CHECK(strided >= 25);
}

// Winograd's forward and backward data (its filter gradient is shifted rows') on 3x3
// filters: padding 0 to 2, odd output sizes (a last tile half outside), 1x1 and 2x2
// maps, channel counts that are not multiples of a tile, and batches that split into
// groups of images of different sizes (9 images of 8x8: groups of 16 tiles x 4 images).
// Small maps put several images side by side in each row of a product (4 at 4x4, 2 at
// 8x8 and on the 8x8 phases of a stride-2 layer at 16x16), with batches that leave a
// last product short of images; their filter gradients go to im2col at 4x4.
TEST_CASE("conv algorithms: shifted rows with images side by side") {
  std::mt19937 gen(13);
  const Conv2dGeom shapes[] = {
      {7, 24, 4, 4, 40, 3, 3, 1, 1, 1, 1, 4, 4},  // 4 + 3 images
      {5, 17, 8, 8, 9, 3, 3, 1, 1, 1, 1, 8, 8},   // 2 + 2 + 1
      {3, 8, 16, 16, 16, 3, 3, 2, 2, 1, 1, 8, 8},
      {6, 5, 5, 5, 7, 3, 3, 1, 1, 1, 1, 5, 5},
  };
  for (const Conv2dGeom& g : shapes) {
    REQUIRE(cpu::conv_supports(ConvAlgorithm::ShiftedRows, g));
    check_against_im2col(ConvAlgorithm::ShiftedRows, g, 1, gen);
    check_against_im2col(ConvAlgorithm::ShiftedRows, g, 2, gen);
  }
}

// A strided data gradient runs on the phases of dx, each with its own subset of the taps
// and its own padding of dy: padding as wide as the filter or wider (every phase reads
// past dy on both sides), phases that receive no tap (stride above the filter size,
// whose dx there is zero), and an odd width whose last phase is one shorter.
TEST_CASE("conv algorithms: shifted rows' strided data gradient, wide padding and phases without taps") {
  std::mt19937 gen(11);
  const Conv2dGeom shapes[] = {
      {2, 3, 7, 9, 4, 3, 3, 2, 2, 3, 4, 6, 8},   // padding 3 and 4 around a 3x3 filter
      {2, 5, 9, 7, 3, 1, 3, 3, 2, 1, 3, 4, 6},   // stride 3 over one row tap: two row phases without taps
      {1, 4, 11, 11, 6, 2, 2, 3, 3, 0, 0, 4, 4},  // 2x2 filter, stride 3: a third of the phases empty
      {3, 8, 33, 17, 16, 3, 3, 2, 2, 1, 1, 17, 9},  // odd sizes, the ResNet stride-2 filter
  };
  for (const Conv2dGeom& g : shapes) {
    REQUIRE(g.P == (g.H + 2 * g.pad_h - g.R) / g.stride_h + 1);
    REQUIRE(g.Q == (g.W + 2 * g.pad_w - g.S) / g.stride_w + 1);
    REQUIRE(cpu::conv_supports(ConvAlgorithm::ShiftedRows, g));
    check_against_im2col(ConvAlgorithm::ShiftedRows, g, 2, gen);
  }
}

namespace {

// `trials` random shapes from `options`, each with an output checked against im2col on
// 1 to 3 threads; returns how many were.
int check_random_shapes(ConvAlgorithm algorithm, const ShapeOptions& options, int trials, std::mt19937& gen) {
  int tested = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const Conv2dGeom g = random_geometry(options, gen);
    if (g.P < 1 || g.Q < 1) continue;
    REQUIRE(cpu::conv_supports(algorithm, g));
    check_against_im2col(algorithm, g, 1 + trial % 3, gen);
    ++tested;
  }
  return tested;
}

}  // namespace

TEST_CASE("conv algorithms: Winograd F(2x2, 3x3) matches im2col on random shapes, repeatably") {
  std::mt19937 gen(33);
  const ShapeOptions options{{1, 3, 9}, {1, 3, 8, 17, 33}, {1, 2, 3, 4, 5, 7, 8, 13}, {3}};
  CHECK(check_random_shapes(ConvAlgorithm::Winograd, options, 50, gen) >= 35);
}

// The same with 16 images in the vector lanes: batches that fill the groups of 16 or
// leave the last one short (17, 33), channel counts below a vector, and maps from 1x1
// to 13x13 whose tasks take from one tile row (many channels) to all of them (few).
TEST_CASE("conv algorithms: Winograd with images in the vector lanes matches im2col on random shapes") {
  if (!cpu::winograd_lanes_available()) {
    MESSAGE("skipped: this CPU has no AVX-512");
    return;
  }
  std::mt19937 gen(35);
  const ShapeOptions options{{1, 16, 17, 33}, {1, 3, 8, 17, 33, 70}, {1, 2, 3, 4, 5, 7, 8, 13}, {3}};
  CHECK(check_random_shapes(ConvAlgorithm::WinogradLanes, options, 40, gen) >= 28);
}

TEST_CASE("conv algorithms: the ResNet-20 layer shapes, threaded") {
  std::mt19937 gen(7);
  ThreadsScope scope(2);
  std::vector<Conv2dGeom> shapes;
  for (const int64_t channels : {16, 32, 64}) {
    const int64_t size = 512 / channels;  // 32x32, 16x16, 8x8
    shapes.push_back({3, channels, size, size, channels, 3, 3, 1, 1, 1, 1, size, size});
    // and the first layer of the next stage: twice the filters, stride 2
    if (channels < 64) shapes.push_back({3, channels, size, size, 2 * channels, 3, 3, 2, 2, 1, 1, size / 2, size / 2});
  }
  for (const Conv2dGeom& g : shapes) {
    INFO(describe(g));
    const std::vector<float> x = random_vector(g.N * g.C * g.H * g.W, gen), w = random_vector(g.K * g.C * 9, gen),
                             dy = random_vector(g.N * g.K * g.P * g.Q, gen);
    const ConvOutputs want = run(ConvAlgorithm::Im2col, g, x, w, {}, dy);
    const ConvOutputs got = run(ConvAlgorithm::ShiftedRows, g, x, w, {}, dy);
    check_near(got.y, want.y, "forward");
    check_near(got.y_epilogue, want.y_epilogue, "forward with residual and ReLU");
    check_near(got.dx, want.dx, "backward data");
    check_near(got.dw, want.dw, "backward filter");
  }
}

TEST_CASE("sgemm_indirect_b: rows at arbitrary offsets match the product on the gathered matrix") {
  std::mt19937 gen(5);
  const auto check = [&](SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float beta) {
    INFO(cpu::sgemm_isa_name(isa) << " trans_a " << trans_a << " trans_b " << trans_b << " M" << M << " N" << N
                                   << " K" << K << " beta " << beta);
    // B's stored rows (rows x cols) at random, overlapping offsets into one buffer.
    const int64_t rows = trans_b ? N : K, cols = trans_b ? K : N;
    const std::vector<float> pool = random_vector(cols + 300, gen);
    std::vector<int64_t> offsets(static_cast<size_t>(rows));
    for (int64_t& o : offsets) o = std::uniform_int_distribution<int64_t>(0, 300)(gen);
    std::vector<float> gathered(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
      std::copy(pool.begin() + offsets[i], pool.begin() + offsets[i] + cols, gathered.begin() + i * cols);
    const std::vector<float> A = random_vector(M * K, gen), C0 = random_vector(M * N, gen);
    std::vector<float> want = C0, got = C0;
    ref::gemm(trans_a, trans_b, M, N, K, 1.0f, A.data(), trans_a ? M : K, gathered.data(), cols, beta,
                         want.data(), N);
    cpu::sgemm_indirect_b(isa, trans_a, trans_b, M, N, K, 1.0f, A.data(), trans_a ? M : K, pool.data(),
                          offsets.data(), beta, got.data(), N);
    check_near(got, want, "C");
    cpu::SgemmPackedA packed;  // the same product with op(A) packed beforehand
    packed.pack(isa, trans_a, M, K, A.data(), trans_a ? M : K);
    std::vector<float> got_packed = C0;
    cpu::sgemm_packed_a(packed, trans_b, N, 1.0f, pool.data(), 0, offsets.data(), beta, got_packed.data(), N);
    check_near(got_packed, want, "C, op(A) packed");
  };
  const int64_t sizes[] = {1, 3, 8, 17, 48, 50, 80, 400};  // 80: a last panel of whole vectors
  for (SgemmIsa isa : {SgemmIsa::Avx512, SgemmIsa::Avx2, SgemmIsa::Scalar}) {
    if (!cpu::sgemm_isa_available(isa)) continue;
    for (int trial = 0; trial < 24; ++trial) {
      check(isa, trial % 2 == 1, trial % 4 >= 2, sizes[trial % 8], sizes[(trial * 3 + 1) % 8],
            sizes[(trial * 5 + 2) % 8], trial % 3 == 0 ? 0.0f : 0.5f);
    }
    // A filter gradient's product (A * B^T with a long sum, read as dot products), with
    // tiles cut at every edge: the rows of A and of B, and the lanes of the sum.
    // (M = 40 and K = 288 go through the packed path: the same products either way.)
    for (const int64_t M : {1, 5, 16, 32, 40})
      for (const int64_t N : {1, 7, 144})
        for (const int64_t K : {288, 512, 1088, 1003}) check(isa, false, true, M, N, K, M == 5 ? 0.0f : 0.5f);
  }
}
