// Tensor: a reference-counted handle to a strided view of typed storage on one device.
//
// A Tensor is cheap to copy (it shares its TensorImpl, like a torch.Tensor). Views
// (reshape of contiguous data, slice along dim 0, transpose, permute) share storage
// and differ only in offset, shape and strides. Data is float32 unless a label or
// counter needs an integer type. Where the data lives is the Device tag; every byte
// is moved by that device's Backend, so op code never asks which device it runs on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace polyak {

enum class DType : uint8_t { F32, I64, I32, U8 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);

class Rng;
struct Node;

// One allocation on one device, released through that device's backend when the last
// view of it goes away. CPU allocations are 64-byte aligned.
struct Storage {
  Storage(Device device, size_t bytes);
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  Device device;
  size_t bytes;
  void* data;
};

struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation ----
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor ones(const Shape& shape, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value, Device device = Device::CPU);
  template <class T>
  static Tensor from_data(const T* data, const Shape& shape, Device device = Device::CPU);
  static Tensor from_vector(const std::vector<float>& data, const Shape& shape,
                            Device device = Device::CPU);
  // Samples are drawn on the host in element order, so a seed gives the same tensor
  // on every device.
  static Tensor uniform(const Shape& shape, float low, float high, Rng& rng,
                        Device device = Device::CPU);
  static Tensor normal(const Shape& shape, float mean, float stddev, Rng& rng,
                       Device device = Device::CPU);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t offset() const;
  int64_t dim() const;
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  bool is_contiguous() const;
  TensorImpl* impl() const { return impl_.get(); }
  // Whether no other handle or view can see this tensor's data: writes through it are
  // then seen by nobody else.
  bool owns_data_alone() const;
  const std::shared_ptr<Storage>& storage() const;

  // Pointer to the first element of this view (a device pointer on a GPU). The
  // element type is checked against the dtype.
  template <class T> T* data() const;
  void* raw_data() const;

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);  // leaves only
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor grad() const;
  void set_grad(const Tensor& grad) const;
  // Runs the tape backwards from this tensor. Without an argument the tensor must
  // hold one element and its gradient is taken as 1.
  void backward() const;
  void backward(const Tensor& grad_output) const;
  // Same data, cut off from the graph.
  Tensor detach() const;

  // ---- views (differentiable) ----
  Tensor reshape(const Shape& shape) const;  // one dim may be -1; copies if not contiguous
  Tensor flatten(int64_t start_dim = 1) const;
  Tensor slice(int64_t start, int64_t end) const;  // rows [start, end) of dim 0
  // Every step-th index in [start, end) of `dim`: a view, like x[..., start:end:step].
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor contiguous() const;

  // ---- copies ----
  Tensor clone() const;  // contiguous copy, same device, not in the graph
  Tensor to(Device device) const;
  template <class T> std::vector<T> to_vector() const;
  template <class T = float> T item() const;

  // ---- in place, outside autograd (initialisation, optimisers, gradient bookkeeping) ----
  Tensor& zero_();
  Tensor& fill_(float value);
  Tensor& copy_(const Tensor& src);             // same shape; any layouts
  Tensor& add_(const Tensor& x, float alpha = 1.0f);  // this += alpha * x
  Tensor& mul_(float factor);

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// The state behind a Tensor handle.
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::F32;

  bool requires_grad = false;
  Tensor grad;                     // accumulated gradient of a leaf
  std::shared_ptr<Node> grad_fn;   // the op that produced this tensor, if recorded
};

// A view of `base`'s storage with the given geometry (no copy, no autograd).
Tensor make_view(const Tensor& base, int64_t offset, Shape shape, Shape strides);

}  // namespace polyak
