#include "engine/tensor.h"

#include <algorithm>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace polyak {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::I64: return 8;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  throw std::logic_error("unknown dtype");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::I64: return "int64";
    case DType::I32: return "int32";
    case DType::U8: return "uint8";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

int64_t shape_numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

Storage::Storage(Device device_, size_t bytes_) : device(device_), bytes(bytes_) {
  data = backend(device).allocate(bytes);
}

Storage::~Storage() { backend(device).deallocate(data, bytes); }

Tensor make_view(const Tensor& base, int64_t offset, Shape shape, Shape strides) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->offset = offset;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

// ---------------------------------------------------------------- creation

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("Tensor::empty: negative dimension in shape " + shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(device, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::ones(const Shape& shape, Device device) { return full(shape, 1.0f, device); }

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  Tensor t = empty(shape, DType::F32, device);
  t.fill_(value);
  return t;
}

template <class T>
Tensor Tensor::from_data(const T* data, const Shape& shape, Device device) {
  Tensor t = empty(shape, dtype_of<T>(), device);
  backend(device).copy_from_host(t.raw_data(), data, static_cast<size_t>(t.numel()) * sizeof(T));
  return t;
}
template Tensor Tensor::from_data<float>(const float*, const Shape&, Device);
template Tensor Tensor::from_data<int64_t>(const int64_t*, const Shape&, Device);
template Tensor Tensor::from_data<int32_t>(const int32_t*, const Shape&, Device);
template Tensor Tensor::from_data<uint8_t>(const uint8_t*, const Shape&, Device);

Tensor Tensor::from_vector(const std::vector<float>& data, const Shape& shape, Device device) {
  if (static_cast<int64_t>(data.size()) != shape_numel(shape))
    throw std::invalid_argument("Tensor::from_vector: " + std::to_string(data.size()) +
                                " values do not fill shape " + shape_str(shape));
  return from_data(data.data(), shape, device);
}

Tensor Tensor::uniform(const Shape& shape, float low, float high, Rng& rng, Device device) {
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& v : values) v = rng.uniform(low, high);
  return from_vector(values, shape, device);
}

Tensor Tensor::normal(const Shape& shape, float mean, float stddev, Rng& rng, Device device) {
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  for (float& v : values) v = mean + stddev * rng.normal();
  return from_vector(values, shape, device);
}

// ---------------------------------------------------------------- metadata

namespace {
const TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  if (!impl) throw std::logic_error("use of an undefined Tensor");
  return *impl;
}
}  // namespace

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int64_t Tensor::offset() const { return checked(impl_).offset; }
int64_t Tensor::dim() const { return static_cast<int64_t>(shape().size()); }
int64_t Tensor::numel() const { return shape_numel(shape()); }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device; }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked(impl_).storage; }

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  if (d < -n || d >= n)
    throw std::out_of_range("Tensor::size: dim " + std::to_string(d) + " out of range for shape " + shape_str(shape()));
  return shape()[d < 0 ? d + n : d];
}

bool Tensor::owns_data_alone() const {
  return impl_ && impl_.use_count() == 1 && impl_->storage.use_count() == 1;
}

bool Tensor::is_contiguous() const {
  const Shape& s = shape();
  const Shape& st = strides();
  int64_t expected = 1;
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] != 1 && st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  const TensorImpl& impl = checked(impl_);
  return static_cast<char*>(impl.storage->data) + impl.offset * static_cast<int64_t>(dtype_size(impl.dtype));
}

template <class T>
T* Tensor::data() const {
  if (dtype() != dtype_of<T>())
    throw std::invalid_argument(std::string("Tensor::data: tensor is ") + dtype_name(dtype()) + ", asked for " +
                                dtype_name(dtype_of<T>()));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template int64_t* Tensor::data<int64_t>() const;
template int32_t* Tensor::data<int32_t>() const;
template uint8_t* Tensor::data<uint8_t>() const;

// ---------------------------------------------------------------- autograd

bool Tensor::requires_grad() const { return checked(impl_).requires_grad; }

Tensor& Tensor::requires_grad_(bool on) {
  if (!is_leaf()) throw std::logic_error("requires_grad_: only leaf tensors can change requires_grad");
  if (on && dtype() != DType::F32) throw std::invalid_argument("requires_grad_: only float32 tensors have gradients");
  impl_->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return checked(impl_).grad_fn == nullptr; }
const std::shared_ptr<Node>& Tensor::grad_fn() const { return checked(impl_).grad_fn; }
Tensor Tensor::grad() const { return checked(impl_).grad; }

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined() && grad.shape() != shape())
    throw std::invalid_argument("set_grad: gradient shape " + shape_str(grad.shape()) + " differs from " +
                                shape_str(shape()));
  checked(impl_);
  impl_->grad = grad;
}

void Tensor::backward() const {
  if (numel() != 1)
    throw std::invalid_argument("backward(): implicit gradient needs a one-element tensor, got shape " +
                                shape_str(shape()));
  run_backward(*this, Tensor::ones(shape(), device()));
}

void Tensor::backward(const Tensor& grad_output) const { run_backward(*this, grad_output); }

Tensor Tensor::detach() const { return make_view(*this, offset(), shape(), strides()); }

// ---------------------------------------------------------------- views

Tensor Tensor::reshape(const Shape& new_shape) const {
  Shape target = new_shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: more than one -1 in " + shape_str(new_shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= target[i];
    }
  }
  if (infer >= 0) target[infer] = known == 0 ? 0 : numel() / known;
  if (shape_numel(target) != numel())
    throw std::invalid_argument("reshape: cannot view " + shape_str(shape()) + " as " + shape_str(new_shape));
  if (!is_contiguous()) return contiguous().reshape(target);
  Tensor out = make_view(*this, offset(), target, contiguous_strides(target));
  if (should_record({*this})) {
    record(out, "reshape", {*this}, [old = shape()](const Tensor& g) {
      return std::vector<Tensor>{g.reshape(old)};
    });
  }
  return out;
}

Tensor Tensor::flatten(int64_t start_dim) const {
  if (start_dim < 0) start_dim += dim();
  if (start_dim < 0 || start_dim >= std::max<int64_t>(dim(), 1))
    throw std::out_of_range("flatten: start_dim out of range for shape " + shape_str(shape()));
  Shape target(shape().begin(), shape().begin() + start_dim);
  target.push_back(-1);
  return reshape(target);
}

Tensor Tensor::slice(int64_t start, int64_t end) const { return slice(0, start, end, 1); }

Tensor Tensor::slice(int64_t dim_, int64_t start, int64_t end, int64_t step) const {
  const int64_t d = dim_ < 0 ? dim_ + dim() : dim_;
  if (d < 0 || d >= dim() || step < 1 || start < 0 || end < start || end > shape()[d])
    throw std::out_of_range("slice: [" + std::to_string(start) + ":" + std::to_string(end) + ":" +
                            std::to_string(step) + "] of dim " + std::to_string(dim_) +
                            " out of range for shape " + shape_str(shape()));
  Shape s = shape(), st = strides();
  s[d] = (end - start + step - 1) / step;
  st[d] *= step;
  Tensor out = make_view(*this, offset() + start * strides()[d], s, st);
  if (should_record({*this})) {
    record(out, "slice", {*this}, [full = shape(), d, start, end, step](const Tensor& g) {
      Tensor dx = Tensor::zeros(full, DType::F32, g.device());
      dx.slice(d, start, end, step).copy_(g);
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  const int64_t n = dim();
  if (static_cast<int64_t>(dims.size()) != n)
    throw std::invalid_argument("permute: " + std::to_string(dims.size()) + " dims given for shape " + shape_str(shape()));
  Shape s(n), st(n);
  std::vector<int64_t> inverse(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t d = dims[i] < 0 ? dims[i] + n : dims[i];
    if (d < 0 || d >= n || inverse[d] != -1) throw std::invalid_argument("permute: dims are not a permutation");
    inverse[d] = i;
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor out = make_view(*this, offset(), s, st);
  if (should_record({*this})) {
    record(out, "permute", {*this}, [inverse](const Tensor& g) { return std::vector<Tensor>{g.permute(inverse)}; });
  }
  return out;
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  const int64_t n = dim();
  std::swap(dims.at(dim0 < 0 ? dim0 + n : dim0), dims.at(dim1 < 0 ? dim1 + n : dim1));
  return permute(dims);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), dtype(), device());
  kernels(device()).copy_strided(out.raw_data(), contiguous_layout(shape()), raw_data(),
                                 make_layout(shape(), strides()), dtype_size(dtype()));
  if (should_record({*this})) {
    record(out, "contiguous", {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  }
  return out;
}

// ---------------------------------------------------------------- copies

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  const Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  const size_t bytes = static_cast<size_t>(numel()) * dtype_size(dtype());
  if (src.device() == Device::CPU) {
    backend(target).copy_from_host(out.raw_data(), src.raw_data(), bytes);
  } else {
    Tensor host = target == Device::CPU ? out : empty(shape(), dtype(), Device::CPU);
    backend(src.device()).copy_to_host(host.raw_data(), src.raw_data(), bytes);
    if (target != Device::CPU) backend(target).copy_from_host(out.raw_data(), host.raw_data(), bytes);
  }
  return out;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  const Tensor src = contiguous();
  std::vector<T> out(static_cast<size_t>(numel()));
  (void)src.data<T>();  // dtype check
  backend(device()).copy_to_host(out.data(), src.raw_data(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

template <class T>
T Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument("item(): tensor of shape " + shape_str(shape()) + " is not one element");
  return to_vector<T>()[0];
}
template float Tensor::item<float>() const;
template int64_t Tensor::item<int64_t>() const;

// ---------------------------------------------------------------- in place

namespace {
void require_contiguous(const Tensor& t, const char* what) {
  if (!t.is_contiguous()) throw std::invalid_argument(std::string(what) + ": needs a contiguous tensor, got strides " +
                                                      shape_str(t.strides()) + " for shape " + shape_str(t.shape()));
}
}  // namespace

Tensor& Tensor::zero_() {
  require_contiguous(*this, "zero_");
  backend(device()).set_zero(raw_data(), static_cast<size_t>(numel()) * dtype_size(dtype()));
  return *this;
}

Tensor& Tensor::fill_(float value) {
  require_contiguous(*this, "fill_");
  kernels(device()).fill(data<float>(), numel(), value);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  if (src.shape() != shape())
    throw std::invalid_argument("copy_: source shape " + shape_str(src.shape()) + " differs from " + shape_str(shape()));
  if (src.dtype() != dtype())
    throw std::invalid_argument(std::string("copy_: source is ") + dtype_name(src.dtype()) + ", destination " +
                                dtype_name(dtype()));
  const Tensor local = src.device() == device() ? src : src.to(device());
  if (is_contiguous() && local.is_contiguous()) {
    backend(device()).copy(raw_data(), local.raw_data(), static_cast<size_t>(numel()) * dtype_size(dtype()));
  } else {
    kernels(device()).copy_strided(raw_data(), make_layout(shape(), strides()), local.raw_data(),
                    make_layout(local.shape(), local.strides()), dtype_size(dtype()));
  }
  return *this;
}

Tensor& Tensor::add_(const Tensor& x, float alpha) {
  if (x.shape() != shape())
    throw std::invalid_argument("add_: shape " + shape_str(x.shape()) + " differs from " + shape_str(shape()));
  require_contiguous(*this, "add_");
  const Tensor local = x.contiguous();
  kernels(device()).axpy(numel(), alpha, local.data<float>(), data<float>());
  return *this;
}

Tensor& Tensor::mul_(float factor) {
  require_contiguous(*this, "mul_");
  kernels(device()).scalar(ScalarOp::Mul, numel(), data<float>(), factor, data<float>());
  return *this;
}

}  // namespace polyak
