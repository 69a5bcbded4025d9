// header_plain.cpp — the by-hand readers of header_plain.hpp.
#include "format/header_plain.hpp"

#include <xxhash.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <bit>
#include <cstring>
#include <limits>

#include "format/safetensors.hpp"
#include "format/strict_json.hpp"
#include "format/text.hpp"

namespace shmckpt::detail {

namespace {

// ---- strings ---------------------------------------------------------------------------------
//
// Tensor names and the metadata values (the tree and the checksum table: megabytes of JSON
// text full of escaped quotes) are read sixteen bytes at a time between escapes (SSE2; eight,
// by integer arithmetic, elsewhere). Only the short escapes (\" \\ \/ \b \f \n \r \t) are
// taken; a \u escape or a control character gives up, and the SAX reader reads the whole
// header instead.

constexpr std::string_view metadata_prefix = R"({"__metadata__":{)";

// Each byte of `w` that is a quote, a backslash or a control character has its top bit set in
// the result; bytes above the first such byte may be flagged wrongly (borrows), the first never.
inline std::uint64_t special_bytes(std::uint64_t w) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
  auto zero = [](std::uint64_t v) { return (v - ones) & ~v & high; };
  return zero(w ^ (ones * '"')) | zero(w ^ (ones * '\\')) | ((w - ones * 0x20) & ~w & high);
}

#if defined(__SSE2__)
// Bit i set: byte i of `v` is a quote, a backslash or a control character (below 0x20).
inline unsigned special_mask(__m128i v) noexcept {
  __m128i quote = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
  __m128i backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
  __m128i control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
  __m128i special = _mm_or_si128(_mm_or_si128(quote, backslash), control);
  return static_cast<unsigned>(_mm_movemask_epi8(special));
}
#endif

// Whether `s` holds a quote, a backslash or a control character: a byte JSON must escape.
inline bool has_special_byte(std::string_view s) noexcept {
  const char* p = s.data();
  const char* const end = p + s.size();
#if defined(__SSE2__)
  for (; end - p >= 16; p += 16)
    if (special_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))) != 0) return true;
#endif
  for (; p != end; ++p)
    if (*p == '"' || *p == '\\' || static_cast<unsigned char>(*p) < 0x20) return true;
  return false;
}

// What the short escape \<c> stands for, or 0 for the escapes left to the parser (\u) and errors.
constexpr char short_escape(char c) noexcept {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return 0;
  }
}

}  // namespace

// The JSON string whose opening quote is at text[i], unescaped, appended to `out`; returns the
// position after its closing quote, or npos to give up. Sixteen (or eight) bytes at a time
// between escapes, through a buffer on the stack; a string too long for it reserves room for
// the rest of the text once (the unescaped string is no longer), so that a megabyte value is
// never regrown.
std::size_t scan_json_string(std::string_view text, std::size_t i, std::string& out) {
  const char* const begin = text.data();
  const char* const end = begin + text.size();
  const char* s = begin + i + 1;
  char buf[16384];
  std::size_t n = 0;  // bytes of buf written
  for (;;) {
    if (sizeof buf - n < 16) {
      if (out.capacity() - out.size() < static_cast<std::size_t>(end - s) + n)
        out.reserve(out.size() + n + static_cast<std::size_t>(end - s));
      out.append(buf, n);
      n = 0;
    }
#if defined(__SSE2__)
    if (end - s >= 16) {
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(buf + n), v);  // as below, sixteen at a time
      unsigned m = special_mask(v);
      if (m == 0) {
        n += 16;
        s += 16;
        continue;
      }
      std::size_t k = static_cast<std::size_t>(std::countr_zero(m));
      n += k;
      s += k;
    } else
#endif
    if (end - s >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s, 8);
      std::memcpy(buf + n, s, 8);  // the whole word; bytes from the first special one are rewritten
      std::uint64_t m = special_bytes(w);
      if (m == 0) {
        n += 8;
        s += 8;
        continue;
      }
      std::size_t k = static_cast<std::size_t>(std::countr_zero(m)) / 8;
      n += k;
      s += k;
    } else if (s == end) {
      return std::string_view::npos;
    } else if (*s != '"' && *s != '\\' && static_cast<unsigned char>(*s) >= 0x20) {
      buf[n++] = *s++;
      continue;
    }
    // *s is a quote, a backslash or a control character.
    if (*s == '"') {
      out.append(buf, n);
      return static_cast<std::size_t>(s + 1 - begin);
    }
    if (*s != '\\' || end - s < 2) return std::string_view::npos;  // control character
    char c = short_escape(s[1]);
    if (c == 0) return std::string_view::npos;
    buf[n++] = c;
    s += 2;
  }
}

// ---- the leading __metadata__ ----------------------------------------------------------------
//
// Our writer puts `__metadata__` first (so does the Python safetensors library). Boost.JSON
// unescapes a string a byte at a time through a small buffer once it has seen one escape, which
// made its megabyte values the slowest part of a header.
bool read_leading_metadata(std::string_view text,
                           std::vector<std::pair<std::string, std::string>>& metadata,
                           std::string_view& rest) {
  if (!text.starts_with(metadata_prefix)) return false;
  std::size_t i = metadata_prefix.size();
  std::vector<std::uint64_t> keys;
  if (i < text.size() && text[i] != '}') {
    for (;;) {
      if (i >= text.size() || text[i] != '"') return false;
      std::string key, val;
      i = scan_json_string(text, i, key);
      if (i == std::string_view::npos || i >= text.size() || text[i] != ':') return false;
      if (++i >= text.size() || text[i] != '"') return false;
      i = scan_json_string(text, i, val);
      if (i == std::string_view::npos || i >= text.size()) return false;
      keys.push_back(XXH3_64bits(key.data(), key.size()));
      metadata.emplace_back(std::move(key), std::move(val));
      if (text[i] == '}') break;
      if (text[i] != ',') return false;
      ++i;
    }
  }
  // text[i] is the metadata's closing brace; then either another key or the root's end.
  if (++i >= text.size()) return false;
  if (text[i] == ',') {
    if (i + 1 >= text.size() || text[i + 1] != '"') return false;
    ++i;
  } else if (text[i] != '}') {
    return false;
  }
  std::vector<std::uint64_t> table;
  if (has_repeat(keys.data(), keys.size(), table)) return false;
  rest = text.substr(i);
  return true;
}

// ---- the entries ------------------------------------------------------------------------------

namespace {

// A cursor over the text that gives up (returns false) at the first byte it does not expect.
struct cursor {
  const char* p;
  const char* end;

  void skip_space() noexcept {
    while (p != end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }
  // The next token is exactly `word` (after whitespace).
  bool take(std::string_view word) noexcept {
    skip_space();
    if (static_cast<std::size_t>(end - p) < word.size() ||
        std::memcmp(p, word.data(), word.size()) != 0)
      return false;
    p += word.size();
    return true;
  }
  bool peek(char c) noexcept {
    skip_space();
    return p != end && *p == c;
  }
  // A JSON number that is a plain non-negative integer of at most 19 digits (no sign, fraction,
  // exponent or leading zero), as the SAX reader gets it from on_int64 / on_uint64.
  bool integer(std::uint64_t& v) noexcept {
    skip_space();
    const char* start = p;
    v = 0;
    while (p != end && *p >= '0' && *p <= '9') {
      if (p - start == 19) return false;
      v = v * 10 + static_cast<std::uint64_t>(*p - '0');
      ++p;
    }
    if (p == start || (*start == '0' && p - start > 1)) return false;
    return p == end || (*p != '.' && *p != 'e' && *p != 'E');
  }
  // A string without escapes or control characters (a dtype name).
  bool bare_string(std::string_view& out) noexcept {
    if (!peek('"')) return false;
    const char* s = ++p;
    while (p != end && *p != '"') {
      if (*p == '\\' || static_cast<unsigned char>(*p) < 0x20) return false;
      ++p;
    }
    if (p == end) return false;
    out = std::string_view(s, static_cast<std::size_t>(p - s));
    ++p;
    return true;
  }
};

}  // namespace

bool read_entries_plain(std::string_view rest, std::uint64_t metadata_key_hash,
                        std::vector<tensor_entry>& entries) {
  cursor c{rest.data(), rest.data() + rest.size()};
  std::vector<std::uint64_t> keys{metadata_key_hash};
  keys.reserve(rest.size() / 50 + 2);
  std::string_view last_dtype_name;
  dtype last_dtype = dtype::f32;
  entries.clear();
  // No entry is shorter than "":{"dtype":"U8","shape":[],"data_offsets":[0,0]} and its comma (50
  // bytes), so this never regrows; the pages of what is not used are never touched.
  entries.reserve(rest.size() / 50 + 1);
  if (!c.peek('}')) {
    for (;;) {
      tensor_entry& e = entries.emplace_back();
      c.skip_space();
      if (c.p == c.end || *c.p != '"') return false;
      std::size_t at = scan_json_string(rest, static_cast<std::size_t>(c.p - rest.data()), e.name);
      if (at == std::string_view::npos) return false;
      c.p = rest.data() + at;
      std::string_view type_name;
      if (!c.take(":") || !c.take("{") || !c.take("\"dtype\"") || !c.take(":") ||
          !c.bare_string(type_name))
        return false;
      if (last_dtype_name.data() == nullptr || type_name != last_dtype_name) {
        auto t = dtype_from_name(type_name);  // files have few dtypes: look up changes only
        if (!t) return false;
        last_dtype = *t;
        last_dtype_name = type_name;
      }
      e.type = last_dtype;
      if (!c.take(",") || !c.take("\"shape\"") || !c.take(":") || !c.take("[")) return false;
      if (!c.peek(']')) {
        for (;;) {
          std::uint64_t d;
          if (e.shape.size() == max_tensor_rank || !c.integer(d) ||
              d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            return false;
          e.shape.push_back(static_cast<std::int64_t>(d));
          if (c.peek(']')) break;
          if (!c.take(",")) return false;
        }
      }
      std::uint64_t begin, end;
      if (!c.take("]") || !c.take(",") || !c.take("\"data_offsets\"") || !c.take(":") ||
          !c.take("[") || !c.integer(begin) || !c.take(",") || !c.integer(end) || !c.take("]") ||
          !c.take("}") || end < begin)
        return false;
      auto need = tensor_nbytes(e.type, e.shape);
      if (!need || end - begin != *need) return false;
      e.offset = begin;
      e.nbytes = *need;
      keys.push_back(XXH3_64bits(e.name.data(), e.name.size()));
      if (c.peek('}')) break;
      if (!c.take(",")) return false;
    }
  }
  ++c.p;  // the root object's closing brace
  c.skip_space();
  if (c.p != c.end) return false;
  std::vector<std::uint64_t> table;
  return !has_repeat(keys.data(), keys.size(), table);
}

bool read_header_plain(std::string_view text, std::vector<tensor_entry>& entries,
                       std::vector<std::pair<std::string, std::string>>& metadata) {
  std::string_view rest;
  metadata.clear();
  return first_invalid_utf8(text) == std::string_view::npos &&
         read_leading_metadata(text, metadata, rest) &&
         read_entries_plain(rest, XXH3_64bits("__metadata__", 12), entries);
}

// ---- the checksum table ------------------------------------------------------------------------

bool read_checksums_plain(std::string_view text, const std::vector<tensor_entry>& entries,
                          std::vector<std::uint64_t>& sums) {
  const char* p = text.data();
  const char* const end = p + text.size();
  sums.clear();
  sums.reserve(entries.size());
  if (p == end || *p++ != '{') return false;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const std::string& name = entries[i].name;
    // `"<name>":"<16 hex>"` then `,` (or `}` after the last): 22 bytes besides the name.
    if (static_cast<std::size_t>(end - p) < name.size() + 22 || *p != '"') return false;
    ++p;
    if (has_special_byte(name)) return false;  // the name as it is: nothing JSON must escape
    if (std::memcmp(p, name.data(), name.size()) != 0) return false;
    p += name.size();
    if (std::memcmp(p, "\":\"", 3) != 0 || p[19] != '"') return false;
    auto v = parse_hex64(std::string_view(p + 3, 16));
    if (!v) return false;
    sums.push_back(*v);
    p += 20;
    if (*p++ != (i + 1 == entries.size() ? '}' : ',')) return false;
  }
  if (entries.empty() && (p == end || *p++ != '}')) return false;
  return p == end;
}

}  // namespace shmckpt::detail
