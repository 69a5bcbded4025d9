// values.cpp — how ckpt-inspect shows values and tensor elements (inspect.hpp).
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>

#include "inspect.hpp"

namespace ckpt_inspect {

std::string double_text(double d) {
  if (std::isnan(d)) return std::signbit(d) ? "-nan" : "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, r.ptr);
  // Keep floats recognisable as floats: "1" would read as an int.
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

void print_value(const std::string& key, const shmckpt::value& v, int indent) {
  std::cout << std::string(static_cast<std::size_t>(indent) * 2, ' ') << printable(key) << ": ";
  switch (v.type()) {
    case shmckpt::kind::none: std::cout << "none\n"; break;
    case shmckpt::kind::boolean:
      std::cout << "bool " << (v.as_bool() ? "true" : "false") << "\n";
      break;
    case shmckpt::kind::integer: std::cout << "int " << v.as_int() << "\n"; break;
    case shmckpt::kind::real: std::cout << "float " << double_text(v.as_double()) << "\n"; break;
    case shmckpt::kind::string:
      std::cout << "string " << shmckpt::detail::quote_string(v.as_string()) << "\n";
      break;
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      std::cout << "tensor " << shmckpt::dtype_name(t.type()) << " " << shmckpt::format_shape(t.shape())
                << " (" << t.nbytes() << " bytes)\n";
      break;
    }
    case shmckpt::kind::list:
    case shmckpt::kind::tuple: {
      const auto& l = v.as_sequence();
      std::cout << shmckpt::kind_name(v.type()) << " (" << l.size() << ")\n";
      for (std::size_t i = 0; i < l.size(); ++i) print_value(std::to_string(i), l[i], indent + 1);
      break;
    }
    case shmckpt::kind::dict: {
      const auto& d = v.as_dict();
      std::cout << "dict (" << d.size()
                << (d.keys() == shmckpt::key_type::integer ? ", int keys" : "") << ")\n";
      for (const auto& [k, child] : d) print_value(k, child, indent + 1);
      break;
    }
  }
}

// Finite doubles as JSON numbers; NaN and infinities, which JSON lacks, as strings.
boost::json::value json_double(double d) {
  if (std::isfinite(d)) return d;
  return boost::json::string(double_text(d));
}

boost::json::array json_shape(const std::vector<std::int64_t>& shape) {
  boost::json::array a;
  for (auto d : shape) a.push_back(d);
  return a;
}

// Dicts as objects (key order kept), lists as arrays, tensors as
// {"tensor": name, "dtype", "shape", "bytes"}.
boost::json::value value_json(const shmckpt::value& v, const std::string& path) {
  switch (v.type()) {
    case shmckpt::kind::none: return nullptr;
    case shmckpt::kind::boolean: return v.as_bool();
    case shmckpt::kind::integer: return v.as_int();
    case shmckpt::kind::real: return json_double(v.as_double());
    case shmckpt::kind::string: return boost::json::string(shmckpt::detail::utf8_lossy(v.as_string()));
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      boost::json::object o;
      o["tensor"] = shmckpt::detail::utf8_lossy(path);
      o["dtype"] = shmckpt::dtype_name(t.type());
      o["shape"] = json_shape(t.shape());
      o["bytes"] = t.nbytes();
      return o;
    }
    case shmckpt::kind::list:
    case shmckpt::kind::tuple: {  // JSON has no tuples; the text tree tells them apart
      boost::json::array a;
      const auto& l = v.as_sequence();
      for (std::size_t i = 0; i < l.size(); ++i)
        a.push_back(value_json(l[i], path.empty() ? std::to_string(i)
                                                  : path + "." + std::to_string(i)));
      return a;
    }
    case shmckpt::kind::dict: {
      boost::json::object o;
      for (const auto& [k, child] : v.as_dict())
        o[shmckpt::detail::utf8_lossy(k)] = value_json(child, path.empty() ? k : path + "." + k);
      return o;
    }
  }
  return nullptr;
}

// "tensor F32 [4, 8]", "int 1200", "string \"x\"", "dict (0)": one value on one line.
std::string describe(const shmckpt::value& v) {
  switch (v.type()) {
    case shmckpt::kind::none: return "none";
    case shmckpt::kind::boolean: return v.as_bool() ? "bool true" : "bool false";
    case shmckpt::kind::integer: return "int " + std::to_string(v.as_int());
    case shmckpt::kind::real: return "float " + double_text(v.as_double());
    case shmckpt::kind::string: return "string " + shmckpt::detail::quote_string(v.as_string());
    case shmckpt::kind::list: return "list (" + std::to_string(v.as_list().size()) + ")";
    case shmckpt::kind::tuple: return "tuple (" + std::to_string(v.as_tuple().size()) + ")";
    case shmckpt::kind::dict:
      return "dict (" + std::to_string(v.as_dict().size()) +
             (v.as_dict().keys() == shmckpt::key_type::integer ? ", int keys)" : ")");
    case shmckpt::kind::tensor: {
      const auto& t = v.as_tensor();
      return "tensor " + std::string(shmckpt::dtype_name(t.type())) + " " + shmckpt::format_shape(t.shape());
    }
  }
  return "?";
}

flat_tree::flat_tree(const shmckpt::dict& root) {
  shmckpt::for_each_node(root, [&](const std::string& path, const shmckpt::value& v) {
    if (!nodes.emplace(path, &v).second) return false;
    bool non_empty = (v.type() == shmckpt::kind::dict && !v.as_dict().empty()) ||
                     (v.is_sequence() && !v.as_sequence().empty());
    if (!non_empty) leaves.emplace_back(path, &v);
    return non_empty;
  });
}

// ---- tensor elements -------------------------------------------------------------------------

element_class classify(shmckpt::dtype t) {
  using shmckpt::dtype;
  switch (t) {
    case dtype::f16:
    case dtype::bf16:
    case dtype::f32:
    case dtype::f64: return element_class::floating;
    case dtype::boolean:
    case dtype::u8:
    case dtype::i8:
    case dtype::i16:
    case dtype::u16:
    case dtype::i32:
    case dtype::u32:
    case dtype::i64:
    case dtype::u64: return element_class::integer;
    default: return element_class::opaque;  // F8 variants, F4, F6, C64
  }
}

namespace {

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // tensors from foreign files may be unaligned copies; be safe
  return v;
}

double half_to_double(std::uint16_t h) {
  int exponent = (h >> 10) & 0x1f;
  int mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) v = std::ldexp(mantissa, -24);  // zero and subnormals
  else if (exponent == 31) v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                                        : std::numeric_limits<double>::infinity();
  else v = std::ldexp(mantissa + 1024, exponent - 25);
  return (h & 0x8000) ? -v : v;
}

}  // namespace

double float_at(const shmckpt::tensor& t, std::size_t i) {
  const std::byte* b = t.data();
  switch (t.type()) {
    case shmckpt::dtype::f16: return half_to_double(load<std::uint16_t>(b + 2 * i));
    case shmckpt::dtype::bf16:
      return std::bit_cast<float>(std::uint32_t{load<std::uint16_t>(b + 2 * i)} << 16);
    case shmckpt::dtype::f32: return load<float>(b + 4 * i);
    default: return load<double>(b + 8 * i);
  }
}

__int128 int_at(const shmckpt::tensor& t, std::size_t i) {
  const std::byte* b = t.data();
  switch (t.type()) {
    case shmckpt::dtype::boolean:
    case shmckpt::dtype::u8: return load<std::uint8_t>(b + i);
    case shmckpt::dtype::i8: return load<std::int8_t>(b + i);
    case shmckpt::dtype::i16: return load<std::int16_t>(b + 2 * i);
    case shmckpt::dtype::u16: return load<std::uint16_t>(b + 2 * i);
    case shmckpt::dtype::i32: return load<std::int32_t>(b + 4 * i);
    case shmckpt::dtype::u32: return load<std::uint32_t>(b + 4 * i);
    case shmckpt::dtype::i64: return load<std::int64_t>(b + 8 * i);
    default: return load<std::uint64_t>(b + 8 * i);
  }
}

std::string int128_text(__int128 v) {
  if (v == 0) return "0";
  bool negative = v < 0;
  unsigned __int128 u = negative ? -static_cast<unsigned __int128>(v) : v;
  std::string s;
  for (; u; u /= 10) s += static_cast<char>('0' + static_cast<int>(u % 10));
  if (negative) s += '-';
  return {s.rbegin(), s.rend()};
}

// Integer values of any supported dtype fit in [-2^63, 2^64): JSON as int64 or uint64.
boost::json::value json_int(__int128 v) {
  if (v < 0) return static_cast<std::int64_t>(v);
  return static_cast<std::uint64_t>(v);
}

// A value of a float dtype at that dtype's precision: an F32 0.1 prints as "0.1", not as
// "0.10000000149011612". F16 and BF16 values are exact floats, so float precision covers them.
std::string float_text(double d, shmckpt::dtype t) {
  if (t == shmckpt::dtype::f64 || !std::isfinite(d)) return double_text(d);
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, static_cast<float>(d));
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string element_text(const shmckpt::tensor& t, std::size_t i) {
  if (classify(t.type()) == element_class::integer) return int128_text(int_at(t, i));
  return float_text(float_at(t, i), t.type());
}

boost::json::value element_json(const shmckpt::tensor& t, std::size_t i) {
  if (classify(t.type()) == element_class::integer) return json_int(int_at(t, i));
  return json_double(float_at(t, i));
}

}  // namespace ckpt_inspect
