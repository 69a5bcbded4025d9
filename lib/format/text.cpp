// text.cpp — UTF-8 validation, escaping, hex and byte sizes (see text.hpp).
#include "format/text.hpp"

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "core/util.hpp"

namespace shmckpt::detail {

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = at(i);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  return n;
}

std::size_t first_invalid_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    // Headers are almost all ASCII: skip 32 such bytes at a time, then eight.
    while (s.size() - i >= 32) {
      std::uint64_t w[4];
      std::memcpy(w, s.data() + i, 32);
      if ((w[0] | w[1] | w[2] | w[3]) & 0x8080808080808080u) break;
      i += 32;
    }
    while (s.size() - i >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080u) break;
      i += 8;
    }
    if (i == s.size()) break;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

void append_escaped(std::string& out, std::string_view s) {
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex_digits[c >> 4];
          out += hex_digits[c & 15];
        } else {
          out += ch;
        }
    }
  }
}

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  append_escaped(out, s);
  out += '"';
}

namespace {

void append_byte_escape(std::string& out, unsigned char c) {
  out += "\\x";
  out += hex_digits[c >> 4];
  out += hex_digits[c & 15];
}

// Copies `s` to `out`: well-formed multi-byte UTF-8 sequences as they are, every byte that does
// not start a well-formed sequence as \xNN, and each ASCII byte as `ascii` appends it.
template <class Ascii>
void append_shown(std::string& out, std::string_view s, const Ascii& ascii) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ascii(out, c);
      ++i;
      continue;
    }
    std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) {
      append_byte_escape(out, c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
}

bool is_control(unsigned char c) noexcept { return c < 0x20 || c == 0x7f; }

}  // namespace

std::string quote_name(std::string_view name) {
  constexpr std::size_t limit = 200;
  std::string out = "'";
  for (std::size_t i = 0; i < name.size();) {
    if (i >= limit) {
      out += "...";
      break;
    }
    auto c = static_cast<unsigned char>(name[i]);
    std::size_t n = utf8_sequence_length(name, i);
    if (is_control(c) || c == '\'' || c == '\\' || n == 0) {
      append_byte_escape(out, c);
      ++i;
    } else {
      out.append(name.substr(i, n));
      i += n;
    }
  }
  return out + "'";
}

std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_shown(out, s, [](std::string& o, unsigned char c) {
    if (is_control(c) || c == '\\') append_byte_escape(o, c);
    else o += static_cast<char>(c);
  });
  return out;
}

std::string quote_string(std::string_view s) {
  std::string out = "\"";
  append_shown(out, s, [](std::string& o, unsigned char c) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (is_control(c)) {
      append_byte_escape(o, c);
    } else {
      o += static_cast<char>(c);
    }
  });
  return out + "\"";
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_shown(out, s, [](std::string& o, unsigned char c) {
    if (is_control(c)) append_byte_escape(o, c);
    else o += static_cast<char>(c);
  });
  return out;
}

std::string hex64(std::uint64_t v) {
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = hex_digits[v & 15];
  return s;
}

std::string hex_bytes(std::string_view s, std::string_view separator) {
  std::string out;
  out.reserve(s.size() * (2 + separator.size()));
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i) out += separator;
    auto c = static_cast<unsigned char>(s[i]);
    out += hex_digits[c >> 4];
    out += hex_digits[c & 15];
  }
  return out;
}

std::string hex_bytes(std::span<const std::byte> s, std::string_view separator) {
  return hex_bytes(std::string_view(reinterpret_cast<const char*>(s.data()), s.size()), separator);
}

namespace {
int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is rejected on purpose: one spelling per value
}

// Eight lowercase hex digits at `p`, first digit most significant, eight bytes at a time: every
// byte is checked to be 0-9 or a-f, and the nibbles are packed with shifts. Returns false for
// any other byte. (A checkpoint's checksum table is 65 536 of these for a large model.)
bool hex8(const char* p, std::uint32_t& out) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
  std::uint64_t w;
  std::memcpy(&w, p, 8);
  if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
  if (w & high) return false;
  // For bytes below 0x80 these sums never carry into the next byte.
  auto at_least = [w](std::uint64_t lo) { return (w + ones * (0x80 - lo)) & high; };
  auto at_most = [w](std::uint64_t hi) { return ~(w + ones * (0x7f - hi)) & high; };
  std::uint64_t digit = at_least('0') & at_most('9');
  std::uint64_t letter = at_least('a') & at_most('f');
  if ((digit | letter) != high) return false;
  std::uint64_t nib = (w & ones * 0x0f) + (letter >> 7) * 9;  // each byte 0-15
  std::uint64_t x = ((nib << 4) | (nib >> 8)) & 0x00ff00ff00ff00ffu;  // digit pairs, even bytes
  x = (x | (x >> 8)) & 0x0000ffff0000ffffu;
  x = (x | (x >> 16)) & 0xffffffffu;  // the four pairs in bytes 0-3, first pair lowest
  out = __builtin_bswap32(static_cast<std::uint32_t>(x));
  return true;
}
}  // namespace

std::optional<std::uint64_t> parse_hex64(std::string_view s) noexcept {
  std::uint32_t hi, lo;
  if (s.size() != 16 || !hex8(s.data(), hi) || !hex8(s.data() + 8, lo)) return std::nullopt;
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

std::optional<std::string> parse_hex_bytes(std::string_view s) {
  if (s.size() % 2) return std::nullopt;
  std::string out;
  out.reserve(s.size() / 2);
  for (std::size_t i = 0; i < s.size(); i += 2) {
    int a = hex_value(s[i]), b = hex_value(s[i + 1]);
    if (a < 0 || b < 0) return std::nullopt;
    out += static_cast<char>((a << 4) | b);
  }
  return out;
}

std::string human_bytes(std::uint64_t n) {
  auto [v, unit] = scaled_bytes(n);
  char buf[32];
  if (!unit) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, unit);
  return buf;
}

}  // namespace shmckpt::detail
