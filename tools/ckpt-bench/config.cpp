// config.cpp — see config.hpp.
#include "config.hpp"

#include <cctype>
#include <sstream>
#include <stdexcept>

#include "stats.hpp"

namespace ckpt_bench {

using namespace shmckpt;

std::uint64_t parse_size(const std::string& text) {
  std::size_t pos = 0;
  unsigned long long n = std::stoull(text, &pos);
  std::string suffix = text.substr(pos);
  for (auto& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix == "" || suffix == "B") return n;
  if (suffix == "K" || suffix == "KB" || suffix == "KIB") return n * KiB;
  if (suffix == "M" || suffix == "MB" || suffix == "MIB") return n * MiB;
  if (suffix == "G" || suffix == "GB" || suffix == "GIB") return n * GiB;
  throw std::invalid_argument("cannot read size '" + text + "' (use e.g. 64M, 1G)");
}

writer_variant parse_variant(const std::string& text) {
  writer_variant v;
  v.name = text;
  std::stringstream ss(text);
  std::string part;
  bool first = true;
  while (std::getline(ss, part, '+')) {
    auto number = [&](std::size_t at) { return std::stoi(part.substr(at)); };
    if (first) {
      first = false;
      if (part == "default") continue;
      if (part == "buffered")
        v.writer_args["io"] = "buffered";
      else if (part != "direct")
        throw std::invalid_argument("variant '" + text +
                                    "' must start with default, buffered or direct");
      v.priority = child_priority{};
      v.priority.nice = 0;
      v.priority.policy = child_cpu_policy::inherit;
      v.priority.io_class = child_io_class::inherit;
      continue;
    }
    if (part == "nosum")
      v.writer_args["checksums"] = "false";
    else if (part.rfind("nice", 0) == 0)
      v.priority.nice = number(4);
    else if (part == "batch")
      v.priority.policy = child_cpu_policy::batch;
    else if (part == "idle")
      v.priority.policy = child_cpu_policy::idle;
    else if (part == "normal")
      v.priority.policy = child_cpu_policy::normal;
    else if (part == "ioidle")
      v.priority.io_class = child_io_class::idle;
    else if (part.rfind("iobe", 0) == 0) {
      v.priority.io_class = child_io_class::best_effort;
      v.priority.io_level = number(4);
    } else if (part.rfind("cpu", 0) == 0)
      v.priority.cpus.push_back(number(3));
    else
      throw std::invalid_argument("variant '" + text + "': unknown part '" + part + "'");
  }
  return v;
}

}  // namespace ckpt_bench
