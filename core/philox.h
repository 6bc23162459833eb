// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// Counter-based: element i of a draw depends only on (seed, offset, i), so the
// CPU and the GPU produce the same numbers in any order.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace fg {

struct Philox4 {
  uint32_t v[4];
};

FG_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

FG_HOST_DEVICE Philox4 philox4x32_10(Philox4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kM1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
    key0 += kW0;
    key1 += kW1;
  }
  return ctr;
}

// Four random words for element `index` of the draw that starts at `offset`.
FG_HOST_DEVICE Philox4 philox_words(uint64_t seed, uint64_t offset, uint64_t index) {
  Philox4 ctr{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
               static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1], exact in double from 53 random bits.
FG_HOST_DEVICE double philox_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  Philox4 w = philox_words(seed, offset, index);
  uint64_t bits = (static_cast<uint64_t>(w.v[0]) << 21) ^ (w.v[1] >> 11);
  return (static_cast<double>(bits & ((1ull << 53) - 1)) + 1.0) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller on two independent uniforms of the same element.
FG_HOST_DEVICE double philox_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  Philox4 w = philox_words(seed, offset, index);
  uint64_t b1 = (static_cast<uint64_t>(w.v[0]) << 21) ^ (w.v[1] >> 11);
  uint64_t b2 = (static_cast<uint64_t>(w.v[2]) << 21) ^ (w.v[3] >> 11);
  double u1 = (static_cast<double>(b1 & ((1ull << 53) - 1)) + 1.0) * (1.0 / 9007199254740992.0);
  double u2 = static_cast<double>(b2 & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// A seeded stream of draws: each draw takes the next offset, so successive
// tensors get independent numbers and the state is two integers to checkpoint.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  uint64_t next_offset() { return offset_++; }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace fg
