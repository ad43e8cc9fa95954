#include "detail/hf_files.h"

#include "detail/check.h"
#include "detail/shard_init.h"
#include "torchtp/embedding.h"
#include "torchtp/linear.h"
#include "torchtp/quantize.h"

#include <nlohmann/json.hpp>

#include <malloc.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

namespace torchtp::detail {

std::string join_path(const std::string& dir, const std::string& file) {
  return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

nlohmann::json read_json(
    const std::string& path, const std::string& component) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), component, ": cannot open ", path);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, component, ": ", path, " is malformed: ", e.what());
  }
  return json;
}

HFFiles::HFFiles(
    const std::string& dir,
    const Group& group,
    std::string component,
    std::string strip_prefix)
    : group_(group),
      component_(std::move(component)),
      strip_prefix_(std::move(strip_prefix)) {
  const auto index = join_path(dir, "model.safetensors.index.json");
  const auto single = join_path(dir, "model.safetensors");
  if (std::ifstream(index).good()) {
    const auto json = read_json(index, component_);
    TORCHTP_CHECK(
        json.is_object() && json.contains("weight_map") &&
            json["weight_map"].is_object(),
        component_, group_, index, " has no \"weight_map\" object");
    std::map<std::string, size_t> opened;
    for (const auto& [name, file] : json["weight_map"].items()) {
      TORCHTP_CHECK(
          file.is_string(), component_, group_, index, ": the file of '", name,
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
        std::ifstream(single).good(), component_, group_, dir,
        " has neither model.safetensors nor model.safetensors.index.json");
    readers_.push_back(std::make_unique<SafetensorsReader>(single));
    for (const auto& name : readers_.back()->names()) {
      add(name, 0, single);
    }
  }
}

void HFFiles::add(
    const std::string& stored, size_t reader, const std::string& from) {
  const bool prefixed =
      !strip_prefix_.empty() &&
      stored.compare(0, strip_prefix_.size(), strip_prefix_) == 0;
  const auto name = prefixed ? stored.substr(strip_prefix_.size()) : stored;
  TORCHTP_CHECK(
      where_.emplace(name, std::make_pair(reader, stored)).second, component_,
      group_, from, " has tensor '", name, "' twice");
}

std::pair<const SafetensorsReader*, std::string> HFFiles::find(
    const std::string& name) const {
  auto it = where_.find(name);
  TORCHTP_CHECK(
      it != where_.end(), component_, group_, "no file has tensor '", name,
      "' (looked in ", files(), ")");
  const auto& reader = *readers_[it->second.first];
  TORCHTP_CHECK(
      reader.contains(it->second.second), component_, group_, reader.path(),
      " has no tensor '", it->second.second,
      "' (model.safetensors.index.json places it there)");
  return {&reader, it->second.second};
}

const std::string& HFFiles::path_of(const std::string& name) const {
  return readers_.at(where_.at(name).first)->path();
}

std::vector<std::string> HFFiles::names() const {
  std::vector<std::string> out;
  for (const auto& item : where_) {
    out.push_back(item.first);
  }
  return out;
}

std::string HFFiles::files() const {
  std::string out;
  for (const auto& r : readers_) {
    out += (out.empty() ? "" : ", ") + r->path();
  }
  return out;
}

void load_parameter(
    at::Tensor& param,
    const ShardSpec& spec,
    const Group& group,
    const HFFiles& files,
    const ParameterSource& source,
    uint64_t block_bytes,
    const std::string& component) {
  const auto full = full_shape(param.sizes(), spec, group);
  TORCH_INTERNAL_ASSERT(!source.parts.empty() && !full.empty());
  TORCH_INTERNAL_ASSERT(
      !source.transposed || (source.parts.size() == 1 && full.size() == 2));
  // Each part, checked, at its offset along the parameter's dim 0.
  struct Part {
    const SafetensorsReader* file;
    std::string name;
    int64_t offset;
    int64_t rows;
  };
  std::vector<Part> parts;
  int64_t stored_rows = 0;
  for (const auto& p : source.parts) {
    const auto [file, stored] = files.find(p.name);
    const int64_t rows = p.rows >= 0 ? p.rows : full[0];
    auto expected = full;
    expected[0] = rows;
    if (source.transposed) {
      std::reverse(expected.begin(), expected.end());
    }
    TORCHTP_CHECK(
        file->shape(stored) == expected, component, group, file->path(),
        ": tensor '", stored, "' has shape ",
        at::IntArrayRef(file->shape(stored)), ", expected ",
        at::IntArrayRef(expected), " from config.json");
    TORCHTP_CHECK(
        at::isFloatingType(file->dtype(stored)), component, group, file->path(),
        ": tensor '", stored, "' is stored as ", file->dtype(stored),
        "; expected floating point (float32, bfloat16, float16, float64)");
    parts.push_back({file, stored, stored_rows, rows});
    stored_rows += rows;
  }
  TORCH_INTERNAL_ASSERT(stored_rows <= full[0]);
  at::NoGradGuard no_grad;
  // Copies the block of part `p` spanning `size` from `start` (indices of
  // the part, in the parameter's orientation) into `target`, in reads of at
  // most block_bytes along the file's dim 0, so that nothing but the shard
  // is ever held whole.
  auto copy_block = [&](const Part& p, std::vector<int64_t> start,
                        std::vector<int64_t> size, at::Tensor target) {
    if (source.transposed) {
      std::reverse(start.begin(), start.end());
      std::reverse(size.begin(), size.end());
    }
    uint64_t row_bytes = at::elementSize(p.file->dtype(p.name));
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
      auto block = p.file->read_block(p.name, start, size);
      // The file's dim 0 is the parameter's dim 1 when stored transposed.
      target.narrow(source.transposed ? 1 : 0, r, size[0])
          .copy_(source.transposed ? block.t() : block);
    }
  };
  // Indices [from, from + length) of the full parameter's `dim` into
  // [to, to + length) of the shard: along dim 0 they may span several
  // parts (and the padding after them); along another dim every part
  // gives its rows.
  auto place = [&](int64_t dim, int64_t from, int64_t to, int64_t length) {
    for (const auto& p : parts) {
      std::vector<int64_t> start(full.size(), 0), size = full;
      size[0] = p.rows;
      at::Tensor target;
      if (dim == 0) {
        const int64_t lo = std::max(from, p.offset);
        const int64_t hi = std::min(from + length, p.offset + p.rows);
        if (lo >= hi) {
          continue;
        }
        start[0] = lo - p.offset;
        size[0] = hi - lo;
        target = param.narrow(0, to + lo - from, hi - lo);
      } else {
        start[dim] = from;
        size[dim] = length;
        target = param.narrow(0, p.offset, p.rows).narrow(dim, to, length);
      }
      copy_block(p, start, size, target);
    }
    // Rows past the stored ones are padding.
    if (stored_rows < full[0]) {
      if (dim != 0) {
        param.narrow(0, stored_rows, full[0] - stored_rows)
            .narrow(dim, to, length)
            .zero_();
      } else if (from + length > stored_rows) {
        const int64_t lo = std::max(from, stored_rows);
        param.narrow(0, to + lo - from, from + length - lo).zero_();
      }
    }
  };
  if (spec.is_replicated()) {
    place(0, 0, 0, full[0]);
    return;
  }
  for (const auto& r : shard_ranges(
           spec, full[spec.dim], group.size(), group.rank(),
           component + ": " + parts.front().name)) {
    place(spec.dim, r.from, r.to, r.length);
  }
}

int64_t loaded_vocab_pad_multiple(const Group& group, bool uneven) {
  return uneven ? 64 : std::lcm<int64_t>(64, group.size());
}

void check_tensors(
    const HFFiles& files,
    const ParameterSources& sources,
    const std::function<bool(const std::string&)>& skipped,
    const std::string& model) {
  std::set<std::string> used;
  for (const auto& item : sources) {
    for (const auto& part : item.second.parts) {
      used.insert(part.name);
      files.find(part.name);
    }
  }
  for (const auto& name : files.names()) {
    TORCHTP_CHECK(
        used.count(name) > 0 || skipped(name), files.component(), files.group(),
        files.path_of(name), " has tensor '", name, "', which ", model,
        " does not have");
  }
}

namespace {

// The floating-point dtype every stored part of `source` has, if one.
c10::optional<at::ScalarType> stored_dtype(
    const HFFiles& files, const ParameterSource& source) {
  c10::optional<at::ScalarType> out;
  for (const auto& part : source.parts) {
    const auto [file, stored] = files.find(part.name);
    const auto dtype = file->dtype(stored);
    if (!at::isFloatingType(dtype) || (out && *out != dtype)) {
      return c10::nullopt;
    }
    out = dtype;
  }
  return out;
}

} // namespace

GPT load_gpt(
    const GPTOptions& options,
    const HFFiles& files,
    const ParameterSources& sources,
    uint64_t block_bytes,
    bool int8_weights) {
  GPT gpt = [&] {
    SkipInitGuard no_init;
    return GPT(GPTOptions(options).group(files.group()));
  }();
  const auto specs = shard_specs(*gpt);
  // The modules whose "weight" parameter quantize_int8 replaces. Untouched
  // float pages are not resident yet (no initial draw), and each layer's
  // float weight is freed once quantized.
  std::map<std::string, std::shared_ptr<torch::nn::Module>> quantized_by_weight;
  if (int8_weights) {
    for (const auto& m : gpt->named_modules()) {
      // The layers quantize_int8 quantizes (not a norm's weight); they
      // have no children of their own.
      const auto* module = m.value().get();
      if (dynamic_cast<const ColumnParallelLinearImpl*>(module) != nullptr ||
          dynamic_cast<const RowParallelLinearImpl*>(module) != nullptr ||
          dynamic_cast<const VocabParallelEmbeddingImpl*>(module) != nullptr) {
        quantized_by_weight
            [m.key().empty() ? "weight" : m.key() + ".weight"] = m.value();
      }
    }
  }
  for (auto& p : gpt->named_parameters()) {
    auto it = sources.find(p.key());
    TORCH_INTERNAL_ASSERT(
        it != sources.end(), "no stored tensor for parameter ", p.key());
    const auto m = quantized_by_weight.find(p.key());
    if (m == quantized_by_weight.end()) {
      load_parameter(
          p.value(), specs.at(p.key()), files.group(), files, it->second,
          block_bytes, files.component());
      continue;
    }
    // A weight to quantize is read in the checkpoint's own dtype where
    // that is narrower than the model's (bfloat16 or float16 beside
    // float32): the copy held until it is quantized is then half as large
    // (the tied token table of Qwen2.5-0.5B: 272 MB instead of 545 MB at
    // TP=1), and widening it later gives the same values.
    auto staging = p.value();
    const auto stored = stored_dtype(files, it->second);
    if (stored &&
        static_cast<int64_t>(at::elementSize(*stored)) <
            p.value().element_size()) {
      staging = at::empty(p.value().sizes(), p.value().options().dtype(*stored));
    }
    load_parameter(
        staging, specs.at(p.key()), files.group(), files, it->second,
        block_bytes, files.component());
    if (!staging.is_same(p.value())) {
      at::NoGradGuard no_grad;
      p.value().set_data(staging);
    }
    quantize_int8(*m->second);
    // The float copy just freed came from malloc's heap once its sizes
    // raised glibc's mmap threshold, and the heap keeps freed pages
    // resident: without this an int8 Qwen2.5-0.5B held ~300 MiB more than
    // its weights after loading. Returning them costs a page fault each
    // when reused, which only loading pays.
    malloc_trim(0);
  }
  // What reading the checkpoint's blocks left in the heap, likewise.
  malloc_trim(0);
  return gpt;
}

} // namespace torchtp::detail
