#pragma once

// Reading Hugging Face model directories: the safetensors files of a
// checkpoint (one file, or several listed by model.safetensors.index.json)
// and the copy of this rank's shard of a parameter out of them. Shared by
// load_gpt2 (gpt2.cpp) and load_pretrained (pretrained.cpp).

#include "torchtp/group.h"
#include "torchtp/safetensors.h"
#include "torchtp/sharding.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torchtp::detail {

/// `dir/file`, with one slash between them.
std::string join_path(const std::string& dir, const std::string& file);

/// The JSON document at `path`. Raises a `c10::Error` "<component>: .."
/// naming the file when it cannot be opened or parsed. Every rank reads the
/// same files, so these errors carry no rank label.
nlohmann::json read_json(const std::string& path, const std::string& component);

/// The tensors of a Hugging Face directory: `model.safetensors`, or the
/// files `model.safetensors.index.json` lists, each opened (header parsed
/// and checked) once. Names lose `strip_prefix` when they start with it
/// (GPT-2's `transformer.`).
class HFFiles {
 public:
  HFFiles(
      const std::string& dir,
      const Group& group,
      std::string component,
      std::string strip_prefix = "");

  bool contains(const std::string& name) const {
    return where_.count(name) > 0;
  }
  /// The file holding `name`, and its name there; raises naming the files
  /// looked in when no file has it.
  std::pair<const SafetensorsReader*, std::string> find(
      const std::string& name) const;
  /// The path of the file holding `name` (which must be there).
  const std::string& path_of(const std::string& name) const;
  /// Every tensor's name (prefix stripped), sorted.
  std::vector<std::string> names() const;
  /// The paths of the files, comma-separated (for messages).
  std::string files() const;

 private:
  void add(const std::string& stored, size_t reader, const std::string& from);

  Group group_;
  std::string component_;
  std::string strip_prefix_;
  std::vector<std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, std::pair<size_t, std::string>> where_;
};

/// One stored tensor that makes `rows` consecutive indices of a
/// parameter's dim 0 (-1: all of them).
struct StoredPart {
  std::string name;
  int64_t rows = -1;
};

/// How one parameter is stored: the tensors that, concatenated along dim 0,
/// make it (Llama's q_proj, k_proj, v_proj are one fused qkv weight;
/// gate_proj and up_proj one fc1), and whether the single tensor is stored
/// transposed (GPT-2's `Conv1D` weights, `[in, out]`). When the parts make
/// fewer rows than the parameter has (a vocabulary padded for the split),
/// the rest are zeros.
struct ParameterSource {
  std::vector<StoredPart> parts;
  bool transposed = false;
};

/// Copies this rank's shard of the parameter `source` describes into
/// `param` (split by `spec` over `group`), reading from the files only the
/// bytes of the shard's ranges (`shard_ranges`) of each part, at most
/// `block_bytes` at a time, converted to `param`'s dtype block by block.
/// Raises a `c10::Error` naming the file and the tensor when a part has
/// another shape than `param` implies or is not stored as floating point.
void load_parameter(
    at::Tensor& param,
    const ShardSpec& spec,
    const Group& group,
    const HFFiles& files,
    const ParameterSource& source,
    uint64_t block_bytes,
    const std::string& component);

} // namespace torchtp::detail
