#include <torchtp/chat_template.h>

#include "chat/builtins.h"
#include "chat/interpreter.h"
#include "chat/lexer.h"
#include "chat/parser.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <optional>
#include <sstream>

namespace torchtp {

namespace detail {

struct ChatTemplateImpl {
  std::string source;
  std::string origin;
  std::map<std::string, std::string> special_tokens;
  chat::NodeList program;
};

} // namespace detail

namespace {

using ordered_json = nlohmann::ordered_json;

const char* kSpecialTokens[] = {
    "bos_token", "eos_token", "unk_token", "pad_token"};

std::string config_path(const std::string& model_dir) {
  return model_dir + "/tokenizer_config.json";
}

// The file's text, or nullopt when it cannot be opened.
std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) {
    return std::nullopt;
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The parsed JSON file, or null when the file is absent.
ordered_json read_json(const std::string& path) {
  const std::optional<std::string> text = read_text(path);
  if (!text) {
    return nullptr;
  }
  try {
    return ordered_json::parse(*text);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(
        false, "torchtp::ChatTemplate: ", path,
        " is not valid JSON: ", e.what());
  }
}

// `chat_template` as a string, or the "default" entry of a list of named
// templates; empty when there is none.
std::string template_source(
    const ordered_json& config, const std::string& path) {
  if (!config.is_object() || !config.contains("chat_template") ||
      config["chat_template"].is_null()) {
    return "";
  }
  const ordered_json& t = config["chat_template"];
  if (t.is_string()) {
    return t.get<std::string>();
  }
  TORCH_CHECK(
      t.is_array(), "torchtp::ChatTemplate: ", path,
      ": chat_template is neither a string nor a list of "
      "{name, template}");
  std::string names;
  for (const auto& entry : t) {
    TORCH_CHECK(
        entry.is_object() && entry.contains("name") &&
            entry.contains("template") && entry["name"].is_string() &&
            entry["template"].is_string(),
        "torchtp::ChatTemplate: ", path,
        ": a chat_template list entry is not {name, template}");
    const std::string name = entry["name"].get<std::string>();
    if (name == "default") {
      return entry["template"].get<std::string>();
    }
    names += (names.empty() ? "" : ", ") + name;
  }
  TORCH_CHECK(
      false, "torchtp::ChatTemplate: ", path,
      ": chat_template lists no \"default\" template (it has: ", names, ")");
}

// The directory's template and the file it came from, as transformers
// looks for it: chat_template.jinja (where recent versions save it), then
// chat_template.json, then tokenizer_config.json's `chat_template`.
// Empty when there is none.
std::pair<std::string, std::string> find_template(
    const std::string& model_dir, const ordered_json& config) {
  const std::string jinja = model_dir + "/chat_template.jinja";
  if (std::optional<std::string> text = read_text(jinja)) {
    return {*text, jinja};
  }
  const std::string json_path = model_dir + "/chat_template.json";
  const ordered_json from_json = read_json(json_path);
  if (!from_json.is_null()) {
    return {template_source(from_json, json_path), json_path};
  }
  const std::string path = config_path(model_dir);
  return {template_source(config, path), path};
}

} // namespace

ChatTemplate ChatTemplate::from_directory(const std::string& model_dir) {
  const ordered_json config = read_json(config_path(model_dir));
  const auto [source, origin] = find_template(model_dir, config);
  TORCH_CHECK(
      !source.empty(), "torchtp::ChatTemplate: ", model_dir,
      " has no chat_template (looked in chat_template.jinja, "
      "chat_template.json and tokenizer_config.json)");
  std::map<std::string, std::string> special;
  for (const char* key : kSpecialTokens) {
    if (!config.is_object() || !config.contains(key)) {
      continue;
    }
    const ordered_json& v = config[key];
    if (v.is_string()) {
      special[key] = v.get<std::string>();
    } else if (
        v.is_object() && v.contains("content") && v["content"].is_string()) {
      special[key] = v["content"].get<std::string>();
    }
  }
  return ChatTemplate(source, std::move(special), origin);
}

bool ChatTemplate::has_chat_template(const std::string& model_dir) {
  const ordered_json config = read_json(config_path(model_dir));
  return !find_template(model_dir, config).first.empty();
}

ChatTemplate::ChatTemplate(
    const std::string& source,
    std::map<std::string, std::string> special_tokens,
    const std::string& origin) {
  auto impl = std::make_shared<detail::ChatTemplateImpl>();
  impl->source = source;
  impl->origin = origin;
  impl->special_tokens = std::move(special_tokens);
  try {
    impl->program = chat::parse(chat::tokenize(source));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, e.msg(), " [in ", origin, "]");
  }
  impl_ = std::move(impl);
}

std::string ChatTemplate::render(
    const ordered_json& messages,
    bool add_generation_prompt,
    const ordered_json& extra) const {
  TORCH_CHECK(
      messages.is_array(),
      "torchtp::ChatTemplate: messages must be a list, got ",
      messages.type_name());
  TORCH_CHECK(
      extra.is_object() || extra.is_null(),
      "torchtp::ChatTemplate: extra variables must be an object, got ",
      extra.type_name());
  chat::Scope globals;
  chat::add_globals(globals);
  chat::Scope scope(&globals);
  scope.set("messages", chat::Value::from_json(messages));
  scope.set("add_generation_prompt", chat::Value::from(add_generation_prompt));
  scope.set("tools", chat::Value::none());
  scope.set("documents", chat::Value::none());
  for (const auto& [k, v] : impl_->special_tokens) {
    scope.set(k, chat::Value::from(v));
  }
  if (extra.is_object()) {
    for (const auto& [k, v] : extra.items()) {
      scope.set(k, chat::Value::from_json(v));
    }
  }
  return chat::render(impl_->program, scope);
}

std::string ChatTemplate::render(
    const ordered_json& messages, bool add_generation_prompt) const {
  return render(messages, add_generation_prompt, ordered_json::object());
}

const std::string& ChatTemplate::source() const {
  return impl_->source;
}

} // namespace torchtp
