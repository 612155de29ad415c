// CIFAR-10 and CIFAR-100, binary versions, read into RAM as uint8 images.
//
// File formats (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):
//   CIFAR-10   data_batch_1.bin .. data_batch_5.bin (train), test_batch.bin (test);
//              records of 3073 bytes: <label 0-9> <1024 R> <1024 G> <1024 B>
//   CIFAR-100  train.bin, test.bin;
//              records of 3074 bytes: <coarse 0-19> <fine 0-99> <1024 R> <1024 G> <1024 B>
// Each colour plane is 32 rows of 32 pixels, rows in order, so a record's pixels are
// already one image in CHW order. Any file may also be gzip-compressed as NAME.gz; the
// plain file wins when both are there. The folder passed in may hold the files, or be
// the parent of the folder the official archive extracts to (cifar-10-batches-bin/,
// cifar-100-binary/).
//
// Images stay uint8 in RAM (150 MB for a train set); a batch becomes a float tensor
// only when it is asked for, normalised per channel as (x/255 - mean[c]) / stddev[c].
// Anything wrong with the files is a DataError whose message names the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/error.h"
#include "engine/tensor.h"

namespace polyak::data {

// A set of same-sized images with one integer label each.
struct ImageSet {
  int64_t count = 0;
  int channels = 3, height = 32, width = 32;
  std::vector<uint8_t> pixels;  // count * channels * height * width, CHW per image
  std::vector<int64_t> labels;  // count, each in [0, num_classes)
  int num_classes = 0;
  std::vector<std::string> class_names;  // num_classes entries
  // Per-channel normalisation used by to_tensor (channels entries each; empty means
  // plain x/255).
  std::vector<float> mean, stddev;

  int64_t image_size() const { return int64_t{channels} * height * width; }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_size(); }
};

enum class CifarSplit { Train, Test };
enum class CifarLabel { Fine, Coarse };  // which CIFAR-100 label becomes ImageSet::labels

// The standard normalisation constants (per-channel mean and std of the train set).
inline const std::vector<float> kCifar10Mean = {0.4914f, 0.4822f, 0.4465f};
inline const std::vector<float> kCifar10Std = {0.2470f, 0.2435f, 0.2616f};
inline const std::vector<float> kCifar100Mean = {0.5071f, 0.4865f, 0.4409f};
inline const std::vector<float> kCifar100Std = {0.2673f, 0.2564f, 0.2762f};

// Train: 50,000 images (the five batches in order); Test: 10,000. Class names come from
// batches.meta.txt when it is there, else the built-in list.
ImageSet load_cifar10(const std::string& dir, CifarSplit split);

// Train: 50,000 images; Test: 10,000. Labels are the fine (100 classes) or coarse (20
// classes) ones; names from fine_label_names.txt / coarse_label_names.txt when there.
ImageSet load_cifar100(const std::string& dir, CifarSplit split, CifarLabel label = CifarLabel::Fine);

// The built-in class names, in label order.
const std::vector<std::string>& cifar10_class_names();
const std::vector<std::string>& cifar100_fine_class_names();
const std::vector<std::string>& cifar100_coarse_class_names();

// The images at `indices` (in that order, repeats allowed), with the same metadata.
ImageSet subset(const ImageSet& set, const std::vector<int64_t>& indices);

// The images at `indices` as a (B, C, H, W) float32 tensor on `device`, each value
// (x/255 - mean[c]) / stddev[c].
Tensor to_tensor(const ImageSet& set, const std::vector<int64_t>& indices, Device device = Device::CPU);

// The labels at `indices` as a (B) int64 tensor on `device`.
Tensor labels_tensor(const ImageSet& set, const std::vector<int64_t>& indices, Device device = Device::CPU);

}  // namespace polyak::data
