// The batch loader; see loader.h for the determinism contract.
//
// The worker thread produces items (a batch, an end-of-epoch marker, or an error) for
// consecutive positions starting at the consumer's state, into a queue of at most
// `prefetch` items. The consumer pops them in order, so the queue front always belongs
// to state_. set_state() stops and joins the worker and drops the queue; the next call
// to next() starts a fresh worker at the new state.
#include "data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/rng.h"

namespace polyak::data {
namespace {

// splitmix64's finaliser: a bijection of 64-bit words with good avalanche.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

struct Loader::Item {
  std::optional<Batch> batch;  // empty with no error: the end of an epoch
  std::exception_ptr error;
};

struct Loader::Worker {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Item> queue;
  bool stop = false;
  std::thread thread;
};

uint64_t Loader::derive_seed(uint64_t seed, uint64_t stream, int64_t epoch, int64_t batch) {
  return mix64(mix64(mix64(seed ^ stream) + static_cast<uint64_t>(epoch)) + static_cast<uint64_t>(batch));
}

Loader::Loader(const ImageSet& set, std::vector<int64_t> indices, LoaderOptions options)
    : set_(set), indices_(std::move(indices)), options_(std::move(options)), normalizer_(set) {
  if (options_.batch_size < 1) {
    throw std::invalid_argument("Loader: batch_size must be at least 1, got " + std::to_string(options_.batch_size));
  }
  if (options_.share_count < 1 || options_.share_index < 0 || options_.share_index >= options_.share_count) {
    throw std::invalid_argument("Loader: share " + std::to_string(options_.share_index) + " of " +
                                std::to_string(options_.share_count) + " does not exist");
  }
  if (options_.prefetch < 0) {
    throw std::invalid_argument("Loader: prefetch must be >= 0, got " + std::to_string(options_.prefetch));
  }
  if (options_.augment_options.pad < 0) {
    throw std::invalid_argument("Loader: augmentation pad must be >= 0, got " +
                                std::to_string(options_.augment_options.pad));
  }
  const AugmentOptions& augment = options_.augment_options;
  if (augment.reflect && (augment.pad >= set.height || augment.pad >= set.width)) {
    throw std::invalid_argument("Loader: reflect padding needs a pad smaller than the images (" +
                                std::to_string(set.height) + "x" + std::to_string(set.width) + "), got " +
                                std::to_string(augment.pad));
  }
  options_.augment_options.flip_seed = derive_seed(options_.seed, kFlipStream, 0, 0);
  if (set.count < 0 || static_cast<int64_t>(set.pixels.size()) != set.count * set.image_size() ||
      static_cast<int64_t>(set.labels.size()) != set.count) {
    throw std::invalid_argument("Loader: the image set is inconsistent: " + std::to_string(set.count) + " images of " +
                                std::to_string(set.image_size()) + " bytes, but " + std::to_string(set.pixels.size()) +
                                " pixel bytes and " + std::to_string(set.labels.size()) + " labels");
  }
  for (size_t i = 0; i < indices_.size(); ++i) {
    if (indices_[i] < 0 || indices_[i] >= set.count) {
      throw std::out_of_range("Loader: index " + std::to_string(indices_[i]) + " (entry " + std::to_string(i) +
                              ") is outside a set of " + std::to_string(set.count) + " images");
    }
  }
}

Loader::~Loader() { stop_worker(); }

int64_t Loader::batches_per_epoch() const {
  const int64_t n = size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

std::vector<int64_t> Loader::shuffled(std::vector<int64_t> indices, uint64_t seed, int64_t epoch) {
  Rng rng(derive_seed(seed, kShuffleStream, epoch, 0));
  for (size_t i = indices.size(); i > 1; --i) std::swap(indices[i - 1], indices[rng.below(i)]);
  return indices;
}

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const {
  return options_.shuffle ? shuffled(indices_, options_.seed, epoch) : indices_;
}

Loader::Item Loader::build(State at) {
  Item item;
  if (at.next_batch >= batches_per_epoch()) return item;  // end of the epoch
  if (cached_epoch_ != at.epoch) {
    cached_order_ = epoch_order(at.epoch);
    cached_epoch_ = at.epoch;
  }
  const int64_t whole_begin = at.next_batch * options_.batch_size;
  const int64_t whole = std::min(whole_begin + options_.batch_size, size()) - whole_begin;
  const int64_t skipped = whole * options_.share_index / options_.share_count;
  const int64_t begin = whole_begin + skipped;
  const int64_t end = whole_begin + whole * (options_.share_index + 1) / options_.share_count;
  Batch batch;
  batch.epoch = at.epoch;
  batch.index = at.next_batch;
  batch.whole_size = whole;
  batch.indices.assign(cached_order_.begin() + begin, cached_order_.begin() + end);
  const int64_t b = end - begin;
  batch.images = Tensor::empty({b, set_.channels, set_.height, set_.width}, DType::F32, Device::CPU);
  Rng rng(derive_seed(options_.seed, kAugmentStream, at.epoch, at.next_batch));
  if (options_.augment)
    for (int64_t i = 0; i < skipped; ++i) (void)draw_crop_flip(options_.augment_options, rng);
  write_batch(set_, batch.indices, normalizer_, options_.augment ? &options_.augment_options : nullptr, &rng,
              batch.images.data<float>(), at.epoch);
  batch.labels = Tensor::empty({b}, DType::I64, Device::CPU);
  int64_t* labels = batch.labels.data<int64_t>();
  for (int64_t i = 0; i < b; ++i) labels[i] = set_.labels[batch.indices[i]];
  if (options_.transform) options_.transform(batch);
  item.batch = std::move(batch);
  return item;
}

void Loader::stop_worker() {
  if (!worker_) return;
  {
    std::lock_guard lock(worker_->mutex);
    worker_->stop = true;
  }
  worker_->changed.notify_all();
  if (worker_->thread.joinable()) worker_->thread.join();
  worker_.reset();
}

void Loader::set_state(State state) {
  if (state.epoch < 0 || state.next_batch < 0 || state.next_batch > batches_per_epoch()) {
    throw std::invalid_argument("Loader::set_state: epoch " + std::to_string(state.epoch) + ", batch " +
                                std::to_string(state.next_batch) + " is not a position of a loader with " +
                                std::to_string(batches_per_epoch()) + " batches per epoch");
  }
  stop_worker();
  error_ = nullptr;
  state_ = state;
}

std::optional<Batch> Loader::next() {
  if (error_) std::rethrow_exception(error_);
  Item item;
  if (options_.prefetch == 0) {
    try {
      item = build(state_);
    } catch (...) {
      item.error = std::current_exception();
    }
  } else {
    if (!worker_) {
      worker_ = std::make_unique<Worker>();
      Worker* w = worker_.get();
      const size_t capacity = static_cast<size_t>(options_.prefetch);
      w->thread = std::thread([this, w, capacity, at = state_]() mutable {
        for (;;) {
          {
            std::unique_lock lock(w->mutex);
            w->changed.wait(lock, [&] { return w->stop || w->queue.size() < capacity; });
            if (w->stop) return;
          }
          Item made;
          try {
            made = build(at);
          } catch (...) {
            made.batch.reset();
            made.error = std::current_exception();
          }
          const bool failed = made.error != nullptr;
          {
            std::lock_guard lock(w->mutex);
            if (w->stop) return;
            w->queue.push_back(std::move(made));
          }
          w->changed.notify_all();
          if (failed) return;
          at = at.next_batch >= batches_per_epoch() ? State{at.epoch + 1, 0} : State{at.epoch, at.next_batch + 1};
        }
      });
    }
    std::unique_lock lock(worker_->mutex);
    worker_->changed.wait(lock, [&] { return !worker_->queue.empty(); });
    item = std::move(worker_->queue.front());
    worker_->queue.pop_front();
    lock.unlock();
    worker_->changed.notify_all();
  }
  if (item.error) {
    error_ = item.error;
    stop_worker();
    std::rethrow_exception(error_);
  }
  if (!item.batch) {
    state_ = {state_.epoch + 1, 0};
    return std::nullopt;
  }
  ++state_.next_batch;
  if (options_.device != Device::CPU) {
    item.batch->images = item.batch->images.to(options_.device);
    item.batch->labels = item.batch->labels.to(options_.device);
  }
  return std::move(item.batch);
}

}  // namespace polyak::data
