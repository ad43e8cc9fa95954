#pragma once

// Chat templates: the Jinja template in a checkpoint's
// `tokenizer_config.json` that turns a conversation into the prompt the
// model was trained on, rendered in C++ as Hugging Face's
// `@huggingface/jinja` renders it. Needs no LibTorch (only c10's error
// type): see docs/chat.md for the supported subset of Jinja.

// Declarations only: callers that build messages include the full header.
#include <nlohmann/json_fwd.hpp>

#include <map>
#include <memory>
#include <string>

namespace torchtp {

namespace detail {
struct ChatTemplateImpl;
} // namespace detail

/// A parsed chat template with the special tokens it may print.
///
/// The whole template is parsed and checked at construction: a template
/// using a statement, filter, test, method or function this engine does not
/// implement is refused then, with a c10::Error naming the construct and
/// its line, so that a server refuses it at startup rather than on a
/// request. Rendering raises only what the template itself raises
/// (`raise_exception(...)`, as c10::ValueError with its message, e.g.
/// "Conversation roles must alternate ...") and operations on values of the
/// wrong kind (c10::TypeError naming the line). A ChatTemplate is a cheap
/// handle (copies share one immutable tree) and may render from several
/// threads at once.
///
/// Example:
/// ```
///   auto chat = torchtp::ChatTemplate::from_directory("Qwen2.5-0.5B");
///   auto messages = nlohmann::ordered_json::parse(
///       R"([{"role": "user", "content": "Hi"}])");
///   std::string prompt = chat.render(messages, true);
///   // "<|im_start|>system\nYou are Qwen, ...<|im_end|>\n<|im_start|>user\n
///   //  Hi<|im_end|>\n<|im_start|>assistant\n"
/// ```
class ChatTemplate {
 public:
  /// The template of a Hugging Face model directory, where transformers
  /// looks: `chat_template.jinja`, else `chat_template.json`, else
  /// `tokenizer_config.json`'s `chat_template` (a string, or a list of
  /// {"name", "template"} of which "default" is used); the special tokens
  /// `bos_token`, `eos_token`, `unk_token`, `pad_token` from
  /// `tokenizer_config.json` (strings or {"content": ...} objects). Raises
  /// c10::Error when the directory has no chat template (GPT-2's has none):
  /// see `has_chat_template`.
  static ChatTemplate from_directory(const std::string& model_dir);

  /// Whether `model_dir` has a chat template (see from_directory).
  static bool has_chat_template(const std::string& model_dir);

  /// Parses `source`. `special_tokens` (e.g. {"bos_token": "<s>"}) become
  /// variables of every render; `origin` names the template in errors.
  explicit ChatTemplate(
      const std::string& source,
      std::map<std::string, std::string> special_tokens = {},
      const std::string& origin = "chat template");

  /// The prompt for `messages` (a list of {"role", "content", ...}).
  /// The template sees `messages`, `add_generation_prompt`, `tools` and
  /// `documents` (none), the special tokens, and then every key of `extra`
  /// (an object; its keys override the others), as transformers passes
  /// them. Mappings keep their key order (tojson prints it), hence
  /// ordered_json; a plain nlohmann::json converts implicitly.
  std::string render(
      const nlohmann::ordered_json& messages,
      bool add_generation_prompt,
      const nlohmann::ordered_json& extra) const;
  /// The same without extra variables.
  std::string render(
      const nlohmann::ordered_json& messages, bool add_generation_prompt) const;

  /// The template's source text.
  const std::string& source() const;

 private:
  std::shared_ptr<const detail::ChatTemplateImpl> impl_;
};

} // namespace torchtp
