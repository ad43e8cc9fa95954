#pragma once

// Reading Hugging Face model directories: the safetensors files of a
// checkpoint (one file, or several listed by model.safetensors.index.json)
// and the copy of this rank's shard of a parameter out of them. Shared by
// load_gpt2 (gpt2.cpp) and load_pretrained (pretrained.cpp).

#include "torchtp/gpt.h"
#include "torchtp/group.h"
#include "torchtp/safetensors.h"
#include "torchtp/sharding.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
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
  const Group& group() const {
    return group_;
  }
  const std::string& component() const {
    return component_;
  }

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

/// The vocabulary padding of a loaded checkpoint's GPT over `group`: a
/// multiple of 64 and of the group's size (so the split is even), or with
/// `uneven` of 64 only. One rule for every family.
int64_t loaded_vocab_pad_multiple(const Group& group, bool uneven);

/// Where each parameter of a model is stored, by the parameter's name.
using ParameterSources = std::map<std::string, ParameterSource>;

/// Checks, before a model takes memory, that `files` hold every tensor
/// `sources` names and nothing else that `skipped` does not accept: a
/// missing tensor is refused naming the files looked in, an unknown one
/// naming its file and `model` (what config.json describes, e.g. "a GPT-2 of
/// config.json (n_layer 2)").
void check_tensors(
    const HFFiles& files,
    const ParameterSources& sources,
    const std::function<bool(const std::string&)>& skipped,
    const std::string& model);

/// A GPT of `options` over `files.group()` holding this rank's shards of the
/// parameters `sources` describe (every one of them, `load_parameter`).
/// Built without drawing initial weights, since all are overwritten.
/// `int8_weights`: each layer's weight is quantized (quantize.h) as soon
/// as it is read, so the float weights never all exist at once.
GPT load_gpt(
    const GPTOptions& options,
    const HFFiles& files,
    const ParameterSources& sources,
    uint64_t block_bytes,
    bool int8_weights = false);

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
