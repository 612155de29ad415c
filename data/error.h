// The one error type of the data layer: bad or missing input data.
#pragma once

#include <stdexcept>

namespace polyak::data {

// Bad or missing input data; the message names the file (or folder) and what is wrong
// with it.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace polyak::data
