// ckpt-demo/state_check.hpp — comparing and fingerprinting whole state dicts.
//
// The demo checks its checkpoints two ways: `first_difference` compares a reloaded checkpoint
// with the deep copy taken when it was saved and names the first key that differs;
// `fingerprint` condenses a whole state into 64 bits, so that two runs (an uninterrupted one and
// a resumed one) can be compared from their output alone.
//
// Thread safety: both functions only read; the tensors' bytes must not change meanwhile.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "shmckpt/state_dict.hpp"

namespace ckpt_demo {

/// The first place where `a` and `b` differ, as "key.path (reason)", in `a`'s key order;
/// nullopt when they are equal (same keys in the same order, same kinds, same values, tensors
/// with the same dtype, shape and bytes).
std::optional<std::string> first_difference(const shmckpt::dict& a, const shmckpt::dict& b);

/// FNV-1a (64 bits) over every key, kind, value, dtype, shape and tensor byte of `sd` in tree
/// order: equal states give equal fingerprints, and any difference changes it (barring a hash
/// collision). An exact fingerprint for comparing runs, not a defence against tampering.
std::uint64_t fingerprint(const shmckpt::dict& sd);

}  // namespace ckpt_demo
