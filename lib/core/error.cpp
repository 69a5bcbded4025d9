#include "shmckpt/error.hpp"

namespace shmckpt {
namespace {

class category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "shmckpt"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::invalid_argument: return "invalid argument";
      case errc::corrupt_data: return "corrupt or malformed data";
      case errc::not_found: return "not found";
      case errc::no_space: return "not enough space";
      case errc::io_error: return "input/output error";
      case errc::timeout: return "timed out";
      case errc::child_failed: return "checkpoint child reported an error";
      case errc::child_terminated: return "checkpoint child terminated unexpectedly";
      case errc::protocol_error: return "control protocol error";
      case errc::closed: return "used after close";
      case errc::unsupported: return "not supported on this system";
    }
    return "unknown shmckpt error " + std::to_string(ev);
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const category_impl instance;
  return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

error::error(errc code, const std::string& what)
    : std::system_error(make_error_code(code), what),
      message_(std::make_shared<const std::string>(what)) {}

const char* error::what() const noexcept { return message_->c_str(); }

void throw_error(errc code, const std::string& what) { throw error(code, what); }

}  // namespace shmckpt
