#pragma once

#include "torchtp/group.h"

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <map>
#include <string>

namespace torchtp {

/// The checkpoint format this torchtp writes and reads.
constexpr int kCheckpointFormatVersion = 1;

/// Saves `model` (and the state of `optimizer`, Adam or AdamW, when given) as
/// a sharded checkpoint directory:
///
///   DIR/meta.json                         format version, TP degree, and for
///                                         every tensor its full shape, dtype,
///                                         split dim, segments and per-shard
///                                         CRC-32; `extra` as given
///   DIR/rank-00000-of-00002.safetensors   each rank's shards (safetensors)
///
/// `extra` is the caller's own metadata, string keys to string values, kept
/// in meta.json as a JSON object of strings, e.g.
/// `{{"step", std::to_string(step)}}`; `load_checkpoint` returns it.
///
/// Collective over the model's tensor-parallel group (with data parallelism,
/// call it on one data-parallel replica only). Everything is written under
/// `DIR.tmp` and renamed into place at the end, so a crash leaves the old
/// checkpoint whole. On a multi-host job DIR must be on a shared file system.
void save_checkpoint(
    const std::string& dir,
    const torch::nn::Module& model,
    torch::optim::Optimizer* optimizer = nullptr,
    const std::map<std::string, std::string>& extra = {});

/// Loads a checkpoint written by `save_checkpoint` at the same or another
/// tensor-parallel degree into `model` (and `optimizer`'s state): each rank
/// reads only the shard files that hold its slices, and checks their
/// checksums. Returns the `extra` saved with it (a value that is not a JSON
/// string, as an earlier torchtp could save, comes back as its JSON text:
/// `3` as "3"). A missing or truncated file, an altered shard, a wrong format
/// version or a shape that does not match the model raises a `c10::Error`
/// naming the file.
std::map<std::string, std::string> load_checkpoint(
    const std::string& dir,
    torch::nn::Module& model,
    torch::optim::Optimizer* optimizer = nullptr);

/// The `extra` saved with the checkpoint in `dir` (or in DIR.old, as
/// `load_checkpoint` finds it), read from its meta.json alone: no model and
/// no collective, so any process can call it, e.g. to build the model the
/// checkpoint holds before loading it. Values as `load_checkpoint` returns
/// them; a missing or malformed meta.json raises a `c10::Error` naming it.
std::map<std::string, std::string> read_checkpoint_extra(
    const std::string& dir);

/// Loads a full, unsharded state into `model`, keeping this rank's slices:
/// a `.safetensors` file, or a file written by `torch::save(module, path)`
/// for the unsharded model (e.g. the same model built on
/// `torchtp::Group::self()`). Tensor names are `named_parameters()` names.
void load_full_state(const std::string& path, torch::nn::Module& model);

} // namespace torchtp
