// sgemm_bench: single-thread GFLOP/s of polyak::cpu::sgemm against the linked BLAS
// (cblas_sgemm) on the matrix products of the ResNet-20 and ResNet-18 convolutions on
// CIFAR (im2col, one image per product, as engine/cpu/conv2d.cpp calls them) and of a
// linear layer. Each time is the best of several repetitions. Never run as a test.
#include <cblas.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/sgemm.h"

using polyak::cpu::SgemmIsa;

namespace {

struct Shape {
  std::string name;
  bool trans_a, trans_b;
  int64_t M, N, K;
  float beta;
  int per_image;  // products of this shape in one ResNet-20 training step, per image
};

// The three products of a convolution with K output channels, P*Q output pixels and a
// C*R*S-long filter (engine/cpu/conv2d.cpp).
// `convs` counts them in ResNet-20 (0 for the other networks).
void add_conv(std::vector<Shape>& shapes, const std::string& name, int64_t k, int64_t pq, int64_t crs, int convs) {
  shapes.push_back({name + " fwd", false, false, k, pq, crs, 0.0f, convs});
  // The stem's input needs no gradient.
  shapes.push_back({name + " bwd-data", true, false, crs, pq, k, 0.0f, crs == 27 ? 0 : convs});
  shapes.push_back({name + " bwd-filter", false, true, k, crs, pq, 1.0f, convs});
}

template <class F>
double best_seconds(double budget, F&& f) {
  f();  // warm-up: packing buffers, caches
  double best = 1e30, total = 0.0;
  int reps = 0;
  while (reps < 3 || (total < budget && reps < 100000)) {
    const auto start = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak sgemm_bench: our sgemm vs cblas_sgemm, one thread"};
  double budget = 0.1;
  std::string isa_name = polyak::cpu::sgemm_isa();
  app.add_option("--seconds", budget, "time budget per product and library")->capture_default_str();
  std::string filter;
  app.add_option("--filter", filter, "only the products whose name contains this");
  app.add_option("--isa", isa_name, "our instruction set")->capture_default_str()->check(CLI::IsMember({"avx512", "avx2", "scalar"}));
  CLI11_PARSE(app, argc, argv);
  const SgemmIsa isa = isa_name == "avx512" ? SgemmIsa::Avx512 : isa_name == "avx2" ? SgemmIsa::Avx2 : SgemmIsa::Scalar;
  if (!polyak::cpu::sgemm_isa_available(isa)) {
    std::fprintf(stderr, "this CPU does not support %s\n", isa_name.c_str());
    return 1;
  }
  openblas_set_num_threads(1);

  std::vector<Shape> shapes;
  add_conv(shapes, "r20 stem   3->16  32x32", 16, 1024, 27, 1);
  add_conv(shapes, "r20 s1    16->16  32x32", 16, 1024, 144, 6);
  add_conv(shapes, "r20 s2    16->32  16x16", 32, 256, 144, 1);
  add_conv(shapes, "r20 s2    32->32  16x16", 32, 256, 288, 5);
  add_conv(shapes, "r20 s3    32->64   8x8 ", 64, 64, 288, 1);
  add_conv(shapes, "r20 s3    64->64   8x8 ", 64, 64, 576, 5);
  add_conv(shapes, "r18 stem   3->64  32x32", 64, 1024, 27, 0);
  add_conv(shapes, "r18 l1    64->64  32x32", 64, 1024, 576, 0);
  add_conv(shapes, "r18 l2  128->128  16x16", 128, 256, 1152, 0);
  add_conv(shapes, "r18 l2 1x1 64->128 16x16", 128, 256, 64, 0);
  add_conv(shapes, "r18 l3  256->256   8x8 ", 256, 64, 2304, 0);
  add_conv(shapes, "r18 l4  512->512   4x4 ", 512, 16, 4608, 0);
  shapes.push_back({"linear fwd  128x64 -> 10", false, true, 128, 10, 64, 0.0f, 0});
  shapes.push_back({"linear fwd 128x512 -> 100", false, true, 128, 100, 512, 0.0f, 0});
  shapes.push_back({"square 1024", false, false, 1024, 1024, 1024, 0.0f, 0});

  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::printf("ours: %s, one thread; GFLOP/s (best of repetitions)\n", isa_name.c_str());
  std::printf("%-38s %5s %5s %5s   %8s %8s %8s %6s  %s\n", "product (trans)", "M", "N", "K", "ours", "A packed",
              "cblas", "ratio", "max rel diff");
  double ours_total = 0.0, blas_total = 0.0, ours_r20 = 0.0, blas_r20 = 0.0;
  for (const Shape& s : shapes) {
    if (s.name.find(filter) == std::string::npos) continue;
    const int64_t lda = s.trans_a ? s.M : s.K, ldb = s.trans_b ? s.K : s.N, ldc = s.N;
    std::vector<float> a(s.M * s.K), b(s.K * s.N), c0(s.M * s.N), c1, c2;
    for (float& x : a) x = normal(gen);
    for (float& x : b) x = normal(gen);
    for (float& x : c0) x = normal(gen);
    c1 = c0;
    c2 = c0;
    const auto ours = [&] {
      polyak::cpu::sgemm(isa, s.trans_a, s.trans_b, s.M, s.N, s.K, 1.0f, a.data(), lda, b.data(), ldb, s.beta,
                         c1.data(), ldc);
    };
    // The convolutions pack their weights once per call and run one product per image
    // on them (SgemmPackedA): timed here without the packing.
    polyak::cpu::SgemmPackedA packed;
    packed.pack(isa, s.trans_a, s.M, s.K, a.data(), lda);
    std::vector<float> c3 = c0;
    const auto ours_packed = [&] {
      polyak::cpu::sgemm_packed_a(packed, s.trans_b, s.N, 1.0f, b.data(), ldb, nullptr, s.beta, c3.data(), ldc);
    };
    const auto blas = [&] {
      cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans, s.trans_b ? CblasTrans : CblasNoTrans,
                  static_cast<int>(s.M), static_cast<int>(s.N), static_cast<int>(s.K), 1.0f, a.data(),
                  static_cast<int>(lda), b.data(), static_cast<int>(ldb), s.beta, c2.data(), static_cast<int>(ldc));
    };
    // One call each from the same C, compared, before timing.
    ours();
    ours_packed();
    blas();
    double diff = 0.0;
    for (size_t i = 0; i < c1.size(); ++i)
      for (const float got : {c1[i], c3[i]})
        diff = std::max(diff, std::abs(static_cast<double>(got) - c2[i]) / (1.0 + std::abs(static_cast<double>(c2[i]))));
    const double flops = 2.0 * static_cast<double>(s.M) * s.N * s.K;
    const double t_ours = best_seconds(budget, ours), t_packed = best_seconds(budget, ours_packed);
    const double t_blas = best_seconds(budget, blas);
    ours_total += t_ours;
    blas_total += t_blas;
    ours_r20 += s.per_image * t_ours;
    blas_r20 += s.per_image * t_blas;
    const std::string label = s.name + (s.trans_a ? " (T," : " (N,") + (s.trans_b ? "T)" : "N)");
    std::printf("%-38s %5lld %5lld %5lld   %8.1f %8.1f %8.1f %6.2f  %.1e\n", label.c_str(),
                static_cast<long long>(s.M), static_cast<long long>(s.N), static_cast<long long>(s.K),
                flops / t_ours * 1e-9, flops / t_packed * 1e-9, flops / t_blas * 1e-9, t_blas / t_ours, diff);
  }
  std::printf("sum of best times: ours %.2f ms, cblas %.2f ms\n", ours_total * 1e3, blas_total * 1e3);
  std::printf("ResNet-20 convolution products of one training image: ours %.3f ms, cblas %.3f ms\n", ours_r20 * 1e3,
              blas_r20 * 1e3);
  return 0;
}
