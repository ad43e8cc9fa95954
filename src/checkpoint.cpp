#include "torchtp/checkpoint.h"

#include "torchtp/detail/check.h"
#include "torchtp/partition.h"
#include "torchtp/safetensors.h"
#include "torchtp/sharding.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

namespace torchtp {
namespace fs = std::filesystem;

namespace {

constexpr const char* kSave = "torchtp::save_checkpoint";
constexpr const char* kLoad = "torchtp::load_checkpoint";
constexpr const char* kLoadFull = "torchtp::load_full_state";

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

// The state an Adam-like optimizer keeps for one parameter.
struct AdamState {
  at::Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;
  int64_t step = 0;
};

std::string state_key(const at::Tensor& p) {
  return c10::guts::to_string(p.unsafeGetTensorImpl());
}

template <typename S>
bool read_adam_state(torch::optim::OptimizerParamState* s, AdamState& out) {
  auto* st = dynamic_cast<S*>(s);
  if (st == nullptr) {
    return false;
  }
  out = {st->exp_avg(), st->exp_avg_sq(), st->max_exp_avg_sq(), st->step()};
  return true;
}

std::string optimizer_kind(torch::optim::Optimizer* opt) {
  if (opt == nullptr) {
    return "";
  }
  if (dynamic_cast<torch::optim::AdamW*>(opt)) {
    return "adamw";
  }
  if (dynamic_cast<torch::optim::Adam*>(opt)) {
    return "adam";
  }
  TORCH_CHECK(
      false,
      "torchtp checkpoints save the state of Adam and AdamW "
      "optimizers; got another kind");
}

// Collects the model's parameters and the optimizer's per-parameter tensors.
std::vector<Item> collect(
    const torch::nn::Module& model,
    torch::optim::Optimizer* opt,
    nlohmann::json& steps) {
  auto specs = shard_specs(model);
  std::vector<Item> items;
  for (const auto& p : model.named_parameters()) {
    items.push_back({p.key(), p.value().detach(), specs.at(p.key())});
    if (opt == nullptr) {
      continue;
    }
    auto it = opt->state().find(state_key(p.value()));
    if (it == opt->state().end()) {
      continue; // never stepped
    }
    AdamState st;
    TORCH_CHECK(
        read_adam_state<torch::optim::AdamWParamState>(it->second.get(), st) ||
            read_adam_state<torch::optim::AdamParamState>(it->second.get(), st),
        "torchtp checkpoints save Adam and AdamW state only");
    const auto base = "optimizer." + p.key() + ".";
    items.push_back({base + "exp_avg", st.exp_avg, specs.at(p.key())});
    items.push_back({base + "exp_avg_sq", st.exp_avg_sq, specs.at(p.key())});
    if (st.max_exp_avg_sq.defined()) {
      items.push_back(
          {base + "max_exp_avg_sq", st.max_exp_avg_sq, specs.at(p.key())});
    }
    steps[p.key()] = st.step;
  }
  return items;
}

// Every rank learns whether any rank failed, and which (the lowest), then
// all raise together: no rank is left waiting in a collective for one that
// gave up. `error` is this rank's failure ("" when it did not fail).
void agree(const Group& g, const std::string& error, const std::string& what) {
  auto first = at::full({1}, error.empty() ? g.size() : g.rank(), at::kLong);
  g.all_reduce(first, ReduceOp::min);
  const int64_t failed = first.item<int64_t>();
  if (failed == g.size()) {
    return;
  }
  TORCH_CHECK(error.empty(), detail::with_rank_label(error, g.rank_label()));
  TORCHTP_CHECK(
      false, what, g, "rank ", failed, " failed (its message says why)");
}

// Runs `f`, returning its error message ("" when it succeeded).
template <typename F>
std::string attempt(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// "ckpt/" and "ckpt" name the same directory; the temporary and old names
// must be siblings of it, not children.
fs::path checkpoint_path(const std::string& dir) {
  auto p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) {
    p = p.parent_path();
  }
  TORCH_CHECK(!p.empty(), "torchtp: empty checkpoint directory name");
  return p;
}

void fsync_path(const fs::path& p) {
  FILE* f = std::fopen(p.c_str(), "r");
  if (f != nullptr) {
    ::fsync(fileno(f));
    std::fclose(f);
  }
}

} // namespace

void save_checkpoint(
    const std::string& dir,
    const torch::nn::Module& model,
    torch::optim::Optimizer* optimizer,
    const nlohmann::json& extra) {
  Group g = shard_group(model);
  const fs::path final_dir = checkpoint_path(dir);
  const fs::path tmp = final_dir.string() + ".tmp";
  const fs::path old = final_dir.string() + ".old";
  const std::string what = std::string(kSave) + " to " + final_dir.string();

  nlohmann::json steps = nlohmann::json::object();
  std::string kind;
  std::vector<Item> items;
  agree(
      g, attempt([&] {
        kind = optimizer_kind(optimizer);
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
    error = attempt([&] {
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    });
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
      meta["extra"] = extra;
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
      }
      meta["tensors"] = entries;
      const auto meta_path = tmp / "meta.json";
      {
        std::ofstream out(meta_path);
        out << meta.dump(1) << "\n";
        TORCH_CHECK(out.good(), "cannot write ", meta_path.string());
      }
      fsync_path(meta_path);
      fsync_path(tmp);
      // Swap in: the old checkpoint stays whole until the new one is. A
      // crash between the two renames leaves DIR.old, which load finds.
      fs::remove_all(old);
      if (fs::exists(final_dir)) {
        fs::rename(final_dir, old);
      }
      fs::rename(tmp, final_dir);
      fsync_path(
          final_dir.parent_path().empty() ? fs::path(".")
                                          : final_dir.parent_path());
      fs::remove_all(old);
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
  const auto& shards = entry.at("shards");
  TORCHTP_CHECK(
      saved_dim == spec.dim && saved_segments == spec.segments, kLoad, g, "'",
      name, "' in ", dir, " is split along dim ", saved_dim, " in ",
      saved_segments, " segments, the model splits it along dim ", spec.dim,
      " in ", spec.segments);
  const auto expected = full_shape(dest.sizes(), spec, g);
  TORCHTP_CHECK(
      expected == shape, kLoad, g, "'", name, "' in ", dir, " has full shape ",
      at::IntArrayRef(shape), ", the model's is ", at::IntArrayRef(expected));

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
  const int64_t saved_size = static_cast<int64_t>(shards.size());
  const int64_t seg_len = shape[spec.dim] / spec.segments;
  Partition now(seg_len, g.size(), g.rank(), name);
  Partition then(seg_len, saved_size, 0, name);
  for (int64_t k = 0; k < saved_size; ++k) {
    const auto ranges = overlap_ranges(then, k, now, spec.segments);
    if (ranges.empty()) {
      continue; // shard k holds nothing of this rank's slice
    }
    auto src = read(k);
    auto src_expected = shape;
    src_expected[spec.dim] = spec.segments * then.size(k);
    TORCHTP_CHECK(
        src.sizes() == at::IntArrayRef(src_expected), kLoad, g, "'", name,
        "' in ", files.get(shards.at(k).at("file")).path(), " has shape ",
        src.sizes(), ", expected ", at::IntArrayRef(src_expected));
    for (const auto& range : ranges) {
      dest.narrow(spec.dim, range.to, range.length)
          .copy_(src.narrow(spec.dim, range.from, range.length));
    }
  }
}

// The directory to load: DIR, or DIR.old when a crash between the two
// renames of a save left only that (the previous, complete checkpoint).
fs::path directory_to_load(const std::string& dir) {
  const auto p = checkpoint_path(dir);
  const fs::path old = p.string() + ".old";
  if (!fs::exists(p / "meta.json") && fs::exists(old / "meta.json")) {
    TORCH_WARN(
        kLoad, ": ", p.string(), " is missing; loading ", old.string(),
        ", the checkpoint an interrupted save was replacing");
    return old;
  }
  return p;
}

nlohmann::json read_meta(const fs::path& dir) {
  const auto path = dir / "meta.json";
  TORCH_CHECK(
      fs::exists(path), kLoad, ": ", path.string(),
      " not found: not a torchtp checkpoint, or an interrupted save");
  std::ifstream in(path);
  nlohmann::json meta;
  try {
    in >> meta;
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(
        false, kLoad, ": ", path.string(), " is not valid JSON: ", e.what());
  }
  TORCH_CHECK(
      meta.is_object() && meta.value("format", "") == "torchtp-checkpoint",
      kLoad, ": ", path.string(), " is not a torchtp checkpoint");
  const int version = meta.value("format_version", -1);
  TORCH_CHECK(
      version == kCheckpointFormatVersion, kLoad, ": ", path.string(),
      " has format version ", version, "; this torchtp reads version ",
      kCheckpointFormatVersion);
  TORCH_CHECK(
      meta.contains("tensors") && meta["tensors"].is_object(), kLoad, ": ",
      path.string(), " lists no tensors");
  return meta;
}

template <typename S>
void write_adam_state(
    torch::optim::Optimizer& opt, const at::Tensor& p, AdamState st) {
  auto state = std::make_unique<S>();
  state->step(st.step);
  state->exp_avg(st.exp_avg);
  state->exp_avg_sq(st.exp_avg_sq);
  if (st.max_exp_avg_sq.defined()) {
    state->max_exp_avg_sq(st.max_exp_avg_sq);
  }
  opt.state()[state_key(p)] = std::move(state);
}

} // namespace

nlohmann::json load_checkpoint(
    const std::string& dir,
    torch::nn::Module& model,
    torch::optim::Optimizer* optimizer) {
  Group g = shard_group(model);
  nlohmann::json meta;
  // Everything is read into temporaries first and copied into the model
  // only once every rank has read its part: a failed load leaves the model
  // and the optimizer as they were.
  std::vector<std::pair<at::Tensor, at::Tensor>> params; // (param, value)
  std::vector<std::pair<at::Tensor, AdamState>> states;
  std::string kind;
  const std::string error = attempt([&] {
    const fs::path path = directory_to_load(dir);
    meta = read_meta(path);
    auto specs = shard_specs(model);
    ShardFiles files(path);
    const auto& tensors = meta["tensors"];
    auto find = [&](const std::string& name) -> const nlohmann::json& {
      TORCHTP_CHECK(
          tensors.contains(name), kLoad, g, (path / "meta.json").string(),
          " has no tensor '", name, "'");
      return tensors.at(name);
    };
    kind = optimizer_kind(optimizer);
    const auto saved_opt = meta.value("optimizer", nlohmann::json::object());
    if (optimizer != nullptr) {
      const auto saved_kind = saved_opt.value("kind", std::string());
      TORCHTP_CHECK(
          saved_kind == kind, kLoad, g, path.string(), " holds ",
          saved_kind.empty() ? "no" : saved_kind,
          " optimizer state, the optimizer is ", kind);
    }
    for (auto& p : model.named_parameters()) {
      const auto& spec = specs.at(p.key());
      auto value = at::empty_like(p.value().detach());
      load_tensor(p.key(), find(p.key()), value, spec, g, files, path);
      params.emplace_back(p.value(), value);
      if (optimizer == nullptr || !saved_opt.contains("step") ||
          !saved_opt.at("step").contains(p.key())) {
        continue;
      }
      AdamState st;
      st.step = saved_opt.at("step").at(p.key()).get<int64_t>();
      const auto base = "optimizer." + p.key() + ".";
      const std::pair<const char*, at::Tensor*> slots[] = {
          {"exp_avg", &st.exp_avg},
          {"exp_avg_sq", &st.exp_avg_sq},
          {"max_exp_avg_sq", &st.max_exp_avg_sq}};
      for (const auto& [suffix, slot] : slots) {
        if (!tensors.contains(base + suffix)) {
          continue;
        }
        *slot = at::empty_like(p.value().detach());
        load_tensor(
            base + suffix, tensors.at(base + suffix), *slot, spec, g, files,
            path);
      }
      states.emplace_back(p.value(), st);
    }
  });
  agree(g, error, std::string(kLoad) + " from " + dir);

  torch::NoGradGuard no_grad;
  for (auto& [param, value] : params) {
    param.copy_(value);
  }
  for (auto& [param, st] : states) {
    if (kind == "adamw") {
      write_adam_state<torch::optim::AdamWParamState>(*optimizer, param, st);
    } else {
      write_adam_state<torch::optim::AdamParamState>(*optimizer, param, st);
    }
  }
  return meta.value("extra", nlohmann::json::object());
}

namespace {

// Reads a tensor by its dotted name from an archive written by
// torch::save(module): each submodule is a nested archive.
at::Tensor read_from_archive(
    torch::serialize::InputArchive& root,
    const std::string& name,
    const std::string& path) {
  torch::serialize::InputArchive* archive = &root;
  std::vector<std::unique_ptr<torch::serialize::InputArchive>> nested;
  std::string rest = name;
  for (auto dot = rest.find('.'); dot != std::string::npos;
       dot = rest.find('.')) {
    nested.push_back(std::make_unique<torch::serialize::InputArchive>());
    TORCH_CHECK(
        archive->try_read(rest.substr(0, dot), *nested.back()),
        "torchtp::load_full_state: ", path, " has no module for '", name, "'");
    archive = nested.back().get();
    rest = rest.substr(dot + 1);
  }
  at::Tensor t;
  TORCH_CHECK(
      archive->try_read(rest, t), "torchtp::load_full_state: ", path,
      " has no tensor '", name, "'");
  return t;
}

} // namespace

void load_full_state(const std::string& path, torch::nn::Module& model) {
  Group g = shard_group(model);
  // As in load_checkpoint: read into temporaries, agree, then copy.
  std::vector<std::pair<at::Tensor, at::Tensor>> params; // (param, value)
  const std::string error = attempt([&] {
    auto specs = shard_specs(model);
    TORCHTP_CHECK(fs::exists(path), kLoadFull, g, path, " not found");
    const bool safetensors =
        path.size() > 12 && path.substr(path.size() - 12) == ".safetensors";
    std::unique_ptr<SafetensorsReader> reader;
    torch::serialize::InputArchive archive;
    if (safetensors) {
      reader = std::make_unique<SafetensorsReader>(path);
    } else {
      try {
        archive.load_from(path);
      } catch (const c10::Error& e) {
        TORCH_CHECK(
            false, kLoadFull, ": cannot read ", path,
            " as a torch::save archive: ", e.what_without_backtrace());
      }
    }
    for (auto& p : model.named_parameters()) {
      auto full = reader ? reader->read(p.key())
                         : read_from_archive(archive, p.key(), path);
      auto value = at::empty_like(p.value().detach());
      copy_shard_of(
          value, full, specs.at(p.key()), g, kLoadFull,
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
