// shmckpt/error.hpp — the one error model of shmckpt.
//
// Every failure the library reports is one of the `errc` values below, registered as a
// `std::error_category` named "shmckpt". Fallible calls throw `shmckpt::error` (a
// `std::system_error`) whose code is one of these values and whose `what()` names the thing that
// failed, the values involved and what to do about it. The enum separates caller misuse
// (`invalid_argument`) from damaged input (`corrupt_data`) so that tools can react differently
// (ckpt-inspect exits 2 for the first and 3 for the second).
//
// Thread safety: everything here is stateless and safe to use from any thread.
#pragma once

#include <memory>
#include <string>
#include <system_error>

namespace shmckpt {

enum class errc {
  invalid_argument = 1,  // the caller passed something unusable (bad path, bad option, bad shape)
  corrupt_data,          // bytes from a file or from the peer are malformed (data loss)
  not_found,             // a file, key, function or factory does not exist
  no_space,              // shared memory or disk has no room for the request
  io_error,              // the operating system refused a read, write, fsync, rename or map
  timeout,               // a deadline expired (init, shutdown, a wait on a peer)
  child_failed,          // the checkpoint child reported an error (init, writer factory, writer)
  child_terminated,      // the checkpoint child died or the control channel broke
  protocol_error,        // the peer spoke a different protocol version or sent a bad frame
  closed,                // the object was used after close()
  unsupported,           // the system lacks a required facility (e.g. pidfd_open, memfd)
};

/// The "shmckpt" error category. Its message() gives a short description of each `errc`.
const std::error_category& category() noexcept;

/// Makes `std::error_code{e, shmckpt::category()}`.
std::error_code make_error_code(errc e) noexcept;

/// The exception every throwing shmckpt call uses: a `std::system_error` whose code is in
/// `shmckpt::category()` and whose message is the context given at the throw site.
class error : public std::system_error {
 public:
  error(errc code, const std::string& what);
  /// The failure mode, without the need to compare categories.
  errc kind() const noexcept { return static_cast<errc>(code().value()); }
  /// The context message alone (std::system_error would append the category's text).
  const char* what() const noexcept override;

 private:
  std::shared_ptr<const std::string> message_;  // shared: copying an exception must not throw
};

/// Throws `error(code, what)`. Out of line to keep throw sites small.
[[noreturn]] void throw_error(errc code, const std::string& what);

}  // namespace shmckpt

template <>
struct std::is_error_code_enum<shmckpt::errc> : std::true_type {};
