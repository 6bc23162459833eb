// Shared test helpers: GPU skipping and tolerance checks.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/tensor.h"

#define FG_REQUIRE_GPU()                                              \
  do {                                                                \
    if (!::fg::cuda_available()) GTEST_SKIP() << "no CUDA device";   \
  } while (0)

// ||a-b||/||b|| within tol, NaN never passes.
inline ::testing::AssertionResult close_rel(const fg::Tensor& a, const fg::Tensor& b, double tol) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shape " << a.shape_str() << " vs " << b.shape_str();
  double e = fg::relative_error(a, b);
  if (e <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "relative error " << e << " > " << tol;
}

// Expects `stmt` to throw fg::Error whose message contains `needle`.
#define EXPECT_FG_ERROR(stmt, needle)                                                    \
  do {                                                                                   \
    try {                                                                                \
      stmt;                                                                              \
      ADD_FAILURE() << "expected fg::Error containing '" << (needle) << "'";           \
    } catch (const fg::Error& e) {                                                      \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();    \
    }                                                                                    \
  } while (0)

namespace fg::test {

// The tensor as f64 on the CPU, the form references compare in.
inline fg::Tensor f64(const fg::Tensor& t) { return t.to(fg::Device::cpu(), fg::DType::F64); }

// Fills the GPU memory pool with NaN blocks of these sizes and frees them, so a
// kernel that leaves an element of a freshly allocated output unwritten shows NaN.
inline void poison_pool(const std::vector<fg::Shape>& shapes, fg::DType dtype, fg::Device device) {
  std::vector<fg::Tensor> poison;
  for (const fg::Shape& s : shapes) poison.push_back(fg::Tensor::full(s, NAN, dtype, device));
}

}  // namespace fg::test
