// ckpt-demo — trains a small model and checkpoints it asynchronously through shmckpt.
//
// The trainer (trainer.hpp) is a real two-layer perceptron trained with Adam. Every --every steps
// the demo saves its state dict through shmckpt's async_checkpointer: save() snapshots the
// tensors into shared buffers (double-buffered) and a long-lived checkpoint child (this same
// executable, re-entered through run_worker_if_requested) writes the snapshot durably to
// DIR/step_<N> and commits it across ranks with a manifest. Training resumes as soon as the
// snapshot is taken (the `staging` future), so the next save may be staged while the previous one
// is still being written; only when both buffer generations are still in use does a save wait
// for the older write. For each checkpoint the demo reports how long training stalled (that wait
// included) and how long the checkpoint took to become durable and committed (the `write`
// future). After each durable checkpoint rank 0 keeps only the newest --keep checkpoints.
//
// --resume continues from the newest complete checkpoint under DIR: it loads this rank's file
// into the trainer's own tensors (a template load) and restores step, epoch, optimizer state and
// the sampler's RNG, so the resumed run retraces the uninterrupted one bit for bit; the final
// "final state:" line carries a fingerprint of the whole state to check that.
//
// Ranks. A rank comes from the environment (RANK/WORLD_SIZE, OMPI_COMM_WORLD_RANK/SIZE as set by
// `mpirun -np N ckpt-demo ...`, PMI_*, SLURM_*; see shmckpt::detect_rank_info). Every rank
// trains its own replica on its own data shard and writes checkpoint_<rank>.safetensors into the
// same step directory. `--ranks N` starts N ranks on this machine itself (launcher.hpp).
//
// At the end each rank reloads its last checkpoint and checks that it equals a deep copy taken
// when it was saved.
//
// A checkpoint lost because the checkpoint child died or hung (the library's "Child process
// terminated unexpectedly", or a progress timeout) is reported on stderr and training goes on:
// the next save starts a new child, and the summary says how often that happened.
//
// Exit status: 0 when the last checkpoint verified, 1 on any other error, a verification mismatch
// or, with --ranks, any rank failing; 2 for bad command-line usage.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/program_options.hpp>

#include "launcher.hpp"
#include "shmckpt/checkpointer.hpp"
#include "shmckpt/checkpoint_dir.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/state_dict.hpp"
#include "shmckpt/worker.hpp"
#include "state_check.hpp"
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
  // Complete checkpoints to keep after each save; 0 keeps them all.
  std::int64_t keep = 3;
  // Continue from the newest complete checkpoint under dir.
  bool resume = false;
  // Ranks to launch on this machine; 0: run as one rank (from the environment).
  int ranks = 0;
  // With ranks: how long the launcher waits for them.
  std::int64_t deadline_s = 600;
  // How long a rank waits at the commit barrier for the others.
  std::int64_t commit_timeout_s = 60;
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
      "asynchronously through shmckpt's async_checkpointer, then verifies the last checkpoint.\n"
      "Multi-rank: --ranks N on this machine, or under a launcher (mpirun -np N ckpt-demo ...,\n"
      "torchrun-style RANK/WORLD_SIZE, Slurm); each rank writes\n"
      "DIR/step_<N>/checkpoint_<rank>.safetensors and rank 0 the manifest checkpoint.json.\n"
      "The ranks meet through the file barrier (DIR/step_<N>/.commit/ on the filesystem they\n"
      "share): this demo runs no distributed engine. Across hosts, mount DIR so that new files\n"
      "show at once (NFS lookupcache=positive, sshfs -o cache=no; docs/usage.md); a trainer\n"
      "with an engine commits through it (checkpointer_config::store, commit_store.hpp).\n\n"
      "Options");
  // clang-format off
  desc.add_options()
    ("help,h", "print this help and exit")
    ("dir", po::value<std::string>(&o.dir)->value_name("DIR")->default_value(o.dir),
     "checkpoint root; checkpoints go to DIR/step_<N>")
    ("steps", po::value<std::int64_t>(&o.steps)->value_name("N")->default_value(o.steps),
     "train until step N")
    ("every", po::value<std::int64_t>(&o.every)->value_name("K")->default_value(o.every),
     "checkpoint at every step divisible by K (K > steps: train only, no checkpoint child)")
    ("keep", po::value<std::int64_t>(&o.keep)->value_name("N")->default_value(o.keep),
     "after each durable checkpoint keep only the newest N complete ones (0: keep all)")
    ("resume", po::bool_switch(&o.resume),
     "continue from the newest complete checkpoint under DIR, if there is one")
    ("mib", po::value<double>(&o.mib)->value_name("M")->default_value(o.mib),
     "approximate state-dict size in MiB, reached with F32 padding (0: no padding)")
    ("hidden", po::value<int>(&o.train.hidden)->value_name("H")->default_value(o.train.hidden),
     "hidden-layer width of the model")
    ("batch", po::value<int>(&o.train.batch)->value_name("B")->default_value(o.train.batch),
     "minibatch size")
    ("lr", po::value<double>(&o.train.lr)->value_name("LR")->default_value(o.train.lr, "0.01"),
     "Adam learning rate (a resumed run takes the checkpoint's)")
    ("seed", po::value<std::uint64_t>(&o.train.seed)->value_name("SEED")->default_value(o.train.seed),
     "seed of the problem and the initial weights; rank R samples its data with SEED + R")
    ("ranks", po::value<int>(&o.ranks)->value_name("N"),
     "start N ranks of this demo on this machine (RANK/WORLD_SIZE in their environment), "
     "wait for them and print each rank's result")
    ("deadline", po::value<std::int64_t>(&o.deadline_s)->value_name("S")->default_value(o.deadline_s),
     "with --ranks: kill the ranks still running after S seconds")
    ("commit-timeout", po::value<std::int64_t>(&o.commit_timeout_s)->value_name("S")
         ->default_value(o.commit_timeout_s),
     "how long a rank waits at the commit barrier for the other ranks")
    ("inject-child-kill", po::value<std::int64_t>(&o.inject_child_kill)->value_name("STEP"),
     "fault injection for tests: save at STEP and SIGKILL the checkpoint child once the "
     "snapshot is staged; the demo must then fail with the library's error (at the latest at "
     "the next checkpoint or at the end)");
  // clang-format on
  po::variables_map vm;
  // No guessing of abbreviated options: the launcher strips exactly --ranks from the ranks' flags.
  po::store(
      po::command_line_parser(argc, argv)
          .options(desc)
          .style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing)
          .run(),
      vm);
  if (vm.count("help")) {
    std::cout << desc << '\n';
    return std::nullopt;
  }
  po::notify(vm);
  if (o.steps < 1) throw po::error("--steps must be at least 1, not " + std::to_string(o.steps));
  if (o.every < 1) throw po::error("--every must be at least 1, not " + std::to_string(o.every));
  if (o.keep < 0) throw po::error("--keep must not be negative, not " + std::to_string(o.keep));
  if (!(o.mib >= 0.0 && o.mib <= 1024.0 * 1024.0))
    throw po::error("--mib must be between 0 and 1048576, not " + std::to_string(o.mib));
  if (o.train.hidden < 1 || o.train.batch < 1)
    throw po::error("--hidden and --batch must be at least 1");
  if (!(o.train.lr > 0.0)) throw po::error("--lr must be positive");
  if (vm.count("ranks") && (o.ranks < 1 || o.ranks > 64))
    throw po::error("--ranks must be between 1 and 64, not " + std::to_string(o.ranks));
  if (o.deadline_s < 1)
    throw po::error("--deadline must be at least 1 second, not " + std::to_string(o.deadline_s));
  if (o.commit_timeout_s < 1)
    throw po::error("--commit-timeout must be at least 1 second, not " +
                    std::to_string(o.commit_timeout_s));
  if (vm.count("inject-child-kill") && (o.inject_child_kill < 1 || o.inject_child_kill > o.steps))
    throw po::error("--inject-child-kill must name a step between 1 and --steps (" +
                    std::to_string(o.steps) + "), not " + std::to_string(o.inject_child_kill));
  return o;
}

// Fault injected into a save, for tests.
enum class fault { none, kill_child };

// Drives an async_checkpointer for the training loop: saves, watches each checkpoint's two
// futures, reports their costs and prunes old checkpoints once a new one is durable.
class checkpoint_saver {
 public:
  checkpoint_saver(shmckpt::checkpointer_config config, shmckpt::rank_info rank, fs::path root,
                   std::size_t keep)
      : root_(std::move(root)),
        keep_(keep),
        generations_(config.staging.generations),
        ckpt_(shmckpt::make_async_checkpointer(std::move(config), rank)) {}

  shmckpt::async_checkpointer& checkpointer() noexcept { return *ckpt_; }

  // Saves the trainer's current state to root/step_<N> and returns once the snapshot is taken,
  // i.e. when the trainer may change its tensors again. With `reference` it also keeps a deep
  // copy of the state for the final verification (outside the timed region). With
  // fault::kill_child the checkpoint child is sent SIGKILL right after the snapshot.
  void save(const ckpt_demo::trainer& tr, bool reference, fault inject = fault::none) {
    const auto entered = steady::now();
    // Both buffer generations still hold snapshots being written: this save cannot be staged
    // before the older write is done. Waiting here (instead of inside the stager) makes the
    // blocked part of the stall visible.
    double blocked_ms = 0.0;
    bool blocked = false;
    if (!pending_.empty() && ckpt_->staging_area().generations_in_use() >= generations_ &&
        pending_.front().write.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      pending_.front().write.wait();
      blocked_ms = ms_between(entered, steady::now());
      blocked = true;
    }
    const auto step = tr.step();
    auto sd = tr.state_dict();
    const auto saved = steady::now();
    const shmckpt::kwargs kw{{"step", std::to_string(step)}};
    shmckpt::async_checkpointer::save_futures futures;
    try {
      futures = ckpt_->save(path_for(step), sd, kw);
    } catch (const shmckpt::error& e) {
      // save() reports an earlier write's failure once; a lost checkpoint is also reported (and
      // counted) when its own future settles below, so just save again.
      if (!is_lost_checkpoint(e)) throw;
      futures = ckpt_->save(path_for(step), sd, kw);
    }
    note_child();
    futures.staging.get();  // rethrows a staging failure
    const double stall_ms = ms_between(entered, steady::now());
    if (inject == fault::kill_child) {
      const int pid = ckpt_->process().child_pid();
      const int killed = ::kill(pid, SIGKILL);
      std::fprintf(stderr,
                   "ckpt-demo: fault injection: SIGKILL to checkpoint child pid %d right after "
                   "the snapshot of step %lld was staged%s\n",
                   pid, static_cast<long long>(step), killed == 0 ? "" : " (kill failed)");
    }
    // A helper thread waits on the write future so the moment the checkpoint became durable is
    // measured exactly, not at the granularity of training steps.
    auto durable = std::async(std::launch::async, [w = futures.write] {
      w.wait();
      return steady::now();
    });
    pending_.push_back({step, static_cast<double>(shmckpt::count_tensors(sd).bytes) / mib, stall_ms,
                        blocked_ms, blocked, saved, futures.write, std::move(durable)});
    if (reference) {
      last_saved_ = shmckpt::deep_clone(sd);
      last_step_ = step;
    }
  }

  // Whether a checkpoint is being written right now (staged, its write future not yet ready).
  bool writing() const {
    return !pending_.empty() &&
           pending_.back().write.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
  }

  // Reports the checkpoints that have become durable; throws the error of one that failed.
  void poll(std::int64_t current_step) {
    while (!pending_.empty() &&
           pending_.front().durable.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
      settle_front(current_step);
  }

  // Waits for every checkpoint and closes the checkpointer; throws the first write error.
  void finish(std::int64_t current_step) {
    while (!pending_.empty()) settle_front(current_step);
    try {
      ckpt_->close();
    } catch (const shmckpt::error& e) {
      if (!is_lost_checkpoint(e) || lost_ == 0) throw;  // a loss settle_front already reported
    }
  }

  // Pids of the checkpoint children this run used, in order (more than one: replaced).
  const std::vector<int>& child_pids() const noexcept { return child_pids_; }
  std::size_t lost_checkpoints() const noexcept { return lost_; }

  fs::path path_for(std::int64_t step) const { return root_ / ("step_" + std::to_string(step)); }
  const shmckpt::state_dict& last_saved() const noexcept { return last_saved_; }
  // Step of the reference copy; nullopt when this run kept none.
  std::optional<std::int64_t> last_step() const noexcept { return last_step_; }
  const std::vector<double>& stalls_ms() const noexcept { return stalls_ms_; }
  const std::vector<double>& durable_ms() const noexcept { return durable_ms_; }
  std::size_t blocked_saves() const noexcept { return blocked_saves_; }

 private:
  struct in_flight {
    std::int64_t step;
    double mib;
    double stall_ms;           // entering save() until the snapshot was taken
    double blocked_ms;         // part of the stall spent waiting for a free generation
    bool blocked;              // whether it had to wait for one
    steady::time_point saved;  // when async_checkpointer::save() was called
    std::shared_future<void> write;
    std::future<steady::time_point> durable;  // when `write` became ready
  };

  // The checkpoint child died or hung while writing: the checkpointer replaces it.
  static bool is_lost_checkpoint(const shmckpt::error& e) {
    return e.kind() == shmckpt::errc::child_terminated || e.kind() == shmckpt::errc::timeout;
  }

  void note_child() {
    const int pid = ckpt_->process().child_pid();
    if (child_pids_.empty() || child_pids_.back() != pid) child_pids_.push_back(pid);
  }

  void settle_front(std::int64_t current_step) {
    auto p = std::move(pending_.front());
    pending_.pop_front();
    const auto durable_at = p.durable.get();
    try {
      p.write.get();  // rethrows the write's error
    } catch (const shmckpt::error& e) {
      if (!is_lost_checkpoint(e)) throw;
      ++lost_;
      std::fprintf(stderr, "ckpt-demo: checkpoint step_%lld was lost, training goes on: %s\n",
                   static_cast<long long>(p.step), e.what());
      return;
    }
    const double durable = ms_between(p.saved, durable_at);
    stalls_ms_.push_back(p.stall_ms);
    durable_ms_.push_back(durable);
    if (p.blocked) ++blocked_saves_;
    std::string pruned;
    // One rank prunes for all: the checkpoint is complete for every rank once its write future
    // is ready, and the newest one (or one still being written) is never removed.
    if (keep_ > 0 && ckpt_->rank().rank == 0)
      for (const auto& dir : shmckpt::keep_last(root_, keep_))
        pruned += (pruned.empty() ? "; removed " : ", ") + dir.filename().string();
    std::printf(
        "checkpoint step_%lld: %.1f MiB, training stalled %.1f ms (%.1f ms of it blocked on busy "
        "buffer generations), durable and committed %.1f ms after save() (training was at step "
        "%lld)%s\n",
        static_cast<long long>(p.step), p.mib, p.stall_ms, p.blocked_ms, durable,
        static_cast<long long>(current_step), pruned.c_str());
  }

  fs::path root_;
  std::size_t keep_;
  std::size_t generations_;
  // Declared before ckpt_ so that it is destroyed after it: when an error unwinds, ckpt_'s
  // close() resolves every write the helper threads in pending_ are waiting on.
  std::deque<in_flight> pending_;
  std::unique_ptr<shmckpt::async_checkpointer> ckpt_;
  shmckpt::state_dict last_saved_;
  std::optional<std::int64_t> last_step_;
  std::vector<double> stalls_ms_, durable_ms_;
  std::size_t blocked_saves_ = 0;
  std::vector<int> child_pids_;
  std::size_t lost_ = 0;
};

// Loads the newest complete checkpoint under o.dir into `tr`, if there is one.
void resume(const demo_options& o, ckpt_demo::trainer& tr, checkpoint_saver* saver,
            shmckpt::rank_info rank) {
  const auto latest = shmckpt::latest_checkpoint(o.dir);
  if (!latest) {
    std::printf("resume: no complete checkpoint under %s; starting at step 0\n", o.dir.c_str());
    return;
  }
  const auto start = steady::now();
  shmckpt::load_options lo;
  lo.strict = true;  // a checkpoint lacking part of the state cannot continue the run exactly
  lo.verify_checksums = true;
  // The template is the trainer's own state: the checkpoint's tensors are read straight into
  // the trainer's memory, and its non-tensor values come back in the result.
  auto template_ = tr.state_dict();
  auto loaded = saver ? saver->checkpointer().load(*latest, template_, lo)
                      : shmckpt::make_sync_checkpointer({}, rank)->load(*latest, template_, lo);
  tr.load_state_dict(loaded.state);
  std::printf("resumed from %s in %.1f ms: step %lld, epoch %lld, lr %g\n", latest->c_str(),
              ms_between(start, steady::now()), static_cast<long long>(tr.step()),
              static_cast<long long>(tr.epoch()), tr.lr());
}

// "final state: step N, epoch E, eval loss L, fingerprint fnv1a64:<16 hex>".
void print_final_state(ckpt_demo::trainer& tr) {
  const auto h = ckpt_demo::fingerprint(tr.state_dict());
  std::printf("final state: step %lld, epoch %lld, eval loss %.9g, fingerprint fnv1a64:%016llx\n",
              static_cast<long long>(tr.step()), static_cast<long long>(tr.epoch()), tr.eval_loss(),
              static_cast<unsigned long long>(h));
}

int run(const demo_options& o, shmckpt::rank_info rank) {
  auto train = o.train;
  train.shard = rank.rank;
  const auto core_bytes = ckpt_demo::trainer::model_and_optimizer_bytes(train);
  const auto target_bytes = static_cast<std::uint64_t>(o.mib * mib);
  train.padding_bytes = target_bytes > core_bytes ? target_bytes - core_bytes : 0;
  ckpt_demo::trainer tr(train);

  const auto totals = shmckpt::count_tensors(tr.state_dict());
  std::string who;
  if (rank.world_size > 1)
    who = " (rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world_size) +
          ", data shard " + std::to_string(rank.rank) + ")";
  std::printf(
      "ckpt-demo%s: MLP %d-%d-%d (tanh), Adam lr %g, batch %d, %lld steps; state dict %.1f MiB in "
      "%zu tensors (%.2f MiB model + optimizer)\n",
      who.c_str(), train.input_dim, train.hidden, train.output_dim, train.lr, train.batch,
      static_cast<long long>(o.steps), static_cast<double>(totals.bytes) / mib, totals.count,
      static_cast<double>(core_bytes) / mib);

  const bool checkpointing = o.every <= o.steps || o.inject_child_kill > 0;
  std::optional<checkpoint_saver> saver;
  if (checkpointing) {
    fs::create_directories(o.dir);
    shmckpt::checkpointer_config config;
    config.process.worker = shmckpt::worker_binary::this_executable;
    // The segment sizes itself; starting it with room for one snapshot per buffer generation
    // (prefaulted at start-up) keeps growth out of the first checkpoints' stall figures.
    constexpr std::uint64_t round = std::uint64_t{1} << 20;
    const std::uint64_t generations = config.staging.generations;
    config.process.initial_segment_bytes = static_cast<std::size_t>(
        (generations * totals.bytes + 16 * round + round - 1) / round * round);
    config.commit_timeout = std::chrono::seconds(o.commit_timeout_s);
    const auto start = steady::now();
    const auto segment_bytes = config.process.initial_segment_bytes;
    saver.emplace(std::move(config), rank, o.dir, static_cast<std::size_t>(o.keep));
    saver->checkpointer().process().wait_ready();
    std::printf(
        "checkpoint child pid %d ready in %.1f ms (segment %.0f MiB, %llu buffer generations); "
        "checkpoints every %lld steps into %s, keeping %s\n",
        saver->checkpointer().process().child_pid(), ms_between(start, steady::now()),
        static_cast<double>(segment_bytes) / mib, static_cast<unsigned long long>(generations),
        static_cast<long long>(o.every), o.dir.c_str(),
        o.keep > 0 ? ("the newest " + std::to_string(o.keep)).c_str() : "all");
  } else {
    std::printf("--every %lld is beyond --steps %lld: training only, no checkpoints\n",
                static_cast<long long>(o.every), static_cast<long long>(o.steps));
  }
  if (o.resume) resume(o, tr, saver ? &*saver : nullptr, rank);

  // Log at fixed steps (multiples of log_every), so a resumed run logs where the original did.
  const std::int64_t log_every = std::max<std::int64_t>(1, o.steps / 10);
  std::printf("step %5lld/%lld  eval loss %.5f\n", static_cast<long long>(tr.step()),
              static_cast<long long>(o.steps), tr.eval_loss());
  double loss_sum = 0.0;
  std::int64_t window_start = tr.step();
  const auto train_start = steady::now();
  // The interference figure: each training step's time, split by whether a checkpoint was being
  // written during all of it or during none of it (steps across a boundary are left out).
  std::vector<double> step_ms_writing, step_ms_quiet;
  while (tr.step() < o.steps) {
    const bool writing_before = saver && saver->writing();
    const auto step_start = steady::now();
    loss_sum += tr.train_step();
    const double step_ms = ms_between(step_start, steady::now());
    const bool writing_after = saver && saver->writing();
    if (writing_before && writing_after) step_ms_writing.push_back(step_ms);
    else if (!writing_before && !writing_after) step_ms_quiet.push_back(step_ms);
    const auto step = tr.step();
    if (step % log_every == 0 || step == o.steps) {
      std::printf("step %5lld/%lld  train loss %.5f  eval loss %.5f  epoch %lld\n",
                  static_cast<long long>(step), static_cast<long long>(o.steps),
                  loss_sum / static_cast<double>(step - window_start), tr.eval_loss(),
                  static_cast<long long>(tr.epoch()));
      loss_sum = 0.0;
      window_start = step;
    }
    if (!saver) continue;
    saver->poll(step);
    const bool inject = step == o.inject_child_kill;
    if (step % o.every == 0 || inject) {
      const bool last = (step / o.every + 1) * o.every > o.steps;
      saver->save(tr, last, inject ? fault::kill_child : fault::none);
    }
  }
  const double train_s = ms_between(train_start, steady::now()) / 1000.0;
  if (!saver) {
    std::printf("trained to step %lld in %.2f s\n", static_cast<long long>(tr.step()), train_s);
    print_final_state(tr);
    return 0;
  }

  saver->finish(tr.step());
  const auto& stalls = saver->stalls_ms();
  double stalled_ms = 0.0;
  for (double s : stalls) stalled_ms += s;
  if (!stalls.empty())
    std::printf(
        "summary: %zu checkpoints; training stalled median %.1f ms per checkpoint (%.2f s of %.2f "
        "s "
        "training, %.1f%%), %zu saves blocked on busy buffer generations; durable and committed "
        "median %.1f ms after save()\n",
        stalls.size(), median(stalls), stalled_ms / 1000.0, train_s,
        train_s > 0 ? 100.0 * stalled_ms / 1000.0 / train_s : 0.0, saver->blocked_saves(),
        median(saver->durable_ms()));
  if (!step_ms_writing.empty() && !step_ms_quiet.empty())
    std::printf(
        "interference: training ran at %.2fx of its speed while a checkpoint was being written "
        "(median step %.3f ms during writes, %.3f ms otherwise; %zu and %zu steps)\n",
        median(step_ms_quiet) / median(step_ms_writing), median(step_ms_writing),
        median(step_ms_quiet), step_ms_writing.size(), step_ms_quiet.size());
  else
    std::printf("interference: not measured (no training step ran %s)\n",
                step_ms_writing.empty() ? "entirely during a checkpoint write"
                                        : "with no checkpoint being written");
  if (const auto& pids = saver->child_pids(); pids.size() > 1) {
    std::string list;
    for (int pid : pids) list += (list.empty() ? "" : ", ") + std::to_string(pid);
    std::printf("checkpoint child replaced %zu time(s) (pids %s); %zu checkpoint(s) lost\n",
                pids.size() - 1, list.c_str(), saver->lost_checkpoints());
  }
  print_final_state(tr);

  const auto last_step = saver->last_step();
  if (!last_step) {
    std::printf("nothing was saved in this run: nothing to verify\n");
    return 0;
  }
  const auto path = saver->path_for(*last_step);
  const auto name = path.filename().string();
  shmckpt::load_options lo;
  lo.verify_checksums = true;
  const auto loaded = saver->checkpointer().load(path, lo).state;
  if (auto diff = ckpt_demo::first_difference(loaded, saver->last_saved())) {
    std::fprintf(stderr,
                 "ckpt-demo: verification failed: %s does not reload identical to the saved "
                 "state; first differing key: %s\n",
                 name.c_str(), diff->c_str());
    return 1;
  }
  const auto* loaded_step = loaded.find("step");
  if (!loaded_step || loaded_step->type() != shmckpt::kind::integer ||
      loaded_step->as_int() != *last_step) {
    std::fprintf(stderr, "ckpt-demo: verification failed: %s does not record step %lld\n",
                 name.c_str(), static_cast<long long>(*last_step));
    return 1;
  }
  const auto saved_totals = shmckpt::count_tensors(saver->last_saved());
  std::printf("verified: %s reloads identical to the saved state (%zu tensors, %.1f MiB)\n",
              name.c_str(), saved_totals.count, static_cast<double>(saved_totals.bytes) / mib);
  return 0;
}

// The ranks' arguments: this process's, without --ranks.
std::vector<std::string> rank_arguments(int argc, char** argv) {
  std::vector<std::string> args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string_view a(argv[i]);
    if (a == "--ranks") {
      ++i;  // and its value
      continue;
    }
    if (a.starts_with("--ranks=")) continue;
    args.emplace_back(a);
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  shmckpt::run_worker_if_requested(argc, argv);  // never returns in the checkpoint child
  ckpt_demo::exit_with_launcher();
  // Line-buffered even into a pipe, so progress and errors interleave in order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::optional<demo_options> options;
  shmckpt::rank_info rank;
  try {
    options = parse_command_line(argc, argv);
    if (!options) return 0;
    rank = shmckpt::detect_rank_info();
    if (options->ranks > 0 && rank.world_size > 1)
      throw po::error("--ranks cannot be used inside a job that already has " +
                      std::to_string(rank.world_size) +
                      " ranks (the environment sets the rank; drop --ranks)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt-demo: %s\n(run ckpt-demo --help for usage)\n", e.what());
    return 2;
  }
  try {
    if (options->ranks > 0) {
      ckpt_demo::launch_options lo;
      lo.ranks = options->ranks;
      lo.args = rank_arguments(argc, argv);
      lo.deadline = std::chrono::seconds(options->deadline_s);
      return ckpt_demo::launch_ranks(lo);
    }
    return run(*options, rank);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt-demo: %s\n", e.what());
  }
  return 1;
}
