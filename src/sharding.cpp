#include "torchtp/sharding.h"

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
        TORCH_CHECK(
            group->communicator().get() == s.shard_group().communicator().get(),
            "torchtp: module '", prefix,
            "' is split over another group than "
            "the rest of the model ",
            group->tag());
      });
  return group.has_value() ? *group : default_group();
}

} // namespace torchtp
