// dict_build.hpp — a dict built from all its items at once, for the tree decoders.
//
// Opening a checkpoint rebuilds every dict of its tree (16 384 of them for a model of 65 536
// tensors). Inserting the items one by one pays, per item, a by-value move into
// insert_or_assign, a scan for an existing key and the destruction of the moved-from
// arguments. The decoders already hold a dict's items in order, so they hand them over whole.
#pragma once

#include <vector>

#include "shmckpt/state_dict.hpp"

namespace shmckpt::detail {

struct dict_build {
  /// Gives the empty dict `d` the items of `items`, in order, exactly as inserting each with
  /// insert_or_assign would (the same order, key checks and hash index), and leaves `items`
  /// empty. Returns false, with `d` left empty, when a key repeats; throws what
  /// insert_or_assign throws for a key `d`'s key type refuses.
  static bool adopt(dict& d, std::vector<dict::item>& items);
};

}  // namespace shmckpt::detail
