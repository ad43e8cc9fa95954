#include "torchtp/checkpoint.h"

#include "checkpoint/atomic_directory.h"
#include "checkpoint/optimizer_state.h"
#include "checkpoint/rank_agreement.h"
#include "checkpoint/reshard.h"
#include "checkpoint/torch_archive.h"
#include "detail/check.h"
#include "torchtp/partition.h"
#include "torchtp/safetensors.h"
#include "torchtp/sharding.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

namespace torchtp {
namespace fs = std::filesystem;
using detail::agree;
using detail::attempt;

namespace {

constexpr const char* kSave = "torchtp::save_checkpoint";
constexpr const char* kLoad = "torchtp::load_checkpoint";
constexpr const char* kReadExtra = "torchtp::read_checkpoint_extra";
constexpr const char* kLoadFull = "torchtp::load_full_state";
constexpr const char* kMeta = "meta.json";

std::string shard_file(int rank, int size) {
  char name[64];
  std::snprintf(
      name, sizeof(name), "rank-%05d-of-%05d.safetensors", rank, size);
  return name;
}

// One tensor to save: its name, this rank's data, and how it is split.
struct Item {
  std::string name;
  at::Tensor local;
  ShardSpec spec;
};

// What a checkpoint holds of a model: its parameters, and the scales of
// int8 weights (quantize_int8's "weight_scale" buffers), by name.
std::vector<std::pair<std::string, at::Tensor>> stored_tensors(
    const torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : model.named_parameters()) {
    out.emplace_back(p.key(), p.value());
  }
  for (const auto& b : model.named_buffers()) {
    const auto& k = b.key();
    if (k == "weight_scale" ||
        (k.size() > 13 && k.compare(k.size() - 13, 13, ".weight_scale") == 0)) {
      out.emplace_back(k, b.value());
    }
  }
  return out;
}

// Collects the model's parameters and the optimizer's per-parameter tensors.
std::vector<Item> collect(
    const torch::nn::Module& model,
    const torch::optim::Optimizer* opt,
    nlohmann::json& steps) {
  auto specs = shard_specs(model);
  std::vector<Item> items;
  for (const auto& [name, tensor] : stored_tensors(model)) {
    items.push_back({name, tensor.detach(), specs.at(name)});
    if (opt == nullptr || !tensor.requires_grad()) {
      continue; // int8 weights and scales have no optimizer state
    }
    auto st = detail::read_adam_state(*opt, tensor);
    if (!st.has_value()) {
      continue; // never stepped
    }
    const auto base = "optimizer." + name + ".";
    items.push_back({base + "exp_avg", st->exp_avg, specs.at(name)});
    items.push_back({base + "exp_avg_sq", st->exp_avg_sq, specs.at(name)});
    if (st->max_exp_avg_sq.defined()) {
      items.push_back(
          {base + "max_exp_avg_sq", st->max_exp_avg_sq, specs.at(name)});
    }
    steps[name] = st->step;
  }
  return items;
}

} // namespace

void save_checkpoint(
    const std::string& dir,
    const torch::nn::Module& model,
    torch::optim::Optimizer* optimizer,
    const std::map<std::string, std::string>& extra) {
  Group g = shard_group(model);
  const detail::AtomicDirectory out(dir);
  const fs::path tmp = out.staging();
  const std::string what = std::string(kSave) + " to " + out.path().string();

  nlohmann::json steps = nlohmann::json::object();
  std::string kind;
  std::vector<Item> items;
  agree(
      g, attempt([&] {
        kind = detail::optimizer_kind(optimizer);
        items = collect(model, optimizer, steps);
      }),
      what);
  // The checksum gather below needs the same count everywhere; optimizer
  // state of a parameter stepped on some ranks only would break it.
  auto count = at::full({2}, static_cast<int64_t>(items.size()), at::kLong);
  count[1] = -count[1];
  g.all_reduce(count, ReduceOp::max);
  TORCHTP_CHECK(
      count[0].item<int64_t>() == -count[1].item<int64_t>(), what, g,
      "the ranks hold different numbers of tensors (this rank ", items.size(),
      "); was the optimizer stepped on every rank?");

  std::string error;
  if (g.rank() == 0) {
    error = attempt([&] { out.begin(); });
  }
  agree(g, error, what);

  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : items) {
    tensors.emplace_back(item.name, item.local);
  }
  std::vector<uint32_t> crcs;
  agree(
      g, attempt([&] {
        crcs = write_safetensors(
            (tmp / shard_file(g.rank(), g.size())).string(), tensors,
            {{"format", "torchtp"}, {"rank", std::to_string(g.rank())}});
      }),
      what);

  // Rank 0 learns every shard's checksums and writes the metadata.
  auto mine = at::empty({static_cast<int64_t>(items.size())}, at::kLong);
  for (size_t i = 0; i < crcs.size(); ++i) {
    mine[static_cast<int64_t>(i)] = static_cast<int64_t>(crcs[i]);
  }
  auto all = g.all_gather(mine.unsqueeze(0), 0);
  if (g.rank() == 0) {
    error = attempt([&] {
      nlohmann::json meta;
      meta["format"] = "torchtp-checkpoint";
      meta["format_version"] = kCheckpointFormatVersion;
      meta["tensor_parallel_size"] = g.size();
      meta["extra"] = nlohmann::json::object();
      for (const auto& [key, value] : extra) {
        meta["extra"][key] = value;
      }
      meta["optimizer"] = {{"kind", kind}, {"step", steps}};
      nlohmann::json entries = nlohmann::json::object();
      for (size_t i = 0; i < items.size(); ++i) {
        const auto& item = items[i];
        nlohmann::json shards = nlohmann::json::array();
        for (int r = 0; r < g.size(); ++r) {
          shards.push_back(
              {{"file", shard_file(r, g.size())},
               {"crc32", all[r][static_cast<int64_t>(i)].item<int64_t>()}});
        }
        entries[item.name] = {
            {"shape", full_shape(item.local.sizes(), item.spec, g)},
            {"dtype", c10::toString(item.local.scalar_type())},
            {"split_dim", item.spec.dim},
            {"segments", item.spec.segments},
            {"shards", shards}};
        if (item.spec.uneven) {
          // How the saved shards split each segment: loading at another
          // degree needs the rule (an even split is the default).
          entries[item.name]["uneven"] = true;
          entries[item.name]["unit"] = item.spec.unit;
        }
        if (item.spec.kv_heads > 0) {
          // Grouped-query [Q; K; V]: heads shared between shards.
          entries[item.name]["kv_heads"] = item.spec.kv_heads;
          entries[item.name]["unit"] = item.spec.unit;
        }
      }
      meta["tensors"] = entries;
      const auto meta_path = tmp / kMeta;
      {
        std::ofstream file(meta_path);
        file << meta.dump(1) << "\n";
        TORCH_CHECK(file.good(), "cannot write ", meta_path.string());
      }
      detail::fsync_path(meta_path);
      // A crash during the swap leaves DIR.old, which load finds.
      out.commit();
    });
  }
  agree(g, error, what);
}

namespace {

// Opens shard files on first use only: a rank reads just the files that
// hold its slices.
class ShardFiles {
 public:
  explicit ShardFiles(fs::path dir) : dir_(std::move(dir)) {}
  const SafetensorsReader& get(const std::string& file) {
    auto it = open_.find(file);
    if (it == open_.end()) {
      const auto path = (dir_ / file).string();
      TORCH_CHECK(fs::exists(path), kLoad, ": missing shard file ", path);
      it = open_.emplace(file, std::make_unique<SafetensorsReader>(path)).first;
    }
    return *it->second;
  }

 private:
  fs::path dir_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> open_;
};

// Fills `dest` (this rank's slice under `spec` over `g`) from the saved
// shards of `name`, wherever they overlap it.
void load_tensor(
    const std::string& name,
    const nlohmann::json& entry,
    at::Tensor dest,
    const ShardSpec& spec,
    const Group& g,
    ShardFiles& files,
    const std::string& dir) {
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  const int64_t saved_dim = entry.at("split_dim").get<int64_t>();
  const int64_t saved_segments = entry.value("segments", int64_t{1});
  const int64_t saved_kv_heads = entry.value("kv_heads", int64_t{0});
  const auto& shards = entry.at("shards");
  TORCHTP_CHECK(
      saved_dim == spec.dim && saved_segments == spec.segments &&
          saved_kv_heads == spec.kv_heads,
      kLoad, g, "'", name, "' in ", dir, " is split along dim ", saved_dim,
      " in ", saved_segments, " segments with ", saved_kv_heads,
      " key/value heads, the model splits it along dim ", spec.dim, " in ",
      spec.segments, " with ", spec.kv_heads);
  const auto expected = full_shape(dest.sizes(), spec, g);
  TORCHTP_CHECK(
      expected == shape, kLoad, g, "'", name, "' in ", dir, " has full shape ",
      at::IntArrayRef(shape), ", the model's is ", at::IntArrayRef(expected));
  // Floating-point dtypes convert; int8 weights only load into int8.
  const auto saved_dtype = entry.value("dtype", std::string());
  const bool saved_int8 = saved_dtype == "Char";
  TORCHTP_CHECK(
      saved_int8 == (dest.scalar_type() == at::kChar), kLoad, g, "'", name,
      "' in ", dir, " is ", saved_dtype, ", the model's is ",
      dest.scalar_type(),
      ": int8 weights load only into a model quantize_int8 made int8 (quantize "
      "after loading a floating-point checkpoint)");

  auto read = [&](int64_t k) {
    const auto& shard = shards.at(k);
    const auto& reader = files.get(shard.at("file").get<std::string>());
    return reader.read(name, shard.at("crc32").get<uint32_t>());
  };
  torch::NoGradGuard no_grad;
  if (spec.is_replicated()) {
    auto t = read(0);
    TORCHTP_CHECK(
        t.sizes() == dest.sizes(), kLoad, g, "'", name, "' in ",
        files.get(shards.at(0).at("file")).path(), " has shape ", t.sizes(),
        ", expected ", dest.sizes());
    dest.copy_(t);
    return;
  }
  ShardSpec saved_spec = spec;
  saved_spec.uneven = entry.value("uneven", false);
  saved_spec.unit = entry.value("unit", int64_t{1});
  const detail::SavedLayout saved{
      shape, saved_spec, static_cast<int64_t>(shards.size())};
  for (const auto& r : detail::plan_reshard(saved, g.size(), g.rank(), name)) {
    auto src = read(r.shard);
    TORCHTP_CHECK(
        src.sizes() == at::IntArrayRef(r.shape), kLoad, g, "'", name, "' in ",
        files.get(shards.at(r.shard).at("file")).path(), " has shape ",
        src.sizes(), ", expected ", at::IntArrayRef(r.shape));
    for (const auto& range : r.ranges) {
      dest.narrow(spec.dim, range.to, range.length)
          .copy_(src.narrow(spec.dim, range.from, range.length));
    }
  }
}

// The directory to load: DIR, or DIR.old when a crash between the two
// renames of a save left only that (the previous, complete checkpoint).
fs::path directory_to_load(const std::string& dir, const char* component) {
  const detail::AtomicDirectory d(dir);
  const auto p = d.committed(kMeta);
  if (p != d.path()) {
    TORCH_WARN(
        component, ": ", d.path().string(), " is missing; loading ", p.string(),
        ", the checkpoint an interrupted save was replacing");
  }
  return p;
}

nlohmann::json read_meta(const fs::path& dir, const char* component) {
  const auto path = dir / kMeta;
  TORCH_CHECK(
      fs::exists(path), component, ": ", path.string(),
      " not found: not a torchtp checkpoint, or an interrupted save");
  std::ifstream in(path);
  nlohmann::json meta;
  try {
    in >> meta;
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(
        false, component, ": ", path.string(),
        " is not valid JSON: ", e.what());
  }
  TORCH_CHECK(
      meta.is_object() && meta.value("format", "") == "torchtp-checkpoint",
      component, ": ", path.string(), " is not a torchtp checkpoint");
  const int version = meta.value("format_version", -1);
  TORCH_CHECK(
      version == kCheckpointFormatVersion, component, ": ", path.string(),
      " has format version ", version, "; this torchtp reads version ",
      kCheckpointFormatVersion);
  TORCH_CHECK(
      meta.contains("tensors") && meta["tensors"].is_object(), component, ": ",
      path.string(), " lists no tensors");
  return meta;
}

// meta.json's "extra" as strings. Version 1 files written before extra
// became a map of strings may hold any JSON value: those come back as their
// JSON text.
std::map<std::string, std::string> read_extra(
    const nlohmann::json& meta, const fs::path& dir, const char* component) {
  std::map<std::string, std::string> extra;
  const auto it = meta.find("extra");
  if (it == meta.end() || it->is_null()) {
    return extra;
  }
  if (!it->is_object()) {
    TORCH_WARN(
        component, ": the extra of ", (dir / kMeta).string(),
        " is not a JSON object; ignoring it");
    return extra;
  }
  for (const auto& [key, value] : it->items()) {
    extra[key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
  return extra;
}

} // namespace

std::map<std::string, std::string> load_checkpoint(
    const std::string& dir,
    torch::nn::Module& model,
    torch::optim::Optimizer* optimizer) {
  Group g = shard_group(model);
  std::map<std::string, std::string> extra;
  // Everything is read into temporaries first and copied into the model
  // only once every rank has read its part: a failed load leaves the model
  // and the optimizer as they were.
  std::vector<std::pair<at::Tensor, at::Tensor>> params; // (param, value)
  std::vector<std::pair<at::Tensor, detail::AdamState>> states;
  std::string kind;
  const std::string error = attempt([&] {
    const fs::path path = directory_to_load(dir, kLoad);
    const auto meta = read_meta(path, kLoad);
    auto specs = shard_specs(model);
    ShardFiles files(path);
    const auto& tensors = meta["tensors"];
    auto find = [&](const std::string& name) -> const nlohmann::json& {
      TORCHTP_CHECK(
          tensors.contains(name), kLoad, g, (path / kMeta).string(),
          " has no tensor '", name, "'");
      return tensors.at(name);
    };
    kind = detail::optimizer_kind(optimizer);
    const auto saved_opt = meta.value("optimizer", nlohmann::json::object());
    if (optimizer != nullptr) {
      const auto saved_kind = saved_opt.value("kind", std::string());
      TORCHTP_CHECK(
          saved_kind == kind, kLoad, g, path.string(), " holds ",
          saved_kind.empty() ? "no" : saved_kind,
          " optimizer state, the optimizer is ", kind);
    }
    for (auto& [name, tensor] : stored_tensors(model)) {
      const auto& spec = specs.at(name);
      auto value = at::empty_like(tensor.detach());
      load_tensor(name, find(name), value, spec, g, files, path);
      params.emplace_back(tensor, value);
      if (optimizer == nullptr || !saved_opt.contains("step") ||
          !saved_opt.at("step").contains(name)) {
        continue;
      }
      detail::AdamState st;
      st.step = saved_opt.at("step").at(name).get<int64_t>();
      const auto base = "optimizer." + name + ".";
      const std::pair<const char*, at::Tensor*> slots[] = {
          {"exp_avg", &st.exp_avg},
          {"exp_avg_sq", &st.exp_avg_sq},
          {"max_exp_avg_sq", &st.max_exp_avg_sq}};
      for (const auto& [suffix, slot] : slots) {
        if (!tensors.contains(base + suffix)) {
          continue;
        }
        *slot = at::empty_like(tensor.detach());
        load_tensor(
            base + suffix, tensors.at(base + suffix), *slot, spec, g, files,
            path);
      }
      states.emplace_back(tensor, st);
    }
    extra = read_extra(meta, path, kLoad);
  });
  agree(g, error, std::string(kLoad) + " from " + dir);

  torch::NoGradGuard no_grad;
  for (auto& [param, value] : params) {
    param.copy_(value);
  }
  for (auto& [param, st] : states) {
    detail::write_adam_state(*optimizer, kind, param, st);
  }
  return extra;
}

std::map<std::string, std::string> read_checkpoint_extra(
    const std::string& dir) {
  const fs::path path = directory_to_load(dir, kReadExtra);
  return read_extra(read_meta(path, kReadExtra), path, kReadExtra);
}

void load_full_state(const std::string& path, torch::nn::Module& model) {
  Group g = shard_group(model);
  // As in load_checkpoint: read into temporaries, agree, then copy.
  std::vector<std::pair<at::Tensor, at::Tensor>> params; // (param, value)
  const std::string error = attempt([&] {
    auto specs = shard_specs(model);
    TORCHTP_CHECK(fs::exists(path), kLoadFull, g, path, " not found");
    for (const auto& p : model.named_parameters()) {
      TORCHTP_CHECK(
          p.value().scalar_type() != at::kChar, kLoadFull, g, "'", p.key(),
          "' is int8: load the full state into the floating-point model, "
          "then quantize_int8 it");
    }
    const bool safetensors =
        path.size() > 12 && path.substr(path.size() - 12) == ".safetensors";
    std::function<at::Tensor(const std::string&)> read_full;
    std::unique_ptr<SafetensorsReader> reader;
    std::unique_ptr<detail::TorchArchiveReader> archive;
    if (safetensors) {
      reader = std::make_unique<SafetensorsReader>(path);
      read_full = [&](const std::string& name) { return reader->read(name); };
    } else {
      archive = std::make_unique<detail::TorchArchiveReader>(path, kLoadFull);
      read_full = [&](const std::string& name) { return archive->read(name); };
    }
    for (auto& p : model.named_parameters()) {
      auto value = at::empty_like(p.value().detach());
      copy_shard_of(
          value, read_full(p.key()), specs.at(p.key()), g, kLoadFull,
          "'" + p.key() + "' in " + path);
      params.emplace_back(p.value(), value);
    }
  });
  agree(g, error, std::string(kLoadFull) + " from " + path);
  torch::NoGradGuard no_grad;
  for (auto& [param, value] : params) {
    param.copy_(value);
  }
}

} // namespace torchtp
