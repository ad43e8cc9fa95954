// Sharded checkpoints: save at one tensor-parallel size, load at another,
// resume training, and every kind of damaged checkpoint. Within one launch of
// W ranks, models are built on tensor-parallel groups of every size that
// divides W, so a run at 4 ranks saves at TP=2 and loads at TP=1 and TP=4.

#include "test_util.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <stdlib.h>

using torchtp::testing::all_close;
using torchtp::testing::world;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kVocab = 11, kSeq = 6;

torchtp::GPTOptions small_gpt(const torchtp::Group& g) {
  // 12 heads: divisible by 1, 2, 3 and 4 ranks.
  return torchtp::GPTOptions(kVocab, kSeq)
      .d_model(24)
      .num_heads(12)
      .num_layers(2)
      .vocab_pad_multiple(12)
      .group(g)
      .dtype(torch::kDouble);
}

torchtp::GPT build(const torchtp::Group& g, uint64_t seed) {
  torch::manual_seed(seed);
  return torchtp::GPT(small_gpt(g));
}

// The saved extra's "step" as a number, `fallback` when it has none.
int step_of(const std::map<std::string, std::string>& extra, int fallback) {
  const auto it = extra.find("step");
  return it == extra.end() ? fallback : std::stoi(it->second);
}

torch::Tensor batch_ids(uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(kVocab, {2, kSeq}, torch::kLong);
}

std::vector<int> tp_sizes() {
  std::vector<int> sizes;
  for (int tp = 1; tp <= world().size(); ++tp) {
    if (world().size() % tp == 0) {
      sizes.push_back(tp);
    }
  }
  return sizes;
}

// Saves `model` built on tensor groups of `tp` ranks: replica 0 writes.
void save_from_replica0(
    const torchtp::ParallelGroups& pg,
    const std::string& dir,
    const torch::nn::Module& m,
    torch::optim::Optimizer* opt = nullptr) {
  if (pg.data.rank() == 0) {
    torchtp::save_checkpoint(dir, m, opt, {{"step", "3"}});
  }
  world().barrier();
}

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = torchtp::testing::shared_tmpdir("ckpt");
  }
  void TearDown() override {
    world().barrier();
    if (world().rank() == 0) {
      fs::remove_all(dir_);
    }
  }
  std::string dir_;
};

} // namespace

TEST_F(Checkpoint, SavedAtOneTpSizeLoadsAtEveryOtherWithIdenticalLogits) {
  auto ids = batch_ids(5);
  auto reference = build(torchtp::Group::self(), 21)->full_logits(ids);
  for (int save_tp : tp_sizes()) {
    auto pg = torchtp::make_parallel_groups(world(), save_tp);
    auto saved = build(pg.tensor, 21);
    const auto dir = dir_ + "/tp" + std::to_string(save_tp);
    save_from_replica0(pg, dir, *saved);
    for (int load_tp : tp_sizes()) {
      SCOPED_TRACE(
          "saved at TP=" + std::to_string(save_tp) +
          ", loaded at TP=" + std::to_string(load_tp));
      auto lpg = torchtp::make_parallel_groups(world(), load_tp);
      auto loaded = build(lpg.tensor, 999); // different weights until loaded
      auto extra = torchtp::load_checkpoint(dir, *loaded);
      EXPECT_EQ(step_of(extra, -1), 3);
      // Bit for bit what the same model built at this TP size computes...
      auto native = build(lpg.tensor, 21)->full_logits(ids);
      EXPECT_TRUE(all_close(loaded->full_logits(ids), native, {0, 0}))
          << "logits must be identical, not just close";
      // ...and the unsharded logits up to the reduction order.
      EXPECT_TRUE(
          all_close(loaded->full_logits(ids), reference, {1e-12, 1e-12}));
    }
  }
}

TEST_F(Checkpoint, MetadataNamesShapesSplitsAndChecksums) {
  auto model = build(world(), 1);
  torchtp::save_checkpoint(dir_ + "/c", *model);
  std::ifstream in(dir_ + "/c/meta.json");
  auto meta = nlohmann::json::parse(in);
  EXPECT_EQ(meta["format_version"], torchtp::kCheckpointFormatVersion);
  EXPECT_EQ(meta["tensor_parallel_size"], world().size());
  const auto& qkv = meta["tensors"]["layers.0.attention.qkv.weight"];
  EXPECT_EQ(qkv["shape"], nlohmann::json({72, 24}));
  EXPECT_EQ(qkv["split_dim"], 0);
  EXPECT_EQ(qkv["segments"], 3);
  EXPECT_EQ(qkv["dtype"], "Double");
  EXPECT_EQ(qkv["shards"].size(), static_cast<size_t>(world().size()));
  EXPECT_EQ(meta["tensors"]["layers.0.attention.proj.weight"]["split_dim"], 1);
  EXPECT_EQ(meta["tensors"]["layers.0.attention.proj.bias"]["split_dim"], -1);
  EXPECT_EQ(
      meta["tensors"]["token_embedding.weight"]["shape"],
      nlohmann::json({12, 24}));
  for (int r = 0; r < world().size(); ++r) {
    char name[64];
    std::snprintf(
        name, sizeof(name), "rank-%05d-of-%05d.safetensors", r, world().size());
    EXPECT_TRUE(fs::exists(dir_ + "/c/" + name)) << name;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/c.tmp")) << "temporary directory left";
}

TEST_F(Checkpoint, ExtraIsReadWithoutAModel) {
  auto model = build(world(), 1);
  const std::map<std::string, std::string> extra = {
      {"d_model", "24"}, {"vocab", "abc"}};
  torchtp::save_checkpoint(dir_ + "/e/", *model, nullptr, extra);
  EXPECT_EQ(torchtp::read_checkpoint_extra(dir_ + "/e"), extra);
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::read_checkpoint_extra(dir_ + "/none"); },
      {"read_checkpoint_extra", "meta.json"}));
}

TEST_F(Checkpoint, ExtraValuesThatAreNotStringsLoadAsTheirJsonText) {
  auto g = world();
  const auto dir = dir_ + "/x";
  auto model = build(g, 1);
  torchtp::save_checkpoint(dir, *model, nullptr, {{"name", "run 1"}});
  // What a version-1 checkpoint saved when extra took any JSON holds.
  if (g.rank() == 0) {
    nlohmann::json meta;
    {
      std::ifstream in(dir + "/meta.json");
      meta = nlohmann::json::parse(in);
    }
    meta["extra"]["step"] = 3;
    meta["extra"]["lr"] = 0.5;
    meta["extra"]["tags"] = nlohmann::json::array({"a", "b"});
    std::ofstream(dir + "/meta.json") << meta.dump();
  }
  g.barrier();
  auto loaded = build(g, 2);
  const auto extra = torchtp::load_checkpoint(dir, *loaded);
  const std::map<std::string, std::string> expected = {
      {"name", "run 1"},
      {"step", "3"},
      {"lr", "0.5"},
      {"tags", "[\"a\",\"b\"]"}};
  EXPECT_EQ(extra, expected);
  EXPECT_EQ(torchtp::read_checkpoint_extra(dir), expected);
  EXPECT_TRUE(all_close(
      loaded->full_logits(batch_ids(4)), model->full_logits(batch_ids(4)),
      {0, 0}));
}

TEST_F(Checkpoint, LoadsAFullUnshardedStateFromTorchSaveAndSafetensors) {
  auto ids = batch_ids(6);
  auto full = build(torchtp::Group::self(), 33); // the same on every rank
  auto reference = full->full_logits(ids);
  if (world().rank() == 0) {
    torch::save(full, dir_ + "/full.pt");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& p : full->named_parameters()) {
      tensors.emplace_back(p.key(), p.value());
    }
    torchtp::write_safetensors(dir_ + "/full.safetensors", tensors);
  }
  world().barrier();
  for (const char* file : {"/full.pt", "/full.safetensors"}) {
    SCOPED_TRACE(file);
    auto sharded = build(world(), 77);
    torchtp::load_full_state(dir_ + file, *sharded);
    auto native = build(world(), 33)->full_logits(ids);
    EXPECT_TRUE(all_close(sharded->full_logits(ids), native, {0, 0}));
    EXPECT_TRUE(
        all_close(sharded->full_logits(ids), reference, {1e-12, 1e-12}));
  }
}

TEST_F(Checkpoint, ResumeEqualsAnUninterruptedRunAndTheUnshardedRun) {
  auto step_losses = [](torchtp::GPT& m, torch::optim::AdamW& opt, int from,
                        int to) {
    std::vector<double> losses;
    for (int s = from; s < to; ++s) {
      auto ids = batch_ids(100 + s);
      auto targets = batch_ids(200 + s);
      opt.zero_grad();
      auto loss = m->loss(ids, targets);
      loss.backward();
      opt.step();
      losses.push_back(loss.item<double>());
    }
    return losses;
  };
  auto adamw = [](torchtp::GPT& m) {
    return torch::optim::AdamW(
        m->parameters(), torch::optim::AdamWOptions(1e-2));
  };
  auto straight = build(world(), 8);
  auto opt1 = adamw(straight);
  auto uninterrupted = step_losses(straight, opt1, 0, 6);

  auto first = build(world(), 8);
  auto opt2 = adamw(first);
  auto before = step_losses(first, opt2, 0, 3);
  torchtp::save_checkpoint(dir_ + "/resume", *first, &opt2, {{"step", "3"}});
  auto second = build(world(), 4242);
  auto opt3 = adamw(second);
  auto extra = torchtp::load_checkpoint(dir_ + "/resume", *second, &opt3);
  auto after = step_losses(second, opt3, step_of(extra, 0), 6);
  before.insert(before.end(), after.begin(), after.end());

  auto unsharded = build(torchtp::Group::self(), 8);
  auto opt4 = adamw(unsharded);
  auto reference = step_losses(unsharded, opt4, 0, 6);
  ASSERT_EQ(before.size(), uninterrupted.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(before[i], uninterrupted[i]) << "step " << i;
    // Stated tolerance across TP sizes: float64, 6 AdamW steps.
    EXPECT_NEAR(before[i], reference[i], 1e-9) << "step " << i;
  }
  EXPECT_LT(uninterrupted.back(), uninterrupted.front()) << "it learns";
}

namespace {

// Damages a saved checkpoint with `damage`, then expects load to raise on
// every rank, and the ranks in `naming` to name `needle` in the message.
void expect_load_fails(
    const std::string& dir,
    const std::function<void()>& damage,
    const std::string& needle,
    bool every_rank_names) {
  auto g = world();
  auto model = build(g, 1);
  torch::optim::AdamW saved_opt(model->parameters());
  model->loss(batch_ids(10), batch_ids(11)).backward();
  saved_opt.step(); // so the checkpoint holds optimizer state too
  torchtp::save_checkpoint(dir, *model, &saved_opt);
  if (g.rank() == 0) {
    damage();
  }
  g.barrier();
  auto fresh = build(g, 2);
  torch::optim::AdamW opt(fresh->parameters());
  auto ids = batch_ids(12);
  auto before = fresh->full_logits(ids);
  try {
    torchtp::load_checkpoint(dir, *fresh, &opt);
    ADD_FAILURE() << "load of a damaged checkpoint did not raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (every_rank_names || g.rank() == g.size() - 1) {
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    } else {
      EXPECT_NE(msg.find("failed"), std::string::npos) << msg;
    }
    EXPECT_NE(msg.find(g.rank_label()), std::string::npos) << msg;
  }
  // A failed load changes nothing.
  EXPECT_TRUE(all_close(fresh->full_logits(ids), before, {0, 0}));
  EXPECT_TRUE(opt.state().empty());
  g.barrier();
}

std::string last_shard(const std::string& dir) {
  char name[64];
  std::snprintf(
      name, sizeof(name), "/rank-%05d-of-%05d.safetensors", world().size() - 1,
      world().size());
  return dir + name;
}

} // namespace

TEST_F(Checkpoint, TruncatedShardNamesTheFile) {
  const auto dir = dir_ + "/t";
  expect_load_fails(
      dir, [&] { fs::resize_file(last_shard(dir), 1000); }, last_shard(dir),
      false);
}

TEST_F(Checkpoint, AlteredShardFailsItsChecksum) {
  const auto dir = dir_ + "/a";
  expect_load_fails(
      dir,
      [&] {
        std::fstream f(
            last_shard(dir), std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(-5, std::ios::end); // inside the last tensor's data
        f.put('\x7f');
      },
      "checksum mismatch", false);
}

TEST_F(Checkpoint, MissingRankFileNamesTheFile) {
  const auto dir = dir_ + "/m";
  expect_load_fails(
      dir, [&] { fs::remove(last_shard(dir)); }, "missing shard file", false);
}

TEST_F(Checkpoint, WrongFormatVersionIsRefusedOnEveryRank) {
  const auto dir = dir_ + "/v";
  expect_load_fails(
      dir,
      [&] {
        std::ifstream in(dir + "/meta.json");
        auto meta = nlohmann::json::parse(in);
        meta["format_version"] = 99;
        std::ofstream(dir + "/meta.json") << meta.dump();
      },
      "format version 99", true);
}

TEST_F(Checkpoint, CorruptMetadataIsRefusedOnEveryRank) {
  const auto dir = dir_ + "/j";
  expect_load_fails(
      dir, [&] { std::ofstream(dir + "/meta.json") << "{\"format\": tor"; },
      "meta.json", true);
}

TEST_F(Checkpoint, ModelOfAnotherShapeIsRefusedNamingBothShapes) {
  auto g = world();
  auto model = build(g, 1);
  torchtp::save_checkpoint(dir_ + "/s", *model);
  torch::manual_seed(1);
  torchtp::GPT wider(small_gpt(g).d_model(48));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::load_checkpoint(dir_ + "/s", *wider); },
      {"full shape", "[12, 24]", "[12, 48]"}));
}

TEST_F(Checkpoint, SavingOverAnOldCheckpointReplacesItWhole) {
  auto g = world();
  auto ids = batch_ids(9);
  const auto dir = dir_ + "/o";
  auto a = build(g, 1);
  torchtp::save_checkpoint(dir, *a);
  // A crash during an earlier save left a half-written temporary directory.
  if (g.rank() == 0) {
    fs::create_directories(dir + ".tmp");
    std::ofstream(dir + ".tmp/meta.json") << "garbage";
  }
  g.barrier();
  auto b = build(g, 2);
  torchtp::save_checkpoint(dir, *b);
  auto loaded = build(g, 3);
  torchtp::load_checkpoint(dir, *loaded);
  EXPECT_TRUE(all_close(loaded->full_logits(ids), b->full_logits(ids), {0, 0}));
  EXPECT_FALSE(fs::exists(dir + ".tmp"));
  EXPECT_FALSE(fs::exists(dir + ".old"));
}

namespace {

// A model the LibTorch way: a struct on the stack, not in a ModuleHolder.
struct TwoLayers : torch::nn::Module {
  explicit TwoLayers(const torchtp::Group& g)
      : fc1(register_module(
            "fc1",
            torchtp::ColumnParallelLinear(
                torchtp::ColumnParallelLinearOptions(4, 4 * 12).group(g).dtype(
                    torch::kDouble)))),
        fc2(register_module(
            "fc2",
            torchtp::RowParallelLinear(
                torchtp::RowParallelLinearOptions(4 * 12, 3)
                    .input_is_parallel(true)
                    .group(g)
                    .dtype(torch::kDouble)))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2(torch::relu(fc1(x)));
  }
  torchtp::ColumnParallelLinear fc1;
  torchtp::RowParallelLinear fc2;
};

} // namespace

TEST_F(Checkpoint, PlainModuleOnTheStackSavesAndLoads) {
  auto g = world();
  torch::manual_seed(1);
  TwoLayers saved(g);
  torchtp::save_checkpoint(dir_ + "/plain", saved);
  torch::manual_seed(2);
  TwoLayers loaded(g);
  torchtp::load_checkpoint(dir_ + "/plain", loaded);
  auto x = torch::randn({5, 4}, torch::kDouble);
  EXPECT_TRUE(all_close(loaded.forward(x), saved.forward(x), {0, 0}));
}

TEST_F(Checkpoint, TrailingSlashNamesTheSameDirectory) {
  auto g = world();
  auto ids = batch_ids(13);
  auto a = build(g, 1);
  torchtp::save_checkpoint(dir_ + "/slash/", *a);
  torchtp::save_checkpoint(dir_ + "/slash/", *a); // over the first
  EXPECT_TRUE(fs::exists(dir_ + "/slash/meta.json"));
  EXPECT_FALSE(fs::exists(dir_ + "/slash/.tmp"));
  auto b = build(g, 2);
  torchtp::load_checkpoint(dir_ + "/slash", *b);
  EXPECT_TRUE(all_close(b->full_logits(ids), a->full_logits(ids), {0, 0}));
}

TEST_F(Checkpoint, CrashBetweenTheRenamesLeavesTheOldOneLoadable) {
  auto g = world();
  auto ids = batch_ids(14);
  auto a = build(g, 1);
  const auto dir = dir_ + "/crash";
  torchtp::save_checkpoint(dir, *a);
  g.barrier();
  // What a crash after "DIR -> DIR.old" and before "DIR.tmp -> DIR" leaves.
  if (g.rank() == 0) {
    fs::rename(dir, dir + ".old");
  }
  g.barrier();
  auto b = build(g, 2);
  torchtp::load_checkpoint(dir, *b);
  EXPECT_TRUE(all_close(b->full_logits(ids), a->full_logits(ids), {0, 0}));
}
