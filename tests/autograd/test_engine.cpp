// The backward engine: accumulation for reused inputs, multi-output nodes,
// NoGradGuard, grad-ready hooks, gradients landing in a leaf of another dtype
// or written into its buffer by the backward itself.
#include <gtest/gtest.h>

#include "autograd/function.h"
#include "autograd/functions.h"
#include "ops/add/add.h"
#include "ops/gemm/gemm.h"
#include "ops/grad_norm/grad_norm.h"
#include "test_util.h"

using namespace fg;
using namespace fg::ag;

namespace {
Variable leaf(std::vector<double> v) {
  Shape s{static_cast<int64_t>(v.size())};
  return Variable(Tensor::from_vector(v, s, DType::F64), true);
}

// y = a * 3 as a recorded function, to have a non-identity backward.
Variable times3(const Variable& a) {
  auto v = a.data().to_vector();
  for (double& x : v) x *= 3;
  return record("times3", {a}, {Tensor::from_vector(v, a.shape(), a.dtype())},
                [](const std::vector<Tensor>& g) {
                  auto gv = g[0].to_vector();
                  for (double& x : gv) x *= 3;
                  return std::vector<Tensor>{Tensor::from_vector(gv, g[0].shape(), g[0].dtype())};
                })[0];
}
}  // namespace

TEST(Engine, AccumulatesGradientsOfReusedInputs) {
  Variable a = leaf({1, 2}), b = leaf({5, 7});
  // out = (a + b) + a*3 + a: a is used three times, b once.
  Variable out = add(add(add(a, b), times3(a)), a);
  out.backward(Tensor::ones({2}, DType::F64));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{5, 5}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{1, 1}));
}

// zero_grad_in_place keeps the buffer (a CUDA graph's pointers stay valid) and
// the next backward overwrites it; a leaf no gradient reaches still reads zero.
TEST(Engine, ZeroGradInPlaceKeepsTheBuffer) {
  Variable a = leaf({1, 2}), b = leaf({5, 7}), unused = leaf({3, 3});
  auto step = [&] {
    Variable out = add(add(times3(a), a), b);
    out.backward(Tensor::ones({2}, DType::F64));
  };
  step();
  unused.set_grad(Tensor::from_vector({9, 9}, {2}, DType::F64));
  const void* buffer = a.grad().raw_data();
  for (Variable* v : {&a, &b, &unused}) v->zero_grad_in_place();
  EXPECT_TRUE(a.grad_zeroed_in_place());
  step();
  EXPECT_EQ(a.grad().raw_data(), buffer);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{4, 4}));  // not 8: overwritten
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{1, 1}));
  EXPECT_FALSE(a.grad_zeroed_in_place());
  EXPECT_TRUE(unused.grad_zeroed_in_place());  // the caller zeroes what backward never reached
}

// A cast into a leaf hands its gradient over unconverted; the leaf converts it as
// it lands (fresh, in place over a zeroed buffer, and added to an earlier one),
// and a cast of a non-leaf converts in its own backward.
TEST(Engine, CastGradientsLandInTheLeafsDtype) {
  Variable a = leaf({1.5, -2});
  auto step = [&] {
    Variable h = cast(a, DType::F32);                                  // into the leaf
    Variable h2 = cast(cast(times3(a), DType::F32), DType::F64);      // through a non-leaf
    Variable out = add(cast(add(h, times3(h)), DType::F64), h2);       // d/da = 4 + 3
    EXPECT_EQ(out.dtype(), DType::F64);
    out.backward(Tensor::from_vector({1, 0.25}, {2}, DType::F64));
  };
  step();
  EXPECT_EQ(a.grad().dtype(), DType::F64);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{7, 1.75}));
  step();  // added to the gradient already there
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{14, 3.5}));
  const void* buffer = a.grad().raw_data();
  a.zero_grad_in_place();
  step();  // copied over the zeroed buffer
  EXPECT_EQ(a.grad().raw_data(), buffer);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{7, 1.75}));
  // A given converted copy is the forward's value itself, with the same backward.
  Tensor copy = a.data().to(DType::F32);
  a.zero_grad();
  Variable c = cast(a, copy);
  EXPECT_EQ(c.data().raw_data(), copy.raw_data());
  times3(c).backward(Tensor::ones({2}, DType::F32));
  EXPECT_EQ(a.grad().dtype(), DType::F64);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{3, 3}));
  EXPECT_FG_ERROR(cast(a, Tensor::zeros({3})), "cast: the converted copy is (3,) f32 cpu");
}

// y = 2 * cast(a) whose backward writes 2 * dy into a's f64 buffer itself when
// a has one (adding when it counts), as weight GEMMs do; else returns it.
Variable twice_of_cast(const Variable& w) {
  Variable master = cast_source(w);
  EXPECT_TRUE(master.defined());
  Tensor y = Tensor::from_vector(w.data().to_vector(), w.shape(), w.dtype());
  ops::scale_grads({y}, 2.0);
  return record("twice", {master}, {y}, [master](const std::vector<Tensor>& g) {
    GradBuffer into = leaf_grad_buffer(master);
    Tensor d = g[0].to(DType::F64);
    ops::scale_grads({d}, 2.0);
    if (!into.buffer.defined()) return std::vector<Tensor>{d};
    if (into.add)
      ops::add_inplace(into.buffer, d);
    else
      into.buffer.copy_(d);
    return std::vector<Tensor>{into.buffer};
  })[0];
}

TEST(Engine, BackwardWritesIntoTheLeafsBuffer) {
  Variable a = leaf({1.5, -2});
  EXPECT_FALSE(cast_source(a).defined());                    // a leaf
  EXPECT_FALSE(cast_source(cast(times3(a), DType::F32)).defined());  // a cast of a non-leaf
  EXPECT_FALSE(leaf_grad_buffer(a).buffer.defined());        // no buffer yet
  auto step = [&] {
    Variable y = add(twice_of_cast(cast(a, DType::F32)), cast(a, DType::F32));  // d/da = 3
    y.backward(Tensor::from_vector({1, 0.5}, {2}, DType::F32));
  };
  step();  // returned as usual: no buffer yet
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{3, 1.5}));
  const void* buffer = a.grad().raw_data();
  step();  // the buffer counts: added to in place
  EXPECT_EQ(a.grad().raw_data(), buffer);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{6, 3}));
  a.zero_grad_in_place();
  GradBuffer stale = leaf_grad_buffer(a);
  EXPECT_EQ(stale.buffer.raw_data(), buffer);
  EXPECT_FALSE(stale.add);
  step();  // overwritten in place, and no longer counted as zero
  EXPECT_EQ(a.grad().raw_data(), buffer);
  EXPECT_FALSE(a.grad_zeroed_in_place());
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{3, 1.5}));
}

// The embedding of a table cast from a parameter sums its rows straight into the
// parameter's wider buffer, beside another use of the same cast (a tied head).
TEST(Engine, EmbeddingSumsIntoTheParametersBuffer) {
  Variable table(Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}, DType::F64), true);
  Tensor ids = Tensor::from_ints({2, 0, 2}, {3});
  auto step = [&] {
    Variable w = cast(table, DType::F32);
    Variable rows = embedding(w, ids);  // (3, 2)
    // d/dtable = 3 (the tied use) + row 0: dy[1] = 1, row 2: dy[0] + dy[2] = 2
    backward({rows, times3(w)}, {Tensor::ones({3, 2}), Tensor::ones({3, 2})});
  };
  step();  // no buffer yet: returned as usual
  EXPECT_EQ(table.grad().to_vector(), (std::vector<double>{4, 4, 3, 3, 5, 5}));
  const void* buffer = table.grad().raw_data();
  step();  // added to in place
  EXPECT_EQ(table.grad().raw_data(), buffer);
  EXPECT_EQ(table.grad().to_vector(), (std::vector<double>{8, 8, 6, 6, 10, 10}));
  table.zero_grad_in_place();
  step();  // overwritten in place
  EXPECT_EQ(table.grad().raw_data(), buffer);
  EXPECT_EQ(table.grad().to_vector(), (std::vector<double>{4, 4, 3, 3, 5, 5}));
}

// With a GemmBatch open the weight product of linear waits in the queue: the parameter's
// grad-ready hook runs only once it has run and sees the finished gradient, and another
// backward writing the same buffer (twice_of_cast) is ordered after the queued product.
TEST(Engine, BatchedWeightGradientsLandBeforeTheHooks) {
  Variable w(Tensor::from_vector({1, -2, 0.5, 3, 1, -1}, {2, 3}, DType::F64), true);
  Variable x(Tensor::from_vector({1, 2, 3, -1, 0.5, 2}, {2, 3}, DType::F32));
  Tensor dy = Tensor::from_vector({1, -1, 0.5, 2}, {2, 2}, DType::F32);
  int calls = 0;
  std::vector<double> seen;
  w.register_grad_ready_hook([&](Variable& v) {
    ++calls;
    seen = v.grad().to_vector();
  });
  // d/dw = dy^T x (linear), + 2 through twice_of_cast of another cast of w
  auto step = [&](bool both) {
    Variable y = linear(x, cast(w, DType::F32));  // (2, 2)
    if (!both) return y.backward(dy);
    Variable t = twice_of_cast(cast(w, DType::F32));  // (2, 3): d/dw += 2 * ones
    backward({t, y}, {Tensor::ones({2, 3}), dy});     // the engine runs linear's node first
  };
  for (bool both : {false, true}) {
    w.zero_grad();
    step(both);  // no buffer yet: returned as usual, unbatched
    const std::vector<double> want = w.grad().to_vector();
    w.zero_grad_in_place();
    calls = 0;
    {
      fg::ops::GemmBatch batch;
      step(both);
      // Alone the product waits, and so does the hook; beside twice_of_cast, whose write
      // ran the queue first, the buffer is final when the hook is due.
      EXPECT_EQ(calls, both ? 1 : 0);
      batch.flush();
    }
    EXPECT_EQ(calls, 1) << both;
    EXPECT_EQ(seen, want) << both;
    EXPECT_EQ(w.grad().to_vector(), want) << both;
  }
}

TEST(Engine, DiamondRunsEachNodeOnce) {
  Variable a = leaf({1});
  Variable m = times3(a);
  Variable out = add(times3(m), m);  // d/da = 3*3 + 3
  out.backward();
  EXPECT_EQ(a.grad().item(), 12.0);
}

TEST(Engine, NoGradGuardRecordsNothing) {
  Variable a = leaf({1, 2});
  {
    NoGradGuard guard;
    Variable y = times3(a);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
  }
  EXPECT_TRUE(times3(a).requires_grad());
}

TEST(Engine, MultiOutputNodeGetsZerosForUnusedOutputs) {
  Variable a = leaf({2, 3});
  auto outs = record("split2", {a}, {a.data().clone(), a.data().clone()},
                     [](const std::vector<Tensor>& g) {
                       EXPECT_TRUE(g[1].defined());  // the engine filled it with zeros
                       EXPECT_EQ(fg::sum(g[1]), 0.0);
                       return std::vector<Tensor>{g[0]};
                     });
  outs[0].backward(Tensor::ones({2}, DType::F64));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{1, 1}));
}

TEST(Engine, GradReadyHookFiresOnceAfterLastContribution) {
  Variable a = leaf({1}), b = leaf({1});
  int calls = 0;
  double seen = 0;
  a.register_grad_ready_hook([&](Variable& v) {
    ++calls;
    seen = v.grad().item();
  });
  add(add(a, b), times3(a)).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, 4.0);
}

TEST(Engine, BackwardErrors) {
  Variable a = leaf({1, 2});
  EXPECT_FG_ERROR(times3(a).backward(), "one-element");
  Variable c(Tensor::ones({1}), false);
  EXPECT_FG_ERROR(c.backward(), "does not require grad");
}
