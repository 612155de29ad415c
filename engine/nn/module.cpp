#include "engine/nn/module.h"

#include <map>
#include <stdexcept>

#include "engine/backend.h"

namespace polyak::nn {

void Module::train(bool on) {
  training_ = on;
  on_train(on);
  for (auto& [name, child] : children_) child->train(on);
}

Tensor Module::register_parameter(const std::string& name, Tensor value) {
  if (value.dtype() != DType::F32) throw std::invalid_argument("parameter '" + name + "' must be float32");
  value.requires_grad_(true);
  parameters_.emplace_back(name, value);
  return value;
}

Tensor Module::register_buffer(const std::string& name, Tensor value) {
  buffers_.emplace_back(name, value);
  return value;
}

void Module::collect(const std::string& prefix, bool params, bool buffers, std::vector<NamedTensor>& out) const {
  if (params)
    for (const auto& [name, t] : parameters_) out.emplace_back(prefix + name, t);
  if (buffers)
    for (const auto& [name, t] : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, buffers, out);
}

std::vector<NamedTensor> Module::named_parameters() const {
  std::vector<NamedTensor> out;
  collect("", true, false, out);
  return out;
}

std::vector<NamedTensor> Module::named_buffers() const {
  std::vector<NamedTensor> out;
  collect("", false, true, out);
  return out;
}

std::vector<NamedTensor> Module::state_dict() const {
  std::vector<NamedTensor> out;
  collect("", true, true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (auto& [name, child] : children_)
    for (auto& [sub, module] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, module);
  return out;
}

void Module::load_state_dict(const std::vector<NamedTensor>& state) {
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : state) given[name] = &t;
  std::vector<std::pair<Tensor, const Tensor*>> copies;
  for (const auto& [name, mine] : state_dict()) {
    auto it = given.find(name);
    if (it == given.end()) throw std::invalid_argument("state dict is missing '" + name + "'");
    const Tensor& src = *it->second;
    if (src.shape() != mine.shape() || src.dtype() != mine.dtype())
      throw std::invalid_argument("state dict entry '" + name + "' is " + dtype_name(src.dtype()) + " " +
                                  shape_str(src.shape()) + ", the model expects " + dtype_name(mine.dtype()) + " " +
                                  shape_str(mine.shape()));
    copies.emplace_back(mine, &src);
    given.erase(it);
  }
  if (!given.empty()) throw std::invalid_argument("state dict has '" + given.begin()->first + "', which the model does not");
  for (auto& [mine, src] : copies) Tensor(mine).copy_(*src);  // only after every check passed
}

void Module::to(Device device) {
  if (has_arenas()) throw std::logic_error("Module::to: move a model before packing its arenas");
  for (auto& [name, t] : state_dict()) {
    if (t.device() == device) continue;
    const Tensor moved = t.to(device);
    t.impl()->storage = moved.storage();
    t.impl()->offset = moved.offset();
  }
}

namespace {

// Copies each tensor into one new flat allocation and rebinds it to a view there.
Tensor pack(const std::vector<Tensor>& tensors, Device device) {
  int64_t total = 0;
  for (const Tensor& t : tensors) total += t.numel();
  Tensor flat = Tensor::empty({total}, DType::F32, device);
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    const int64_t n = t.numel();
    flat.slice(offset, offset + n).reshape(t.shape()).copy_(t);
    TensorImpl* impl = t.impl();
    impl->storage = flat.storage();
    impl->offset = offset;
    impl->strides = contiguous_strides(impl->shape);
    offset += n;
  }
  return flat;
}

}  // namespace

void Module::pack_arenas() {
  if (has_arenas()) throw std::logic_error("pack_arenas: already packed");
  const std::vector<Tensor> params = parameters();
  if (params.empty()) throw std::logic_error("pack_arenas: the model has no parameters");
  const Device device = params.front().device();
  std::vector<Tensor> float_buffers;
  for (auto& [name, t] : named_buffers())
    if (t.dtype() == DType::F32) float_buffers.push_back(t);
  parameter_arena_ = pack(params, device);
  buffer_arena_ = pack(float_buffers, device);
  gradient_arena_ = Tensor::zeros(parameter_arena_.shape(), DType::F32, device);
  int64_t offset = 0;
  for (const Tensor& p : params) {
    p.set_grad(make_view(gradient_arena_, offset, p.shape(), contiguous_strides(p.shape())));
    offset += p.numel();
  }
}

namespace {
const Tensor& require_arena(const Tensor& arena) {
  if (!arena.defined()) throw std::logic_error("the model's arenas are not packed (call pack_arenas())");
  return arena;
}
}  // namespace

const Tensor& Module::parameter_arena() const { return require_arena(parameter_arena_); }
const Tensor& Module::gradient_arena() const { return require_arena(gradient_arena_); }
const Tensor& Module::buffer_arena() const { return require_arena(buffer_arena_); }

void Module::zero_grad() {
  if (has_arenas()) {
    Tensor(gradient_arena_).zero_();
    return;
  }
  for (const Tensor& p : parameters())
    if (p.grad().defined()) p.grad().zero_();
}

void swap_storage_data(const Tensor& a, const Tensor& b) {
  Storage& sa = *a.storage();
  Storage& sb = *b.storage();
  if (sa.bytes != sb.bytes || sa.device != sb.device)
    throw std::invalid_argument("swap_storage_data: storages differ in size or device");
  std::swap(sa.data, sb.data);
}

}  // namespace polyak::nn
