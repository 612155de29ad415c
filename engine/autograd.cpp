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

namespace {

Edge edge_to(const Tensor& input) {
  if (!input.defined() || !input.requires_grad()) return {};
  if (input.grad_fn()) return {input.grad_fn(), Tensor()};
  return {nullptr, input};
}

// The identity of an edge's target: the gradient that reaches it is summed under it.
const void* target(const Edge& edge) {
  return edge.producer ? static_cast<const void*>(edge.producer.get()) : edge.leaf.impl();
}

// A new node for `output`, with an edge per input; its backward is the caller's to set.
Node& attach_node(const Tensor& output, const char* name, const std::vector<Tensor>& inputs) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->edges.reserve(inputs.size());
  for (const Tensor& input : inputs) node->edges.push_back(edge_to(input));
  TensorImpl* impl = output.impl();
  impl->grad_fn = std::move(node);
  impl->requires_grad = true;
  return *impl->grad_fn;
}

}  // namespace

void record(const Tensor& output, const char* name, std::vector<Tensor> inputs, BackwardFn backward) {
  attach_node(output, name, inputs).backward = std::move(backward);
}

void record_summing(const Tensor& output, const char* name, std::vector<Tensor> inputs,
                    SummingBackwardFn backward) {
  attach_node(output, name, inputs).summing_backward = std::move(backward);
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

// Reverse topological order of the nodes and leaves that reach `root`, by an iterative
// depth-first search (deep nets would overflow a recursive one). The edges keep every
// node alive until the walk is over, even once the graph that owned it has been freed.
std::vector<Edge> reverse_topological_order(const Edge& root) {
  std::vector<Edge> order;
  std::unordered_set<const void*> visited{target(root)};
  std::vector<std::pair<Edge, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    const Node* node = stack.back().first.producer.get();
    const size_t next_input = stack.back().second++;
    if (node && next_input < node->edges.size()) {
      const Edge& input = node->edges[next_input];
      if (input.defined() && visited.insert(target(input)).second) stack.emplace_back(input, 0);
      continue;
    }
    order.push_back(std::move(stack.back().first));
    stack.pop_back();
  }
  return {order.rbegin(), order.rend()};
}

// Frees a node's closure, the tensors it saved and its edges. The node stays as a
// marker, so that a second backward() through it reports the mistake instead of
// silently treating intermediate results as leaves.
void release(Node& node) {
  node.backward = nullptr;
  node.summing_backward = nullptr;
  node.edges.clear();
  node.edges.shrink_to_fit();
  node.released = true;
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
  const Edge start = edge_to(root);
  const std::vector<Edge> order = reverse_topological_order(start);
  std::unordered_map<const void*, Tensor> pending{{target(start), grad_output}};
  for (const Edge& edge : order) {
    auto it = pending.find(target(edge));
    if (it == pending.end()) continue;  // no gradient flowed here
    Tensor grad = std::move(it->second);
    pending.erase(it);
    Node* node = edge.producer.get();
    if (!node) {
      accumulate_into_leaf(edge.leaf.impl(), grad);
      continue;
    }
    if (node->released)
      throw std::logic_error(std::string("backward(): the graph through '") + node->name +
                             "' was already freed by an earlier backward()");
    // A summing backward is handed the sums it may add into, taken out of `pending`.
    std::vector<Tensor> sums(node->edges.size());
    if (node->summing_backward) {
      for (size_t i = 0; i < node->edges.size(); ++i) {
        if (!node->needs_grad(i)) continue;
        const auto sum = pending.find(target(node->edges[i]));
        if (sum == pending.end() || !sum->second.owns_data_alone()) continue;
        sums[i] = std::move(sum->second);
        pending.erase(sum);
      }
    }
    std::vector<Tensor> input_grads =
        node->summing_backward ? node->summing_backward(grad, sums) : node->backward(grad);
    grad = Tensor();  // spent: its buffer can serve the next node
    for (size_t i = 0; i < node->edges.size(); ++i) {
      if (!node->needs_grad(i)) continue;
      Tensor input_grad = std::move(input_grads[i]);
      if (sums[i].defined() && input_grad.impl() != sums[i].impl())  // a sum not added into
        input_grad = input_grad.defined() ? add(sums[i], input_grad) : sums[i];
      if (!input_grad.defined()) continue;
      Tensor& slot = pending[target(node->edges[i])];
      slot = slot.defined() ? add(slot, input_grad) : input_grad;
    }
    release(*node);  // its saved activations go now, not at the end of the walk
  }
  for (const Edge& edge : order)
    if (edge.producer) release(*edge.producer);  // the nodes no gradient reached
}

}  // namespace polyak
