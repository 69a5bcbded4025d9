// ckpt-demo/trainer.hpp — a small but real trainer whose state the demo checkpoints.
//
// A two-layer perceptron (tanh hidden layer, linear output) learns to imitate a fixed, randomly
// drawn "teacher" network of the same shape family on synthetic inputs: mean-squared-error
// regression trained by hand-written backpropagation and the Adam optimizer. Everything is
// deterministic for a given seed and shard (std::mt19937_64).
//
// Data parallelism, as a toy: every replica (rank) draws the same teacher, the same held-out set
// and the same initial weights from `seed`, but its own training samples and batch order from
// `seed + shard`. Replicas do not exchange gradients, so they drift apart; what matters for the
// demo is that each rank holds a full model of its own and checkpoints it.
//
// Ownership. The parameters, the optimizer moments, the sampler's permutation and the optional
// padding are shmckpt tensors with private memory owned by the trainer. `state_dict()` returns a
// tree of *views* of them (a tensor copy shares its bytes), laid out like a PyTorch checkpoint:
//
//   model.{fc1,fc2}.{weight,bias}                      F32
//   optimizer.state.<i>.{step, exp_avg, exp_avg_sq}    per parameter i, in model order
//   optimizer.param_groups[0].{lr, betas, eps, weight_decay, params}
//   step, epoch
//   rng                                                the sampler's mt19937_64 state as text
//   sampler.{order, cursor}                            this epoch's permutation (I32) and position
//   padding                                            F32, when asked for
//
// Everything that decides the next step is in there, so a trainer restored from a checkpoint of
// step N continues bit-for-bit as the trainer that wrote it would have.
//
// The padding stands in for the bulk of a large model so the checkpoint has a realistic size;
// training touches one of its elements per step so consecutive checkpoints really differ.
//
// Thread safety: none; one thread drives a trainer. The views returned by state_dict() change
// with the next train_step() and with load_state_dict().
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "shmckpt/state_dict.hpp"

namespace ckpt_demo {

struct trainer_options {
  /// Width of the input vectors.
  int input_dim = 64;
  /// Width of the student's hidden layer (the teacher's is fixed at 32).
  int hidden = 256;
  /// Width of the regression target.
  int output_dim = 8;
  /// Samples per gradient step.
  int batch = 256;
  /// Size of the synthetic training set; one pass over it is an epoch.
  int samples = 16384;
  /// Adam learning rate.
  double lr = 1e-2;
  /// Seeds the teacher, the held-out set and the student's initialisation; `seed + shard` seeds
  /// the training samples and the batch sampler.
  std::uint64_t seed = 42;
  /// This replica's data shard (its rank in a data-parallel job).
  int shard = 0;
  /// Bytes of F32 padding to add to the state dict (rounded down to whole floats).
  std::uint64_t padding_bytes = 0;
};

class trainer {
 public:
  /// Draws the teacher, the data set and the student's initial weights.
  /// Throws std::invalid_argument for non-positive sizes.
  explicit trainer(const trainer_options& options);

  /// One Adam step on the next minibatch; returns that minibatch's loss (before the update).
  double train_step();

  /// Mean-squared error on a fixed held-out set drawn from the same teacher.
  double eval_loss();

  /// Views of the whole training state (see the file comment).
  shmckpt::state_dict state_dict() const;

  /// Restores the whole training state from `sd`, laid out as state_dict() lays it out (for
  /// instance the state of a checkpoint read with state_dict() as the template, whose tensors
  /// then already are this trainer's and are not copied again). Throws std::invalid_argument
  /// naming the key for a missing entry, a wrong kind, dtype or shape, or a value out of range
  /// (the sampler's permutation is checked, since it indexes the data set); the trainer is
  /// unchanged then unless `sd` shared its tensors. As PyTorch's optimizers do, it also takes the
  /// learning rate from `sd`.
  void load_state_dict(const shmckpt::state_dict& sd);

  /// Bytes of the state dict's tensors other than padding (parameters and both Adam moments)
  /// for a trainer built with `options`; used to size the padding.
  static std::uint64_t model_and_optimizer_bytes(const trainer_options& options);

  /// Steps taken so far.
  std::int64_t step() const noexcept { return step_; }
  /// Completed passes over the training set.
  std::int64_t epoch() const noexcept { return epoch_; }
  /// The Adam learning rate in use (the option, or the checkpoint's after load_state_dict).
  double lr() const noexcept { return options_.lr; }

 private:
  struct param {
    const char* name;
    shmckpt::tensor value, exp_avg, exp_avg_sq;
    std::vector<float> grad;
  };

  // Forward pass on `n` rows of `x`; leaves the hidden activations in hidden_ and the
  // outputs in out_, and returns the MSE against `y`.
  double forward(const float* x, const float* y, int n);
  void backward(const float* x, const float* y, int n);
  void adam_update();
  void next_batch();

  trainer_options options_;
  std::mt19937_64 sampler_;
  std::vector<float> train_x_, train_y_, eval_x_, eval_y_;
  shmckpt::tensor order_;   // I32 [samples]: the current epoch's sample permutation
  std::size_t cursor_ = 0;  // next position in order_
  std::vector<float> batch_x_, batch_y_, hidden_, out_, d_out_, d_hidden_;
  std::vector<param> params_;  // fc1.weight, fc1.bias, fc2.weight, fc2.bias
  shmckpt::tensor padding_;
  bool has_padding_ = false;
  std::int64_t step_ = 0;
  std::int64_t epoch_ = 0;
};

}  // namespace ckpt_demo
