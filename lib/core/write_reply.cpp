#include "core/write_reply.hpp"

#include <utility>

namespace shmckpt::detail {
namespace {
thread_local std::string t_reply;
}  // namespace

void set_write_reply(std::string reply) { t_reply = std::move(reply); }

std::string take_write_reply() { return std::exchange(t_reply, std::string()); }

}  // namespace shmckpt::detail
