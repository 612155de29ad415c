// Module: the building block of models, as torch.nn.Module.
//
// A module owns named parameters (trainable tensors), named buffers (state that is
// saved but not trained: BatchNorm's running statistics and its integer counter) and
// named children. Names compose with dots in registration order, so a state
// dictionary reads exactly like PyTorch's ("layer1.0.bn1.running_mean") and
// checkpoints move between the two without renaming.
//
// pack_arenas() on the root, once the model is built, moves every parameter into one
// contiguous allocation (and their gradients into a second, the float buffers into a
// third), rebinding each tensor to a view of it. The optimiser step, the EMA update
// and checkpointing are then single passes over flat memory, and a whole set of
// weights can be exchanged by swapping one pointer (see swap_parameter_data).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace polyak::nn {

using NamedTensor = std::pair<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // Training mode (batch statistics, dropout) or evaluation mode, recursively.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  std::vector<NamedTensor> named_parameters() const;
  std::vector<NamedTensor> named_buffers() const;
  // Parameters and buffers in PyTorch's state_dict order: each module's own
  // parameters, then its own buffers, then its children's, depth first.
  std::vector<NamedTensor> state_dict() const;
  std::vector<Tensor> parameters() const;
  // This module ("") and every descendant, depth first, with their dotted names.
  std::vector<std::pair<std::string, Module*>> named_modules();

  // Copies values into the existing tensors (so arena views stay in place). Every key
  // of the module must be present with the same shape and dtype; keys the module
  // does not have are an error too. Messages name the key.
  void load_state_dict(const std::vector<NamedTensor>& state);

  // ---- arenas (call on the root once the model is complete) ----
  void pack_arenas();
  bool has_arenas() const { return parameter_arena_.defined(); }
  const Tensor& parameter_arena() const;  // flat float32, every parameter
  const Tensor& gradient_arena() const;   // flat float32, same layout; parameters' .grad are views of it
  const Tensor& buffer_arena() const;     // flat float32, every float buffer (may be empty)
  void zero_grad();

  // Moves the model to a device (before pack_arenas).
  void to(Device device);

 protected:
  // Registers a parameter (it gets requires_grad) and returns the handle to keep.
  Tensor register_parameter(const std::string& name, Tensor value);
  Tensor register_buffer(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }
  // Called by train(); a module that caches mode-dependent state overrides it.
  virtual void on_train(bool) {}

 private:
  void collect(const std::string& prefix, bool params, bool buffers, std::vector<NamedTensor>& out) const;

  std::vector<NamedTensor> parameters_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  Tensor parameter_arena_, gradient_arena_, buffer_arena_;
};

// Exchanges the memory behind two equally sized flat tensors in O(1): every view of
// `a` (e.g. every parameter of a model) now reads what `b` held, and vice versa.
void swap_storage_data(const Tensor& a, const Tensor& b);

}  // namespace polyak::nn
