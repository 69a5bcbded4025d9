// convert.hpp — Python objects ⇄ shmckpt value trees, for the `shmckpt._core` extension.
//
// Python → C++ (`from_python`): nested dicts (str keys, or int keys), lists, tuples, None, bool,
// int, float, str, torch tensors and numpy arrays become a shmckpt::state_dict. Tensors are not
// copied: a contiguous CPU tensor is viewed by its data pointer and byte size (a non-contiguous
// one is made contiguous first). Those views own nothing; the `conversion` keeps the Python
// objects that own the bytes, and whoever uses the tree must keep the conversion alive for as
// long as the views are read (the binding hands it to the Python future of the copy). Tensors
// whose bytes lie in a shared buffer made by `shared_tensor` get that buffer as their owner
// instead, so writes of them need no copy and keep the memory alive by themselves.
//
// C++ → Python (`to_python`): tensors become torch tensors viewing the C++ bytes (zero copy)
// through a small buffer object that owns the C++ tensor — and so the file mapping or the segment
// memory — for as long as any torch view exists. Dtypes torch 1.13 lacks but numpy has (U16, U32,
// U64) become numpy arrays; F8/F6/F4 are error(unsupported) naming the tensor.
//
// Everything here runs with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <vector>

#include "shmckpt/state_dict.hpp"

namespace shmckpt::python {

namespace py = pybind11;

/// One tensor leaf of a converted template, in depth-first order.
struct template_leaf {
  py::object original;    // the caller's tensor or array
  py::object contiguous;  // what the C++ view points into (== original when it was contiguous)
  const std::byte* data = nullptr;
};

struct conversion {
  state_dict tree;
  /// The Python objects owning the memory the tree's owner-less tensor views point into.
  py::list keep;
  /// Filled when converting a template for an in-place load.
  std::vector<template_leaf> leaves;
};

/// Converts a Python state dict (a dict, or any mapping-like dict subclass). Throws
/// error(invalid_argument) naming the key path of an unsupported value, key or tensor.
conversion from_python(py::handle state_dict, bool record_leaves = false);

/// Converts a loaded tree to Python objects.
py::object to_python(const state_dict& sd);

/// Converts the result of an in-place load into `c` (from from_python(template, true)): tensor
/// leaves that were loaded in place come back as the caller's own objects (copied back into
/// them first when a contiguous copy had to be made), everything else as by to_python.
py::object to_python_in_place(const state_dict& result, conversion& c);

/// A torch tensor (or numpy array for dtypes torch lacks) viewing `t`'s bytes and keeping `t`
/// alive. When `shared` is set, the bytes are registered as a shared buffer: converting any torch
/// view of them back to C++ yields a tensor that owns (a reference to) `t`.
py::object tensor_to_python(const tensor& t, bool shared = false);

/// The torch dtype object for `t`, or None when torch lacks it.
py::object torch_dtype(dtype t);
/// The shmckpt dtype of a torch dtype object; throws error(invalid_argument) for others.
dtype dtype_from_torch(py::handle torch_dtype, const char* what);

/// Registers the byte buffer class (module init).
void register_buffer_class(py::module_& m);

}  // namespace shmckpt::python
