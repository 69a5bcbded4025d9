// writer.cpp — moving a planned checkpoint file onto disk, durably and atomically.
//
// The sequence is the classic one, and every step is there for a reason:
//
//   1. plan the header (safetensors.cpp) — all validation of the tree happens here, before any
//      file exists, so a state dict that cannot be written leaves no trace at all. The header is
//      padded with spaces so that the data section starts at a multiple of 4096;
//   2. create `.<name>.tmp.<pid>.<n>` beside the target (io/durable_file.hpp: O_EXCL, the
//      temp-file lock, fallocate of the full size so a full disk fails at once);
//   3. write the data section straight from the tensors' memory — in the checkpoint child that
//      memory is the shared segment — hashing each tensor on the way, checking the cancel flag
//      and reporting progress between batches (8 MiB, growing to 64 MiB on the direct path);
//   4. write the now-final header (checksums filled in) at offset 0;
//   5. fsync, close, rename over the target, fsync the directory (durable_file::commit).
//
// Step 3 has two paths. **Direct** (where the filesystem supports O_DIRECT and is not a memory
// filesystem): the file is a stream of blocks of the filesystem's O_DIRECT granularity. Every
// block that lies inside one tensor whose address is aligned like its file offset goes to the
// disk straight from the tensor's memory — runs of them merge into large pwritev calls — and
// every other block (the piece two tensors share, a tensor whose address is misaligned, the last
// partial block, padded with zeros and cut off again by ftruncate) is gathered into a small
// aligned bounce buffer. No byte is copied into the page cache, so nothing is left for
// write-back to flush and the trainer's caches and memory bandwidth are spared; the checksum
// pass (XXH3) is the only time the CPU reads the tensors, in pieces of a few hundred KiB right
// before they are queued. A refusal of O_DIRECT at the first write (EINVAL: some FUSE and
// network filesystems) switches the same file back to the buffered path from its start.
// **Buffered**: pwritev from the tensors' memory (the copy into the page cache is the kernel's),
// write-back of each chunk started at once so the final fsync has little left to do.
//
// Until the rename the target is untouched; on any failure before it the temporary file is
// removed (durable_file). After the rename only the directory fsync can fail; the new file is
// then in place but its durability unknown, and the error says so.
//
// Thread safety: write_safetensors keeps no shared state except an atomic counter for names.
#include "shmckpt/writer.hpp"

#include <chrono>

#include "shmckpt/commit.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "commit/manifest.hpp"
#include "core/progress.hpp"
#include "core/util.hpp"
#include "core/xxh3.hpp"
#include "core/write_reply.hpp"
#include "format/safetensors.hpp"
#include "io/durable_file.hpp"
#include "io/temp_file.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt {
namespace {

namespace fs = std::filesystem;
using detail::durable_file;

std::string os_message(int err) { return std::system_category().message(err); }

// Large enough that per-call overhead vanishes, small enough that a cancel is seen quickly.
constexpr std::size_t chunk_bytes = std::size_t{8} << 20;
// The direct path's batches start at chunk_bytes and double up to this. Each pwritev waits for
// all of its blocks, so every call ends with the device's queue drained; fewer, larger calls
// drain it less often. Measured on an AMD EPYC guest: 8 MiB calls wrote 0.85-0.9x as fast as
// one call for the whole file, 64 MiB calls as fast as it (docs/benchmarks.md). The small first
// batch keeps the start (and the check that O_DIRECT is accepted) quick; at ~1 GB/s a batch of
// 64 MiB still sees a cancel within about 0.1 s.
constexpr std::size_t max_direct_batch = std::size_t{64} << 20;
constexpr std::size_t max_iovecs = IOV_MAX;
// Where the data section starts; also the coarsest O_DIRECT alignment the direct path serves.
constexpr std::size_t data_alignment = 4096;
// The bounce buffer of the direct path: a multiple of every block size it serves.
constexpr std::size_t bounce_bytes = std::size_t{1} << 20;
// Checksums are computed in pieces this large, each right before it is queued for writing.
constexpr std::size_t hash_piece = std::size_t{256} << 10;

void check_cancel(const safetensors_write_options& options, const durable_file& f) {
  if (options.cancel && options.cancel->load(std::memory_order_relaxed))
    throw_error(errc::closed, f.label() + ": cancelled; the previous checkpoint at this path "
                                          "(if any) is unchanged");
}

void report(const durable_file& f, std::uint64_t done, std::uint64_t total) {
  // Tells the parent's watchdog (in the checkpoint child) that the write moves, and how far.
  char where[96];
  std::snprintf(where, sizeof where, ": %.1f of %.1f MiB written",
                static_cast<double>(done) / (1 << 20), static_cast<double>(total) / (1 << 20));
  detail::report_progress(f.label() + where);
}

using hash_state = std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)>;
hash_state new_hash() {
  hash_state h(XXH3_createState(), &XXH3_freeState);
  if (!h) throw std::bad_alloc();
  return h;
}

// ---- the buffered path ------------------------------------------------------------------------

// Writes every tensor's bytes into the data section and fills in the checksums of `plan`.
void write_data_buffered(durable_file& f, detail::encoded_header& plan,
                         const safetensors_write_options& options) {
  hash_state hash = new_hash();
  std::vector<iovec> iov;
  iov.reserve(max_iovecs);
  std::uint64_t batch_offset = plan.bytes.size();
  std::size_t batch_size = 0;
  auto flush = [&] {
    check_cancel(options, f);
    if (iov.empty()) return;
    f.pwritev_all(iov, batch_offset);
    // Start writeback now; fsync later waits for less. Errors surface at fsync.
    ::sync_file_range(f.fd(), static_cast<off_t>(batch_offset), static_cast<off_t>(batch_size),
                      SYNC_FILE_RANGE_WRITE);
    batch_offset += batch_size;
    batch_size = 0;
    iov.clear();
    report(f, batch_offset, plan.file_size());
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

// ---- the direct path --------------------------------------------------------------------------

// Thrown by the first direct write when the filesystem refuses O_DIRECT after accepting the flag.
struct direct_refused {};

struct aligned_free {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};
using aligned_buffer = std::unique_ptr<std::byte, aligned_free>;

aligned_buffer aligned_alloc_bytes(std::size_t n) {
  void* p = std::aligned_alloc(data_alignment, n);
  if (!p) throw std::bad_alloc();
  return aligned_buffer(static_cast<std::byte*>(p));
}

// Writes batches in order on a helper thread, with up to two outstanding: one being written and
// one queued behind it. The disk then goes from one batch straight to the next, without waiting
// for the assembling thread to be scheduled and hand it over (with every core busy that
// hand-over cost milliseconds per 8 MiB batch), and the next batch is hashed and assembled
// meanwhile, so the checksum pass costs no wall time.
class write_pipeline {
 public:
  explicit write_pipeline(durable_file& f) : f_(f), thread_([this] { run(); }) {}
  write_pipeline(const write_pipeline&) = delete;
  write_pipeline& operator=(const write_pipeline&) = delete;
  ~write_pipeline() {
    {
      std::lock_guard g(m_);
      stop_ = true;  // a queued batch is dropped: only a failure destroys a busy pipeline
    }
    cv_.notify_all();
    thread_.join();  // after the batch being written, if any: it reads memory its owner holds
  }

  // Queues `iov` (`bytes` bytes) to be written at `off`; `iov` comes back empty. Requires
  // fewer than two outstanding (wait_until(1) first).
  void submit(std::vector<iovec>& iov, std::uint64_t off, std::uint64_t bytes, bool refusable) {
    {
      std::lock_guard g(m_);
      job& j = jobs_[(head_ + count_) % 2];
      j.iov.swap(iov);
      iov.clear();
      j.off = off;
      j.bytes = bytes;
      j.refusable = refusable;
      ++count_;
    }
    cv_.notify_all();
  }

  // Waits until at most `n` batches are outstanding. Rethrows a failure; returns EINVAL when a
  // refusable batch was refused (nothing of it written), else 0.
  int wait_until(std::size_t n) {
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] { return count_ <= n; });
    if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
    return std::exchange(refused_, 0);
  }

  // Bytes of the batches written so far.
  std::uint64_t written() {
    std::lock_guard g(m_);
    return written_;
  }

 private:
  struct job {
    std::vector<iovec> iov;
    std::uint64_t off = 0;
    std::uint64_t bytes = 0;
    bool refusable = false;
  };

  void run() {
    std::unique_lock lk(m_);
    for (;;) {
      cv_.wait(lk, [&] { return count_ > 0 || stop_; });
      if (stop_) return;
      job& j = jobs_[head_];  // submit() fills only the other slot meanwhile
      lk.unlock();
      int refused = 0;
      std::exception_ptr failure;
      try {
        refused = f_.pwritev_all(j.iov, j.off, j.refusable);
      } catch (...) {
        failure = std::current_exception();
      }
      lk.lock();
      j.iov.clear();
      head_ = (head_ + 1) % 2;
      --count_;
      if (failure || refused) {
        failure_ = failure;
        refused_ = refused;
        count_ = 0;  // nothing after a failed batch is written
      } else {
        written_ += j.bytes;
      }
      cv_.notify_all();
    }
  }

  durable_file& f_;
  std::mutex m_;
  std::condition_variable cv_;
  job jobs_[2];            // (m_) a ring: jobs_[head_] first, count_ of them outstanding
  std::size_t head_ = 0;   // (m_)
  std::size_t count_ = 0;  // (m_)
  std::uint64_t written_ = 0;
  bool stop_ = false;
  int refused_ = 0;
  std::exception_ptr failure_;
  std::thread thread_;  // last: starts after every member it uses exists
};

// Assembles the data section as a stream of `block`-sized pieces: batches of iovecs, contiguous
// in the file, each either a run of tensor memory or a stretch of the bounce buffer.
class direct_stream {
 public:
  direct_stream(durable_file& f, detail::direct_alignment a, const detail::encoded_header& plan,
                const safetensors_write_options& options, safetensors_write_result& result)
      : f_(f), a_(a), block_(a.offset), options_(options), result_(result),
        total_(plan.file_size()), pos_(plan.bytes.size()), batch_offset_(pos_),
        bounce_{aligned_alloc_bytes(bounce_bytes), aligned_alloc_bytes(bounce_bytes),
                aligned_alloc_bytes(bounce_bytes)},
        pipeline_(f) {
    iov_.reserve(max_iovecs);
  }

  // Appends `n` bytes of tensor memory at `p` (the next bytes of the file).
  void append(const std::byte* p, std::uint64_t n) {
    while (n > 0) {
      // Finish a partly assembled block first.
      if (pos_ % block_ != 0) {
        std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, block_ - pos_ % block_));
        gather(p, k);
        p += k;
        n -= k;
        continue;
      }
      std::uint64_t whole = n / block_ * block_;
      if (whole == 0) {  // a last partial block of this tensor: the next tensor may finish it
        gather(p, static_cast<std::size_t>(n));
        return;
      }
      if (reinterpret_cast<std::uintptr_t>(p) % a_.memory == 0) {
        direct(p, whole);
      } else {
        // Misaligned memory: every block of it through the bounce buffer.
        for (std::uint64_t done = 0; done < whole;) {
          std::size_t k = static_cast<std::size_t>(
              std::min<std::uint64_t>(whole - done, bounce_bytes - used_));
          gather(p + done, k);
          done += k;
        }
      }
      p += whole;
      n -= whole;
    }
  }

  // Pads the last block with zeros, writes everything queued and returns the bytes written
  // beyond the data section's end (to be cut off with ftruncate).
  std::uint64_t finish() {
    std::uint64_t pad = (block_ - pos_ % block_) % block_;
    if (pad > 0) {
      std::memset(bounce() + used_, 0, static_cast<std::size_t>(pad));
      queue(bounce() + used_, static_cast<std::size_t>(pad));
      used_ += static_cast<std::size_t>(pad);
      pos_ += pad;
    }
    flush();
    settle(0);
    return pad;
  }

 private:
  void direct(const std::byte* p, std::uint64_t n) {
    while (n > 0) {
      if (batch_bytes_ >= batch_limit_) flush();  // bounce bytes may have filled the batch
      std::size_t k =
          static_cast<std::size_t>(std::min<std::uint64_t>(n, batch_limit_ - batch_bytes_));
      // pwritev only reads through iov_base; the cast drops const for the C interface.
      queue(const_cast<std::byte*>(p), k);
      result_.direct_bytes += k;
      pos_ += k;
      p += k;
      n -= k;
      // Room is left for one bounce entry, which may have to finish a block before a flush.
      if (batch_bytes_ >= batch_limit_ || iov_.size() + 1 >= max_iovecs) flush();
    }
  }

  void gather(const std::byte* p, std::size_t n) {
    if (used_ + n > bounce_bytes) flush();  // only at block boundaries: see append()
    std::memcpy(bounce() + used_, p, n);
    queue(bounce() + used_, n);
    used_ += n;
    pos_ += n;
    result_.bounced_bytes += n;
    if (pos_ % block_ == 0 && (used_ == bounce_bytes || iov_.size() + 1 >= max_iovecs)) flush();
  }

  // Adds `n` bytes at `p` to the batch, extending the last entry when `p` continues it.
  void queue(std::byte* p, std::size_t n) {
    if (!iov_.empty() && static_cast<std::byte*>(iov_.back().iov_base) + iov_.back().iov_len == p)
      iov_.back().iov_len += n;
    else
      iov_.push_back({p, n});
    batch_bytes_ += n;
  }

  std::byte* bounce() const noexcept { return bounce_[current_].get(); }

  // Hands the batch to the pipeline and starts the next in the next bounce buffer; called only
  // at block boundaries (pos_ % block_ == 0). The first batch is written alone, so that a
  // refusal of O_DIRECT is seen before anything else is queued; after it, one batch may wait
  // behind the one being written. The buffer the next batch is assembled in is then free: its
  // last user is two batches back, and at most one is outstanding before this submit.
  void flush() {
    check_cancel(options_, f_);
    if (iov_.empty()) return;
    settle(submitted_ == 1 ? 0 : 1);
    pipeline_.submit(iov_, batch_offset_, batch_bytes_, /*refusable=*/submitted_ == 0);
    ++submitted_;
    batch_offset_ += batch_bytes_;
    batch_bytes_ = 0;
    batch_limit_ = std::min(batch_limit_ * 2, max_direct_batch);
    used_ = 0;
    current_ = (current_ + 1) % 3;
  }

  // Waits until at most `outstanding` batches are left; a refusal of the very first one means
  // O_DIRECT is refused.
  void settle(std::size_t outstanding) {
    if (submitted_ == 0) return;
    if (pipeline_.wait_until(outstanding) != 0) throw direct_refused{};
    std::uint64_t written = pos0_ + pipeline_.written();
    if (written != reported_) {
      reported_ = written;
      report(f_, std::min(written, total_), total_);
    }
  }

  durable_file& f_;
  detail::direct_alignment a_;
  std::size_t block_;
  const safetensors_write_options& options_;
  safetensors_write_result& result_;
  std::uint64_t total_;
  std::uint64_t pos_;           // file offset of the next byte appended
  std::uint64_t batch_offset_;  // file offset of the batch's first byte
  std::uint64_t batch_bytes_ = 0;
  std::size_t batch_limit_ = chunk_bytes;  // grows to max_direct_batch, batch by batch
  std::uint64_t pos0_ = pos_;      // where the data section starts
  std::uint64_t reported_ = pos_;  // file offset up to which progress was reported
  std::vector<iovec> iov_;
  aligned_buffer bounce_[3];  // the batch being assembled, the one queued, the one being written
  int current_ = 0;
  std::size_t used_ = 0;  // bytes of the current bounce buffer the batch refers to
  std::size_t submitted_ = 0;  // batches handed to the pipeline
  write_pipeline pipeline_;  // after the buffers: joined before they are freed
};

void write_data_direct(durable_file& f, detail::direct_alignment a, detail::encoded_header& plan,
                       const safetensors_write_options& options,
                       safetensors_write_result& result) {
  hash_state hash = new_hash();
  direct_stream out(f, a, plan, options, result);
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const auto& t = plan.tensors[i];
    XXH3_64bits_reset(hash.get());
    const std::byte* p = t.source->data();
    for (std::uint64_t done = 0; done < t.nbytes;) {
      std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(t.nbytes - done, hash_piece));
      if (plan.checksums) XXH3_64bits_update(hash.get(), p + done, k);
      out.append(p + done, k);
      done += k;
    }
    if (plan.checksums) detail::set_checksum(plan, i, XXH3_64bits_digest(hash.get()));
  }
  std::uint64_t pad = out.finish();
  // The header, whose size is a multiple of data_alignment, from an aligned copy.
  aligned_buffer header = aligned_alloc_bytes(plan.bytes.size());
  std::memcpy(header.get(), plan.bytes.data(), plan.bytes.size());
  f.pwrite_all(header.get(), plan.bytes.size(), 0);
  if (pad > 0) f.truncate(plan.file_size());
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
    checksums_ = bool_arg(args, "checksums", true);
    if (auto it = args.find("io"); it != args.end()) {
      if (it->second == "buffered") io_ = write_io::buffered;
      else if (it->second != "auto")
        throw_error(errc::invalid_argument, "default writer: argument 'io' is '" + it->second +
                                                "', not auto or buffered");
    }
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
    options.io = io_;
    options.checksums = checksums_;
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
  write_io io_ = write_io::automatic;
  bool checksums_ = true;
  bool parent_commits_ = false;
  std::unique_ptr<writer_hook> hook_;
  std::unique_ptr<barrier> barrier_;
};

}  // namespace

safetensors_write_result write_safetensors(const fs::path& file, const state_dict& sd,
                                           const safetensors_write_options& options) {
  reject_nul(file, "checkpoint path");
  if (file.filename().empty())
    throw_error(errc::invalid_argument,
                "checkpoint path '" + file.string() + "' has no file name");
  detail::encoded_header plan = detail::encode_header(sd, options.checksums, data_alignment);
  safetensors_write_result result;
  result.file_bytes = plan.file_size();
  durable_file f(file, plan.file_size(), "writing checkpoint '" + file.string() + "'");
  check_cancel(options, f);

  detail::direct_alignment a;
  bool direct = options.io == write_io::automatic && f.enable_direct(a, data_alignment);
  if (direct) {
    try {
      write_data_direct(f, a, plan, options, result);
      result.path = write_path::direct;
    } catch (const direct_refused&) {
      // Nothing was written yet: the same file, from its start, through the page cache.
      f.disable_direct();
      result = safetensors_write_result{};
      result.file_bytes = plan.file_size();
      direct = false;
    }
  }
  if (!direct) {
    write_data_buffered(f, plan, options);
    f.pwrite_all(plan.bytes.data(), plan.bytes.size(), 0);
    result.path = write_path::buffered;
  }
  check_cancel(options, f);
  f.commit();
  return result;
}

std::unique_ptr<checkpoint_writer> make_default_writer(const kwargs& args,
                                                       const std::atomic<bool>* cancel) {
  return std::make_unique<default_writer>(args, cancel);
}

}  // namespace shmckpt
