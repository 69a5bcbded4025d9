#include "trainer.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ckpt_demo {

namespace {

constexpr int teacher_hidden = 32;
constexpr int eval_samples = 1024;
constexpr double beta1 = 0.9;
constexpr double beta2 = 0.999;
constexpr double adam_eps = 1e-8;
constexpr double weight_decay = 0.0;

std::vector<float> normal_vector(std::mt19937_64& rng, std::size_t n, double stddev) {
  std::normal_distribution<float> dist(0.0f, static_cast<float>(stddev));
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// The teacher: a fixed tanh network whose outputs are the regression targets.
struct teacher {
  int in, out;
  std::vector<float> w1, b1, w2, b2;

  teacher(std::mt19937_64& rng, int in_dim, int out_dim)
      : in(in_dim),
        out(out_dim),
        w1(normal_vector(rng, std::size_t(teacher_hidden) * in_dim, 1.0 / std::sqrt(in_dim))),
        b1(normal_vector(rng, teacher_hidden, 0.1)),
        w2(normal_vector(rng, std::size_t(out_dim) * teacher_hidden,
                         1.0 / std::sqrt(teacher_hidden))),
        b2(normal_vector(rng, out_dim, 0.1)) {}

  void label(const float* x, float* y) const {
    float h[teacher_hidden];
    for (int j = 0; j < teacher_hidden; ++j) {
      float z = b1[j];
      for (int d = 0; d < in; ++d) z += w1[std::size_t(j) * in + d] * x[d];
      h[j] = std::tanh(z);
    }
    for (int o = 0; o < out; ++o) {
      float z = b2[o];
      for (int j = 0; j < teacher_hidden; ++j) z += w2[std::size_t(o) * teacher_hidden + j] * h[j];
      y[o] = z;
    }
  }
};

void make_data(std::mt19937_64& rng, const teacher& t, int n, std::vector<float>& x,
               std::vector<float>& y) {
  x = normal_vector(rng, std::size_t(n) * t.in, 1.0);
  y.assign(std::size_t(n) * t.out, 0.0f);
  std::normal_distribution<float> noise(0.0f, 0.01f);
  for (int i = 0; i < n; ++i) {
    t.label(&x[std::size_t(i) * t.in], &y[std::size_t(i) * t.out]);
    for (int o = 0; o < t.out; ++o) y[std::size_t(i) * t.out + o] += noise(rng);
  }
}

// PyTorch's nn.Linear initialisation: uniform in ±1/sqrt(fan_in).
shmckpt::tensor linear_init(std::mt19937_64& rng, std::vector<std::int64_t> shape, int fan_in) {
  auto t = shmckpt::tensor::zeros(shmckpt::dtype::f32, std::move(shape));
  float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (auto& v : t.data_as<float>()) v = dist(rng);
  return t;
}

}  // namespace

trainer::trainer(const trainer_options& options) : options_(options), sampler_(options.seed) {
  if (options.input_dim <= 0 || options.hidden <= 0 || options.output_dim <= 0 ||
      options.batch <= 0 || options.samples <= 0)
    throw std::invalid_argument(
        "trainer: input_dim, hidden, output_dim, batch and samples must "
        "be positive");
  const int in = options.input_dim, hid = options.hidden, out = options.output_dim;

  // Separate streams for the problem and the student so --hidden does not change the data.
  std::mt19937_64 data_rng(options.seed ^ 0x7465616368657221ull);
  teacher t(data_rng, in, out);
  make_data(data_rng, t, options.samples, train_x_, train_y_);
  make_data(data_rng, t, eval_samples, eval_x_, eval_y_);

  std::mt19937_64 init_rng(options.seed ^ 0x73747564656e7421ull);
  auto add = [&](const char* name, std::vector<std::int64_t> shape, int fan_in) {
    param p{name,
            linear_init(init_rng, shape, fan_in),
            shmckpt::tensor::zeros(shmckpt::dtype::f32, shape),
            shmckpt::tensor::zeros(shmckpt::dtype::f32, shape),
            {}};
    p.grad.assign(static_cast<std::size_t>(p.value.numel()), 0.0f);
    params_.push_back(std::move(p));
  };
  add("fc1.weight", {hid, in}, in);
  add("fc1.bias", {hid}, in);
  add("fc2.weight", {out, hid}, hid);
  add("fc2.bias", {out}, hid);

  if (auto n = static_cast<std::int64_t>(options.padding_bytes / sizeof(float)); n > 0) {
    padding_ = shmckpt::tensor::zeros(shmckpt::dtype::f32, {n});
    auto p = padding_.data_as<float>();
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>(i % 1021) * 1e-3f;
    has_padding_ = true;
  }

  order_.resize(static_cast<std::size_t>(options.samples));
  std::iota(order_.begin(), order_.end(), 0);
  std::shuffle(order_.begin(), order_.end(), sampler_);
}

void trainer::next_batch() {
  const int in = options_.input_dim, out = options_.output_dim;
  batch_x_.resize(std::size_t(options_.batch) * in);
  batch_y_.resize(std::size_t(options_.batch) * out);
  for (int b = 0; b < options_.batch; ++b) {
    if (cursor_ == order_.size()) {
      std::shuffle(order_.begin(), order_.end(), sampler_);
      cursor_ = 0;
      ++epoch_;
    }
    auto i = static_cast<std::size_t>(order_[cursor_++]);
    std::copy_n(&train_x_[i * in], in, &batch_x_[std::size_t(b) * in]);
    std::copy_n(&train_y_[i * out], out, &batch_y_[std::size_t(b) * out]);
  }
}

double trainer::forward(const float* x, const float* y, int n) {
  const int in = options_.input_dim, hid = options_.hidden, out = options_.output_dim;
  auto w1 = params_[0].value.data_as<float>(), b1 = params_[1].value.data_as<float>();
  auto w2 = params_[2].value.data_as<float>(), b2 = params_[3].value.data_as<float>();
  hidden_.resize(std::size_t(n) * hid);
  out_.resize(std::size_t(n) * out);
  double loss = 0.0;
  for (int b = 0; b < n; ++b) {
    const float* xb = x + std::size_t(b) * in;
    float* hb = &hidden_[std::size_t(b) * hid];
    for (int j = 0; j < hid; ++j) {
      const float* w = &w1[std::size_t(j) * in];
      float z = b1[j];
      for (int d = 0; d < in; ++d) z += w[d] * xb[d];
      hb[j] = std::tanh(z);
    }
    for (int o = 0; o < out; ++o) {
      const float* w = &w2[std::size_t(o) * hid];
      float z = b2[o];
      for (int j = 0; j < hid; ++j) z += w[j] * hb[j];
      out_[std::size_t(b) * out + o] = z;
      double e = double(z) - y[std::size_t(b) * out + o];
      loss += e * e;
    }
  }
  return loss / (double(n) * out);
}

void trainer::backward(const float* x, const float* y, int n) {
  const int in = options_.input_dim, hid = options_.hidden, out = options_.output_dim;
  auto w2 = params_[2].value.data_as<float>();
  auto& gw1 = params_[0].grad;
  auto& gb1 = params_[1].grad;
  auto& gw2 = params_[2].grad;
  auto& gb2 = params_[3].grad;
  for (auto& p : params_) std::fill(p.grad.begin(), p.grad.end(), 0.0f);

  d_out_.resize(std::size_t(n) * out);
  d_hidden_.resize(std::size_t(n) * hid);
  const float scale = 2.0f / (float(n) * out);  // d(mean squared error)/d(output)
  for (std::size_t k = 0; k < d_out_.size(); ++k) d_out_[k] = scale * (out_[k] - y[k]);

  for (int b = 0; b < n; ++b) {
    const float* dob = &d_out_[std::size_t(b) * out];
    const float* hb = &hidden_[std::size_t(b) * hid];
    float* dhb = &d_hidden_[std::size_t(b) * hid];
    std::fill(dhb, dhb + hid, 0.0f);
    for (int o = 0; o < out; ++o) {
      const float g = dob[o];
      gb2[o] += g;
      float* gw = &gw2[std::size_t(o) * hid];
      const float* w = &w2[std::size_t(o) * hid];
      for (int j = 0; j < hid; ++j) {
        gw[j] += g * hb[j];
        dhb[j] += g * w[j];
      }
    }
    for (int j = 0; j < hid; ++j) dhb[j] *= 1.0f - hb[j] * hb[j];  // tanh'
  }
  for (int b = 0; b < n; ++b) {
    const float* xb = x + std::size_t(b) * in;
    const float* dhb = &d_hidden_[std::size_t(b) * hid];
    for (int j = 0; j < hid; ++j) {
      const float g = dhb[j];
      gb1[j] += g;
      float* gw = &gw1[std::size_t(j) * in];
      for (int d = 0; d < in; ++d) gw[d] += g * xb[d];
    }
  }
}

void trainer::adam_update() {
  const double t = double(step_);  // already incremented: the first update uses t = 1
  const float bias1 = static_cast<float>(1.0 - std::pow(beta1, t));
  const float bias2 = static_cast<float>(1.0 - std::pow(beta2, t));
  const float lr = static_cast<float>(options_.lr);
  for (auto& p : params_) {
    auto w = p.value.data_as<float>();
    auto m = p.exp_avg.data_as<float>();
    auto v = p.exp_avg_sq.data_as<float>();
    for (std::size_t i = 0; i < w.size(); ++i) {
      float g = p.grad[i] + static_cast<float>(weight_decay) * w[i];
      m[i] = float(beta1) * m[i] + float(1.0 - beta1) * g;
      v[i] = float(beta2) * v[i] + float(1.0 - beta2) * g * g;
      float m_hat = m[i] / bias1, v_hat = v[i] / bias2;
      w[i] -= lr * m_hat / (std::sqrt(v_hat) + float(adam_eps));
    }
  }
}

double trainer::train_step() {
  next_batch();
  double loss = forward(batch_x_.data(), batch_y_.data(), options_.batch);
  backward(batch_x_.data(), batch_y_.data(), options_.batch);
  ++step_;
  adam_update();
  if (has_padding_) {
    // Stand-in for the rest of a large model changing every step.
    auto p = padding_.data_as<float>();
    p[static_cast<std::size_t>(step_ * 2654435761ll) % p.size()] = static_cast<float>(step_);
  }
  return loss;
}

double trainer::eval_loss() {
  return forward(eval_x_.data(), eval_y_.data(), eval_samples);
}

shmckpt::state_dict trainer::state_dict() const {
  shmckpt::dict model, state;
  shmckpt::list param_ids;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    model.insert_or_assign(p.name, p.value);
    state.insert_or_assign(
        std::to_string(i),
        shmckpt::dict{{"step", step_}, {"exp_avg", p.exp_avg}, {"exp_avg_sq", p.exp_avg_sq}});
    param_ids.emplace_back(static_cast<std::int64_t>(i));
  }
  shmckpt::dict group{{"lr", options_.lr},
                      {"betas", shmckpt::list{beta1, beta2}},
                      {"eps", adam_eps},
                      {"weight_decay", weight_decay},
                      {"params", std::move(param_ids)}};
  std::ostringstream rng;
  rng << sampler_;
  shmckpt::state_dict sd{
      {"model", std::move(model)},
      {"optimizer", shmckpt::dict{{"state", std::move(state)},
                                  {"param_groups", shmckpt::list{std::move(group)}}}},
      {"step", step_},
      {"epoch", epoch_},
      {"rng", rng.str()}};
  if (has_padding_) sd.insert_or_assign("padding", padding_);
  return sd;
}

std::uint64_t trainer::model_and_optimizer_bytes(const trainer_options& o) {
  const std::uint64_t in = o.input_dim, hid = o.hidden, out = o.output_dim;
  const std::uint64_t floats = hid * in + hid + out * hid + out;
  return 3 * floats * sizeof(float);
}

}  // namespace ckpt_demo
