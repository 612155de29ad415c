// Linked into builds without the CUDA table: there is no GPU backend, the switches of
// engine/cuda/settings.h do nothing and the queries report no GPU.
#include "engine/backend.h"
#include "engine/cuda/settings.h"

namespace polyak {

Backend* cuda_backend() { return nullptr; }

bool cuda_present() { return false; }
std::string cuda_unavailable_reason() { return "this build has no CUDA support (configure with -DPOLYAK_CUDA=ON)"; }
std::string cuda_device_description() { return ""; }
void set_cuda_device_index(int) {}
void set_cuda_tf32(bool) {}
bool cuda_tf32() { return false; }
void set_cuda_deterministic(bool) {}
bool cuda_deterministic() { return false; }
void set_cuda_conv_force_fallback(bool) {}
CudaMemoryStats cuda_memory_stats() { return {}; }
void cuda_reset_peak_memory() {}

}  // namespace polyak
