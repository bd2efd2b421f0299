// The device-side tensor table cache of device.cuh.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

#include "device.cuh"

namespace agd_kernels::cuda {
namespace {

struct Entry {
  at::Tensor host;      // pinned source of the upload, kept so the copy never reads freed memory
  at::Tensor words;     // int64 on the device
  at::Tensor counters;  // int32 per tensor, zero between launches
};

constexpr size_t kMaxTables = 4096;

}  // namespace

grid::Table cached_table(c10::Device device, std::vector<int64_t> words, int64_t tensors, int32_t lists) {
  static std::mutex mutex;
  static std::unordered_map<std::string, Entry> cache;
  static std::deque<std::string> order;  // insertion order, oldest first

  std::string key(reinterpret_cast<const char*>(words.data()), words.size() * sizeof(int64_t));
  key += static_cast<char>(device.index());
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    const c10::cuda::CUDAGuard guard(device);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
    TORCH_CHECK(status == cudaStreamCaptureStatusNone,
                "agd_kernels cuda backend: this parameter set's tensor table is not built yet and the stream is "
                "being captured into a CUDA graph; run one optimizer step before capturing");
    const int64_t n = static_cast<int64_t>(words.size());
    Entry e;
    e.host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::memcpy(e.host.mutable_data_ptr<int64_t>(), words.data(), n * sizeof(int64_t));
    e.words = at::empty({n}, at::TensorOptions().dtype(at::kLong).device(device));
    e.words.copy_(e.host, /*non_blocking=*/true);
    e.counters = at::zeros({tensors}, at::TensorOptions().dtype(at::kInt).device(device));
    if (cache.size() >= kMaxTables) {
      cache.erase(order.front());
      order.pop_front();
    }
    order.push_back(key);
    it = cache.emplace(std::move(key), std::move(e)).first;
  }
  return grid::Table{it->second.words.const_data_ptr<int64_t>(), it->second.counters.mutable_data_ptr<int32_t>(),
                     tensors, lists};
}

}  // namespace agd_kernels::cuda
