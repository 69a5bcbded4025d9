#include "shmckpt/checkpointer.hpp"

#include <charconv>
#include <cstdlib>

#include "commit/manifest.hpp"
#include "core/write_reply.hpp"
#include "shmckpt/commit.hpp"
#include "shmckpt/commit_store.hpp"
#include "shmckpt/error.hpp"
#include "shmckpt/reader.hpp"
#include "shmckpt/writer.hpp"

namespace shmckpt {

namespace fs = std::filesystem;

namespace {

std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  int out = 0;
  std::string_view s(v);
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || end != s.data() + s.size())
    throw_error(errc::invalid_argument, std::string("environment variable ") + name + "='" + v +
                                            "' is not an integer");
  return out;
}

load_result load_impl(const fs::path& path, const read_options& options, int rank) {
  return {read(path, options, rank), {}};
}

load_result load_into_impl(const fs::path& path, state_dict& template_,
                           const read_options& options, int rank) {
  read_options own = options;
  own.rank = rank;
  auto r = read_into(path, template_, own);
  return {std::move(r.state), std::move(r.missing)};
}

kwargs writer_args_for(const checkpointer_config& c, rank_info rank) {
  kwargs args = c.process.writer_args;
  args["rank"] = std::to_string(rank.rank);
  args["world_size"] = std::to_string(rank.world_size);
  args["commit_timeout_ms"] = std::to_string(c.commit_timeout.count());
  if (c.on_existing == existing_checkpoint::overwrite) args["overwrite"] = "true";
  return args;
}

}  // namespace

rank_info detect_rank_info() {
  static constexpr std::pair<const char*, const char*> families[] = {
      {"RANK", "WORLD_SIZE"},
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
      {"PMI_RANK", "PMI_SIZE"},
      {"SLURM_PROCID", "SLURM_NTASKS"},
  };
  for (auto [rank_var, size_var] : families) {
    auto r = env_int(rank_var);
    auto s = env_int(size_var);
    if (!r && !s) continue;
    if (!r || !s)
      throw_error(errc::invalid_argument, std::string(r ? size_var : rank_var) +
                                              " is missing while " + (r ? rank_var : size_var) +
                                              " is set");
    if (*s < 1 || *r < 0 || *r >= *s)
      throw_error(errc::invalid_argument, std::string(rank_var) + "=" + std::to_string(*r) +
                                              " is not a rank of " + size_var + "=" +
                                              std::to_string(*s));
    return {*r, *s};
  }
  return {};
}

// ---- async ---------------------------------------------------------------------------------

async_checkpointer::async_checkpointer(checkpointer_config config, rank_info rank) : rank_(rank) {
  config.process.rank = rank;
  config.process.writer_args = writer_args_for(config, rank);
  if (config.store) {
    config.process.store = config.store;
    config.process.store_scope = config.store_scope;
    config.process.commit_timeout = config.commit_timeout;
  }
  process_ = std::make_unique<checkpoint_process>(config.process);
  stager_ = std::make_unique<stager>(*process_, config.staging);
}

async_checkpointer::~async_checkpointer() {
  try {
    close();
  } catch (...) {
  }
}

async_checkpointer::save_futures async_checkpointer::save(fs::path path, state_dict sd,
                                                          kwargs kw) {
  if (closed_) throw_error(errc::closed, "save after the checkpointer was closed");
  // Report an earlier failure once, here, even if the trainer never looked at its future.
  for (auto it = outstanding_.begin(); it != outstanding_.end();) {
    if (it->wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      ++it;
      continue;
    }
    auto done = *it;
    it = outstanding_.erase(it);
    done.get();  // throws the write's error
  }
  auto staged = stager_->stage_async(std::move(sd));
  auto write = process_->write(std::move(staged.snapshot), std::move(path), std::move(kw)).share();
  outstanding_.push_back(write);
  return {std::move(staged.done), std::move(write)};
}

load_result async_checkpointer::load(const fs::path& path, const load_options& options) const {
  return load_impl(path, options, rank_.rank);
}

load_result async_checkpointer::load(const fs::path& path, state_dict& template_,
                                     const load_options& options) const {
  return load_into_impl(path, template_, options, rank_.rank);
}

void async_checkpointer::close() {
  if (closed_) return;
  closed_ = true;
  stager_->close();
  process_->close();  // finishes queued writes first; every future is ready afterwards
  // A failure save() has not reported yet is thrown here, so it cannot go unnoticed.
  auto outstanding = std::move(outstanding_);
  outstanding_.clear();
  for (auto& w : outstanding) w.get();
}

checkpoint_process& async_checkpointer::process() { return *process_; }
stager& async_checkpointer::staging_area() { return *stager_; }

// ---- sync ----------------------------------------------------------------------------------

sync_checkpointer::sync_checkpointer(checkpointer_config config, rank_info rank)
    : config_(std::move(config)), rank_(rank) {
  if (!config_.store) return;
  if (config_.store_scope.empty()) config_.store_scope = next_store_scope();
  auto args = writer_args_for(config_, rank_);
  if (auto it = args.find("hook"); it != args.end() && !it->second.empty())
    hook_ = make_writer_hook(it->second, args);
}

void sync_checkpointer::save(const fs::path& path, const state_dict& sd, const kwargs& kw) {
  // Counted even if this save fails: ranks stay in step.
  const auto attempt = config_.store ? ++attempts_[path.lexically_normal().string()] : 0;
  auto args = writer_args_for(config_, rank_);
  if (config_.store) args["commit"] = "parent";
  auto writer = make_default_writer(args);
  detail::take_write_reply();
  writer->write(sd, path, kw);
  if (!config_.store) return;
  rank_file me = detail::rank_file_from_json(detail::take_write_reply(),
                                             "the description of this rank's file");
  store_commit_options o;
  o.timeout = config_.commit_timeout;
  o.hook = hook_.get();
  o.kw = kw;
  store_round round{store_round_key(config_.store_scope, path, attempt), previous_round_};
  previous_round_ = round.key;
  commit_through_store(*config_.store, round, path, me, rank_, o);
}

load_result sync_checkpointer::load(const fs::path& path, const load_options& options) const {
  return load_impl(path, options, rank_.rank);
}

load_result sync_checkpointer::load(const fs::path& path, state_dict& template_,
                                    const load_options& options) const {
  return load_into_impl(path, template_, options, rank_.rank);
}

std::unique_ptr<async_checkpointer> make_async_checkpointer(checkpointer_config config,
                                                            std::optional<rank_info> rank) {
  return std::make_unique<async_checkpointer>(std::move(config),
                                              rank ? *rank : detect_rank_info());
}

std::unique_ptr<sync_checkpointer> make_sync_checkpointer(checkpointer_config config,
                                                          std::optional<rank_info> rank) {
  return std::make_unique<sync_checkpointer>(std::move(config),
                                             rank ? *rank : detect_rank_info());
}

}  // namespace shmckpt
