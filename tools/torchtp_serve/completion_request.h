#pragma once

// A /v1/completions or /v1/chat/completions body, checked field by field
// against OpenAI's types and this model's limits: anything wrong is an
// ApiError (400) naming the field, before anything reaches the engine.

#include <torchtp/engine.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace torchtp::serve {

/// What the served model brings to request parsing.
struct ModelLimits {
  std::string name;
  int64_t context = 0;
  int64_t vocab_size = 0;
  /// End-of-sequence ids: a request stops after any of them.
  std::vector<int64_t> eos_ids;
  /// Text to ids: a completion's prompt with the tokenizer's special tokens
  /// (a BOS), a rendered chat without them (the template writes its own),
  /// as transformers' apply_chat_template does.
  std::function<std::vector<int64_t>(const std::string&, bool add_special)>
      encode;
  /// The chat template: messages to text, ending with the assistant's turn.
  std::function<std::string(const nlohmann::json& messages)> render_chat;
};

struct CompletionRequest {
  bool chat = false;
  std::vector<int64_t> prompt_ids;
  RequestOptions engine;
  bool stream = false;
  /// stream_options.include_usage: a last chunk with the counts.
  bool stream_usage = false;
  /// Text that ends the completion (not included in it).
  std::vector<std::string> stop;
};

/// Parses and checks `body` (the request's JSON text); throws ApiError.
CompletionRequest parse_completion_request(
    const std::string& body,
    bool chat,
    const ModelLimits& model);

} // namespace torchtp::serve
