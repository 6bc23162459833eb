// Shared test helpers: GPU skipping and tolerance checks.
#pragma once

#include <gtest/gtest.h>

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
