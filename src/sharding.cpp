#include "torchtp/sharding.h"

#include "torchtp/detail/check.h"
#include "torchtp/partition.h"

namespace torchtp {
namespace {

// The root is visited by reference: named_modules() could only include it
// when it is held in a shared_ptr, and a model on the stack is common.
template <typename F>
void for_each_sharded(const torch::nn::Module& model, F&& f) {
  if (auto* sharded = dynamic_cast<const Sharded*>(&model)) {
    f(std::string(), model, *sharded);
  }
  for (const auto& item :
       model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (auto* sharded = dynamic_cast<const Sharded*>(item.value().get())) {
      f(item.key(), *item.value(), *sharded);
    }
  }
}

} // namespace

std::vector<int64_t> full_shape(
    at::IntArrayRef local, const ShardSpec& spec, const Group& group) {
  auto shape = local.vec();
  if (spec.dim >= 0) {
    shape[spec.dim] *= group.size(); // even splits: Partition checks
  }
  return shape;
}

at::Tensor shard_of(
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& what) {
  if (spec.dim < 0) {
    return full;
  }
  // [.., n, ..] -> [.., segments, n / segments, ..]: narrow every block at
  // once, then fold the blocks back.
  const int64_t d = spec.dim;
  TORCHTP_CHECK(
      full.size(d) % spec.segments == 0, what, group, "size ", full.size(d),
      " along dim ", d, " is not divisible by segments (", spec.segments, ")");
  auto blocks = full.sizes().vec();
  blocks[d] /= spec.segments;
  blocks.insert(blocks.begin() + d, spec.segments);
  Partition part(blocks[d + 1], group.size(), group.rank(), what);
  auto mine = part.narrow(full.reshape(blocks), d + 1);
  auto folded = mine.sizes().vec();
  folded.erase(folded.begin() + d);
  folded[d] *= spec.segments;
  return mine.reshape(folded);
}

std::map<std::string, ShardSpec> shard_specs(const torch::nn::Module& model) {
  std::map<std::string, ShardSpec> specs;
  for (const auto& p : model.named_parameters()) {
    specs[p.key()] = ShardSpec{};
  }
  for_each_sharded(
      model, [&](const std::string& prefix, const torch::nn::Module& m,
                 const Sharded& s) {
        for (const auto& p : m.named_parameters(/*recurse=*/false)) {
          const auto name = prefix.empty() ? p.key() : prefix + "." + p.key();
          specs[name] = s.shard_spec(p.key());
        }
      });
  return specs;
}

Group shard_group(const torch::nn::Module& model) {
  c10::optional<Group> group;
  for_each_sharded(
      model, [&](const std::string& prefix, const torch::nn::Module&,
                 const Sharded& s) {
        if (!group.has_value()) {
          group = s.shard_group();
        }
        TORCHTP_CHECK(
            *group == s.shard_group(), "torchtp", *group, "module '", prefix,
            "' is split over another group than the rest of the model");
      });
  return group.has_value() ? *group : default_group();
}

} // namespace torchtp
