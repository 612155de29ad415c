// Autograd: a dynamic tape as small as micrograd's.
//
// Every differentiable op that sees an input requiring a gradient (while grad mode is
// on) hangs a Node on its result: one edge per input, saying where that input's
// gradient goes, and a closure that maps the gradient of the result to the gradients
// of the inputs (the chain rule for that op, written in the op's file next to its
// forward). Tensor::backward() orders the graph topologically once, walks it in
// reverse, sums the gradients that reach each node (or lets an op add its own into the
// sum as it computes it: SummingBackwardFn), stores them in the leaves' .grad
// (adding to what is there, so gradients accumulate across calls), and then frees the
// graph: every closure and the tensors it saved are released.
//
// An edge names the node that produced the input, not the input itself: the graph
// holds on to no intermediate result, only to what the closures save. A result nobody
// saves (a BN output that only feeds a ReLU, which keeps its own output) is freed as
// soon as the forward code drops it, so a ResNet step holds half the activations it
// would if every node kept its inputs.
//
// Rule for op authors: a closure may capture its op's output only as output.detach(),
// never the output itself, or the output would own its own node through the closure.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace polyak {

// Maps the gradient of an op's result to one gradient per input (an undefined Tensor
// where that input needs none). The walk drops grad_output after the call: where
// grad_output.owns_data_alone(), the function may write its results over it.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

// A backward that can add an input's gradient into the sum the walk already holds for
// that input, in the pass that computes the gradient, where the walk would otherwise
// add the two in a pass over memory of its own (a residual block's input: the
// shortcut's gradient arrives first, the convolution's data gradient adds to it as it
// writes). sums[i] is that sum where the walk holds one that nothing else can see,
// else undefined. For such an input the function either returns sums[i] itself, with
// its gradient added in place, or leaves sums[i] as it is and returns its gradient as
// a BackwardFn would (the walk then adds the two).
using SummingBackwardFn =
    std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<Tensor>& sums)>;

struct Node;

// Where the gradient of one input of a node goes: to the node that produced the input,
// or into the .grad of a leaf; neither when the input needs no gradient.
struct Edge {
  std::shared_ptr<Node> producer;
  Tensor leaf;
  bool defined() const { return producer || leaf.defined(); }
};

struct Node {
  const char* name;             // op name, for error messages
  std::vector<Edge> edges;      // one per input, in the order BackwardFn returns their gradients
  BackwardFn backward;                 // one of these two is set
  SummingBackwardFn summing_backward;
  bool released = false;        // set once backward has run and the graph was freed

  bool needs_grad(size_t input) const { return edges[input].defined(); }
};

bool grad_enabled();

// Turns recording off in its scope (evaluation, optimiser steps, BN recompute).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when grad mode is on and any input requires a gradient: only then does an op
// build its closure.
bool should_record(std::initializer_list<Tensor> inputs);

// Makes `output` the result of a recorded op. `inputs` may contain undefined tensors
// (an absent bias); they get no gradient.
void record(const Tensor& output, const char* name, std::vector<Tensor> inputs, BackwardFn backward);
// The same with a backward that may add into the sums of its inputs' gradients.
void record_summing(const Tensor& output, const char* name, std::vector<Tensor> inputs,
                    SummingBackwardFn backward);

// Reduces a broadcast gradient back to `shape` by summing over the broadcast dims.
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace polyak
