// tree_decode.cpp — rebuilding a state dict from the "shmckpt.tree" document (see tree.hpp).
#include "format/tree.hpp"

#include <bit>
#include <cstdlib>
#include <optional>
#include <unordered_map>

#include "format/strict_json.hpp"
#include "format/text.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

class tree_decoder {
 public:
  tree_decoder(const parsed_header& h, const std::function<value(std::size_t)>& make_tensor,
               const std::string& label)
      : h_(h), make_tensor_(make_tensor), ctx_(label + ": __metadata__ 'shmckpt.tree'"),
        used_(h.entries.size(), false) {
    if (const std::string* v = find_metadata(h, "shmckpt.version")) version_ = std::atoi(v->c_str());
  }

  state_dict decode_root() {
    std::string path;
    const json::value* payload = tagged(h_.tree->root, "dict");
    if (!payload) fail(path, "not a {\"dict\": ...} node");
    state_dict root = decode_dict(*payload, path, 1);
    for (std::size_t i = 0; i < used_.size(); ++i)
      if (!used_[i])
        throw_error(errc::corrupt_data, ctx_ + ": tensor " + quote_name(h_.entries[i].name) +
                                            " is in the header but nowhere in the tree");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw_error(errc::corrupt_data, ctx_ + ": " + at_path(path) + ": " + what);
  }

  // The payload of {"<tag>": payload}, or nullptr when `v` is not that one-key object.
  static const json::value* tagged(const json::value& v, std::string_view tag) {
    if (!v.is_object() || v.get_object().size() != 1) return nullptr;
    const auto& kv = *v.get_object().begin();
    if (std::string_view(kv.key().data(), kv.key().size()) != tag) return nullptr;
    return &kv.value();
  }

  std::string decode_string(const json::value& v, const std::string& path, const char* what) {
    if (v.is_string()) return std::string(v.get_string().data(), v.get_string().size());
    if (const json::value* hex = tagged(v, "bytes")) {
      if (hex->is_string()) {
        auto bytes = parse_hex_bytes({hex->get_string().data(), hex->get_string().size()});
        if (bytes) return *bytes;
      }
      fail(path, std::string(what) + " {\"bytes\": ...} does not hold lowercase hex digit pairs");
    }
    fail(path, std::string(what) + " is a JSON " + kind_of(v) + ", not a string");
  }

  dict decode_dict(const json::value& payload, std::string& path, std::size_t depth,
                   key_type keys = key_type::string) {
    if (depth > max_tree_depth)
      fail(path, "nests deeper than " + std::to_string(max_tree_depth) + " levels");
    if (!payload.is_array())
      fail(path, "dict payload is a JSON " + kind_of(payload) + ", not an array");
    dict d;
    d.set_key_type(keys);
    for (const auto& item : payload.get_array()) {
      if (!item.is_array() || item.get_array().size() != 2)
        fail(path, "dict item is not a [key, value] pair");
      std::string key;
      if (keys == key_type::integer) {
        const json::value& k = item.get_array()[0];
        if (!k.is_int64())
          fail(path, "integer-keyed dict has a key that is a JSON " + kind_of(k) +
                         ", not an integer in the int64 range");
        key = std::to_string(k.get_int64());
      } else {
        key = decode_string(item.get_array()[0], path, "dict key");
      }
      if (contains(d, key)) fail(path, "dict has the key " + quote_name(key) + " twice");
      std::size_t mark = path.size();
      push_path(path, key);
      value v = decode_value(item.get_array()[1], path, depth);
      path.resize(mark);
      d.insert_or_assign(std::move(key), std::move(v));
    }
    return d;
  }

  // `depth` is the depth of the container holding `v`.
  value decode_value(const json::value& v, std::string& path, std::size_t depth) {
    switch (v.kind()) {
      case json::kind::null: return none;
      case json::kind::bool_: return v.get_bool();
      case json::kind::int64: return v.get_int64();
      case json::kind::uint64:
        fail(path, "integer " + std::to_string(v.get_uint64()) + " is outside the int64 range");
      case json::kind::double_:
        fail(path, "bare JSON number; floats are written as {\"float\": \"<16 hex digits>\"}");
      case json::kind::string: return std::string(v.get_string().data(), v.get_string().size());
      case json::kind::array: return decode_list(v.get_array(), path, depth);
      case json::kind::object: break;
    }
    const auto& o = v.get_object();
    if (o.size() != 1)
      fail(path, "object with " + std::to_string(o.size()) +
                     " keys; expected one of dict, idict, tuple, float, bytes, tensor");
    std::string_view tag(o.begin()->key().data(), o.begin()->key().size());
    const json::value& payload = o.begin()->value();
    if (tag == "dict") return decode_dict(payload, path, depth + 1);
    if (tag == "idict" || tag == "tuple") {
      if (version_ < 2)
        fail(path, "node type " + quote_name(tag) + " needs 'shmckpt.version' 2 or later");
      if (tag == "idict") return decode_dict(payload, path, depth + 1, key_type::integer);
      if (!payload.is_array())
        fail(path, "tuple payload is a JSON " + kind_of(payload) + ", not an array");
      return tuple(decode_list(payload.get_array(), path, depth));
    }
    if (tag == "bytes") return decode_string(v, path, "string");
    if (tag == "float") {
      std::optional<std::uint64_t> bits;
      if (payload.is_string())
        bits = parse_hex64({payload.get_string().data(), payload.get_string().size()});
      if (!bits) fail(path, "float is not a string of 16 lowercase hex digits");
      return std::bit_cast<double>(*bits);
    }
    if (tag == "tensor") {
      if (!payload.is_string()) fail(path, "tensor reference is not a string");
      std::string_view name(payload.get_string().data(), payload.get_string().size());
      std::size_t i = finder_.find(name);
      if (i == npos)
        fail(path, "refers to tensor " + quote_name(name) + ", which is not in the header");
      if (used_[i]) fail(path, "refers to tensor " + quote_name(name) + " a second time");
      if (name != path)
        fail(path, "refers to tensor " + quote_name(name) +
                       "; the tensor at this path must be named " + quote_name(path));
      used_[i] = true;
      return make_tensor_(i);
    }
    fail(path, "unknown node type " + quote_name(tag));
  }

  // `depth` is the depth of the container holding the list.
  list decode_list(const json::array& a, std::string& path, std::size_t depth) {
    if (depth + 1 > max_tree_depth)
      fail(path, "nests deeper than " + std::to_string(max_tree_depth) + " levels");
    list l;
    l.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      std::size_t mark = path.size();
      push_path(path, std::to_string(i));
      l.push_back(decode_value(a[i], path, depth + 1));
      path.resize(mark);
    }
    return l;
  }

  // Small dicts are scanned; dict::contains builds a std::string for every probe.
  static bool contains(const dict& d, std::string_view key) {
    if (d.size() > 16) return d.contains(key);
    for (const auto& item : d)
      if (item.first == key) return true;
    return false;
  }

  static constexpr std::size_t npos = entry_finder::npos;

  const parsed_header& h_;
  const std::function<value(std::size_t)>& make_tensor_;
  std::string ctx_;
  std::vector<bool> used_;
  int version_ = 1;  // of the file; checked to be a known one before decoding starts
  entry_finder finder_{h_.entries};
};

}  // namespace

state_dict decode_tree(const parsed_header& h,
                       const std::function<value(std::size_t)>& make_tensor,
                       const std::string& label) {
  tree_decoder dec(h, make_tensor, label);
  return dec.decode_root();
}

}  // namespace shmckpt::detail
