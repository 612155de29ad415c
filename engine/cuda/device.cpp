// The CUDA backend's life cycle: finding the GPU, creating the stream and the library
// handles, the global switches of engine/cuda/settings.h, and error reporting.
//
// cuda_backend() is what backend(Device::CUDA) asks for. It creates the backend on the
// first call when cudaGetDeviceCount reports a device, and otherwise remembers that
// there is none and returns nullptr: the binaries link the CUDA runtime statically and
// the driver (libcuda) is only loaded at that moment, so they start and run their CPU
// work on machines without a GPU or a driver.
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "engine/cuda/libraries.h"

namespace polyak {

// ---------------------------------------------------------------- errors

void cuda_check(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status) + " (" +
                           cudaGetErrorName(status) + ") in " + what + " at " + file + ":" + std::to_string(line));
}

void cublas_check(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw std::runtime_error(std::string("cuBLAS error: ") + cublas_library().status_string(status) + " in " + what +
                           " at " + file + ":" + std::to_string(line));
}

void cudnn_check(cudnnStatus_t status, const char* what, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  throw std::runtime_error(std::string("cuDNN error: ") + cudnnGetErrorString(status) + " in " + what + " at " +
                           file + ":" + std::to_string(line));
}

// ---------------------------------------------------------------- settings

namespace {
std::atomic<bool> g_tf32{false};
std::atomic<bool> g_deterministic{false};
std::atomic<int> g_device_index{0};
std::string g_unavailable_reason;  // written once, inside the static initialiser below
}  // namespace

void set_cuda_device_index(int index) { g_device_index = index; }
void set_cuda_tf32(bool on) { g_tf32 = on; }
bool cuda_tf32() { return g_tf32; }
void set_cuda_deterministic(bool on) { g_deterministic = on; }
bool cuda_deterministic() { return g_deterministic; }

// ---------------------------------------------------------------- the instance

namespace {

CudaBackend* create_if_present() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count < 1) {
    (void)cudaGetLastError();  // clear the error so it cannot surface elsewhere
    g_unavailable_reason = status != cudaSuccess
                               ? std::string("no usable GPU: cudaGetDeviceCount says ") + cudaGetErrorString(status)
                               : std::string("no GPU: cudaGetDeviceCount found 0 devices");
    return nullptr;
  }
  return new CudaBackend();
}

CudaBackend* instance() {
  // Thread-safe one-time initialisation; if the constructor throws (a GPU is present
  // but unusable), the next call tries again and throws again, with the reason.
  static CudaBackend* const backend = create_if_present();
  return backend;
}

}  // namespace

Backend* cuda_backend() { return instance(); }

CudaBackend& the_cuda_backend() {
  CudaBackend* backend = instance();
  if (!backend) throw std::logic_error("the CUDA backend is not available: " + g_unavailable_reason);
  return *backend;
}

bool cuda_present() { return instance() != nullptr; }

std::string cuda_unavailable_reason() { return instance() ? std::string() : g_unavailable_reason; }

std::string cuda_device_description() {
  CudaBackend* backend = instance();
  return backend ? backend->description() : std::string();
}

CudaMemoryStats cuda_memory_stats() {
  CudaBackend* backend = instance();
  return backend ? backend->memory_stats() : CudaMemoryStats{};
}

void cuda_reset_peak_memory() {
  if (CudaBackend* backend = instance()) backend->reset_peak_memory();
}

// ---------------------------------------------------------------- CudaBackend

CudaBackend::CudaBackend() {
  const int index = g_device_index;
  POLYAK_CUDA(cudaSetDevice(index));
  cudaDeviceProp props{};
  POLYAK_CUDA(cudaGetDeviceProperties(&props, index));
  sm_count_ = props.multiProcessorCount;
  char text[512];
  std::snprintf(text, sizeof text, "%s (sm_%d%d, %d SMs, %.0f GiB)", props.name, props.major, props.minor,
                props.multiProcessorCount, static_cast<double>(props.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  description_ = text;
  POLYAK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  POLYAK_CUDA(cudaMalloc(&label_error_, sizeof(unsigned long long)));
  POLYAK_CUDA(cudaMallocHost(&label_error_host_, sizeof(unsigned long long)));
  POLYAK_CUDA(cudaMemset(label_error_, 0xFF, sizeof(unsigned long long)));  // "no bad label"
  POLYAK_CUDA(cudaDeviceSynchronize());
}

CudaBackend::~CudaBackend() {
  // Not reached in practice (the instance lives until exit); best effort, no throwing.
  cudaStreamSynchronize(stream_);
  for (auto& [key, plan] : conv_plans_) destroy_conv_plan(plan);
  if (cudnn_) cudnnDestroy(cudnn_);
  if (cublas_) cublas_library().destroy(cublas_);
  if (cublas_workspace_) deallocate(cublas_workspace_, cublas_workspace_bytes_);
  for (StagingSlot& slot : staging_) {
    if (slot.done) cudaEventDestroy(slot.done);
    if (slot.host) cudaFreeHost(slot.host);
  }
  {
    std::lock_guard lock(memory_mutex_);
    release_cached_locked();
  }
  cudaFree(label_error_);
  cudaFreeHost(label_error_host_);
  cudaStreamDestroy(stream_);
}

cublasHandle_t CudaBackend::cublas() {
  std::call_once(cublas_once_, [this] {
    const CublasLibrary& library = cublas_library();
    POLYAK_CUBLAS(library.create(&cublas_));
    POLYAK_CUBLAS(library.set_stream(cublas_, stream_));
    // Our own workspace, so that cuBLAS never allocates behind the allocator's back
    // (32 MiB is NVIDIA's recommendation for Hopper).
    cublas_workspace_bytes_ = size_t{32} << 20;
    cublas_workspace_ = allocate(cublas_workspace_bytes_);
    POLYAK_CUBLAS(library.set_workspace(cublas_, cublas_workspace_, cublas_workspace_bytes_));
    POLYAK_CUBLAS(library.set_pointer_mode(cublas_, CUBLAS_POINTER_MODE_HOST));
  });
  return cublas_;
}

cudnnHandle_t CudaBackend::cudnn() {
  std::call_once(cudnn_once_, [this] {
    POLYAK_CUDNN(cudnnCreate(&cudnn_));
    POLYAK_CUDNN(cudnnSetStream(cudnn_, stream_));
  });
  return cudnn_;
}

}  // namespace polyak
