// Comparing two checkpoints: the largest relative difference over the model
// and both Adam states.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "trainer/checkpoint.h"

// max over tensors of ||a-b|| / ||b||; infinity where a NaN shows up.
inline double max_relative_difference(const std::string& a, const std::string& b) {
  fg::trainer::CheckpointData x = fg::trainer::load_checkpoint(a),
                              y = fg::trainer::load_checkpoint(b);
  double worst = 0;
  for (auto [xs, ys] : {std::pair{&x.model, &y.model}, std::pair{&x.exp_avg, &y.exp_avg},
                        std::pair{&x.exp_avg_sq, &y.exp_avg_sq}}) {
    if (xs->size() != ys->size()) return INFINITY;
    for (size_t i = 0; i < xs->size(); ++i) {
      double e = fg::relative_error((*xs)[i].second, (*ys)[i].second);
      worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
  }
  return worst;
}
