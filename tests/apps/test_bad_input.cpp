// Bad input to train, eval, probe and phema: every case must end before any training or
// evaluation with exit code 2 and one line on stderr that names the value and what is
// expected (or the file and what is wrong with it).
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "apps/child_process.h"
#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "models/registry.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;

namespace {

struct BadInput {
  const char* binary;
  std::string args;      // space-separated
  std::string expected;  // a part of the message
};

std::vector<std::string> split_args(const std::string& args) {
  std::istringstream in(args);
  std::vector<std::string> out;
  for (std::string a; in >> a;) out.push_back(a);
  return out;
}

// A model-only checkpoint of `architecture` for `classes` classes, as the train app writes them.
std::string model_file(const fs::path& dir, const std::string& architecture, int classes) {
  polyak::Rng rng(0);
  const auto model = polyak::models::create_model(architecture, classes, rng);
  const fs::path path = dir / (architecture + "_" + std::to_string(classes) + ".safetensors");
  polyak::io::save_safetensors(path.string(), model->state_dict(), {{"polyak.model", architecture}});
  return path.string();
}

}  // namespace

TEST_CASE("train, eval, probe, phema: each bad flag or input gets exit code 2 and one line naming it") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_bad_input");
  const std::string out = (tmp.path / "run").string();
  const std::string tiny100 = model_file(tmp.path, "tiny_cnn", 100);
  const std::string tiny10 = model_file(tmp.path, "tiny_cnn", 10);
  const std::string resnet20 = model_file(tmp.path, "resnet20", 10);
  const std::string empty_dir = (tmp.path / "empty").string();
  fs::create_directories(empty_dir);
  const std::string text_file = (tmp.path / "notes.txt").string();
  std::ofstream(text_file) << "not a checkpoint\n";
  const std::string run_without_snapshots = (tmp.path / "plain_run").string();
  fs::create_directories(run_without_snapshots);
  std::ofstream(run_without_snapshots + "/config.json") << "{\"model\": \"tiny_cnn\"}\n";
  // --max-steps 1 and --epochs 1: a case that wrongly passes fails fast instead of training for long.
  const std::string train = " --model tiny_cnn --max-steps 1 --data " + data + " --output " + out;
  const std::string small = " --train-subset 512 --test-subset 100";
  const std::string probe = small + " --data " + data;

  const std::vector<BadInput> cases = {
      // train: ranges
      {POLYAK_TRAIN_BIN, "--epochs -1" + train, "--epochs -1: expected an integer from 1 to 100000"},
      {POLYAK_TRAIN_BIN, "--epochs 0" + train, "--epochs 0: expected an integer from 1 to 100000"},
      {POLYAK_TRAIN_BIN, "--batch-size 0" + train, "--batch-size 0: expected an integer from 1 to 65536"},
      {POLYAK_TRAIN_BIN, "--accum-steps 0" + train, "--accum-steps 0: expected an integer from 1 to --batch-size (128)"},
      {POLYAK_TRAIN_BIN, "--accum-steps 9 --batch-size 8" + train, "--accum-steps 9: expected an integer from 1 to --batch-size (8)"},
      {POLYAK_TRAIN_BIN, "--accum-steps 4 --batch-size 8 --train-subset 10 --val-split 0" + train,
       "--batch-size 8: its batches (the smallest, an epoch's last, has 2 images) cannot be split into 1 ranks x 4 micro-batches"},
      {POLYAK_TRAIN_BIN, "--lr -0.1" + train, "--lr -0.1: expected a positive number"},
      {POLYAK_TRAIN_BIN, "--momentum 1" + train, "--momentum 1: expected a number in [0, 1)"},
      {POLYAK_TRAIN_BIN, "--weight-decay inf" + train, "--weight-decay inf: expected a number >= 0"},
      {POLYAK_TRAIN_BIN, "--weight-decay -0.1" + train, "--weight-decay: expected a number >= 0, got -0.1"},
      {POLYAK_TRAIN_BIN, "--warmup-epochs -2" + train, "--warmup-epochs: expected a number >= 0, got -2"},
      {POLYAK_TRAIN_BIN, "--warmup-epochs 20 --epochs 10" + train, "--warmup-epochs 20: expected a number in [0, --epochs]"},
      {POLYAK_TRAIN_BIN, "--sched multistep --milestones 5,20 --epochs 10" + train, "--milestones 20: expected epochs in [1, --epochs]"},
      {POLYAK_TRAIN_BIN, "--gamma 0" + train, "--gamma 0: expected a number in (0, 1]"},
      {POLYAK_TRAIN_BIN, "--sched linear" + train, "linear"},
      {POLYAK_TRAIN_BIN, "--val-split 1" + train, "--val-split 1: expected a fraction in [0, 1)"},
      {POLYAK_TRAIN_BIN, "--label-noise 1.5" + train, "--label-noise 1.5: expected a rate in [0, 1]"},
      {POLYAK_TRAIN_BIN, "--threads -1" + train, "--threads -1: expected an integer from 1 to 1024"},
      {POLYAK_TRAIN_BIN, "--max-steps -5 --data " + data + " --output " + out, "--max-steps -5: expected an integer >= 0"},
      {POLYAK_TRAIN_BIN, "--save-every -1" + train, "--save-every -1: expected an integer >= 0"},
      {POLYAK_TRAIN_BIN, "--eval-every 0" + train, "--eval-every 0: expected an integer >= 1"},
      {POLYAK_TRAIN_BIN, "--train-subset -3" + train, "--train-subset -3: expected an integer >= 0"},
      {POLYAK_TRAIN_BIN, "--on-nonfinite ignore" + train, "--on-nonfinite ignore: expected stop or skip"},
      {POLYAK_TRAIN_BIN, "--max-skips 0" + train, "--max-skips 0: expected an integer from 1 to 1000000"},
      {POLYAK_TRAIN_BIN, "--ema-decays 1.5" + train, "--ema-decays 1.5: expected decays in (0, 1)"},
      {POLYAK_TRAIN_BIN, "--ema-decays 0.9,0" + train, "--ema-decays 0.9,0: expected decays in (0, 1)"},
      {POLYAK_TRAIN_BIN, "--ema-every -2" + train, "--ema-every -2: expected an integer >= 1"},
      {POLYAK_TRAIN_BIN, "--ema-buffers mean" + train, "--ema-buffers mean: expected average or copy"},
      {POLYAK_TRAIN_BIN, "--bn-recompute always" + train, "--bn-recompute always: expected none, epoch or end"},
      {POLYAK_TRAIN_BIN, "--device tpu" + train, "--device tpu: expected cpu or cuda"},
      {POLYAK_TRAIN_BIN, "--model resnet19 --output " + out, "--model resnet19: expected one of"},
      {POLYAK_TRAIN_BIN, "--dataset mnist --output " + out, "--dataset mnist: expected cifar10, cifar100 or folder"},
      {POLYAK_TRAIN_BIN, "--bogus-flag 3" + train, "--bogus-flag"},
      // found by fuzz_train_flags: a path that is not UTF-8 cannot go into config.json
      {POLYAK_TRAIN_BIN, "--model tiny_cnn --max-steps 1 --data " + data + " --output " + out + "\xf9",
       "--output " + out + "\xf9: expected a path in UTF-8"},
      // train: data and files
      {POLYAK_TRAIN_BIN, "--batch-size 600" + small + train, "--batch-size 600: larger than the 512 training images"},
      {POLYAK_TRAIN_BIN, "--model tiny_cnn --data /nonexistent/cifar --output " + out, "/nonexistent/cifar"},
      {POLYAK_TRAIN_BIN, "--model tiny_cnn --data " + empty_dir + " --output " + out, empty_dir},
      {POLYAK_TRAIN_BIN, "--labels " + empty_dir + "/labels.u8" + train, empty_dir + "/labels.u8"},
      {POLYAK_TRAIN_BIN, "--output " + text_file + "/run --model tiny_cnn", "--output " + text_file + "/run: cannot create the folder"},
      {POLYAK_TRAIN_BIN, "--output /proc/self --model tiny_cnn", "--output /proc/self: cannot write in the folder"},
      {POLYAK_TRAIN_BIN, "--init /nonexistent/x.safetensors" + train, "--init /nonexistent/x.safetensors: no such file"},
      {POLYAK_TRAIN_BIN, "--init " + tiny100 + small + train, "--init " + tiny100 + ": a tiny_cnn for 100 classes, but the dataset has 10"},
      {POLYAK_TRAIN_BIN, "--init " + resnet20 + small + " --model resnet32 --max-steps 1 --data " + data + " --output " + out,
       "--init " + resnet20 + ": holds a resnet20 (from its metadata), not a resnet32: state dict is missing 'layer1.3.conv1.weight'"},
      {POLYAK_TRAIN_BIN, "--resume " + tiny10, "--resume " + tiny10 + ": not a training checkpoint"},
      {POLYAK_TRAIN_BIN, "--resume " + text_file, text_file},
      {POLYAK_TRAIN_BIN, "--resume /nonexistent/last.safetensors", "--resume /nonexistent/last.safetensors: no such file"},
      {POLYAK_TRAIN_BIN, "--resume " + tiny10 + " --init " + tiny10, "not a training checkpoint"},
      {POLYAK_TRAIN_BIN, "--phema 0.3" + train, "--phema 0.3: expected sigma_rel values in (0, 1/sqrt(12) = 0.2887)"},
      {POLYAK_TRAIN_BIN, "--phema 0.05,x" + train, "--phema 0.05,x: expected sigma_rel values"},
      {POLYAK_TRAIN_BIN, "--phema 0.05,0.05" + train, "--phema 0.05,0.05: expected each value once"},
      {POLYAK_TRAIN_BIN, "--phema 0.01,0.02,0.03,0.04" + train, "--phema 0.01,0.02,0.03,0.04: expected at most 8 averages"},
      {POLYAK_TRAIN_BIN, "--phema-every -1" + train, "--phema-every -1: expected an integer >= 0"},
      {POLYAK_TRAIN_BIN, "--phema 0.1 --phema-dtype f64" + train, "--phema-dtype f64: expected f32 or f16"},
      // phema
      {POLYAK_PHEMA_BIN, "", "run is required"},
      {POLYAK_PHEMA_BIN, "/nonexistent/run", "run /nonexistent/run: expected a run folder"},
      {POLYAK_PHEMA_BIN, empty_dir, "/config.json: no such file"},
      {POLYAK_PHEMA_BIN, run_without_snapshots, run_without_snapshots + ": no phema/ folder"},
      {POLYAK_PHEMA_BIN, run_without_snapshots + " --sigma-rel 0.3", "--sigma-rel 0.3: expected a sigma_rel in (0, 1/sqrt(12)"},
      {POLYAK_PHEMA_BIN, run_without_snapshots + " --ema 1.5@1", "--ema 1.5@1: expected decay@period"},
      {POLYAK_PHEMA_BIN, run_without_snapshots + " --ema 0.99@0.5", "--ema 0.99@0.5: expected decay@period"},
      {POLYAK_PHEMA_BIN, run_without_snapshots + " --max-residual 0", "--max-residual 0: expected a share in (0, 1]"},
      // eval
      {POLYAK_EVAL_BIN, "", "checkpoints is required"},
      {POLYAK_EVAL_BIN, "/nonexistent/model.safetensors --data " + data, "checkpoint /nonexistent/model.safetensors: no such file"},
      {POLYAK_EVAL_BIN, text_file + " --data " + data, text_file},
      {POLYAK_EVAL_BIN, tiny100 + " --test-subset 100 --data " + data, tiny100 + ": a tiny_cnn for 100 classes, but the dataset has 10"},
      {POLYAK_EVAL_BIN, resnet20 + " --model resnet32 --data " + data, "--model resnet32: " + resnet20 + " holds a resnet20"},
      {POLYAK_EVAL_BIN, tiny10 + " --ema ema0.99 --test-subset 100 --data " + data, "--ema ema0.99: " + tiny10 + " holds no averages"},
      {POLYAK_EVAL_BIN, tiny10 + " --ema best --data " + data, "--ema best: expected sgd, all or average names"},
      {POLYAK_EVAL_BIN, tiny10 + " --split val --data " + data, "--split val: expected a --val-split > 0"},
      {POLYAK_EVAL_BIN, tiny10 + " --split holdout --data " + data, "--split holdout: expected test, val or train"},
      {POLYAK_EVAL_BIN, tiny10 + " --val-split -0.1 --data " + data, "--val-split -0.1: expected a fraction in [0, 1)"},
      {POLYAK_EVAL_BIN, tiny10 + " --batch-size 0 --data " + data, "--batch-size 0: expected an integer from 1 to 65536"},
      {POLYAK_EVAL_BIN, tiny10 + " --bn-recompute yes --data " + data, "--bn-recompute yes: expected on or off"},
      {POLYAK_EVAL_BIN, tiny10 + " --json /nonexistent/r.json --data " + data, "--json /nonexistent/r.json: expected a file in an existing folder"},
      {POLYAK_EVAL_BIN, tiny10 + " --json /proc/self/r.json --data " + data, "--json /proc/self/r.json: cannot write in its folder /proc/self"},
      {POLYAK_EVAL_BIN, tiny10 + " --data /nonexistent/cifar", "/nonexistent/cifar"},
      {POLYAK_EVAL_BIN, tiny10 + " --frobnicate", "--frobnicate"},
      // probe
      {POLYAK_PROBE_BIN, "", "checkpoint is required"},
      {POLYAK_PROBE_BIN, "/nonexistent/model.safetensors" + probe, "checkpoint /nonexistent/model.safetensors: no such file"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 0" + probe, "--epochs 0: expected an integer from 1 to 100000"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --lr 0" + probe, "--lr 0: expected a positive number"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --momentum -0.5" + probe, "--momentum -0.5: expected a number in [0, 1)"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --sched step" + probe, "--sched step: expected constant or cosine"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --ema last" + probe, "--ema last: expected sgd or the name of an average"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --ema ema0.9" + probe, "--ema ema0.9: " + tiny10 + " holds no averages"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --batch-size 600" + probe, "--batch-size 600: larger than the 512 training images"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --output /nonexistent/head.safetensors" + probe,
       "--output /nonexistent/head.safetensors: expected a file in an existing folder"},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --output-model /proc/self/m.safetensors" + probe,
       "--output-model /proc/self/m.safetensors: cannot write in its folder /proc/self"},
      {POLYAK_PROBE_BIN, text_file + probe, text_file},
      {POLYAK_PROBE_BIN, tiny10 + " --epochs 1 --data " + empty_dir, empty_dir},
  };
  for (const BadInput& c : cases) {
    CAPTURE(c.binary);
    CAPTURE(c.args);
    fs::remove_all(out);
    const polyak::testing::ChildResult r = polyak::testing::run_child(c.binary, split_args(c.args));
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find(c.expected) != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("epoch 1/") == std::string::npos, ("training started: " + r.output));
    CHECK_MESSAGE(!fs::exists(fs::path(out) / "init.safetensors"), ("a run was started: " + r.output));
  }
}

// CLI11 2.1 converts the value of a "!--no-x" flag with std::stoll and lets its
// std::out_of_range escape parsing (found by fuzz_train_flags). run_app turns whatever
// parsing throws into exit code 2 and one line naming the words; for every app, the
// same form of input must end with 0 or 2, never a signal. No data is needed: each case
// ends while the flags are read.
TEST_CASE("every app: a flag value out of range, or a path the system cannot look up, exits 2 with one line, never aborts") {
  const std::string huge = "99999999999999999999";
  struct Case {
    const char* binary;
    std::string args, expected;
    int exit_code;
  };
  const std::vector<Case> cases = {
      {POLYAK_TRAIN_BIN, "--no-nesterov=-" + huge + " --epochs 1", "train: --no-nesterov=-" + huge + ": out of range", 2},
      {POLYAK_TRAIN_BIN, "--epochs 1 --no-augment=" + huge, "train: --no-augment=" + huge + ": out of range", 2},
      {POLYAK_TRAIN_BIN, "--no-shuffle=" + huge + " --max-skips " + huge, "train: --no-shuffle=" + huge, 2},
      {POLYAK_EVAL_BIN, "c.safetensors --no-augment=" + huge, "eval: --no-augment=" + huge + ": out of range", 2},
      {POLYAK_PROBE_BIN, "c.safetensors --no-nesterov=-" + huge, "probe: --no-nesterov=-" + huge + ": out of range", 2},
      // found by fuzz_eval_flags: a path too long to look up threw filesystem_error (exit 1)
      {POLYAK_EVAL_BIN, std::string(300, 'x'), "eval: checkpoint " + std::string(300, 'x') + ": File name too long", 2},
      {POLYAK_PROBE_BIN, std::string(300, 'x'), ": File name too long", 2},
      {POLYAK_TRAIN_BIN, "--init " + std::string(300, 'x'), "train: --init " + std::string(300, 'x') + ": File name too long", 2},
      {POLYAK_TRAIN_BIN, "--resume " + std::string(300, 'x'), ": File name too long", 2},
      {POLYAK_REPORT_BIN, std::string(300, 'x'), ": no such run folder", 2},
      // found by fuzz_phema_flags: the same for phema's run folder
      {POLYAK_PHEMA_BIN, std::string(300, 'x'), "phema: run " + std::string(300, 'x') + ": expected a run folder", 2},
      // report and bench have no "!--no-x" flags: huge values elsewhere are plain bad flags
      {POLYAK_REPORT_BIN, "/nonexistent/run --output=" + huge, "report: /nonexistent/run", 2},
      {POLYAK_REPORT_BIN, "--help=-" + huge, "Usage:", 0},
      {POLYAK_BENCH_BIN, "--threads " + huge, "--threads: Value " + huge + " not in range", 2},
      {POLYAK_BENCH_BIN, "--tf32=-" + huge + " --worker --threads 1,2", "bench: --worker --threads 2 values: expected one", 2},
  };
  for (const Case& c : cases) {
    CAPTURE(c.binary);
    CAPTURE(c.args);
    const polyak::testing::ChildResult r = polyak::testing::run_child(c.binary, split_args(c.args));
    CHECK(r.signal == 0);
    CHECK(r.exit_code == c.exit_code);
    CHECK_MESSAGE(r.output.find(c.expected) != std::string::npos, r.output);
    if (c.binary != std::string(POLYAK_BENCH_BIN) && c.exit_code == 2 && c.expected.find("Value") == std::string::npos)
      CHECK_MESSAGE(std::count(r.output.begin(), r.output.end(), '\n') == 1, ("not one line: " + r.output));
  }
}
