#include "state_check.hpp"

#include <bit>
#include <cstdint>
#include <string_view>

namespace ckpt_demo {

namespace {

std::optional<std::string> diff(const shmckpt::value& a, const shmckpt::value& b,
                                const std::string& path);

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::optional<std::string> diff(const shmckpt::dict& a, const shmckpt::dict& b,
                                const std::string& path) {
  if (a.keys() != b.keys())
    return (path.empty() ? std::string("the state") : path) + " (string keys vs integer keys)";
  auto ia = a.begin(), ib = b.begin();
  for (; ia != a.end() && ib != b.end(); ++ia, ++ib) {
    if (ia->first != ib->first)
      return join(path, ia->first) + " (key order differs: '" + ia->first + "' vs '" + ib->first +
             "')";
    if (auto d = diff(ia->second, ib->second, join(path, ia->first))) return d;
  }
  if (ia != a.end()) return join(path, ia->first) + " (missing from the saved state)";
  if (ib != b.end()) return join(path, ib->first) + " (missing from the reloaded checkpoint)";
  return std::nullopt;
}

std::optional<std::string> diff(const shmckpt::value& a, const shmckpt::value& b,
                                const std::string& path) {
  if (a.type() != b.type())
    return path + " (" + std::string(shmckpt::kind_name(a.type())) + " vs " +
           std::string(shmckpt::kind_name(b.type())) + ")";
  switch (a.type()) {
    case shmckpt::kind::dict:
      return diff(a.as_dict(), b.as_dict(), path);
    case shmckpt::kind::list:
    case shmckpt::kind::tuple: {
      const auto &la = a.as_sequence(), &lb = b.as_sequence();
      if (la.size() != lb.size())
        return path + " (list of " + std::to_string(la.size()) + " vs " +
               std::to_string(lb.size()) + " items)";
      for (std::size_t i = 0; i < la.size(); ++i)
        if (auto d = diff(la[i], lb[i], join(path, std::to_string(i)))) return d;
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

// FNV-1a, 64 bits: an exact fingerprint of a state (not a checksum against tampering), cheap
// enough to run over every tensor byte at the end of a run.
class fnv1a64 {
 public:
  void add(const void* data, std::size_t n) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
      h_ ^= p[i];
      h_ *= 0x100000001b3ull;
    }
  }
  void add(std::uint64_t v) noexcept { add(&v, sizeof v); }
  void add(std::string_view s) noexcept {
    add(static_cast<std::uint64_t>(s.size()));
    add(s.data(), s.size());
  }
  std::uint64_t value() const noexcept { return h_; }

 private:
  std::uint64_t h_ = 0xcbf29ce484222325ull;
};

void hash(fnv1a64& h, const shmckpt::dict& d);

// Every kind, key, shape and byte goes in, so two states agree only if they are identical.
void hash(fnv1a64& h, const shmckpt::value& v) {
  using shmckpt::kind;
  h.add(static_cast<std::uint64_t>(v.type()));
  switch (v.type()) {
    case kind::none:
      break;
    case kind::boolean:
      h.add(static_cast<std::uint64_t>(v.as_bool()));
      break;
    case kind::integer:
      h.add(static_cast<std::uint64_t>(v.as_int()));
      break;
    case kind::real:
      h.add(std::bit_cast<std::uint64_t>(v.as_double()));
      break;
    case kind::string:
      h.add(std::string_view(v.as_string()));
      break;
    case kind::list:
    case kind::tuple:
      h.add(static_cast<std::uint64_t>(v.as_sequence().size()));
      for (const auto& e : v.as_sequence()) hash(h, e);
      break;
    case kind::dict:
      hash(h, v.as_dict());
      break;
    case kind::tensor: {
      const auto& t = v.as_tensor();
      h.add(static_cast<std::uint64_t>(t.type()));
      h.add(static_cast<std::uint64_t>(t.shape().size()));
      for (auto d : t.shape()) h.add(static_cast<std::uint64_t>(d));
      h.add(t.data(), t.nbytes());
      break;
    }
  }
}

void hash(fnv1a64& h, const shmckpt::dict& d) {
  // Integer keys mark the dict (string-keyed dicts hash as they always did).
  if (d.keys() == shmckpt::key_type::integer) h.add(std::string_view("int-keys"));
  h.add(static_cast<std::uint64_t>(d.size()));
  for (const auto& [k, v] : d) {
    h.add(std::string_view(k));
    hash(h, v);
  }
}

}  // namespace
std::optional<std::string> first_difference(const shmckpt::dict& a, const shmckpt::dict& b) {
  return diff(a, b, "");
}

std::uint64_t fingerprint(const shmckpt::dict& sd) {
  fnv1a64 h;
  hash(h, sd);
  return h.value();
}

}  // namespace ckpt_demo
