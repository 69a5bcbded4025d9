// tree_encode.cpp — a state dict's tree as the "shmckpt.tree" document (see tree.hpp).
#include "format/tree.hpp"

#include <bit>
#include <unordered_set>

#include "format/text.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {

namespace {

class tree_encoder {
 public:
  explicit tree_encoder(std::vector<planned_tensor>& out) : tensors_(out) {}

  // Whether the tree needs format version 2 (an integer-keyed dict or a tuple): files without
  // them stay version 1, readable by every earlier reader.
  bool uses_v2() const noexcept { return uses_v2_; }

  void encode_dict(std::string& out, const dict& d, std::string& path, std::size_t depth) {
    bool int_keys = d.keys() == key_type::integer;
    uses_v2_ |= int_keys;
    out += int_keys ? "{\"idict\":[" : "{\"dict\":[";
    bool first = true;
    for (const auto& [key, v] : d) {
      if (!first) out += ',';
      first = false;
      out += '[';
      if (int_keys)
        out += key;  // canonical int64 text (dict enforces it) is a JSON integer as it stands
      else
        encode_string(out, key);
      out += ',';
      std::size_t mark = path.size();
      push_path(path, key);
      encode_value(out, v, path, depth);
      path.resize(mark);
      out += ']';
    }
    out += "]}";
  }

 private:
  // `depth` is the depth of the container holding `v`.
  void encode_value(std::string& out, const value& v, std::string& path, std::size_t depth) {
    switch (v.type()) {
      case kind::none: out += "null"; break;
      case kind::boolean: out += v.as_bool() ? "true" : "false"; break;
      case kind::integer: out += std::to_string(v.as_int()); break;
      case kind::real:
        // Bit pattern, not decimal: NaN payloads, -0.0 and infinities survive exactly.
        out += "{\"float\":\"";
        out += hex64(std::bit_cast<std::uint64_t>(v.as_double()));
        out += "\"}";
        break;
      case kind::string: encode_string(out, v.as_string()); break;
      case kind::list:
      case kind::tuple: {
        check_depth(depth + 1, path);
        bool is_tuple = v.type() == kind::tuple;
        uses_v2_ |= is_tuple;
        out += is_tuple ? "{\"tuple\":[" : "[";
        const auto& l = v.as_sequence();
        for (std::size_t i = 0; i < l.size(); ++i) {
          if (i) out += ',';
          std::size_t mark = path.size();
          push_path(path, std::to_string(i));
          encode_value(out, l[i], path, depth + 1);
          path.resize(mark);
        }
        out += is_tuple ? "]}" : "]";
        break;
      }
      case kind::dict:
        check_depth(depth + 1, path);
        encode_dict(out, v.as_dict(), path, depth + 1);
        break;
      case kind::tensor:
        add_tensor(path, v.as_tensor());
        out += "{\"tensor\":";
        append_quoted(out, path);
        out += '}';
        break;
    }
  }

  // Strings that are not UTF-8 cannot appear in JSON; they travel as hex bytes instead.
  static void encode_string(std::string& out, const std::string& s) {
    if (valid_utf8(s)) {
      append_quoted(out, s);
    } else {
      out += "{\"bytes\":\"";
      out += hex_bytes(s);
      out += "\"}";
    }
  }

  static void check_depth(std::size_t depth, const std::string& path) {
    if (depth > max_tree_depth)
      throw_error(errc::invalid_argument,
                  "state dict nests deeper than " + std::to_string(max_tree_depth) + " levels " +
                      at_path(path) + "; checkpoint files cannot represent it");
  }

  void add_tensor(const std::string& name, const tensor& t) {
    if (name == "__metadata__")
      throw_error(errc::invalid_argument,
                  "tensor name '__metadata__' is reserved by the safetensors format");
    if (!valid_utf8(name))
      throw_error(errc::invalid_argument,
                  "tensor name " + quote_name(name) + " is not valid UTF-8");
    if (t.shape().size() > max_tensor_rank)
      throw_error(errc::invalid_argument,
                  "tensor " + quote_name(name) + " has " + std::to_string(t.shape().size()) +
                      " dimensions, more than the " + std::to_string(max_tensor_rank) +
                      " a checkpoint file may hold");
    if (!names_.insert(name).second)
      throw_error(errc::invalid_argument,
                  "two tensors flatten to the same name " + quote_name(name) +
                      " (keys are joined with '.'); rename one so the key paths differ");
    planned_tensor p;
    p.name = name;
    p.source = &t;
    p.nbytes = t.nbytes();
    tensors_.push_back(std::move(p));
  }

  bool uses_v2_ = false;
  std::vector<planned_tensor>& tensors_;
  std::unordered_set<std::string> names_;
};

}  // namespace

bool encode_tree(const state_dict& sd, std::string& out, std::vector<planned_tensor>& tensors) {
  tree_encoder enc(tensors);
  std::string path;
  enc.encode_dict(out, sd, path, 1);
  return enc.uses_v2();
}

}  // namespace shmckpt::detail
