// Linked into builds without the CUDA table: there is no GPU backend.
#include "engine/backend.h"

namespace polyak {
Backend* cuda_backend() { return nullptr; }
}  // namespace polyak
