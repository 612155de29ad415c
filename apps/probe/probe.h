// The probe app: transfer by linear probe, as in the EMA paper.
//
// The backbone of a checkpoint (its own weights or one of its averages, --ema) is
// frozen: it runs in eval mode (BatchNorm with its running statistics) without
// gradients, and maps every image to its features, the input of the model's last
// linear layer (models::Classifier::features). A new linear head (features -> classes
// of the target dataset, PyTorch's default initialisation from --seed) is trained on
// the target's training images with cross-entropy and SGD; the paper's setting is the
// default: 50 epochs, Nesterov momentum 0.9, lr 0.01, no weight decay, batch 128.
//
// Without augmentation (the default) the features of every image are computed once and
// the epochs only shuffle them, so a probe costs one forward pass of the backbone over
// the dataset plus the head's training. --augment crops and flips each batch as in
// training and recomputes its features every time (a backbone pass per epoch).
//
// The backbone may be a run's selected model: `probe RUN --selected ema_acc_bn` takes the
// checkpoint of that row of RUN/selection.json's "reported" (the paper's rows: sgd_best,
// ema_acc, ema_loss, ema_acc_bn, ema_loss_bn; sgd_final is RUN/model.safetensors).
// --bn-recompute on recomputes the backbone's BatchNorm statistics on the target's
// training images (plain, or augmented with --augment) before any feature is computed:
// the statistics then describe the data the head sees.
//
// Reports the test accuracy and loss after every epoch (a table, and --json), and can
// write the new head (--output, tensors named as the model's last layer) and the whole
// probed model (--output-model, backbone + new head, a model-only checkpoint that the
// eval app reads).
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace polyak::app {

struct ProbeConfig {
  std::string checkpoint;
  std::string model;            // "" = from the checkpoint's metadata
  std::string weights = "sgd";  // --ema: sgd or an average of a training checkpoint
  std::string selected;         // a row of the run folder's selection.json ("" = none)
  std::string bn_recompute = "off";  // on: recompute the backbone's BN statistics on the target
  int64_t bn_recompute_batches = 0;  // 0: one pass over the target's training images
  std::string dataset = "cifar10";
  std::string data_dir;         // "" = default_data_dir(dataset)
  int64_t train_subset = 0;
  int64_t test_subset = 0;
  int epochs = 50;
  int64_t batch_size = 128;
  float lr = 0.01f;
  float momentum = 0.9f;
  bool nesterov = true;
  float weight_decay = 0.0f;
  std::string sched = "constant";  // constant or cosine
  uint64_t seed = 0;
  bool augment = false;
  std::string output;           // the head (safetensors)
  std::string output_model;     // backbone + head (safetensors)
  std::string json;             // "" none, "-" stdout, else a file
  std::string device = "cpu";
  int threads = 0;

  void validate() const;  // throws std::invalid_argument naming the flag and value
  // The checkpoint file to probe: `checkpoint`, or with --selected the file its row names.
  std::string checkpoint_file() const;
};

void add_probe_flags(CLI::App& app, ProbeConfig& config);

// Returns the process exit code; throws std::invalid_argument, data::DataError or
// io::SafetensorsError for bad input.
int run_probe(ProbeConfig config);

}  // namespace polyak::app
