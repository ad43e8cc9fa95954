#include "torchtp/gpt2.h"

#include "detail/check.h"
#include "detail/options.h"
#include "torchtp/safetensors.h"
#include "torchtp/sharding.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>

namespace torchtp {
namespace {

constexpr const char* kLoadGPT2 = "torchtp::load_gpt2";

std::string join_path(const std::string& dir, const std::string& file) {
  return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

// Every rank reads the same files, so these errors need no rank label.
nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), kLoadGPT2, ": cannot open ", path);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, kLoadGPT2, ": ", path, " is malformed: ", e.what());
  }
  return json;
}

// The tensors of a GPT-2 directory, over one file or several, by their
// names without the `transformer.` prefix.
class GPT2Files {
 public:
  GPT2Files(const std::string& dir, const Group& group) : group_(group) {
    const auto index = join_path(dir, "model.safetensors.index.json");
    const auto single = join_path(dir, "model.safetensors");
    if (std::ifstream(index).good()) {
      const auto json = read_json(index);
      TORCHTP_CHECK(
          json.contains("weight_map") && json["weight_map"].is_object(),
          kLoadGPT2, group, index, " has no \"weight_map\" object");
      std::map<std::string, size_t> opened;
      for (const auto& [name, file] : json["weight_map"].items()) {
        TORCHTP_CHECK(
            file.is_string(), kLoadGPT2, group, index, ": the file of '", name,
            "' is not a string");
        const auto path = join_path(dir, file.get<std::string>());
        auto it = opened.find(path);
        if (it == opened.end()) {
          it = opened.emplace(path, readers_.size()).first;
          readers_.push_back(std::make_unique<SafetensorsReader>(path));
        }
        add(name, it->second, index);
      }
    } else {
      TORCHTP_CHECK(
          std::ifstream(single).good(), kLoadGPT2, group, dir,
          " has neither model.safetensors nor model.safetensors.index.json");
      readers_.push_back(std::make_unique<SafetensorsReader>(single));
      for (const auto& name : readers_.back()->names()) {
        add(name, 0, single);
      }
    }
  }

  bool contains(const std::string& name) const {
    return where_.count(name) > 0;
  }

  // The file holding `name`, and its name there.
  std::pair<const SafetensorsReader*, std::string> find(
      const std::string& name) const {
    auto it = where_.find(name);
    TORCHTP_CHECK(
        it != where_.end(), kLoadGPT2, group_, "no file has tensor '", name,
        "' (looked in ", files(), ")");
    const auto& reader = *readers_[it->second.first];
    TORCHTP_CHECK(
        reader.contains(it->second.second), kLoadGPT2, group_, reader.path(),
        " has no tensor '", it->second.second,
        "' (model.safetensors.index.json places it there)");
    return {&reader, it->second.second};
  }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& item : where_) {
      out.push_back(item.first);
    }
    return out;
  }

  std::string files() const {
    std::string out;
    for (const auto& r : readers_) {
      out += (out.empty() ? "" : ", ") + r->path();
    }
    return out;
  }

 private:
  void add(const std::string& stored, size_t reader, const std::string& from) {
    static const std::string prefix = "transformer.";
    const auto name = stored.compare(0, prefix.size(), prefix) == 0
                          ? stored.substr(prefix.size())
                          : stored;
    TORCHTP_CHECK(
        where_.emplace(name, std::make_pair(reader, stored)).second, kLoadGPT2,
        group_, from, " has tensor '", name, "' twice");
  }

  Group group_;
  std::vector<std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, std::pair<size_t, std::string>> where_;
};

// How one GPT parameter is stored: its tensor's name, whether it is a
// `Conv1D` weight (stored transposed, `[in, out]`), and, for the vocabulary
// tables, the stored rows (fewer than the padded parameter's).
struct Source {
  std::string name;
  bool conv1d = false;
  int64_t stored_rows = -1;
};

// Copies this rank's shard of `source` into `param` (split by `spec` over
// `group`), reading only the shard's bytes; padded rows become zeros.
void load_parameter(
    at::Tensor& param,
    const ShardSpec& spec,
    const Group& group,
    const GPT2Files& files,
    const Source& source,
    uint64_t block_bytes) {
  const auto [file, stored_name] = files.find(source.name);
  auto full = full_shape(param.sizes(), spec, group);
  if (source.stored_rows >= 0) {
    full[0] = source.stored_rows;
  }
  auto expected = full;
  if (source.conv1d) {
    std::reverse(expected.begin(), expected.end());
  }
  TORCHTP_CHECK(
      file->shape(stored_name) == expected, kLoadGPT2, group, file->path(),
      ": tensor '", stored_name, "' has shape ",
      at::IntArrayRef(file->shape(stored_name)), ", expected ",
      at::IntArrayRef(expected), " from config.json");
  at::NoGradGuard no_grad;
  const uint64_t element = at::elementSize(file->dtype(stored_name));
  // Indices [from, from + length) of the full parameter's `dim` into
  // [to, to + length) of the shard, in blocks of at most block_bytes along
  // the file's dim 0, so that nothing but the shard is ever held whole.
  auto place = [&](int64_t dim, int64_t from, int64_t to, int64_t length) {
    // Rows past the stored vocabulary are padding.
    const int64_t stored =
        std::max<int64_t>(0, std::min<int64_t>(length, full[dim] - from));
    if (stored < length) {
      param.narrow(dim, to + stored, length - stored).zero_();
    }
    if (stored == 0) {
      return;
    }
    auto target = param.narrow(dim, to, stored);
    std::vector<int64_t> start(expected.size(), 0), size = expected;
    start[source.conv1d ? 1 - dim : dim] = from;
    size[source.conv1d ? 1 - dim : dim] = stored;
    uint64_t row_bytes = element;
    for (size_t d = 1; d < size.size(); ++d) {
      row_bytes *= static_cast<uint64_t>(size[d]);
    }
    const int64_t rows = std::max<int64_t>(
        1,
        static_cast<int64_t>(block_bytes / std::max<uint64_t>(row_bytes, 1)));
    const int64_t first = start[0], total = size[0];
    for (int64_t r = 0; r < total; r += rows) {
      start[0] = first + r;
      size[0] = std::min(rows, total - r);
      auto block = file->read_block(stored_name, start, size);
      // The file's dim 0 is the parameter's dim 1 when stored transposed.
      target.narrow(source.conv1d ? 1 : 0, r, size[0])
          .copy_(source.conv1d ? block.t() : block);
    }
  };
  if (spec.is_replicated()) {
    place(0, 0, 0, param.size(0));
    return;
  }
  const int64_t padded = full_shape(param.sizes(), spec, group)[spec.dim];
  for (const auto& r : shard_ranges(
           spec, padded, group.size(), group.rank(),
           std::string(kLoadGPT2) + ": " + stored_name)) {
    place(spec.dim, r.from, r.to, r.length);
  }
}

// Every parameter of a GPT-2-shaped GPT with where it is stored.
std::map<std::string, Source> sources(const GPT2Config& c) {
  std::map<std::string, Source> out;
  auto both = [&](const std::string& to, const std::string& from, bool conv) {
    out[to + ".weight"] = {from + ".weight", conv};
    out[to + ".bias"] = {from + ".bias"};
  };
  out["token_embedding.weight"] = {"wte.weight", false, c.vocab_size};
  out["position_embedding.weight"] = {"wpe.weight"};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const auto to = "layers." + std::to_string(i) + ".";
    const auto from = "h." + std::to_string(i) + ".";
    both(to + "ln1", from + "ln_1", false);
    both(to + "attention.qkv", from + "attn.c_attn", true);
    both(to + "attention.proj", from + "attn.c_proj", true);
    both(to + "ln2", from + "ln_2", false);
    both(to + "mlp.fc1", from + "mlp.c_fc", true);
    both(to + "mlp.fc2", from + "mlp.c_proj", true);
  }
  both("final_norm", "ln_f", false);
  if (!c.tie_word_embeddings) {
    out["lm_head.weight"] = {"lm_head.weight", false, c.vocab_size};
  }
  return out;
}

// Stored names the model has no use for: GPT-2's causal-mask buffers, and a
// tied output layer saved anyway.
bool skipped(const std::string& name, const GPT2Config& c) {
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const auto attn = "h." + std::to_string(i) + ".attn.";
    if (name == attn + "bias" || name == attn + "masked_bias") {
      return true;
    }
  }
  return c.tie_word_embeddings && name == "lm_head.weight";
}

} // namespace

GPT2Config read_gpt2_config(const std::string& dir) {
  const auto path = join_path(dir, "config.json");
  const auto json = read_json(path);
  TORCH_CHECK(json.is_object(), kLoadGPT2, ": ", path, " is not a JSON object");
  GPT2Config c;
  try {
    auto get = [&](const char* key, auto& value) {
      if (json.contains(key) && !json[key].is_null()) {
        value = json[key].get<std::decay_t<decltype(value)>>();
      }
    };
    const std::string type = json.value("model_type", "gpt2");
    TORCH_CHECK(
        type == "gpt2", kLoadGPT2, ": ", path, ": model_type is \"", type,
        "\"; only \"gpt2\" is supported");
    get("n_ctx", c.n_positions);
    get("n_positions", c.n_positions);
    get("vocab_size", c.vocab_size);
    get("n_embd", c.n_embd);
    get("n_layer", c.n_layer);
    get("n_head", c.n_head);
    get("n_inner", c.n_inner);
    get("layer_norm_epsilon", c.layer_norm_epsilon);
    get("activation_function", c.activation_function);
    get("tie_word_embeddings", c.tie_word_embeddings);
    get("eos_token_id", c.eos_token_id);
    TORCH_CHECK(
        !json.value("scale_attn_by_inverse_layer_idx", false) &&
            json.value("scale_attn_weights", true),
        kLoadGPT2, ": ", path,
        ": only attention scaled by 1/sqrt(head_dim) is supported "
        "(scale_attn_weights true, scale_attn_by_inverse_layer_idx false)");
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, kLoadGPT2, ": ", path, " is malformed: ", e.what());
  }
  static const std::set<std::string> gelus = {
      "gelu_new", "gelu_pytorch_tanh", "gelu"};
  TORCH_CHECK(
      gelus.count(c.activation_function) > 0, kLoadGPT2, ": ", path,
      ": activation_function \"", c.activation_function,
      "\" is not supported (gelu_new, gelu_pytorch_tanh or gelu)");
  TORCH_CHECK(
      c.vocab_size > 0 && c.n_positions > 0 && c.n_embd > 0 && c.n_layer >= 0 &&
          c.n_head > 0 && c.n_inner >= 0 && c.layer_norm_epsilon > 0,
      kLoadGPT2, ": ", path,
      ": vocab_size, n_positions, n_embd, n_head and layer_norm_epsilon must "
      "be positive, n_layer and n_inner not negative");
  return c;
}

GPTOptions gpt2_options(const GPT2Config& c, const Group& group, bool uneven) {
  return GPTOptions(c.vocab_size, c.n_positions)
      .d_model(c.n_embd)
      .num_heads(c.n_head)
      .num_layers(c.n_layer)
      .ffn_hidden(c.n_inner)
      .activation(
          c.activation_function == "gelu" ? Activation::gelu
                                          : Activation::gelu_tanh)
      .layer_norm_eps(c.layer_norm_epsilon)
      .tie_embeddings(c.tie_word_embeddings)
      .vocab_pad_multiple(uneven ? 64 : std::lcm<int64_t>(64, group.size()))
      .uneven(uneven)
      .group(group);
}

GPT load_gpt2(const std::string& dir, const LoadGPT2Options& options) {
  const Group group = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      options.block_bytes() > 0, kLoadGPT2, group,
      "block_bytes must be positive");
  const auto config = read_gpt2_config(dir);
  // Open and check every file before the model takes memory.
  GPT2Files files(dir, group);
  const auto from = sources(config);
  std::set<std::string> used;
  for (const auto& item : from) {
    used.insert(item.second.name);
  }
  for (const auto& name : files.names()) {
    TORCHTP_CHECK(
        used.count(name) > 0 || skipped(name, config), kLoadGPT2, group,
        files.files(), " has tensor '", name,
        "', which a GPT-2 of config.json (n_layer ", config.n_layer,
        ") does not have");
  }
  GPT gpt(gpt2_options(config, group, options.uneven()).dtype(options.dtype()));
  const auto specs = shard_specs(*gpt);
  for (auto& p : gpt->named_parameters()) {
    auto it = from.find(p.key());
    TORCH_INTERNAL_ASSERT(
        it != from.end(), "no GPT-2 tensor for parameter ", p.key());
    load_parameter(
        p.value(), specs.at(p.key()), group, files, it->second,
        static_cast<uint64_t>(options.block_bytes()));
  }
  return gpt;
}

} // namespace torchtp
