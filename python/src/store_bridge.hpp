// A commit_store (shmckpt/commit_store.hpp) whose calls a Python thread serves.
//
// The library's commit thread must never take the GIL. So the store calls it makes are queued
// here as requests; the package's serving thread (python/shmckpt/_store.py) takes them with
// next() — waiting with the GIL released — runs them against the torch.distributed store, and
// answers. The commit thread waits for the answer, bounded (a get: its deadline plus a grace; a
// set or remove: set_bound), so a stuck or stopped Python thread fails the commit with
// error(timeout) instead of hanging it. close() fails every waiting and later call.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "shmckpt/commit_store.hpp"

namespace shmckpt::python {

class store_bridge final : public commit_store {
 public:
  // ---- the commit thread (no GIL) ----
  void set(const std::string& key, const std::string& value) override;
  std::optional<std::string> get(const std::string& key,
                                 std::chrono::steady_clock::time_point deadline) override;
  void remove(const std::string& key) override;

  // ---- the Python thread ----
  /// The next request as (id, op, key, value: bytes, timeout seconds), or None after
  /// `timeout_s` (or once closed). Releases the GIL while it waits.
  pybind11::object next(double timeout_s);
  /// Answers request `id`: None (absent / done) or the value as bytes.
  void answer(std::uint64_t id, const pybind11::object& value);
  /// Fails request `id` with `message` (the store raised).
  void fail(std::uint64_t id, const std::string& message);
  /// Fails every waiting and later call; next() returns None from now on.
  void close();
  bool closed();

 private:
  struct request {
    std::uint64_t id;
    std::string op, key, value;
    double timeout_s;
  };
  struct result {
    bool done = false;
    std::optional<std::string> value;
    std::string error;
  };
  std::optional<std::string> call(std::string op, const std::string& key, std::string value,
                                  std::chrono::steady_clock::time_point deadline,
                                  std::chrono::steady_clock::time_point bound);

  std::mutex m_;
  std::condition_variable cv_;
  bool closed_ = false;
  std::uint64_t next_id_ = 1;
  std::deque<request> requests_;
  std::map<std::uint64_t, result> results_;  // of requests handed out, until answered
};

/// Registers StoreBridge in module `m`.
void register_store_bridge(pybind11::module_& m);

}  // namespace shmckpt::python
