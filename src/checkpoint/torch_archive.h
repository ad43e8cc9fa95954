#pragma once

// Reading the parameters of a module saved with torch::save(module, path).

#include <ATen/core/Tensor.h>
#include <torch/serialize/input-archive.h>

#include <string>

namespace torchtp::detail {

/// A file written by `torch::save(module, path)`, opened for reading tensors
/// by their `named_parameters()` names. Errors begin with `component`.
class TorchArchiveReader {
 public:
  /// Raises when `path` is not a torch::save archive.
  TorchArchiveReader(const std::string& path, std::string component);

  /// The tensor `name` ("fc1.weight"): each submodule of the saved module
  /// is a nested archive. Raises naming the file when it is missing.
  at::Tensor read(const std::string& name);

 private:
  std::string path_;
  std::string component_;
  torch::serialize::InputArchive root_;
};

} // namespace torchtp::detail
