// writer.cpp — moving a planned checkpoint file onto disk, durably and atomically.
//
// The sequence is the classic one, and every step is there for a reason:
//
//   1. plan the header (safetensors.cpp) — all validation of the tree happens here, before any
//      file exists, so a state dict that cannot be written leaves no trace at all;
//   2. create `.<name>.tmp.<pid>.<n>` beside the target with O_EXCL (never clobber a file that
//      someone else is writing), lock it (temp_file.hpp: the lock tells cleaners that its writer
//      is alive, until the rename) and reserve the full size with fallocate, so a full disk fails
//      at once with the bytes needed and free instead of after gigabytes of writing;
//   3. write the data section straight from the tensors' memory — in the checkpoint child that
//      memory is the shared segment, so no byte is copied in user space — with pwritev in
//      chunks of about 8 MiB, hashing each tensor on the way (one pass over the bytes) and
//      checking the cancel flag between chunks; writeback of each chunk is started at once so
//      the final fsync has little left to do;
//   4. write the now-final header (checksums filled in) at offset 0, fsync, close;
//   5. rename over the target and fsync the directory, which makes the rename durable.
//
// Until step 5 the target is untouched; on any failure before it the temporary file is removed
// by its RAII guard. After the rename only the directory fsync can fail; the new file is then in
// place but its durability unknown, and the error says so.
//
// Thread safety: write_safetensors keeps no shared state except an atomic counter for names.
#include "shmckpt/writer.hpp"

#include <chrono>

#include "shmckpt/commit.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commit/manifest.hpp"
#include "core/progress.hpp"
#include "core/write_reply.hpp"
#include "format/safetensors.hpp"
#include "shmckpt/error.hpp"
#include "io/temp_file.hpp"
#include "core/util.hpp"

namespace shmckpt {
namespace {

namespace fs = std::filesystem;

// Large enough that per-call overhead vanishes, small enough that a cancel is seen quickly.
constexpr std::size_t chunk_bytes = std::size_t{8} << 20;
constexpr std::size_t max_iovecs = IOV_MAX;

std::string os_message(int err) { return std::system_category().message(err); }

// Everything that knows which file is being written, for errors that name it.
class write_context {
 public:
  write_context(const fs::path& file, std::uint64_t file_size)
      : file_(file), file_size_(file_size),
        label_("writing checkpoint '" + file.string() + "'") {}

  const std::string& label() const noexcept { return label_; }

  [[noreturn]] void os_failure(const char* what, int err) const {
    if (err == ENOSPC || err == EDQUOT) {
      std::string free_text = "an unknown number of";
      struct statvfs st {};
      if (::statvfs(directory().c_str(), &st) == 0)
        free_text = std::to_string(static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize);
      throw_error(errc::no_space, label_ + ": not enough disk space: the file needs " +
                                      std::to_string(file_size_) + " bytes, the filesystem has " +
                                      free_text + " bytes free (" + what + ")");
    }
    throw_error(errc::io_error, label_ + ": " + what + ": " + os_message(err));
  }

  fs::path directory() const {
    fs::path dir = file_.parent_path();
    return dir.empty() ? fs::path(".") : dir;
  }

 private:
  fs::path file_;
  std::uint64_t file_size_;
  std::string label_;
};

// The temporary file: removed on destruction unless commit() was called after the rename. Its
// lock (temp_file.hpp) is held through a second descriptor until destruction, so it covers the
// rename even after close() has reported the close errors of the first.
class temp_file {
 public:
  temp_file(const write_context& ctx, const fs::path& target) {
    fd_ = detail::create_locked_temp(ctx.directory(), target.filename().string(), path_);
    if (!fd_) ctx.os_failure("cannot create the temporary file", errno);
    lock_.reset(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
    if (!lock_) {
      int err = errno;
      ::unlink(path_.c_str());
      ctx.os_failure("cannot duplicate the temporary file's descriptor", err);
    }
  }
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;
  ~temp_file() {
    if (!committed_) ::unlink(path_.c_str());  // while still holding the lock
    fd_.reset();
    lock_.reset();
  }

  int fd() const noexcept { return fd_.get(); }
  const fs::path& path() const noexcept { return path_; }

  /// Closes the descriptor, reporting the errors close can carry (e.g. NFS write-back).
  void close(const write_context& ctx) {
    if (::close(fd_.release()) != 0) ctx.os_failure("close failed", errno);
  }
  void commit() noexcept { committed_ = true; }

 private:
  fs::path path_;
  unique_fd fd_;
  unique_fd lock_;
  bool committed_ = false;
};

void check_cancel(const safetensors_write_options& options, const write_context& ctx) {
  if (options.cancel && options.cancel->load(std::memory_order_relaxed))
    throw_error(errc::closed, ctx.label() + ": cancelled; the previous checkpoint at this path "
                                            "(if any) is unchanged");
}

void preallocate(int fd, std::uint64_t size, const write_context& ctx) {
  if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) return;
  int err = errno;
  // Filesystems without fallocate still get the data; they just fail later when full.
  if (err == EOPNOTSUPP || err == ENOSYS) return;
  ctx.os_failure("cannot reserve space", err);
}

void pwrite_all(int fd, const char* p, std::size_t n, std::uint64_t off, const write_context& ctx) {
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      ctx.os_failure("write failed", errno);
    }
    if (r == 0) ctx.os_failure("write made no progress", EIO);
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

// Writes all of `iov` at `off`, resuming after short writes.
void pwritev_all(int fd, std::vector<iovec>& iov, std::uint64_t off, const write_context& ctx) {
  std::size_t i = 0;
  while (i < iov.size()) {
    ssize_t r = ::pwritev(fd, iov.data() + i, static_cast<int>(iov.size() - i),
                          static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      ctx.os_failure("write failed", errno);
    }
    if (r == 0) ctx.os_failure("write made no progress", EIO);
    off += static_cast<std::uint64_t>(r);
    auto left = static_cast<std::size_t>(r);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
}

// Writes every tensor's bytes into the data section and fills in the checksums of `plan`.
void write_data(int fd, detail::encoded_header& plan, const safetensors_write_options& options,
                const write_context& ctx) {
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash(XXH3_createState(),
                                                                &XXH3_freeState);
  if (!hash) throw std::bad_alloc();

  std::vector<iovec> iov;
  iov.reserve(max_iovecs);
  std::uint64_t batch_offset = plan.bytes.size();
  std::size_t batch_size = 0;
  auto flush = [&] {
    check_cancel(options, ctx);
    if (iov.empty()) return;
    pwritev_all(fd, iov, batch_offset, ctx);
    // Start writeback now; fsync later waits for less. Errors surface at fsync.
    ::sync_file_range(fd, static_cast<off_t>(batch_offset), static_cast<off_t>(batch_size),
                      SYNC_FILE_RANGE_WRITE);
    batch_offset += batch_size;
    batch_size = 0;
    iov.clear();
    // Tells the parent's watchdog (in the checkpoint child) that the write moves, and how far.
    char where[96];
    std::snprintf(where, sizeof where, ": %.1f of %.1f MiB written",
                  static_cast<double>(batch_offset) / (1 << 20),
                  static_cast<double>(plan.file_size()) / (1 << 20));
    detail::report_progress(ctx.label() + where);
  };

  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const auto& t = plan.tensors[i];
    XXH3_64bits_reset(hash.get());
    const std::byte* p = t.source->data();
    std::uint64_t left = t.nbytes;
    while (left > 0) {
      std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk_bytes - batch_size));
      if (plan.checksums) XXH3_64bits_update(hash.get(), p, n);
      // pwritev only reads through iov_base; the cast drops const for the C interface.
      iov.push_back({const_cast<std::byte*>(p), n});
      batch_size += n;
      p += n;
      left -= n;
      if (batch_size == chunk_bytes || iov.size() == max_iovecs) flush();
    }
    if (plan.checksums) detail::set_checksum(plan, i, XXH3_64bits_digest(hash.get()));
  }
  flush();
}

void fsync_directory(const fs::path& dir, const write_context& ctx) {
  unique_fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0)
    throw_error(errc::io_error,
                ctx.label() + ": the new file is in place, but syncing directory '" + dir.string() +
                    "' failed (" + os_message(errno) + "), so it may not survive a crash");
}

int int_arg(const kwargs& args, const char* key, int fallback, int min) {
  auto it = args.find(key);
  if (it == args.end()) return fallback;
  const std::string& s = it->second;
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty() || v < min)
    throw_error(errc::invalid_argument, std::string("default writer: argument '") + key +
                                            "' is '" + s + "', not an integer >= " +
                                            std::to_string(min));
  return v;
}

bool bool_arg(const kwargs& args, const char* key, bool fallback) {
  auto it = args.find(key);
  if (it == args.end()) return fallback;
  if (it->second == "true" || it->second == "1") return true;
  if (it->second == "false" || it->second == "0") return false;
  throw_error(errc::invalid_argument, std::string("default writer: argument '") + key + "' is '" +
                                          it->second + "', not true, false, 1 or 0");
}

// Writes this rank's file, then commits the checkpoint across ranks (commit.hpp): the write
// succeeds only once the manifest that includes this rank's file is published.
class default_writer final : public checkpoint_writer {
 public:
  default_writer(const kwargs& args, const std::atomic<bool>* cancel) : cancel_(cancel) {
    rank_.rank = int_arg(args, "rank", 0, 0);
    rank_.world_size = int_arg(args, "world_size", 1, 1);
    if (rank_.rank >= rank_.world_size)
      throw_error(errc::invalid_argument, "default writer: rank " + std::to_string(rank_.rank) +
                                              " is not below world_size " +
                                              std::to_string(rank_.world_size));
    timeout_ = std::chrono::milliseconds(int_arg(args, "commit_timeout_ms", 600000, 0));
    overwrite_ = bool_arg(args, "overwrite", false);
    // "commit" = "parent": the parent commits through its store (lib/parent/parent_commit.hpp)
    // and runs the hook; this writer stops once its file is durable and describes it.
    parent_commits_ = args.count("commit") && args.at("commit") == "parent";
    if (parent_commits_) return;
    if (auto it = args.find("hook"); it != args.end() && !it->second.empty())
      hook_ = make_writer_hook(it->second, args);
    barrier_ = make_file_barrier();
  }

  void write(const state_dict& sd, const fs::path& path, const kwargs& kw) override {
    reject_nul(path, "checkpoint directory");
    const bool overwrite = overwrite_ || bool_arg(kw, "overwrite", false);
    const std::string round = new_round_token();
    // Before anything on disk changes: a complete checkpoint is not replaced unless asked.
    std::error_code ec;
    const bool had_manifest = fs::exists(path / manifest_name, ec);
    if (had_manifest && !overwrite && is_complete(path))
      throw_error(errc::invalid_argument,
                  "checkpoint directory '" + path.string() +
                      "' already holds a complete checkpoint; save into a new directory, or "
                      "pass overwrite=\"true\" (save kwarg or writer argument) to retire the old "
                      "checkpoint when the save starts");
    fs::create_directories(path, ec);
    if (ec)
      throw_error(ec.value() == ENOSPC || ec.value() == EDQUOT ? errc::no_space : errc::io_error,
                  "cannot create checkpoint directory '" + path.string() + "': " + ec.message());
    // What dead writers of this rank's file (and rank 0: of the manifest) left here. Only one's
    // own names: where locks are local to a host (NFS mounted nolock), another host's live
    // writer would look dead.
    detail::remove_stale_temps_of(path, checkpoint_file_path(path, rank_.rank).filename().string());
    if (rank_.rank == 0) {
      detail::remove_stale_temps_of(path, manifest_name);
      // Re-saving into a directory: it is incomplete until the new manifest is published.
      if (had_manifest && ::unlink((path / manifest_name).c_str()) != 0 && errno != ENOENT)
        throw_error(errc::io_error, "cannot retire the old manifest in '" + path.string() +
                                        "': " + os_message(errno));
    }
    if (barrier_) barrier_->begin(path, rank_);
    safetensors_write_options options;
    options.cancel = cancel_;
    write_safetensors(checkpoint_file_path(path, rank_.rank), sd, options);
    rank_file me = describe_rank_file(path, rank_.rank);
    me.round = round;
    if (parent_commits_) return detail::set_write_reply(detail::rank_file_json(me));
    commit_checkpoint(path, me, rank_, *barrier_, hook_.get(), kw, timeout_);
  }

 private:
  rank_info rank_;
  const std::atomic<bool>* cancel_;
  std::chrono::milliseconds timeout_;
  bool overwrite_ = false;
  bool parent_commits_ = false;
  std::unique_ptr<writer_hook> hook_;
  std::unique_ptr<barrier> barrier_;
};

}  // namespace

void write_safetensors(const fs::path& file, const state_dict& sd,
                       const safetensors_write_options& options) {
  reject_nul(file, "checkpoint path");
  if (file.filename().empty())
    throw_error(errc::invalid_argument,
                "checkpoint path '" + file.string() + "' has no file name");
  detail::encoded_header plan = detail::encode_header(sd, options.checksums);
  write_context ctx(file, plan.file_size());
  check_cancel(options, ctx);

  temp_file tmp(ctx, file);
  preallocate(tmp.fd(), plan.file_size(), ctx);
  write_data(tmp.fd(), plan, options, ctx);
  pwrite_all(tmp.fd(), plan.bytes.data(), plan.bytes.size(), 0, ctx);
  if (::fsync(tmp.fd()) != 0) ctx.os_failure("fsync failed", errno);
  tmp.close(ctx);
  check_cancel(options, ctx);
  if (::rename(tmp.path().c_str(), file.c_str()) != 0)
    ctx.os_failure("cannot rename the temporary file over the target", errno);
  tmp.commit();
  fsync_directory(ctx.directory(), ctx);
}

fs::path checkpoint_file_path(const fs::path& dir, int rank) {
  if (rank < 0)
    throw_error(errc::invalid_argument, "rank must be non-negative, not " + std::to_string(rank));
  return dir / ("checkpoint_" + std::to_string(rank) + ".safetensors");
}

std::unique_ptr<checkpoint_writer> make_default_writer(const kwargs& args,
                                                       const std::atomic<bool>* cancel) {
  return std::make_unique<default_writer>(args, cancel);
}

}  // namespace shmckpt
