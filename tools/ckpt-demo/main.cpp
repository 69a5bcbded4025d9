// ckpt-demo — trains a small model and checkpoints it asynchronously through shmckpt.
//
// The trainer (trainer.hpp) is a real two-layer perceptron trained with Adam. Every --every steps
// the demo hands its state dict to a long-lived checkpoint child (this same executable, re-entered
// through run_worker_if_requested) and keeps training while the child writes it durably to
// DIR/step_<N>. At most one write is in flight: a save first waits for the previous one. For each
// checkpoint it reports how long training stalled (the wait for the previous write plus write()'s
// copy into shared memory) and how long the write took to become durable. At the end it reloads
// the last checkpoint and checks that it equals a deep copy taken when it was saved.
//
// Exit status: 0 when the last checkpoint verified, 1 on any error (including the checkpoint child
// dying: the library's "Child process terminated unexpectedly") or a verification mismatch, 2 for
// bad command-line usage.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <future>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "shmckpt/checkpoint_process.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/worker.hpp"
#include "trainer.hpp"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace {

using steady = std::chrono::steady_clock;
constexpr double mib = 1024.0 * 1024.0;

double ms_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

struct demo_options {
  std::string dir = "ckpt-demo-out";
  std::int64_t steps = 300;
  std::int64_t every = 50;
  double mib = 64.0;
  // Step after whose save the checkpoint child is killed; 0: never.
  std::int64_t inject_child_kill = 0;
  ckpt_demo::trainer_options train;
};

// Returns nullopt when --help was printed. Throws po::error for bad usage.
std::optional<demo_options> parse_command_line(int argc, char** argv) {
  demo_options o;
  po::options_description desc(
      "Usage: ckpt-demo [options]\n\n"
      "Trains a two-layer MLP with Adam on synthetic regression data and checkpoints its state\n"
      "asynchronously through a shmckpt checkpoint child, then verifies the last checkpoint.\n\n"
      "Options");
  // clang-format off
  desc.add_options()
    ("help,h", "print this help and exit")
    ("dir", po::value<std::string>(&o.dir)->value_name("DIR")->default_value(o.dir),
     "checkpoint root; checkpoints go to DIR/step_<N>")
    ("steps", po::value<std::int64_t>(&o.steps)->value_name("N")->default_value(o.steps),
     "training steps")
    ("every", po::value<std::int64_t>(&o.every)->value_name("K")->default_value(o.every),
     "checkpoint every K steps (K > steps: train only, no checkpoint child)")
    ("mib", po::value<double>(&o.mib)->value_name("M")->default_value(o.mib),
     "approximate state-dict size in MiB, reached with F32 padding (0: no padding)")
    ("hidden", po::value<int>(&o.train.hidden)->value_name("H")->default_value(o.train.hidden),
     "hidden-layer width of the model")
    ("batch", po::value<int>(&o.train.batch)->value_name("B")->default_value(o.train.batch),
     "minibatch size")
    ("lr", po::value<double>(&o.train.lr)->value_name("LR")->default_value(o.train.lr, "0.01"),
     "Adam learning rate")
    ("seed", po::value<std::uint64_t>(&o.train.seed)->value_name("SEED")->default_value(o.train.seed),
     "seed of the data, the initial weights and the batch sampler")
    ("inject-child-kill", po::value<std::int64_t>(&o.inject_child_kill)->value_name("STEP"),
     "fault injection for tests: save at STEP and SIGKILL the checkpoint child right after "
     "write() returns; the demo must then fail with the library's error (at the latest at the "
     "next checkpoint or at the end)");
  // clang-format on
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << desc << '\n';
    return std::nullopt;
  }
  po::notify(vm);
  if (o.steps < 1) throw po::error("--steps must be at least 1, not " + std::to_string(o.steps));
  if (o.every < 1) throw po::error("--every must be at least 1, not " + std::to_string(o.every));
  if (!(o.mib >= 0.0 && o.mib <= 1024.0 * 1024.0))
    throw po::error("--mib must be between 0 and 1048576, not " + std::to_string(o.mib));
  if (o.train.hidden < 1 || o.train.batch < 1)
    throw po::error("--hidden and --batch must be at least 1");
  if (!(o.train.lr > 0.0)) throw po::error("--lr must be positive");
  if (vm.count("inject-child-kill") && (o.inject_child_kill < 1 || o.inject_child_kill > o.steps))
    throw po::error("--inject-child-kill must name a step between 1 and --steps (" +
                    std::to_string(o.steps) + "), not " + std::to_string(o.inject_child_kill));
  return o;
}

// The first place where two values differ, as "key.path (reason)"; nullopt when equal.
std::optional<std::string> first_difference(const shmckpt::value& a, const shmckpt::value& b,
                                            const std::string& path);

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::optional<std::string> first_difference(const shmckpt::dict& a, const shmckpt::dict& b,
                                            const std::string& path) {
  auto ia = a.begin(), ib = b.begin();
  for (; ia != a.end() && ib != b.end(); ++ia, ++ib) {
    if (ia->first != ib->first)
      return join(path, ia->first) + " (key order differs: '" + ia->first + "' vs '" + ib->first +
             "')";
    if (auto d = first_difference(ia->second, ib->second, join(path, ia->first))) return d;
  }
  if (ia != a.end()) return join(path, ia->first) + " (missing from the saved state)";
  if (ib != b.end()) return join(path, ib->first) + " (missing from the reloaded checkpoint)";
  return std::nullopt;
}

std::optional<std::string> first_difference(const shmckpt::value& a, const shmckpt::value& b,
                                            const std::string& path) {
  if (a.type() != b.type())
    return path + " (" + std::string(shmckpt::kind_name(a.type())) + " vs " +
           std::string(shmckpt::kind_name(b.type())) + ")";
  switch (a.type()) {
    case shmckpt::kind::dict:
      return first_difference(a.as_dict(), b.as_dict(), path);
    case shmckpt::kind::list: {
      const auto &la = a.as_list(), &lb = b.as_list();
      if (la.size() != lb.size())
        return path + " (list of " + std::to_string(la.size()) + " vs " +
               std::to_string(lb.size()) + " items)";
      for (std::size_t i = 0; i < la.size(); ++i)
        if (auto d = first_difference(la[i], lb[i], join(path, std::to_string(i)))) return d;
      return std::nullopt;
    }
    case shmckpt::kind::tensor: {
      const auto &ta = a.as_tensor(), &tb = b.as_tensor();
      if (ta.type() != tb.type())
        return path + " (dtype " + std::string(shmckpt::dtype_name(ta.type())) + " vs " +
               std::string(shmckpt::dtype_name(tb.type())) + ")";
      if (ta.shape() != tb.shape()) return path + " (shapes differ)";
      if (!(ta == tb)) return path + " (tensor bytes differ)";
      return std::nullopt;
    }
    default:
      if (!(a == b)) return path + " (values differ)";
      return std::nullopt;
  }
}

// Fault injected into a save, for tests.
enum class fault { none, kill_child };

// Saves asynchronously with at most one write in flight and reports each checkpoint's costs.
class async_checkpointer {
 public:
  async_checkpointer(shmckpt::checkpoint_process& proc, fs::path root)
      : proc_(proc), root_(std::move(root)) {}

  // Saves the trainer's current state to root/step_<N>. Returns once write() has copied it
  // into shared memory; training may go on while the child writes. With fault::kill_child the
  // checkpoint child is sent SIGKILL the moment write() returns (fault injection for tests).
  void save(const ckpt_demo::trainer& tr, fault inject = fault::none) {
    const auto entered = steady::now();
    settle(/*block=*/true, tr.step());  // at most one write in flight
    const auto issued = steady::now();
    auto sd = tr.state_dict();
    auto step = tr.step();
    auto future = proc_.write(sd, path_for(step), shmckpt::kwargs{{"step", std::to_string(step)}});
    const auto returned = steady::now();
    if (inject == fault::kill_child) {
      const int pid = proc_.child_pid();
      const int killed = ::kill(pid, SIGKILL);
      std::fprintf(stderr,
                   "ckpt-demo: fault injection: SIGKILL to checkpoint child pid %d right after "
                   "write() of step %lld returned%s\n",
                   pid, static_cast<long long>(step), killed == 0 ? "" : " (kill failed)");
    }

    // A helper thread waits on the future so the moment of durability is measured exactly,
    // not at the granularity of training steps; its future carries the write's error, if any.
    pending_.emplace(in_flight{step, static_cast<double>(shmckpt::count_tensors(sd).bytes) / mib,
                               ms_between(entered, returned), ms_between(entered, issued), issued,
                               std::async(std::launch::async, [f = std::move(future)]() mutable {
                                 f.get();
                                 return steady::now();
                               })});
    // Outside the timed region: the reference copy for the final verification.
    last_saved_ = shmckpt::deep_clone(sd);
    last_step_ = step;
  }

  // Reports the in-flight write if it has completed; throws its error if it failed.
  void poll(std::int64_t current_step) { settle(/*block=*/false, current_step); }

  // Waits for the in-flight write; throws its error if it failed.
  void finish(std::int64_t current_step) { settle(/*block=*/true, current_step); }

  fs::path path_for(std::int64_t step) const { return root_ / ("step_" + std::to_string(step)); }
  const shmckpt::state_dict& last_saved() const noexcept { return last_saved_; }
  std::int64_t last_step() const noexcept { return last_step_; }
  const std::vector<double>& stalls_ms() const noexcept { return stalls_ms_; }
  const std::vector<double>& durable_ms() const noexcept { return durable_ms_; }

 private:
  struct in_flight {
    std::int64_t step;
    double mib;
    double stall_ms;            // entering save() until write() returned
    double waited_ms;           // part of the stall spent waiting for the previous write
    steady::time_point issued;  // when write() was called
    std::future<steady::time_point> durable;  // when the checkpoint became durable
  };

  void settle(bool block, std::int64_t current_step) {
    if (!pending_) return;
    if (!block && pending_->durable.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      return;
    auto p = std::move(*pending_);
    pending_.reset();
    const auto durable_at = p.durable.get();  // rethrows the write's error
    const double durable = ms_between(p.issued, durable_at);
    stalls_ms_.push_back(p.stall_ms);
    durable_ms_.push_back(durable);
    std::printf(
        "checkpoint step_%lld: %.1f MiB, training stalled %.1f ms (%.1f ms of it waiting for the "
        "previous write), durable %.1f ms after write() (training was at step %lld)\n",
        static_cast<long long>(p.step), p.mib, p.stall_ms, p.waited_ms, durable,
        static_cast<long long>(current_step));
  }

  shmckpt::checkpoint_process& proc_;
  fs::path root_;
  std::optional<in_flight> pending_;
  shmckpt::state_dict last_saved_;
  std::int64_t last_step_ = 0;
  std::vector<double> stalls_ms_, durable_ms_;
};

int run(const demo_options& o) {
  auto train = o.train;
  const auto core_bytes = ckpt_demo::trainer::model_and_optimizer_bytes(train);
  const auto target_bytes = static_cast<std::uint64_t>(o.mib * mib);
  train.padding_bytes = target_bytes > core_bytes ? target_bytes - core_bytes : 0;
  ckpt_demo::trainer tr(train);

  const auto totals = shmckpt::count_tensors(tr.state_dict());
  std::printf(
      "ckpt-demo: MLP %d-%d-%d (tanh), Adam lr %g, batch %d, %lld steps; state dict %.1f MiB in "
      "%zu tensors (%.2f MiB model + optimizer)\n",
      train.input_dim, train.hidden, train.output_dim, train.lr, train.batch,
      static_cast<long long>(o.steps), static_cast<double>(totals.bytes) / mib, totals.count,
      static_cast<double>(core_bytes) / mib);

  const bool checkpointing = o.every <= o.steps || o.inject_child_kill > 0;
  // Declared before proc so that, when an error unwinds this function, proc's close() runs
  // first and resolves any write still in flight that ckpt's helper thread is waiting on.
  std::optional<async_checkpointer> ckpt;
  std::optional<shmckpt::checkpoint_process> proc;
  if (checkpointing) {
    fs::create_directories(o.dir);
    shmckpt::checkpoint_process_options popts;
    popts.worker = shmckpt::worker_binary::this_executable;
    // Room for the copy of one write in flight plus the next, and slack for the descriptors.
    constexpr std::uint64_t round = std::uint64_t{1} << 20;
    popts.segment_bytes =
        static_cast<std::size_t>((2 * totals.bytes + 16 * round + round - 1) / round * round);
    const auto start = steady::now();
    proc.emplace(popts);
    proc->wait_ready();
    std::printf(
        "checkpoint child pid %d ready in %.1f ms (segment %.0f MiB); checkpoints every %lld "
        "steps into %s\n",
        proc->child_pid(), ms_between(start, steady::now()),
        static_cast<double>(popts.segment_bytes) / mib, static_cast<long long>(o.every),
        o.dir.c_str());
    ckpt.emplace(*proc, o.dir);
  } else {
    std::printf("--every %lld is beyond --steps %lld: training only, no checkpoints\n",
                static_cast<long long>(o.every), static_cast<long long>(o.steps));
  }

  const std::int64_t log_every = std::max<std::int64_t>(1, o.steps / 10);
  std::printf("step %5d/%lld  eval loss %.5f\n", 0, static_cast<long long>(o.steps),
              tr.eval_loss());
  double loss_sum = 0.0;
  const auto train_start = steady::now();
  while (tr.step() < o.steps) {
    loss_sum += tr.train_step();
    const auto step = tr.step();
    if (step % log_every == 0 || step == o.steps) {
      const auto n = step % log_every == 0 ? log_every : step % log_every;
      std::printf("step %5lld/%lld  train loss %.5f  eval loss %.5f  epoch %lld\n",
                  static_cast<long long>(step), static_cast<long long>(o.steps), loss_sum / n,
                  tr.eval_loss(), static_cast<long long>(tr.epoch()));
      loss_sum = 0.0;
    }
    if (!ckpt) continue;
    const bool inject = step == o.inject_child_kill;
    if (step % o.every == 0 || inject) {
      ckpt->save(tr, inject ? fault::kill_child : fault::none);
    } else {
      ckpt->poll(step);
    }
  }
  const double train_s = ms_between(train_start, steady::now()) / 1000.0;
  if (!ckpt) {
    std::printf("trained %lld steps in %.2f s\n", static_cast<long long>(o.steps), train_s);
    return 0;
  }

  ckpt->finish(tr.step());
  proc->close();

  const auto& stalls = ckpt->stalls_ms();
  double stalled_ms = 0.0;
  for (double s : stalls) stalled_ms += s;
  std::printf(
      "summary: %zu checkpoints; training stalled median %.1f ms per checkpoint (%.2f s of %.2f s "
      "training, %.1f%%); durable median %.1f ms after write()\n",
      stalls.size(), median(stalls), stalled_ms / 1000.0, train_s,
      train_s > 0 ? 100.0 * stalled_ms / 1000.0 / train_s : 0.0, median(ckpt->durable_ms()));

  const auto name = "step_" + std::to_string(ckpt->last_step());
  shmckpt::read_options ropts;
  ropts.verify_checksums = true;
  const auto loaded = shmckpt::read(ckpt->path_for(ckpt->last_step()), ropts);
  if (auto diff = first_difference(loaded, ckpt->last_saved(), "")) {
    std::fprintf(stderr,
                 "ckpt-demo: verification failed: %s does not reload identical to the saved "
                 "state; first differing key: %s\n",
                 name.c_str(), diff->c_str());
    return 1;
  }
  const auto* loaded_step = loaded.find("step");
  if (!loaded_step || loaded_step->type() != shmckpt::kind::integer ||
      loaded_step->as_int() != ckpt->last_step()) {
    std::fprintf(stderr, "ckpt-demo: verification failed: %s does not record step %lld\n",
                 name.c_str(), static_cast<long long>(ckpt->last_step()));
    return 1;
  }
  const auto saved_totals = shmckpt::count_tensors(ckpt->last_saved());
  std::printf("verified: %s reloads identical to the saved state (%zu tensors, %.1f MiB)\n",
              name.c_str(), saved_totals.count, static_cast<double>(saved_totals.bytes) / mib);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  shmckpt::run_worker_if_requested(argc, argv);  // never returns in the checkpoint child
  // Line-buffered even into a pipe, so progress and errors interleave in order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::optional<demo_options> options;
  try {
    options = parse_command_line(argc, argv);
    if (!options) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt-demo: %s\n(run ckpt-demo --help for usage)\n", e.what());
    return 2;
  }
  try {
    return run(*options);
  } catch (const shmckpt::error& e) {
    std::fprintf(stderr, "ckpt-demo: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt-demo: %s\n", e.what());
  }
  return 1;
}
