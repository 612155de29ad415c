// conv_bench: each CPU convolution algorithm (engine/cpu/conv2d.h) on the 3x3 layers of
// airbench94 at the recipe's batch (or on --layer shapes), forward, data gradient and
// filter gradient, in ms
// and GFLOP/s (2 C K 9 P Q N per pass), with the one conv_algorithm picks marked; and,
// first, the cores' measured peak: fused multiply-adds on independent AVX-512 registers
// (32 FLOP each), nothing from memory. Each time is the median of --reps calls after
// one untimed call. Never run as a test.
#include <CLI/CLI.hpp>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/parallel.h"

namespace {

using namespace polyak;
using Clock = std::chrono::steady_clock;

double median_ms(const std::function<void()>& call, int reps) {
  call();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    call();
    ms.push_back(1e3 * std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// GFLOP/s of `threads` threads each running chains of FMAs on 16 registers (enough in
// flight to cover the FMA units' latency).
double fma_peak(int threads) {
#ifdef __AVX512F__
  constexpr int64_t kIterations = 50'000'000;
  double seconds = 0;
  float sink = 0;
#pragma omp parallel num_threads(threads) reduction(max : seconds) reduction(+ : sink)
  {
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    const auto start = Clock::now();
    for (int64_t it = 0; it < kIterations; ++it)
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    seconds = std::chrono::duration<double>(Clock::now() - start).count();
    alignas(64) float lanes[16];
    for (int i = 0; i < 16; ++i) {
      _mm512_store_ps(lanes, acc[i]);
      sink += lanes[0];
    }
  }
  if (sink == 42.0f) std::puts("");  // keeps the chains alive
  return static_cast<double>(threads) * kIterations * 16 * 32 / seconds / 1e9;
#else
  (void)threads;
  return 0;
#endif
}

struct Layer {
  std::string name;
  int64_t channels_in, channels_out, size;
};

// "C:K:SIZE" (3x3, stride 1, padding 1).
Layer parse_layer(const std::string& text) {
  Layer l{text, 0, 0, 0};
  if (std::sscanf(text.c_str(), "%lld:%lld:%lld", reinterpret_cast<long long*>(&l.channels_in),
                  reinterpret_cast<long long*>(&l.channels_out), reinterpret_cast<long long*>(&l.size)) != 3 ||
      l.channels_in < 1 || l.channels_out < 1 || l.size < 1)
    throw CLI::ValidationError("--layer " + text + ": expected C:K:SIZE, three positive integers");
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak conv_bench: CPU convolution algorithms on airbench94's 3x3 layers, and the cores' FMA peak"};
  int64_t batch = 1024;
  int threads = 2, reps = 3;
  std::vector<std::string> layer_texts;
  app.add_option("--batch", batch, "images per call (the recipe's 1024)")->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 256));
  app.add_option("--reps", reps, "timed calls per measurement (median)")->check(CLI::Range(1, 100));
  app.add_option("--layer", layer_texts, "C:K:SIZE, a 3x3 layer to measure instead of airbench94's (repeatable)");
  CLI11_PARSE(app, argc, argv);
  std::vector<Layer> layers = {{"2.conv1", 24, 64, 31},  {"2.conv2", 64, 64, 15}, {"3.conv1", 64, 256, 15},
                               {"3.conv2", 256, 256, 7}, {"4.conv1", 256, 256, 7}, {"4.conv2", 256, 256, 3}};
  if (!layer_texts.empty()) {
    layers.clear();
    try {
      for (const std::string& t : layer_texts) layers.push_back(parse_layer(t));
    } catch (const CLI::Error& e) {
      return app.exit(e);
    }
  }
  set_num_threads(threads);
  std::printf("FMA peak: %.0f GFLOP/s on 1 thread, %.0f on %d\n", fma_peak(1), fma_peak(threads), threads);
  const char* names[] = {"im2col", "shifted", "winograd", "lanes"};
  for (const Layer& l : layers) {
    const int64_t n = batch, c = l.channels_in, k = l.channels_out, hw = l.size;
    const Conv2dGeom g{n, c, hw, hw, k, 3, 3, 1, 1, 1, 1, hw, hw};
    std::vector<float> x(n * c * hw * hw, 0.5f), w(k * c * 9, 0.01f), y(n * k * hw * hw), dy(y.size(), 0.1f);
    std::vector<float> dx(x.size()), dw(w.size());
    const double gflop = 2.0 * static_cast<double>(n * k * c * 9 * hw * hw) / 1e9;
    std::printf("%s: %lld -> %lld channels, %lldx%lld, %.1f GFLOP per pass\n", l.name.c_str(), static_cast<long long>(c),
                static_cast<long long>(k), static_cast<long long>(hw), static_cast<long long>(hw), gflop);
    for (int a = 0; a < 4; ++a) {
      const auto algorithm = static_cast<cpu::ConvAlgorithm>(a);
      if (!cpu::conv_supports(algorithm, g)) continue;
      const double f = median_ms([&] { cpu::conv2d_forward(algorithm, g, x.data(), w.data(), nullptr, {}, y.data()); }, reps);
      const double d = median_ms([&] { cpu::conv2d_backward_data(algorithm, g, dy.data(), w.data(), dx.data()); }, reps);
      const double b = median_ms(
          [&] { cpu::conv2d_backward_filter(algorithm, g, x.data(), dy.data(), dw.data(), nullptr); }, reps);
      std::printf("  %s %-8s forward %7.1f ms %4.0f GFLOP/s, data %7.1f ms %4.0f, filter %7.1f ms %4.0f, all %7.1f ms\n",
                  algorithm == cpu::conv_algorithm(g) ? "*" : " ", names[a], f, gflop / f * 1e3, d, gflop / d * 1e3, b,
                  gflop / b * 1e3, f + d + b);
    }
  }
  return 0;
}
