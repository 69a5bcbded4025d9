// header_exact.cpp — the DOM validator behind header_exact.hpp.
#include "format/header_exact.hpp"

#include <optional>
#include <unordered_map>

#include <boost/json/monotonic_resource.hpp>

#include "format/safetensors.hpp"
#include "format/strict_json.hpp"
#include "format/text.hpp"
#include "shmckpt/error.hpp"

namespace shmckpt::detail {
namespace json = boost::json;

namespace {

// "<label>: tensor '<name>'", built only when an error is about to be thrown.
struct entry_context {
  const std::string& label;
  std::string_view name;
  std::string operator()() const { return label + ": tensor " + quote_name(name); }
};

// A non-negative integer that fits in 63 bits (dimensions) or 64 bits (offsets). `what()` names
// the field; it is called only on failure.
template <class What>
std::uint64_t unsigned_field(const json::value& v, bool allow_above_int64, const What& what) {
  if (v.is_int64()) {
    if (v.get_int64() < 0) [[unlikely]]
      throw_error(errc::corrupt_data, what() + " is " + std::to_string(v.get_int64()) +
                                          ", which is negative");
    return static_cast<std::uint64_t>(v.get_int64());
  }
  if (v.is_uint64()) {
    if (!allow_above_int64) [[unlikely]]
      throw_error(errc::corrupt_data, what() + " is " + std::to_string(v.get_uint64()) +
                                          ", larger than any tensor dimension can be");
    return v.get_uint64();
  }
  throw_error(errc::corrupt_data, what() + " is a JSON " + kind_of(v) + ", not an integer");
}

tensor_entry parse_entry(std::string_view name, const json::value& v, const entry_context& ctx) {
  if (!v.is_object())
    throw_error(errc::corrupt_data, ctx() + ": entry is a JSON " + kind_of(v) + ", not an object");
  const json::object& o = v.get_object();
  const json::value* type = nullptr;
  const json::value* shape = nullptr;
  const json::value* offsets = nullptr;
  for (const auto& kv : o) {
    std::string_view k(kv.key().data(), kv.key().size());
    if (k == "dtype") type = &kv.value();
    else if (k == "shape") shape = &kv.value();
    else if (k == "data_offsets") offsets = &kv.value();
    else throw_error(errc::corrupt_data, ctx() + ": unknown field " + quote_name(k));
  }
  for (auto [field, p] : {std::pair{"dtype", type}, {"shape", shape}, {"data_offsets", offsets}})
    if (!p) throw_error(errc::corrupt_data, ctx() + ": missing field '" + field + "'");

  tensor_entry e;
  if (!type->is_string())
    throw_error(errc::corrupt_data,
                ctx() + ": dtype is a JSON " + kind_of(*type) + ", not a string");
  std::string_view tname(type->get_string().data(), type->get_string().size());
  auto t = dtype_from_name(tname);
  if (!t) throw_error(errc::corrupt_data, ctx() + ": unknown dtype " + quote_name(tname));
  e.type = *t;

  if (!shape->is_array())
    throw_error(errc::corrupt_data,
                ctx() + ": shape is a JSON " + kind_of(*shape) + ", not an array");
  const json::array& dims = shape->get_array();
  if (dims.size() > max_tensor_rank)
    throw_error(errc::corrupt_data, ctx() + ": shape has " + std::to_string(dims.size()) +
                                        " dimensions, more than the limit of " +
                                        std::to_string(max_tensor_rank));
  e.shape.reserve(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i)
    e.shape.push_back(static_cast<std::int64_t>(unsigned_field(
        dims[i], false, [&] { return ctx() + ": shape dimension " + std::to_string(i); })));

  if (!offsets->is_array() || offsets->get_array().size() != 2)
    throw_error(errc::corrupt_data,
                ctx() + ": data_offsets must be an array of two integers, not a JSON " +
                    (offsets->is_array() ? "array of " +
                                               std::to_string(offsets->get_array().size()) +
                                               " elements"
                                         : kind_of(*offsets)));
  std::uint64_t begin = unsigned_field(offsets->get_array()[0], true,
                                       [&] { return ctx() + ": data_offsets[0]"; });
  std::uint64_t end = unsigned_field(offsets->get_array()[1], true,
                                     [&] { return ctx() + ": data_offsets[1]"; });
  auto range = [&] { return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]"; };
  if (end < begin)
    throw_error(errc::corrupt_data, ctx() + ": data_offsets " + range() + " end before they begin");

  auto need = tensor_nbytes(e.type, e.shape);
  auto what = [&] {
    return "dtype " + std::string(dtype_name(e.type)) + " × shape " + shape_string(e.shape);
  };
  if (!need) {
    bool whole = dtype_bits(e.type) % 8 == 0;
    throw_error(errc::corrupt_data,
                ctx() + ": " + what() +
                    (whole ? " needs more than 2^64 bytes"
                           : " is not a whole number of bytes (or needs more than 2^64)"));
  }
  if (end - begin != *need)
    throw_error(errc::corrupt_data, ctx() + ": data_offsets " + range() + " say " +
                                        std::to_string(end - begin) + " bytes, " + what() +
                                        " needs " + std::to_string(*need));
  e.name = name;
  e.offset = begin;
  e.nbytes = *need;
  return e;
}

}  // namespace

void read_header_exact(std::string_view text, const std::string& label,
                       std::vector<tensor_entry>& entries,
                       std::vector<std::pair<std::string, std::string>>& metadata) {
  // The DOM lives only in this call: one arena, freed at once.
  json::monotonic_resource mr(text.size() * 2 + 4096);
  json::value doc = parse_strict(text, 8, label + ": header", &mr);
  if (!doc.is_object())
    throw_error(errc::corrupt_data, label + ": header is a JSON " + kind_of(doc) +
                                        ", not an object");
  entries.reserve(doc.get_object().size());
  for (const auto& kv : doc.get_object()) {
    std::string_view name(kv.key().data(), kv.key().size());
    if (name == "__metadata__") {
      if (!kv.value().is_object())
        throw_error(errc::corrupt_data, label + ": __metadata__ is a JSON " +
                                            kind_of(kv.value()) + ", not an object");
      for (const auto& m : kv.value().get_object()) {
        std::string key(m.key().data(), m.key().size());
        if (!m.value().is_string())
          throw_error(errc::corrupt_data,
                      label + ": __metadata__ " + quote_name(key) + " is a JSON " +
                          kind_of(m.value()) + "; the format allows only strings");
        metadata.emplace_back(std::move(key), std::string(m.value().get_string().data(),
                                                          m.value().get_string().size()));
      }
      continue;
    }
    entries.push_back(parse_entry(name, kv.value(), entry_context{label, name}));
  }
}

std::vector<std::uint64_t> read_checksums_exact(std::string_view text,
                                                const std::vector<tensor_entry>& entries,
                                                const std::string& label) {
  std::string ctx = label + ": __metadata__ 'shmckpt.checksums'";
  json::monotonic_resource mr(text.size() * 2 + 4096);
  json::value doc = parse_strict(text, 2, ctx, &mr);
  if (!doc.is_object())
    throw_error(errc::corrupt_data, ctx + " is a JSON " + kind_of(doc) + ", not an object");
  // Our writer records the checksums in entry order; the index is built only when a name is
  // not where that order puts it.
  std::unordered_map<std::string_view, std::size_t> index;
  auto find = [&](std::size_t position, std::string_view name) -> std::size_t {
    if (position < entries.size() && entries[position].name == name) return position;
    if (index.empty()) {
      index.reserve(entries.size());
      for (std::size_t i = 0; i < entries.size(); ++i) index.emplace(entries[i].name, i);
    }
    auto it = index.find(name);
    return it == index.end() ? std::size_t(-1) : it->second;
  };
  std::vector<bool> seen(entries.size(), false);
  std::vector<std::uint64_t> sums(entries.size(), 0);
  std::size_t position = 0;
  for (const auto& kv : doc.get_object()) {
    std::string_view name(kv.key().data(), kv.key().size());
    std::size_t i = find(position++, name);
    if (i == std::size_t(-1))
      throw_error(errc::corrupt_data,
                  ctx + " names " + quote_name(name) + ", which is not a tensor in this file");
    std::optional<std::uint64_t> sum;
    if (kv.value().is_string())
      sum = parse_hex64({kv.value().get_string().data(), kv.value().get_string().size()});
    if (!sum)
      throw_error(errc::corrupt_data, ctx + ": the value for " + quote_name(name) +
                                          " is not a string of 16 lowercase hex digits");
    sums[i] = *sum;
    seen[i] = true;
  }
  for (std::size_t i = 0; i < seen.size(); ++i)
    if (!seen[i])
      throw_error(errc::corrupt_data, ctx + " records " + std::to_string(doc.get_object().size()) +
                                          " of " + std::to_string(entries.size()) +
                                          " tensors; " + quote_name(entries[i].name) +
                                          " has none");
  return sums;
}

}  // namespace shmckpt::detail
