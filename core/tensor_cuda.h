// Internal: the CUDA side of Tensor (copies, fills, random draws). CUDA builds only.
#pragma once

#include "core/tensor.h"

namespace fg::detail {

// dst and src on the same CUDA device, same shape; converts dtype.
void cuda_strided_copy(const Tensor& src, const Tensor& dst);
void cuda_fill(const Tensor& dst, double value);
void cuda_arange(const Tensor& dst);
// Contiguous dst; normal (mean a, std b) when `normal`, else uniform in [a, b).
void cuda_philox_fill(const Tensor& dst, uint64_t seed, uint64_t offset, bool normal, double a,
                      double b);

}  // namespace fg::detail
