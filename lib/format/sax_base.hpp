// Private: what the one-pass (SAX) readers of the format share: a Boost.JSON basic_parser
// handler base that gives up on anything unexpected (the caller then runs the exact path, which
// names the error) and joins keys and strings that arrive in pieces. Used by the header reader
// (header_fast.cpp) and the tree decoder (tree_decode_fast.cpp); a handler hides the events it
// accepts with its own.
#pragma once

#include <boost/json/basic_parser.hpp>
#include <boost/json/error.hpp>
#include <boost/json/object.hpp>
#include <boost/json/array.hpp>
#include <boost/json/string.hpp>
#include <cstddef>
#include <string>
#include <string_view>

namespace shmckpt::detail {

class sax_base {
 public:
  // The DOM's limits, so that a parser fails here exactly where parse_strict's would.
  static constexpr std::size_t max_object_size = boost::json::object::max_size();
  static constexpr std::size_t max_array_size = boost::json::array::max_size();
  static constexpr std::size_t max_key_size = boost::json::string::max_size();
  static constexpr std::size_t max_string_size = boost::json::string::max_size();

  bool on_document_begin(boost::json::error_code&) { return true; }
  bool on_document_end(boost::json::error_code&) { return true; }
  bool on_key_part(boost::json::string_view s, std::size_t, boost::json::error_code&) {
    part_.append(s.data(), s.size());
    return true;
  }
  bool on_string_part(boost::json::string_view s, std::size_t, boost::json::error_code&) {
    part_.append(s.data(), s.size());
    return true;
  }
  bool on_number_part(boost::json::string_view, boost::json::error_code&) { return true; }
  bool on_double(double, boost::json::string_view, boost::json::error_code& ec) {
    return give_up(ec);
  }
  bool on_bool(bool, boost::json::error_code& ec) { return give_up(ec); }
  bool on_null(boost::json::error_code& ec) { return give_up(ec); }
  bool on_comment_part(boost::json::string_view, boost::json::error_code&) { return true; }
  bool on_comment(boost::json::string_view, boost::json::error_code&) { return true; }

 protected:
  static bool give_up(boost::json::error_code& ec) {
    ec = make_error_code(boost::json::error::syntax);
    return false;
  }
  // The whole string or key, given its last piece; valid until the next call.
  std::string_view whole(boost::json::string_view last) {
    if (part_.empty()) return {last.data(), last.size()};
    part_.append(last.data(), last.size());
    return part_;
  }
  void done_with_whole() { part_.clear(); }

  std::string part_;  // a key or string that arrives in pieces
};

}  // namespace shmckpt::detail
