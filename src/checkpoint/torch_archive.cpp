#include "checkpoint/torch_archive.h"

#include <memory>
#include <utility>
#include <vector>

namespace torchtp::detail {

TorchArchiveReader::TorchArchiveReader(
    const std::string& path, std::string component)
    : path_(path), component_(std::move(component)) {
  try {
    root_.load_from(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(
        false, component_, ": cannot read ", path,
        " as a torch::save archive: ", e.what_without_backtrace());
  }
}

at::Tensor TorchArchiveReader::read(const std::string& name) {
  torch::serialize::InputArchive* archive = &root_;
  std::vector<std::unique_ptr<torch::serialize::InputArchive>> nested;
  std::string rest = name;
  for (auto dot = rest.find('.'); dot != std::string::npos;
       dot = rest.find('.')) {
    nested.push_back(std::make_unique<torch::serialize::InputArchive>());
    TORCH_CHECK(
        archive->try_read(rest.substr(0, dot), *nested.back()), component_,
        ": ", path_, " has no module for '", name, "'");
    archive = nested.back().get();
    rest = rest.substr(dot + 1);
  }
  at::Tensor t;
  TORCH_CHECK(
      archive->try_read(rest, t), component_, ": ", path_, " has no tensor '",
      name, "'");
  return t;
}

} // namespace torchtp::detail
