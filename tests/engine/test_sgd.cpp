// SGD against hand computation of torch.optim.SGD's update rule.
#include <doctest/doctest.h>

#include "engine/backend.h"
#include "engine/optim/sgd.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

TEST_CASE("sgd: Nesterov momentum with weight decay, two steps by hand") {
  // p0 = 1, lr 0.1, momentum 0.9, wd 0.01, Nesterov; gradients 0.5 then -0.2.
  //   step 1: d = 0.5 + 0.01*1 = 0.51; b = 0.51; d = 0.51 + 0.9*0.51 = 0.969; p = 1 - 0.0969 = 0.9031
  //   step 2: d = -0.2 + 0.01*0.9031 = -0.190969; b = 0.9*0.51 - 0.190969 = 0.268031;
  //           d = -0.190969 + 0.9*0.268031 = 0.0502589; p = 0.9031 - 0.00502589 = 0.89807411
  Tensor p = Tensor::from_vector({1.0f, -2.0f}, {2});
  Tensor g = Tensor::zeros({2});
  Sgd sgd(p, g, {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f, .nesterov = true});
  g.copy_(Tensor::from_vector({0.5f, 0.0f}, {2}));
  sgd.step();
  check_close(p, std::vector<float>{0.9031f, -2.0f + 0.1f * (0.02f + 0.9f * 0.02f)}, 1e-6, 1e-6);
  g.copy_(Tensor::from_vector({-0.2f, 0.0f}, {2}));
  sgd.step();
  CHECK(p.to_vector<float>()[0] == doctest::Approx(0.89807411).epsilon(1e-6));
  CHECK(sgd.steps_taken() == 2);
  check_close(sgd.momentum_buffer().slice(0, 1), std::vector<float>{0.268031f}, 1e-6, 1e-5);
}

TEST_CASE("sgd: groups step their runs of the arena with their own rate and decay; lr 0 freezes") {
  // Six values, gradient 1 each, plain SGD at lr 0.1: [0, 2) default, [2, 4) at 64x
  // the rate with decay 0.5, [4, 5) frozen, [5, 6) default again.
  Tensor p = Tensor::from_vector({1, 1, 1, 1, 1, 1}, {6});
  Tensor g = Tensor::ones({6});
  Sgd sgd(p, g, {.lr = 0.1f, .weight_decay = 0.01f});
  sgd.set_groups({{.begin = 4, .end = 5, .lr_scale = 0, .weight_decay = 0}, {.begin = 2, .end = 4, .lr_scale = 64, .weight_decay = 0.5f}});
  sgd.step();
  const float plain = 1 - 0.1f * (1 + 0.01f), fast = 1 - 6.4f * (1 + 0.5f);
  check_close(p, std::vector<float>{plain, plain, fast, fast, 1, plain}, 1e-6, 1e-6);
  CHECK(p.to_vector<float>()[4] == 1.0f);  // frozen: exactly unchanged
  CHECK(sgd.groups().front().begin == 2);  // kept in arena order
  CHECK_THROWS_AS(sgd.set_groups({{.begin = 0, .end = 3}, {.begin = 2, .end = 4}}), std::invalid_argument);
  CHECK_THROWS_AS(sgd.set_groups({{.begin = 5, .end = 7}}), std::invalid_argument);
  CHECK_THROWS_AS(sgd.set_groups({{.begin = 0, .end = 1, .lr_scale = -1}}), std::invalid_argument);
}

TEST_CASE("sgd: classical momentum with dampening, and plain SGD") {
  // momentum 0.5, dampening 0.5, lr 1: b1 = g1 = 2 -> p = -2; b2 = 0.5*2 + 0.5*4 = 3 -> p = -5.
  Tensor p = Tensor::zeros({1}), g = Tensor::zeros({1});
  Sgd sgd(p, g, {.lr = 1.0f, .momentum = 0.5f, .dampening = 0.5f});
  g.fill_(2.0f);
  sgd.step();
  check_close(p, std::vector<float>{-2.0f});
  g.fill_(4.0f);
  sgd.step();
  check_close(p, std::vector<float>{-5.0f});

  Tensor q = Tensor::ones({3}), h = Tensor::full({3}, 0.5f);
  Sgd plain(q, h, {.lr = 0.2f});
  plain.step();
  check_close(q, std::vector<float>(3, 0.9f));
}

TEST_CASE("sgd: state restores exactly, bad options are refused") {
  Tensor p = Tensor::ones({4}), g = Tensor::full({4}, 0.3f);
  Sgd a(p, g, {.lr = 0.1f, .momentum = 0.9f, .nesterov = true});
  a.step();
  Tensor p2 = p.clone(), g2 = g.clone();
  Sgd b(p2, g2, a.options());
  b.load_state(a.momentum_buffer(), a.steps_taken());
  a.step();
  b.step();
  CHECK(p.to_vector<float>() == p2.to_vector<float>());
  CHECK_THROWS_AS(Sgd(p, g, {.momentum = 0.0f, .nesterov = true}), std::invalid_argument);
  CHECK_THROWS_AS(Sgd(p, Tensor::zeros({3}), {}), std::invalid_argument);
  CHECK_THROWS_AS(b.load_state(Tensor::zeros({5}), 1), std::invalid_argument);
}

TEST_CASE("sgd and multi_lerp on the accelerator match the CPU over several steps") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(25);
    const int64_t n = 100003;  // not a multiple of any block size
    const Tensor p0 = Tensor::normal({n}, 0.0f, 1.0f, rng);
    for (const SgdOptions& options :
         {SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true},
          SgdOptions{.lr = 0.05f, .momentum = 0.5f, .dampening = 0.3f, .weight_decay = 1e-4f},
          SgdOptions{.lr = 0.2f}}) {
      Tensor pc = p0.clone(), gc = Tensor::zeros({n});
      Tensor pd = p0.to(device), gd = Tensor::zeros({n}, DType::F32, device);
      Sgd cpu(pc, gc, options), gpu(pd, gd, options);
      for (int step = 0; step < 3; ++step) {
        const Tensor g = Tensor::normal({n}, 0.0f, 1.0f, rng);
        gc.copy_(g);
        gd.copy_(g);
        cpu.step();
        gpu.step();
      }
      check_close(pd.to(Device::CPU), pc, 1e-6, 1e-5);
      check_close(gpu.momentum_buffer().to(Device::CPU), cpu.momentum_buffer(), 1e-6, 1e-5);
    }

    // K targets in one pass: t_k = a_k t_k + (1 - a_k) w.
    const std::vector<float> kept = {0.968f, 0.984f, 0.992f, 0.996f, 0.998f};
    std::vector<Tensor> cpu_avg, gpu_avg;
    MultiLerp uc, ud;
    uc.count = ud.count = static_cast<int>(kept.size());
    for (size_t k = 0; k < kept.size(); ++k) {
      cpu_avg.push_back(Tensor::normal({n}, 0.0f, 1.0f, rng));
      gpu_avg.push_back(cpu_avg.back().to(device));
      uc.kept[k] = ud.kept[k] = kept[k];
      uc.target[k] = cpu_avg[k].data<float>();
      ud.target[k] = gpu_avg[k].data<float>();
    }
    for (int step = 0; step < 3; ++step) {
      const Tensor w = Tensor::normal({n}, 0.0f, 1.0f, rng), wd = w.to(device);
      kernels(Device::CPU).multi_lerp(uc, n, w.data<float>());
      kernels(device).multi_lerp(ud, n, wd.data<float>());
    }
    for (size_t k = 0; k < kept.size(); ++k) check_close(gpu_avg[k].to(Device::CPU), cpu_avg[k], 1e-6, 1e-5);
  });
}
