// sgemm: every instruction set this CPU runs (avx512, avx2, scalar) against the
// reference triple loop, over the four transpose cases, odd sizes, padded leading
// dimensions, alpha and beta (beta = 0 over a C full of NaN), and the edge cases; each
// case both as one call and with op(A) packed beforehand (sgemm_packed_a); the
// prefetching a product can do for its caller; and the row edges of a convolution's
// shifted rows.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cpu/sgemm.h"
#include "engine/ref/kernels.h"

using polyak::cpu::SgemmIsa;

namespace {

const SgemmIsa kIsas[] = {SgemmIsa::Avx512, SgemmIsa::Avx2, SgemmIsa::Scalar};

struct Case {
  bool trans_a, trans_b;
  int64_t M, N, K;
  float alpha, beta;
};

std::string describe(SgemmIsa isa, const Case& c) {
  return std::string(polyak::cpu::sgemm_isa_name(isa)) + (c.trans_a ? " T" : " N") + (c.trans_b ? "T" : "N") +
         " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta);
}

// Runs one case with leading dimensions padded past the minimum and checks C, including
// that the padding columns of C are left alone. Returns false on the first mismatch.
// packed_a: through sgemm_packed_a, op(A) packed beforehand.
bool check_case(SgemmIsa isa, const Case& c, std::mt19937& gen, bool packed_a = false) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t a_rows = c.trans_a ? c.K : c.M, a_cols = c.trans_a ? c.M : c.K;
  const int64_t b_rows = c.trans_b ? c.N : c.K, b_cols = c.trans_b ? c.K : c.N;
  const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = c.N + 7;
  std::vector<float> A(a_rows * lda), B(b_rows * ldb), C(c.M * ldc);
  for (float& x : A) x = normal(gen);
  for (float& x : B) x = normal(gen);
  for (float& x : C) x = c.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : normal(gen);
  std::vector<float> expected = C;
  polyak::ref::gemm(c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta,
                               expected.data(), ldc);
  if (packed_a) {
    polyak::cpu::SgemmPackedA packed;
    packed.pack(isa, c.trans_a, c.M, c.K, A.data(), lda);
    polyak::cpu::sgemm_packed_a(packed, c.trans_b, c.N, c.alpha, B.data(), ldb, nullptr, c.beta, C.data(), ldc);
  } else {
    polyak::cpu::sgemm(isa, c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta,
                       C.data(), ldc);
  }
  const double rtol = 1e-5 * static_cast<double>(std::max<int64_t>(c.K, 1));
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = C[i * ldc + j], want = expected[i * ldc + j];
      const bool padding = j >= c.N;
      const bool ok = padding ? std::isnan(want) ? std::isnan(got) : got == want
                              : std::abs(static_cast<double>(got) - want) <= rtol * std::max(1.0, std::abs(double{want}));
      if (!ok) {
        FAIL_CHECK(describe(isa, c) << std::string(packed_a ? " (A packed)" : "") << ": C[" << i << "][" << j << "] = " << got << ", expected " << want
                                    << std::string(padding ? " (padding)" : ""));
        return false;
      }
    }
  }
  return true;
}

}  // namespace

TEST_CASE("sgemm: the instruction set in use is one this CPU has") {
  const std::string isa = polyak::cpu::sgemm_isa();
  bool known = false;
  for (SgemmIsa candidate : kIsas)
    if (isa == polyak::cpu::sgemm_isa_name(candidate)) known = polyak::cpu::sgemm_isa_available(candidate);
  CHECK_MESSAGE(known, "sgemm_isa() = " << isa);
  CHECK(polyak::cpu::sgemm_isa_available(SgemmIsa::Scalar));
  MESSAGE("sgemm uses " << isa);
}

TEST_CASE("sgemm: every instruction set matches the reference on random shapes") {
  const int64_t sizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 129, 300};
  const float alphas[] = {1.0f, 0.5f};
  const float betas[] = {0.0f, 1.0f, -0.5f};
  for (SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) {
      MESSAGE("skipping " << polyak::cpu::sgemm_isa_name(isa) << ": not supported by this CPU");
      continue;
    }
    std::mt19937 gen(42);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(sizes)) - 1);
    int tested = 0;
    for (int n = 0; n < 48; ++n) {
      int64_t M, N, K;
      do {  // keep the reference loop cheap: at most ~2.5 M multiply-adds per case
        M = sizes[pick(gen)], N = sizes[pick(gen)], K = sizes[pick(gen)];
      } while (M * N * K > 2500000);
      for (int t = 0; t < 4; ++t) {
        const Case c{(t & 1) != 0, (t & 2) != 0, M, N, K, alphas[(n + t) % 2], betas[(n + t) % 3]};
        if (!check_case(isa, c, gen) || !check_case(isa, c, gen, true)) break;
        ++tested;
      }
    }
    CHECK(tested == 48 * 4);
  }
}

TEST_CASE("sgemm: blocking edges (several slices of K, blocks of N, narrow and tall shapes)") {
  // K past one slice (384) with beta != 0 applied once; N past one block of packed B;
  // the in-place paths: few rows (op(B) = B read in place), N within one vector or one
  // panel (op(A) read in place), tiles one vector wide spanning two row panels.
  const Case cases[] = {
      {false, false, 3, 1500, 700, 1.0f, -0.5f}, {true, false, 3, 1500, 700, 0.5f, 0.0f},
      {false, true, 40, 5, 900, 1.0f, 1.0f},     {true, true, 40, 5, 900, 1.0f, 0.0f},
      {false, false, 300, 16, 64, 1.0f, 0.0f},   {true, false, 300, 16, 64, 0.5f, 1.0f},
      {false, false, 129, 100, 385, 1.0f, 1.0f}, {true, false, 129, 48, 385, 1.0f, -0.5f},
      {false, true, 17, 33, 1000, 0.5f, 1.0f},   {false, false, 32, 96, 17, 1.0f, 0.0f},
      {true, false, 27, 1024, 16, 1.0f, 0.0f},   {false, true, 16, 27, 1024, 1.0f, 1.0f},
      {false, false, 64, 64, 576, 1.0f, 0.0f},   {true, false, 576, 64, 64, 1.0f, 0.0f},
      {false, true, 64, 576, 64, 1.0f, 1.0f},    {false, false, 9, 1, 50, 1.0f, 0.0f},
  };
  for (SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) continue;
    std::mt19937 gen(7);
    for (const Case& c : cases) {
      check_case(isa, c, gen);
      check_case(isa, c, gen, true);
    }
  }
}

TEST_CASE("sgemm: empty products, K = 0 and alpha = 0 only scale C by beta") {
  for (SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) continue;
    const std::string name = polyak::cpu::sgemm_isa_name(isa);
    CAPTURE(name);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> A(6, nan), B(6, nan);
    std::vector<float> C{1, 2, 3, 4};
    polyak::cpu::sgemm(isa, false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, -2.0f, C.data(), 2);
    CHECK(C == std::vector<float>{-2, -4, -6, -8});
    polyak::cpu::sgemm(isa, false, false, 2, 2, 3, 0.0f, A.data(), 3, B.data(), 2, 0.5f, C.data(), 2);
    CHECK(C == std::vector<float>{-1, -2, -3, -4});
    C.assign(4, nan);
    polyak::cpu::sgemm(isa, false, false, 2, 2, 0, 1.0f, A.data(), 1, B.data(), 2, 0.0f, C.data(), 2);
    CHECK(C == std::vector<float>{0, 0, 0, 0});
    C.assign(4, 5.0f);
    polyak::cpu::sgemm(isa, true, true, 0, 2, 3, 1.0f, A.data(), 1, B.data(), 3, 0.0f, C.data(), 2);
    polyak::cpu::sgemm(isa, true, true, 2, 0, 3, 1.0f, A.data(), 2, B.data(), 3, 0.0f, C.data(), 2);
    CHECK(C == std::vector<float>{5, 5, 5, 5});
  }
}

TEST_CASE("sgemm: op(A) packed on the calling thread gives the product packed on the team") {
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const bool trans_a : {false, true}) {
    const int64_t M = 37, N = 53, K = 411;  // several row panels and two slices of K
    std::vector<float> A(M * K), B(K * N);
    for (float& x : A) x = normal(gen);
    for (float& x : B) x = normal(gen);
    polyak::cpu::SgemmPackedA team, here;
    team.pack(trans_a, M, K, A.data(), trans_a ? M : K);
    here.pack_on_this_thread(trans_a, M, K, A.data(), trans_a ? M : K);
    std::vector<float> C_team(M * N), C_here(M * N), want(M * N);
    polyak::cpu::sgemm_packed_a(team, false, N, 1.0f, B.data(), N, nullptr, 0.0f, C_team.data(), N);
    polyak::cpu::sgemm_packed_a(here, false, N, 1.0f, B.data(), N, nullptr, 0.0f, C_here.data(), N);
    polyak::ref::gemm(trans_a, false, M, N, K, 1.0f, A.data(), trans_a ? M : K, B.data(), N, 0.0f,
                                 want.data(), N);
    CHECK(C_here == C_team);
    for (int64_t i = 0; i < M * N; ++i) REQUIRE(std::abs(C_here[i] - want[i]) <= 1e-3f * std::max(1.0f, std::abs(want[i])));
  }
}

TEST_CASE("sgemm: prefetching during a product changes neither the product nor the memory prefetched") {
  // The requests are spread over the micro-kernel calls: ranges shorter and far longer
  // than the product has steps for, empty and unaligned ones, on every instruction set
  // and on shapes with several slices of K, blocks of N and tiles one vector wide.
  std::mt19937 gen(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Shape {
    int64_t M, N, K;
    const int64_t* rows;  // B through row offsets (as a convolution's shifted rows), or not
  };
  std::vector<int64_t> shifted(900);
  for (size_t k = 0; k < shifted.size(); ++k)
    shifted[k] = static_cast<int64_t>(k % 7) * 3 + static_cast<int64_t>(k / 7);
  const Shape shapes[] = {{16, 1056, 144, shifted.data()}, {37, 53, 411, nullptr}, {64, 80, 576, shifted.data()},
                          {5, 16, 30, nullptr}, {40, 2000, 17, nullptr}};
  for (const SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) continue;
    for (const Shape& shape : shapes) {
      const int64_t M = shape.M, N = shape.N, K = shape.K;
      const int64_t* rows = shape.rows;
      const int64_t ldb = N + 3, b_floats = rows ? N + 2 * 900 : K * ldb;
      std::vector<float> A(M * K), B(b_floats);
      for (float& x : A) x = normal(gen);
      for (float& x : B) x = normal(gen);
      polyak::cpu::SgemmPackedA packed;
      packed.pack(isa, false, M, K, A.data(), K);
      std::vector<float> plain(M * N);
      polyak::cpu::sgemm_packed_a(packed, false, N, 1.0f, B.data(), ldb, rows, 0.0f, plain.data(), N);
      for (const int64_t floats : {int64_t{0}, int64_t{5}, int64_t{16 * 1024}, int64_t{1} << 20}) {
        std::vector<float> read0(floats + 1, 1.1f), read1(floats / 2 + 1, -2.3f), write(floats + 1, 3.7f);
        polyak::cpu::SgemmPrefetch prefetch;
        prefetch.reads[0] = {read0.data() + 1, floats * 4};  // unaligned
        prefetch.reads[1] = {read1.data(), floats / 2 * 4};
        prefetch.write = {write.data(), floats * 4};
        std::vector<float> C(M * N, std::numeric_limits<float>::quiet_NaN());
        polyak::cpu::sgemm_packed_a(packed, false, N, 1.0f, B.data(), ldb, rows, 0.0f, C.data(), N, prefetch);
        INFO(polyak::cpu::sgemm_isa_name(isa), " ", M, "x", N, "x", K, " prefetching ", floats, " floats");
        CHECK(C == plain);
        CHECK(std::all_of(read0.begin(), read0.end(), [](float v) { return v == 1.1f; }));
        CHECK(std::all_of(read1.begin(), read1.end(), [](float v) { return v == -2.3f; }));
        CHECK(std::all_of(write.begin(), write.end(), [](float v) { return v == 3.7f; }));
      }
    }
  }
}

TEST_CASE("sgemm: row edges zero the taps across an image row's edge, at every phase of K's slices") {
  // B as a convolution with a filter 3 wide reads it: images with rows of `length`
  // columns end to end in one buffer, row k of B starting (k % 3) - 1 columns off each
  // output column. The expected product is the plain one on B gathered with those
  // elements zeroed. K = 387 and 400 give two slices whose second starts inside a
  // triple (rows 194 and 200: phases 2 and 2), 777 three (259 and 518: 1 and 2); M = 5
  // and 24 partial and several row panels; N from one vector to whole panels and more.
  std::mt19937 gen(13);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t lengths[] = {1, 2, 4, 8, 16, 32, 48};
  const int64_t depths[] = {3, 30, 387, 400, 777};
  for (const SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) continue;
    for (const int64_t length : lengths)
      for (const int64_t N : {int64_t{16}, int64_t{48}, int64_t{64}, int64_t{112}}) {
        if (!polyak::cpu::sgemm_row_edges_supported(isa, length, N)) continue;
        for (const int64_t K : depths)
          for (const int64_t M : {int64_t{5}, int64_t{24}}) {
            // Row k starts at a column of its own (as channels and filter rows do), then
            // steps (k % 3) - 1 columns sideways; a margin keeps the reads inside.
            std::vector<int64_t> rows(K);
            for (int64_t k = 0; k < K; ++k) rows[k] = 16 + (k / 3) * 7 + k % 3 - 1;
            std::vector<float> A(M * K), B(16 + (K / 3) * 7 + N + 16), gathered(K * N), C(M * N), want(M * N);
            for (float& x : A) x = normal(gen);
            for (float& x : B) x = normal(gen);
            for (int64_t k = 0; k < K; ++k)
              for (int64_t j = 0; j < N; ++j) {
                const int64_t column = j % length;
                const bool across = (k % 3 == 0 && column == 0) || (k % 3 == 2 && column == length - 1);
                gathered[k * N + j] = across ? 0.0f : B[rows[k] + j];
              }
            polyak::cpu::SgemmPackedA packed;
            packed.pack(isa, false, M, K, A.data(), K);
            polyak::cpu::sgemm_packed_a(packed, false, N, 1.0f, B.data(), 0, rows.data(), 0.0f, C.data(), N, {},
                                        length);
            polyak::ref::gemm(false, false, M, N, K, 1.0f, A.data(), K, gathered.data(), N, 0.0f,
                                         want.data(), N);
            INFO(polyak::cpu::sgemm_isa_name(isa), " rows of ", length, ", M=", M, " N=", N, " K=", K);
            for (int64_t i = 0; i < M * N; ++i)
              REQUIRE(std::abs(C[i] - want[i]) <= 1e-5f * static_cast<float>(K) * std::max(1.0f, std::abs(want[i])));
          }
      }
  }
  // Taps along the columns (a filter gradient's channels-last image): B's rows are
  // pixels, `length` per image row, ldb = C apart (overlapping, as shifted views of one
  // image are), and its 3 * C columns the left, centre and right taps' blocks of C.
  // K = 387 and 400 start their second slice mid-row at most lengths.
  for (const SgemmIsa isa : kIsas) {
    if (!polyak::cpu::sgemm_isa_available(isa)) continue;
    for (const int64_t length : {int64_t{1}, int64_t{5}, int64_t{8}, int64_t{32}})
      for (const int64_t C : {int64_t{16}, int64_t{32}, int64_t{64}}) {
        const int64_t N = 3 * C;
        if (!polyak::cpu::sgemm_row_edges_supported(isa, length, N, C)) continue;
        for (const int64_t K : {int64_t{7}, int64_t{387}, int64_t{400}})
          for (const int64_t M : {int64_t{5}, int64_t{24}}) {
            std::vector<float> A(M * K), B((K + 3) * C + N), gathered(K * N), got(M * N), want(M * N);
            for (float& x : A) x = normal(gen);
            for (float& x : B) x = normal(gen);
            for (int64_t k = 0; k < K; ++k)
              for (int64_t j = 0; j < N; ++j) {
                const int64_t tap = j / C, column = k % length;
                const bool across = (tap == 0 && column == 0) || (tap == 2 && column == length - 1);
                gathered[k * N + j] = across ? 0.0f : B[k * C + j];
              }
            polyak::cpu::SgemmPackedA packed;
            packed.pack(isa, false, M, K, A.data(), K);
            polyak::cpu::sgemm_packed_a(packed, false, N, 1.0f, B.data(), C, nullptr, 0.0f, got.data(), N, {}, length,
                                        C);
            polyak::ref::gemm(false, false, M, N, K, 1.0f, A.data(), K, gathered.data(), N, 0.0f,
                                         want.data(), N);
            INFO(polyak::cpu::sgemm_isa_name(isa), " taps along columns, rows of ", length, ", C=", C, " M=", M,
                 " K=", K);
            for (int64_t i = 0; i < M * N; ++i)
              REQUIRE(std::abs(got[i] - want[i]) <= 1e-5f * static_cast<float>(K) * std::max(1.0f, std::abs(want[i])));
          }
      }
  }
  // Shapes and instruction sets without them are refused, not computed wrongly.
  polyak::cpu::SgemmPackedA packed;
  std::vector<float> A(8 * 9, 1.0f), B(256, 1.0f), C(8 * 48);
  std::vector<int64_t> rows(9, 16);
  if (polyak::cpu::sgemm_isa_available(SgemmIsa::Avx512)) {
    CHECK_FALSE(polyak::cpu::sgemm_row_edges_supported(SgemmIsa::Avx512, 12, 48));  // 12: neither divides 16 nor 16 it
    CHECK_FALSE(polyak::cpu::sgemm_row_edges_supported(SgemmIsa::Avx512, 16, 40));  // N: not whole vectors
    packed.pack(SgemmIsa::Avx512, false, 8, 9, A.data(), 9);
    CHECK_THROWS_AS(polyak::cpu::sgemm_packed_a(packed, false, 48, 1.0f, B.data(), 0, rows.data(), 0.0f, C.data(), 48,
                                                {}, 12),
                    std::invalid_argument);
  }
  if (polyak::cpu::sgemm_isa_available(SgemmIsa::Avx2)) {
    CHECK_FALSE(polyak::cpu::sgemm_row_edges_supported(SgemmIsa::Avx2, 16, 48));
    packed.pack(SgemmIsa::Avx2, false, 8, 9, A.data(), 9);
    CHECK_THROWS_AS(polyak::cpu::sgemm_packed_a(packed, false, 48, 1.0f, B.data(), 0, rows.data(), 0.0f, C.data(), 48,
                                                {}, 16),
                    std::invalid_argument);
  }
}

TEST_CASE("sgemm: a prefetch range's parts cover it in order, split at cache lines") {
  std::vector<float> memory(1000);
  for (const int64_t floats : {int64_t{0}, int64_t{1}, int64_t{16}, int64_t{17}, int64_t{999}})
    for (const int64_t parts : {int64_t{1}, int64_t{3}, int64_t{16}}) {
      const auto range = polyak::cpu::SgemmPrefetch::Range::floats(memory.data() + 1, floats);
      CHECK(range.bytes == floats * 4);
      const char* at = static_cast<const char*>(range.begin);
      for (int64_t i = 0; i < parts; ++i) {
        const auto part = range.part(i, parts);
        INFO(floats, " floats in ", parts, " parts: part ", i);
        CHECK(part.begin == at);
        CHECK(part.bytes >= 0);
        // every part but the last ends on a line of the range (64 bytes from its start)
        if (i + 1 < parts && part.bytes > 0) CHECK((at + part.bytes - static_cast<const char*>(range.begin)) % 64 == 0);
        at += part.bytes;
      }
      CHECK(at == static_cast<const char*>(range.begin) + range.bytes);
    }
}

TEST_CASE("transpose: every element lands in its place, the rest of dst is left alone") {
  std::mt19937 gen(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t rows : {1, 3, 8, 9, 16, 17, 33})
    for (const int64_t cols : {1, 7, 8, 15, 24, 32}) {
      INFO("rows " << rows << " cols " << cols);
      const int64_t ld_src = cols + 3, ld_dst = rows + 5;
      std::vector<float> src(rows * ld_src), dst(cols * ld_dst, -7.0f);
      for (float& x : src) x = normal(gen);
      polyak::cpu::transpose(rows, cols, src.data(), ld_src, dst.data(), ld_dst);
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t i = 0; i < ld_dst; ++i) REQUIRE(dst[j * ld_dst + i] == (i < rows ? src[i * ld_src + j] : -7.0f));
    }
}
