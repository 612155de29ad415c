// The batch loader: shuffles, augments and normalises batches of an ImageSet on a
// background thread while the model trains on the previous ones.
//
// Determinism. Every random choice is a pure function of (seed, epoch, batch), never of
// timing or of what came before:
//   epoch order   the loader's indices, in the order given, Fisher-Yates shuffled
//                 (i = n-1..1: swap(v[i], v[rng.below(i+1)])) with a fresh
//                 Rng(derive_seed(seed, kShuffleStream, epoch, 0));
//   augmentation  batch b of epoch e draws its crops and flips (image by image, see
//                 augment.h) from a fresh Rng(derive_seed(seed, kAugmentStream, e, b));
//   alternating   flips (augment.h) from flip_seed = derive_seed(seed, kFlipStream, 0, 0).
// derive_seed chains the splitmix64 finaliser (Steele et al. 2014): a different seed,
// epoch or batch gives an unrelated Philox key. So the batches of a run are the same
// with or without prefetching, on any number of threads, and a run resumed from a saved
// State{epoch, next_batch} continues exactly as the uninterrupted one.
//
// Iteration: next() returns the batches of the current epoch, then std::nullopt once,
// and then moves on to the next epoch by itself:
//   Loader loader(train_set, split.train, options);
//   loader.set_state(saved_state);                    // or nothing: epoch 0, batch 0
//   for (int64_t e = loader.state().epoch; e < epochs; ++e)
//     while (std::optional<Batch> batch = loader.next()) { ...; checkpoint loader.state(); }
//
// Threads: with prefetch > 0 one std::thread builds up to `prefetch` batches ahead (in a
// bounded queue) into CPU tensors; next() moves a batch to the device on the calling
// thread. An exception on the worker (including one from options.transform) is
// rethrown by the next() that reaches that batch, and again by every later next() until
// set_state(). The destructor stops and joins the worker. The ImageSet is held by
// reference: it must outlive the loader and not change while the loader is in use.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "data/augment.h"
#include "data/cifar.h"
#include "engine/tensor.h"

namespace polyak::data {

struct Batch {
  Tensor images;                 // (B, C, H, W) float32, normalised (and augmented)
  Tensor labels;                 // (B) int64
  std::vector<int64_t> indices;  // the images' indices in the ImageSet, in batch order
  int64_t epoch = 0;
  int64_t index = 0;             // the batch's place in its epoch
  int64_t whole_size = 0;        // images in the whole batch (more than here when shared)
};

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;      // off: every epoch in the order of the indices given
  bool drop_last = false;   // drop a last, smaller batch
  bool augment = false;     // random crop + flip (augment_options)
  AugmentOptions augment_options;
  uint64_t seed = 0;
  Device device = Device::CPU;
  int prefetch = 2;         // batches built ahead on the worker thread; 0 = no thread
  // Data-parallel training: this process builds only share `share_index` of
  // `share_count` of every batch of b images, images [floor(i b / n), floor((i + 1) b / n))
  // for share i of n, augmented as they are in the whole batch (the draws of the images
  // before the share are made and skipped). So the data a job sees is the same for any
  // number of processes.
  int64_t share_index = 0, share_count = 1;
  // Optional last step of building a batch, on the thread that builds it, before the
  // batch goes to the device (images still on the CPU).
  std::function<void(Batch&)> transform;
};

class Loader {
 public:
  // Where the loader is: the next call to next() returns batch `next_batch` of `epoch`
  // (or the end of that epoch when next_batch == batches_per_epoch()).
  struct State {
    int64_t epoch = 0;
    int64_t next_batch = 0;
    bool operator==(const State&) const = default;
  };

  static constexpr uint64_t kShuffleStream = 0x73687566666c65ULL;  // "shuffle"
  static constexpr uint64_t kAugmentStream = 0x6175676d656e74ULL;  // "augment"
  static constexpr uint64_t kFlipStream = 0x666c6970ULL;             // "flip"
  static uint64_t derive_seed(uint64_t seed, uint64_t stream, int64_t epoch, int64_t batch);

  // std::invalid_argument for batch_size < 1, prefetch < 0, a negative pad or a set
  // whose pixels, labels, mean or stddev do not fit its shape; std::out_of_range for an
  // index outside the set.
  Loader(const ImageSet& set, std::vector<int64_t> indices, LoaderOptions options = {});
  Loader(ImageSet&&, std::vector<int64_t>, LoaderOptions = {}) = delete;  // the set must outlive the loader
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t size() const { return static_cast<int64_t>(indices_.size()); }  // images per epoch before drop_last
  int64_t batches_per_epoch() const;
  const LoaderOptions& options() const { return options_; }

  State state() const { return state_; }
  // Jumps to `state` (epoch >= 0, 0 <= next_batch <= batches_per_epoch()); drops any
  // prefetched batches and clears a stored error.
  void set_state(State state);
  void start_epoch(int64_t epoch) { set_state({epoch, 0}); }

  // The next batch of the current epoch, or std::nullopt at its end (after which the
  // state is {epoch + 1, 0}).
  std::optional<Batch> next();

  // The dataset indices of epoch `epoch` in the order its batches take them.
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  // `indices` in the shuffled order of epoch `epoch` of a loader seeded with `seed`
  // (for a consumer that batches precomputed data in the loader's order).
  static std::vector<int64_t> shuffled(std::vector<int64_t> indices, uint64_t seed, int64_t epoch);

 private:
  struct Item;
  struct Worker;

  Item build(State at);  // batch `at`, or the end-of-epoch marker
  void stop_worker();

  const ImageSet& set_;
  std::vector<int64_t> indices_;
  LoaderOptions options_;
  Normalizer normalizer_;
  State state_;
  std::exception_ptr error_;
  // The builder's cache of one epoch's order (used by one thread at a time).
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
  std::unique_ptr<Worker> worker_;
};

}  // namespace polyak::data
