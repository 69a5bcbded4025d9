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

trainer::trainer(const trainer_options& options)
    : options_(options), sampler_(options.seed + static_cast<std::uint64_t>(options.shard)) {
  if (options.input_dim <= 0 || options.hidden <= 0 || options.output_dim <= 0 ||
      options.batch <= 0 || options.samples <= 0)
    throw std::invalid_argument(
        "trainer: input_dim, hidden, output_dim, batch and samples must "
        "be positive");
  if (options.shard < 0)
    throw std::invalid_argument("trainer: shard must not be negative, not " +
                                std::to_string(options.shard));
  const int in = options.input_dim, hid = options.hidden, out = options.output_dim;

  // Separate streams for the problem, the shard's samples and the student, so that --hidden does
  // not change the data and every shard learns the same teacher and is judged on the same
  // held-out set.
  std::mt19937_64 problem_rng(options.seed ^ 0x7465616368657221ull);
  teacher t(problem_rng, in, out);
  make_data(problem_rng, t, eval_samples, eval_x_, eval_y_);
  std::mt19937_64 shard_rng((options.seed + static_cast<std::uint64_t>(options.shard)) ^
                            0x7368617264732121ull);
  make_data(shard_rng, t, options.samples, train_x_, train_y_);

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

  order_ = shmckpt::tensor::zeros(shmckpt::dtype::i32, {options.samples});
  auto order = order_.data_as<std::int32_t>();
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), sampler_);
}

void trainer::next_batch() {
  const int in = options_.input_dim, out = options_.output_dim;
  batch_x_.resize(std::size_t(options_.batch) * in);
  batch_y_.resize(std::size_t(options_.batch) * out);
  auto order = order_.data_as<std::int32_t>();
  for (int b = 0; b < options_.batch; ++b) {
    if (cursor_ == order.size()) {
      std::shuffle(order.begin(), order.end(), sampler_);
      cursor_ = 0;
      ++epoch_;
    }
    auto i = static_cast<std::size_t>(order[cursor_++]);
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
      {"rng", rng.str()},
      {"sampler",
       shmckpt::dict{{"order", order_}, {"cursor", static_cast<std::int64_t>(cursor_)}}}};
  if (has_padding_) sd.insert_or_assign("padding", padding_);
  return sd;
}

namespace {

const shmckpt::value& entry(const shmckpt::dict& d, const std::string& path,
                            const std::string& key) {
  const auto* v = d.find(key);
  const auto name = path.empty() ? key : path + "." + key;
  if (!v) throw std::invalid_argument("state dict lacks '" + name + "'");
  return *v;
}

const shmckpt::value& entry_of_kind(const shmckpt::dict& d, const std::string& path,
                                    const std::string& key, shmckpt::kind k) {
  const auto& v = entry(d, path, key);
  if (v.type() != k)
    throw std::invalid_argument("state dict entry '" + (path.empty() ? key : path + "." + key) +
                                "' is " + std::string(shmckpt::kind_name(v.type())) +
                                ", expected " + std::string(shmckpt::kind_name(k)));
  return v;
}

// Checks that `src` can replace `dst` and remembers the copy to make (none when they already
// share memory, as after a template load).
void plan_copy(const shmckpt::tensor& dst, const shmckpt::value& src_value, const std::string& name,
               std::vector<std::pair<shmckpt::tensor, shmckpt::tensor>>& copies) {
  if (src_value.type() != shmckpt::kind::tensor)
    throw std::invalid_argument("state dict entry '" + name + "' is " +
                                std::string(shmckpt::kind_name(src_value.type())) +
                                ", expected tensor");
  const auto& src = src_value.as_tensor();
  if (src.type() != dst.type() || src.shape() != dst.shape())
    throw std::invalid_argument(
        "tensor '" + name + "': state dict has " + std::string(shmckpt::dtype_name(src.type())) +
        " " + shmckpt::format_shape(src.shape()) + ", trainer has " +
        std::string(shmckpt::dtype_name(dst.type())) + " " + shmckpt::format_shape(dst.shape()));
  if (src.data() != dst.data()) copies.emplace_back(dst, src);
}

}  // namespace

void trainer::load_state_dict(const shmckpt::state_dict& sd) {
  using shmckpt::kind;
  // Check everything first, then change the trainer, so that a bad state dict leaves it intact.
  std::vector<std::pair<shmckpt::tensor, shmckpt::tensor>> copies;
  const auto step = entry_of_kind(sd, "", "step", kind::integer).as_int();
  const auto epoch = entry_of_kind(sd, "", "epoch", kind::integer).as_int();
  if (step < 0 || epoch < 0)
    throw std::invalid_argument("state dict has step " + std::to_string(step) + " and epoch " +
                                std::to_string(epoch) + "; both must be non-negative");

  const auto& model = entry_of_kind(sd, "", "model", kind::dict).as_dict();
  const auto& optimizer = entry_of_kind(sd, "", "optimizer", kind::dict).as_dict();
  const auto& state = entry_of_kind(optimizer, "optimizer", "state", kind::dict).as_dict();
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    plan_copy(p.value, entry(model, "model", p.name), std::string("model.") + p.name, copies);
    const auto id = std::to_string(i);
    const auto path = "optimizer.state." + id;
    const auto& s = entry_of_kind(state, "optimizer.state", id, kind::dict).as_dict();
    // Adam's bias correction uses the trainer's step; a per-parameter step that disagrees
    // means the optimizer state belongs to another point of training.
    const auto param_step = entry_of_kind(s, path, "step", kind::integer).as_int();
    if (param_step != step)
      throw std::invalid_argument("'" + path + ".step' is " + std::to_string(param_step) +
                                  " but 'step' is " + std::to_string(step));
    plan_copy(p.exp_avg, entry(s, path, "exp_avg"), path + ".exp_avg", copies);
    plan_copy(p.exp_avg_sq, entry(s, path, "exp_avg_sq"), path + ".exp_avg_sq", copies);
  }

  // Like PyTorch's Optimizer.load_state_dict, the learning rate comes from the checkpoint.
  const auto& groups = entry_of_kind(optimizer, "optimizer", "param_groups", kind::list).as_list();
  if (groups.size() != 1 || groups[0].type() != kind::dict)
    throw std::invalid_argument("'optimizer.param_groups' must be a list of one dict");
  const double lr =
      entry_of_kind(groups[0].as_dict(), "optimizer.param_groups.0", "lr", kind::real).as_double();
  if (!(lr > 0.0))
    throw std::invalid_argument("'optimizer.param_groups.0.lr' is " + std::to_string(lr) +
                                "; it must be positive");

  std::mt19937_64 sampler;
  {
    std::istringstream in(entry_of_kind(sd, "", "rng", kind::string).as_string());
    in >> sampler;
    if (!in) throw std::invalid_argument("'rng' does not hold an mt19937_64 state");
  }
  const auto& sampler_state = entry_of_kind(sd, "", "sampler", kind::dict).as_dict();
  plan_copy(order_, entry(sampler_state, "sampler", "order"), "sampler.order", copies);
  const auto cursor = entry_of_kind(sampler_state, "sampler", "cursor", kind::integer).as_int();
  if (cursor < 0 || cursor > options_.samples)
    throw std::invalid_argument("'sampler.cursor' is " + std::to_string(cursor) + ", outside [0, " +
                                std::to_string(options_.samples) + "]");
  // The permutation indexes the data set: check it really is one before trusting it.
  {
    const auto& order = entry(sampler_state, "sampler", "order").as_tensor();
    std::vector<bool> seen(static_cast<std::size_t>(options_.samples), false);
    for (auto i : order.data_as<std::int32_t>()) {
      if (i < 0 || i >= options_.samples || seen[static_cast<std::size_t>(i)])
        throw std::invalid_argument("'sampler.order' is not a permutation of 0.." +
                                    std::to_string(options_.samples - 1) + " (entry " +
                                    std::to_string(i) + ")");
      seen[static_cast<std::size_t>(i)] = true;
    }
  }
  if (has_padding_) plan_copy(padding_, entry(sd, "", "padding"), "padding", copies);

  for (auto& [dst, src] : copies) std::copy_n(src.data(), src.nbytes(), dst.data());
  options_.lr = lr;
  step_ = step;
  epoch_ = epoch;
  sampler_ = sampler;
  cursor_ = static_cast<std::size_t>(cursor);
}

std::uint64_t trainer::model_and_optimizer_bytes(const trainer_options& o) {
  const std::uint64_t in = o.input_dim, hid = o.hidden, out = o.output_dim;
  const std::uint64_t floats = hid * in + hid + out * hid + out;
  return 3 * floats * sizeof(float);
}

}  // namespace ckpt_demo
