// The order in which the flash kernels' 1-D grid walks its causal tiles. A block's work
// falls with its tile's rank (0: the heaviest, the tile that sees the most of the other
// side), so the grid should end on light tiles; and blocks that run together should
// share K and V in L2. The sequence-heads (b * heads + h) are cut into groups of
// near-equal size walked one after the other; inside a group the blocks go rank by rank
// across its heads. One group per head keeps a head's tiles together (L2 at its best, but
// the last head's heavy tile starts near the end: a tail of up to one heavy tile, 14 % of
// the seed's attention); one group walks heads fastest (no tail, K and V of every head in
// flight). Groups of about two waves of blocks keep most of both. A persistent kernel (the
// Hopper forward) hands out the walk's tiles in this order from a counter.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/dtype.h"

namespace fg::ops::detail {

struct GridTile {
  int rank;      // 0: the heaviest tile of a head
  int seq_head;  // b * heads + h
};

// The tile of block `block` in a grid of tiles * seq_heads blocks cut into `groups` groups.
FG_HOST_DEVICE GridTile grid_tile(int64_t block, int tiles, int seq_heads, int groups) {
  const int64_t before = block / tiles;  // whole heads' worth of blocks before this one
  // The group g with first(g) <= before < first(g + 1), first(g) = g * seq_heads / groups.
  const int64_t g = ((before + 1) * groups + seq_heads - 1) / seq_heads - 1;
  const int64_t first = g * seq_heads / groups;
  const int64_t size = (g + 1) * seq_heads / groups - first;
  const int64_t r = block - first * tiles;
  return {static_cast<int>(r / size), static_cast<int>(first + r % size)};
}

// How many groups: each about two waves of blocks (one block per SM), at least one head each.
inline int grid_groups(int tiles, int seq_heads, int sms) {
  const int64_t blocks = int64_t{tiles} * seq_heads;
  return static_cast<int>(std::clamp<int64_t>(blocks / (2 * int64_t{sms}), 1, seq_heads));
}

}  // namespace fg::ops::detail
