// Autograd: a dynamic tape as small as micrograd's.
//
// Every differentiable op that sees an input requiring a gradient (while grad mode is
// on) hangs a Node on its result: the inputs, and a closure that maps the gradient of
// the result to the gradients of the inputs (the chain rule for that op, written in
// the op's file next to its forward). Tensor::backward() orders the graph
// topologically once, walks it in reverse, sums the gradients that reach each tensor,
// stores them in the leaves' .grad (adding to what is there, so gradients accumulate
// across calls), and then frees the graph: every closure and the tensors it saved
// are released.
//
// Rule for op authors: a closure may capture its op's output only as output.detach(),
// never the output itself, or the output would own its own node through the closure.
#pragma once

#include <functional>
#include <initializer_list>
#include <vector>

#include "engine/tensor.h"

namespace polyak {

// Maps the gradient of an op's result to one gradient per input (an undefined Tensor
// where that input needs none).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

struct Node {
  const char* name;             // op name, for error messages
  std::vector<Tensor> inputs;   // in the order BackwardFn returns their gradients
  BackwardFn backward;
  bool released = false;        // set once backward has run and the graph was freed

  bool needs_grad(size_t input) const { return inputs[input].defined() && inputs[input].requires_grad(); }
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

// Reduces a broadcast gradient back to `shape` by summing over the broadcast dims.
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace polyak
