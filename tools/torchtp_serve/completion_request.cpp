#include "completion_request.h"

#include "api_error.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <random>

namespace torchtp::serve {
namespace {

using nlohmann::json;

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, param);
}

// The field `name` of `body` when present and not null.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

bool boolean(const json& body, const char* name, bool otherwise) {
  const json* v = field(body, name);
  if (!v) {
    return otherwise;
  }
  if (!v->is_boolean()) {
    throw bad(name, std::string("'") + name + "' must be a boolean");
  }
  return v->get<bool>();
}

double number(
    const json& body, const char* name, double otherwise, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) {
    return otherwise;
  }
  if (!v->is_number()) {
    throw bad(name, std::string("'") + name + "' must be a number");
  }
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) {
    throw bad(
        name, std::string("'") + name + "' must be in [" + std::to_string(lo) +
            ", " + std::to_string(hi) + "], got " + v->dump());
  }
  return x;
}

int64_t integer(
    const json& body,
    const char* name,
    int64_t otherwise,
    int64_t lo,
    int64_t hi) {
  const json* v = field(body, name);
  if (!v) {
    return otherwise;
  }
  if (!v->is_number_integer()) {
    throw bad(name, std::string("'") + name + "' must be an integer");
  }
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) {
    throw bad(
        name, std::string("'") + name + "' must be in [" + std::to_string(lo) +
            ", " + std::to_string(hi) + "], got " + std::to_string(x));
  }
  return x;
}

std::vector<std::string> stop_strings(const json& body) {
  const json* v = field(body, "stop");
  if (!v) {
    return {};
  }
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array() && v->size() <= 4 &&
             std::all_of(v->begin(), v->end(), [](const json& s) {
               return s.is_string();
             })) {
    out = v->get<std::vector<std::string>>();
  } else {
    throw bad("stop", "'stop' must be a string or a list of up to 4 strings");
  }
  for (const auto& s : out) {
    if (s.empty()) {
      throw bad("stop", "'stop' strings must not be empty");
    }
  }
  return out;
}

// A completion's prompt: a string, a list of token ids, or a list holding
// one of those (n > 1 prompts in one request are not served).
std::vector<int64_t> prompt_ids(const json& body, const ModelLimits& model) {
  const json* p = field(body, "prompt");
  if (!p) {
    throw bad("prompt", "'prompt' is required");
  }
  if (p->is_array() && p->size() == 1 &&
      ((*p)[0].is_string() || (*p)[0].is_array())) {
    p = &(*p)[0];
  }
  if (p->is_string()) {
    if (!model.encode) {
      throw bad("prompt", "this model has no tokenizer: send token ids");
    }
    return model.encode(p->get<std::string>(), /*add_special=*/true);
  }
  if (p->is_array() && std::all_of(p->begin(), p->end(), [](const json& x) {
        return x.is_number_integer();
      })) {
    std::vector<int64_t> ids = p->get<std::vector<int64_t>>();
    for (int64_t id : ids) {
      if (id < 0 || id >= model.vocab_size) {
        throw bad(
            "prompt", "token id " + std::to_string(id) +
                " is outside the vocabulary [0, " +
                std::to_string(model.vocab_size) + ")");
      }
    }
    return ids;
  }
  throw bad(
      "prompt",
      "'prompt' must be a string or a list of token ids (one prompt per "
      "request)");
}

// Chat messages: [{role, content}], content a string or a list of text
// parts; handed to the template as role and text.
json chat_messages(const json& body) {
  const json* m = field(body, "messages");
  if (!m || !m->is_array() || m->empty()) {
    throw bad("messages", "'messages' must be a non-empty list");
  }
  json out = json::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object() || !msg.contains("role") ||
        !msg["role"].is_string()) {
      throw bad(where, where + " must be an object with a string 'role'");
    }
    const std::string role = msg["role"];
    if (role != "system" && role != "user" && role != "assistant" &&
        role != "developer") {
      throw bad(
          where + ".role",
          where + ".role must be system, developer, user or assistant, got '" +
              role + "'");
    }
    std::string text;
    const json* content = field(msg, "content");
    if (content && content->is_string()) {
      text = content->get<std::string>();
    } else if (content && content->is_array()) {
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" ||
            !part.contains("text") || !part["text"].is_string()) {
          throw bad(
              where + ".content",
              where + ".content parts must be {\"type\": \"text\", \"text\": "
                      "...}");
        }
        text += part["text"].get<std::string>();
      }
    } else if (content) {
      throw bad(
          where + ".content",
          where + ".content must be a string or a list of text parts");
    }
    out.push_back(
        {{"role", role == "developer" ? "system" : role}, {"content", text}});
  }
  return out;
}

} // namespace

namespace {

CompletionRequest parse(
    const std::string& text, bool chat, const ModelLimits& model);

} // namespace

CompletionRequest parse_completion_request(
    const std::string& text, bool chat, const ModelLimits& model) {
  try {
    return parse(text, chat, model);
  } catch (const nlohmann::json::exception& e) {
    // A field of an unexpected type deeper than the checks above look.
    throw bad("", std::string("the request does not have OpenAI's shape: ") +
                  e.what());
  }
}

namespace {

CompletionRequest parse(
    const std::string& text, bool chat, const ModelLimits& model) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {
    throw bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) {
    throw bad("", "the body must be a JSON object");
  }
  if (const json* name = field(body, "model")) {
    if (!name->is_string()) {
      throw bad("model", "'model' must be a string");
    }
    if (name->get<std::string>() != model.name) {
      throw ApiError(
          404,
          "The model '" + name->get<std::string>() +
              "' does not exist; this server serves '" + model.name + "'",
          "model", "model_not_found");
    }
  }
  if (integer(body, "n", 1, 1, 1) != 1) {
    throw bad("n", "only n = 1 is served");
  }
  for (const char* unsupported : {"logit_bias", "tools", "functions"}) {
    const json* v = field(body, unsupported);
    if (v && !v->empty()) {
      throw bad(
          unsupported, std::string("'") + unsupported + "' is not supported");
    }
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (number(body, penalty, 0, -2, 2) != 0) {
      throw bad(penalty, std::string("'") + penalty + "' is not supported");
    }
  }
  if (boolean(body, "echo", false)) {
    throw bad("echo", "'echo' is not supported");
  }
  const json* logprobs = field(body, "logprobs");
  if (logprobs && !(logprobs->is_boolean() && !logprobs->get<bool>())) {
    throw bad("logprobs", "'logprobs' is not supported");
  }

  CompletionRequest r;
  r.chat = chat;
  try {
    if (chat) {
      if (!model.render_chat) {
        throw bad(
            "messages",
            "this model has no chat_template: use /v1/completions");
      }
      r.prompt_ids = model.encode(
          model.render_chat(chat_messages(body)), /*add_special=*/false);
    } else {
      r.prompt_ids = prompt_ids(body, model);
    }
  } catch (const c10::Error& e) {
    // The template's raise_exception, or text the tokenizer refuses.
    throw bad(chat ? "messages" : "prompt", e.what_without_backtrace());
  }
  const int64_t n = static_cast<int64_t>(r.prompt_ids.size());
  if (n == 0) {
    throw bad("prompt", "the prompt is empty");
  }
  if (n >= model.context) {
    throw ApiError(
        400,
        "This model's maximum context length is " +
            std::to_string(model.context) + " tokens; the prompt has " +
            std::to_string(n),
        chat ? "messages" : "prompt", "context_length_exceeded");
  }
  const int64_t room = model.context - n;
  const char* max_name =
      chat && field(body, "max_completion_tokens") ? "max_completion_tokens"
                                                   : "max_tokens";
  // OpenAI's defaults: 16 for completions, the rest of the context for chat.
  const int64_t max_tokens = integer(
      body, max_name, chat ? room : std::min<int64_t>(16, room), 1,
      std::numeric_limits<int32_t>::max());
  if (max_tokens > room) {
    throw ApiError(
        400,
        "This model's maximum context length is " +
            std::to_string(model.context) + " tokens; the prompt has " +
            std::to_string(n) + " and " + max_name + " asks for " +
            std::to_string(max_tokens),
        max_name, "context_length_exceeded");
  }
  const double temperature = number(body, "temperature", 1.0, 0, 2);
  const double top_p = number(body, "top_p", 1.0, 0, 1);
  if (top_p == 0) {
    throw bad("top_p", "'top_p' must be in (0, 1]");
  }
  // top_k: vLLM's extension; 0 or -1 turn it off.
  const int64_t top_k = integer(body, "top_k", 0, -1, 1 << 30);
  auto sampling = SamplingOptions()
                      .greedy(temperature == 0)
                      .temperature(temperature == 0 ? 1.0 : temperature)
                      .top_k(std::max<int64_t>(top_k, 0))
                      .top_p(top_p);
  // Without a seed, every request draws its own.
  const int64_t seed = integer(
      body, "seed", static_cast<int64_t>(std::random_device()()),
      std::numeric_limits<int64_t>::min(),
      std::numeric_limits<int64_t>::max());
  r.engine = RequestOptions()
                 .sampling(sampling)
                 .seed(static_cast<uint64_t>(seed))
                 .max_tokens(max_tokens)
                 .stop_ids(model.eos_ids);
  r.stop = stop_strings(body);
  r.stream = boolean(body, "stream", false);
  if (const json* o = field(body, "stream_options")) {
    if (!o->is_object()) {
      throw bad("stream_options", "'stream_options' must be an object");
    }
    r.stream_usage = boolean(*o, "include_usage", false);
  }
  return r;
}

} // namespace

} // namespace torchtp::serve
