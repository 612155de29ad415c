#include "engine/autograd.h"

#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace polyak {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool should_record(std::initializer_list<Tensor> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const Tensor& output, const char* name, std::vector<Tensor> inputs, BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs = std::move(inputs);
  node->backward = std::move(backward);
  TensorImpl* impl = output.impl();
  impl->grad_fn = std::move(node);
  impl->requires_grad = true;
}

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < grad.dim(); ++d)
    if (d < lead || shape[d - lead] == 1) dims.push_back(d);
  return sum(grad, dims, /*keepdim=*/true).reshape(shape);
}

namespace {

// Reverse topological order of the tensors that reach `root` through recorded nodes,
// by an iterative depth-first search (deep nets would overflow a recursive one). The
// handles keep every tensor alive until the walk is over, even once the graph that
// owned it has been freed.
std::vector<Tensor> reverse_topological_order(const Tensor& root) {
  std::vector<Tensor> order;
  std::unordered_set<TensorImpl*> visited{root.impl()};
  std::vector<std::pair<Tensor, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    const Node* node = stack.back().first.grad_fn().get();
    const size_t next_input = stack.back().second++;
    if (node && next_input < node->inputs.size()) {
      const Tensor& input = node->inputs[next_input];
      if (input.defined() && input.requires_grad() && visited.insert(input.impl()).second)
        stack.emplace_back(input, 0);
      continue;
    }
    order.push_back(std::move(stack.back().first));
    stack.pop_back();
  }
  return {order.rbegin(), order.rend()};
}

void accumulate_into_leaf(TensorImpl* leaf, const Tensor& grad) {
  if (!leaf->grad.defined()) {
    leaf->grad = grad.clone();  // the leaf owns its buffer; grad may alias another
  } else {
    leaf->grad.add_(grad);
  }
}

}  // namespace

void run_backward(const Tensor& root, const Tensor& grad_output) {
  if (!root.requires_grad())
    throw std::logic_error("backward(): tensor does not require grad and has no grad_fn");
  if (grad_output.shape() != root.shape())
    throw std::invalid_argument("backward(): gradient shape " + shape_str(grad_output.shape()) +
                                " does not match tensor shape " + shape_str(root.shape()));
  NoGradGuard no_grad;
  const std::vector<Tensor> order = reverse_topological_order(root);
  std::unordered_map<TensorImpl*, Tensor> pending{{root.impl(), grad_output}};
  for (const Tensor& tensor : order) {
    TensorImpl* impl = tensor.impl();
    auto it = pending.find(impl);
    if (it == pending.end()) continue;  // no gradient flowed here
    Tensor grad = std::move(it->second);
    pending.erase(it);
    Node* node = impl->grad_fn.get();
    if (!node) {
      accumulate_into_leaf(impl, grad);
      continue;
    }
    if (node->released)
      throw std::logic_error(std::string("backward(): the graph through '") + node->name +
                             "' was already freed by an earlier backward()");
    std::vector<Tensor> input_grads = node->backward(grad);
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      if (!node->needs_grad(i) || !input_grads[i].defined()) continue;
      TensorImpl* input = node->inputs[i].impl();
      Tensor& slot = pending[input];
      slot = slot.defined() ? add(slot, input_grads[i]) : input_grads[i];
    }
  }
  // Free the graph: closures and saved tensors go now; the nodes stay as markers so
  // that a second backward() through them reports the mistake instead of silently
  // treating intermediate results as leaves.
  for (const Tensor& tensor : order) {
    if (Node* node = tensor.grad_fn().get()) {
      node->backward = nullptr;
      node->inputs.clear();
      node->inputs.shrink_to_fit();
      node->released = true;
    }
  }
}

}  // namespace polyak
