// text.hpp — text helpers for untrusted bytes: UTF-8 validation, escaping, hex, byte sizes
// (private to the library and its tools).
//
// Everything shmckpt shows or stores as text passes through here: names and strings read from
// a checkpoint file are hostile until proven otherwise, so this file owns the one definition of
// well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), of
// escaping for JSON and for error messages and terminals, and of the hex spellings the format
// uses (lowercase only: one spelling per value). The header parsers, the header and tree
// encoders, the reader's error messages and ckpt-inspect's output all use these, so a name
// that one of them considers valid text is valid text for all of them.
//
// Nothing here allocates more than its output, throws (except std::bad_alloc), or keeps state;
// all functions are safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shmckpt::detail {

inline constexpr char hex_digits[] = "0123456789abcdef";

// ---- UTF-8 -----------------------------------------------------------------------------------

/// Length of the well-formed UTF-8 sequence starting at s[i] (i < s.size()), or 0 when the
/// bytes there are not one.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept;

/// Position of the first byte that does not start a well-formed UTF-8 sequence, or npos.
std::size_t first_invalid_utf8(std::string_view s) noexcept;

inline bool valid_utf8(std::string_view s) noexcept {
  return first_invalid_utf8(s) == std::string_view::npos;
}

// ---- JSON ------------------------------------------------------------------------------------

/// Appends `s` escaped for the inside of a JSON string (no quotes). `s` must be valid UTF-8.
void append_escaped(std::string& out, std::string_view s);

/// Appends `s` as a quoted JSON string. `s` must be valid UTF-8.
void append_quoted(std::string& out, std::string_view s);

// ---- showing untrusted text ------------------------------------------------------------------

/// `name` in single quotes for error messages: control characters, quotes, backslashes and
/// bytes that are not UTF-8 as \xNN, long names cut after 200 bytes, so that a hostile name can
/// neither forge lines in a log nor flood it.
std::string quote_name(std::string_view name);

/// `s` for one line of terminal output: control characters, DEL, backslashes and bytes that
/// are not UTF-8 as \xNN; well-formed UTF-8 text as it is. Not cut.
std::string printable(std::string_view s);

/// `s` in double quotes, as a string value is shown: '"' and '\\' escaped with a backslash,
/// control characters, DEL and bytes that are not UTF-8 as \xNN.
std::string quote_string(std::string_view s);

/// `s` made valid UTF-8 for a JSON string (whose serializer escapes what JSON needs):
/// control characters, DEL and bytes that are not UTF-8 become the four characters \xNN
/// (lossy, but readable), everything else stays.
std::string utf8_lossy(std::string_view s);

// ---- hex -------------------------------------------------------------------------------------

/// Lowercase, zero-padded, 16 hex digits.
std::string hex64(std::uint64_t v);

/// Two lowercase hex digits per byte, with `separator` between bytes ("0a ff" for " ").
std::string hex_bytes(std::string_view s, std::string_view separator = {});
std::string hex_bytes(std::span<const std::byte> s, std::string_view separator = {});

/// The value of exactly 16 lowercase hex digits, or nullopt.
std::optional<std::uint64_t> parse_hex64(std::string_view s) noexcept;

/// The bytes spelled by lowercase hex digit pairs, or nullopt.
std::optional<std::string> parse_hex_bytes(std::string_view s);

// ---- sizes -----------------------------------------------------------------------------------

/// "512 B", "1.5 KiB", "3.0 GiB": short, for progress displays (one decimal, binary units).
std::string human_bytes(std::uint64_t n);

}  // namespace shmckpt::detail
