#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torchtp {

/// Writes `tensors` to `path` in the safetensors format (an 8-byte header
/// length, a JSON header, then the raw little-endian data), readable by the
/// Python `safetensors` package. Returns the CRC-32 of each tensor's bytes,
/// in order. The file is flushed to disk before it returns.
std::vector<uint32_t> write_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata = {});

/// A safetensors file opened for reading: the header is parsed and checked
/// against the file size on open, tensors are read one at a time. Every
/// problem (missing, truncated or malformed file, unknown dtype, offsets out
/// of range) raises a `c10::Error` naming the file.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const {
    return path_;
  }
  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;
  std::vector<int64_t> shape(const std::string& name) const;
  at::ScalarType dtype(const std::string& name) const;
  /// Reads the whole tensor; with `expected_crc`, raises when its bytes do
  /// not have that CRC-32.
  at::Tensor read(const std::string& name) const;
  at::Tensor read(const std::string& name, uint32_t expected_crc) const;
  /// Reads the block of tensor `name` that spans `length[d]` indices from
  /// `start[d]` along every dim d (a `narrow` on each dim, made contiguous)
  /// with positioned reads of just those bytes: the rest of the tensor is
  /// never read. This is how a rank loads its shard of a full weight, a
  /// bounded block at a time.
  at::Tensor read_block(
      const std::string& name,
      at::IntArrayRef start,
      at::IntArrayRef length) const;
  /// `read_block` narrowing only `dim`.
  at::Tensor read_narrow(
      const std::string& name,
      int64_t dim,
      int64_t start,
      int64_t length) const;
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

 private:
  struct Entry {
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin;
    uint64_t end;
  };
  const Entry& entry(const std::string& name) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// CRC-32 (zlib's) of a contiguous tensor's bytes.
uint32_t tensor_crc32(const at::Tensor& tensor);

} // namespace torchtp
