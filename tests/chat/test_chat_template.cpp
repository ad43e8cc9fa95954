// torchtp::ChatTemplate against Hugging Face's @huggingface/jinja:
// tests/chat/reference.js renders the real chat templates (Llama 2, Llama 3,
// 3.1, 3.2, Mistral, Mixtral, Qwen2, Qwen2.5, Qwen3, TinyLlama and the rest
// of @huggingface/ollama-utils' table) with every conversation of
// tests/chat/cases.json, and the engine's own small cases; this test renders
// the same and requires the same bytes, or the same raise.
// TORCHTP_CHAT_REFERENCE names the directory reference.js wrote (CTest's
// fixture runs it first).

#include <torchtp/chat_template.h>

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using json = nlohmann::ordered_json;

std::string reference_dir() {
  const char* dir = std::getenv("TORCHTP_CHAT_REFERENCE");
  return dir != nullptr ? dir : "";
}

// The reference, read once; ordered so that mappings keep their key order.
const json& reference() {
  static const json j = [] {
    std::ifstream in(reference_dir() + "/expected.json");
    if (!in.good()) {
      return json();
    }
    return json::parse(in);
  }();
  return j;
}

#define REQUIRE_REFERENCE()                                                \
  if (reference().is_null()) {                                             \
    FAIL() << "no reference at TORCHTP_CHAT_REFERENCE=" << reference_dir() \
           << "/expected.json (ctest runs tests/chat/reference.js first)"; \
  }

json extra_of(const json& conversation) {
  return conversation.contains("extra") ? conversation["extra"]
                                        : json::object();
}

// The template's output, "raise: <message>" when it calls
// raise_exception, "error: <message>" on a type error.
std::string render_or_error(
    const torchtp::ChatTemplate& t,
    const json& messages,
    bool add_generation_prompt,
    const json& extra) {
  try {
    return t.render(messages, add_generation_prompt, extra);
  } catch (const c10::ValueError& e) {
    return "raise: " + e.msg();
  } catch (const c10::Error& e) {
    return "error: " + e.msg();
  }
}

bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

// Whether `got` is the reference's `expected` output or error: the same
// bytes; or, where the reference raises, a raise with its message (the
// template's raise_exception) or a type error (whose wording differs).
bool same_as_reference(
    const std::string& got, const json& expected, std::string& why) {
  if (expected.contains("output")) {
    why = "output differs";
    return got == expected["output"].get<std::string>();
  }
  const std::string message = expected["error"].get<std::string>();
  why = "the reference raises \"" + message + "\"";
  if (starts_with(got, "raise: ")) {
    return got.find(message) != std::string::npos;
  }
  return starts_with(got, "error: ");
}

json conversation_of(const json& result) {
  return reference()["conversations"]
                    [result["conversation"].get<std::string>()];
}

// Compares one reference result; returns whether it matched.
bool check_result(
    const torchtp::ChatTemplate& t,
    const json& result,
    const std::string& where) {
  const json conv = conversation_of(result);
  const bool agp = result["add_generation_prompt"].get<bool>();
  const std::string got =
      render_or_error(t, conv["messages"], agp, extra_of(conv));
  const std::string what = where + " / " +
                           result["conversation"].get<std::string>() +
                           (agp ? " + generation prompt" : "");
  std::string why;
  const bool same = same_as_reference(got, result, why);
  if (result.contains("output")) {
    EXPECT_EQ(got, result["output"].get<std::string>()) << what;
  } else {
    EXPECT_TRUE(same) << what << ": " << why << ", torchtp gives: " << got;
  }
  return same;
}

// JavaScript's String() of a mapping, which the reference prints where
// Python would print the dict: no prompt to match; torchtp raises a type
// error there.
bool prints_a_javascript_object(const json& result) {
  return result.contains("output") && result["output"].get<std::string>().find(
                                          "[object ") != std::string::npos;
}

TEST(ChatTemplate, RealTemplatesRenderAsHuggingFaceJinja) {
  REQUIRE_REFERENCE();
  int compared = 0, raised = 0;
  for (const json& t : reference()["templates"]) {
    const std::string name = t["name"].get<std::string>();
    torchtp::ChatTemplate chat =
        torchtp::ChatTemplate::from_directory(t["dir"].get<std::string>());
    EXPECT_EQ(chat.source(), t["source"].get<std::string>()) << name;
    for (const json& r : t["results"]) {
      check_result(chat, r, name);
      ++compared;
      raised += r.contains("error") ? 1 : 0;
    }
  }
  std::cout << "compared " << compared << " renders of "
            << reference()["templates"].size() << " templates (" << raised
            << " raise in the reference)\n";
  EXPECT_GE(compared, 14 * 26);
}

// The rest of the GGUF table: each template renders as the reference does,
// or is refused at construction (never halfway through a render).
TEST(ChatTemplate, OtherPublishedTemplatesRenderAsReferenceOrAreRefused) {
  REQUIRE_REFERENCE();
  int rendered = 0, refused = 0, compared = 0, diverged = 0;
  int javascript_objects = 0;
  std::ostringstream refusals;
  for (const json& t : reference()["others"]) {
    const std::string name = t["name"].get<std::string>();
    std::map<std::string, std::string> special;
    for (const auto& [k, v] : t["special_tokens"].items()) {
      special[k] = v.get<std::string>();
    }
    std::unique_ptr<torchtp::ChatTemplate> chat;
    try {
      chat = std::make_unique<torchtp::ChatTemplate>(
          t["source"].get<std::string>(), special, name);
    } catch (const c10::Error& e) {
      ++refused;
      refusals << "  " << e.msg() << "\n";
      continue;
    }
    ++rendered;
    for (const json& r : t["results"]) {
      if (prints_a_javascript_object(r)) {
        const json conv = conversation_of(r);
        EXPECT_TRUE(starts_with(
            render_or_error(
                *chat, conv["messages"], r["add_generation_prompt"].get<bool>(),
                extra_of(conv)),
            "error: "))
            << name;
        ++javascript_objects;
        continue;
      }
      ++compared;
      diverged += check_result(*chat, r, name) ? 0 : 1;
    }
  }
  std::cout << rendered << " more templates rendered (" << compared
            << " renders compared; " << javascript_objects
            << " where the reference prints a JavaScript [object Map] are "
               "type errors here), "
            << refused << " refused:\n"
            << refusals.str();
  EXPECT_EQ(diverged, 0);
  EXPECT_GE(rendered, 84);
}

TEST(ChatTemplate, EngineCasesRenderAsHuggingFaceJinja) {
  REQUIRE_REFERENCE();
  int compared = 0;
  for (const json& c : reference()["engine"]) {
    const std::string name = c["name"].get<std::string>();
    torchtp::ChatTemplate chat(c["template"].get<std::string>());
    const json vars = c["variables"];
    const std::string got = render_or_error(chat, json::array(), false, vars);
    if (c.contains("output")) {
      EXPECT_EQ(got, c["output"].get<std::string>()) << name;
    } else {
      std::string why;
      EXPECT_TRUE(same_as_reference(got, c, why))
          << name << ": " << why << ", torchtp gives: " << got;
      // The template's own raise_exception is a raise here too.
      EXPECT_EQ(starts_with(got, "raise: "), starts_with(name, "raise"))
          << name << ": " << got;
    }
    ++compared;
  }
  EXPECT_GE(compared, 70);
}

// 3,000 random expressions in each kind of statement and 1,000 random whole
// templates (text, newlines and indentation around nested if / for / set /
// comments, with and without whitespace dashes), from
// tests/chat/random_templates.js, over fixed variables: the same output as
// the reference, or an error (at construction or render) where it raises.
TEST(ChatTemplate, RandomTemplatesRenderAsHuggingFaceJinja) {
  REQUIRE_REFERENCE();
  const json& random = reference()["random"];
  int outputs = 0, errors = 0, mismatches = 0, javascript_objects = 0;
  int reference_crashes = 0;
  for (const json& c : random["cases"]) {
    const std::string source = c["template"].get<std::string>();
    std::string got;
    try {
      torchtp::ChatTemplate chat(source);
      got = render_or_error(chat, json::array(), false, random["variables"]);
    } catch (const c10::Error& e) {
      got = "error: " + e.msg();
    }
    std::string why;
    if (prints_a_javascript_object(c) ||
        (c.contains("output") &&
         got.find("[object Map]") != std::string::npos)) {
      // The reference's "[object Map]" (printed, or tested for truth): a
      // type error here.
      EXPECT_TRUE(starts_with(got, "error: ")) << source << ": " << got;
      ++javascript_objects;
      continue;
    }
    if (c.contains("error") && c["error"].get<std::string>().rfind(
                                   "Cannot read properties of", 0) == 0) {
      // The reference crashed (a JavaScript TypeError inside it, e.g. on
      // `[] | first`), not a Jinja error: nothing to compare.
      ++reference_crashes;
      continue;
    }
    if (!same_as_reference(got, c, why)) {
      ++mismatches;
      ADD_FAILURE() << source << "\n  " << why << "; torchtp: " << got
                    << (c.contains("output")
                            ? "\n  reference: " + c["output"].get<std::string>()
                            : "");
    }
    (c.contains("output") ? outputs : errors) += 1;
  }
  std::cout << outputs << " random templates rendered, " << errors
            << " raise in the reference, " << javascript_objects
            << " turn a mapping into JavaScript's [object Map] there, "
            << reference_crashes << " crash the reference; " << mismatches
            << " differ\n";
  EXPECT_GE(outputs + errors + javascript_objects + reference_crashes, 1000);
}

// Where the engine follows Python's Jinja (which the models' prompts were
// made with) rather than the reference: ours as Python gives it, and the
// reference really does differ.
TEST(ChatTemplate, DivergencesFollowPythonJinja) {
  REQUIRE_REFERENCE();
  for (const json& d : reference()["divergences"]) {
    const std::string name = d["name"].get<std::string>();
    torchtp::ChatTemplate chat(d["template"].get<std::string>());
    const std::string got =
        render_or_error(chat, json::array(), false, d["variables"]);
    EXPECT_EQ(got, d["output"].get<std::string>()) << name;
    EXPECT_NE(d["reference"].get<std::string>(), got)
        << name << ": the reference agrees now; drop it from the divergences";
  }
}

// Real templates with inputs the reference cannot render, against the
// output of Python's Jinja2 (transformers' renderer) recorded in
// cases.json.
TEST(ChatTemplate, WhereTheReferenceFailsPythonJinjaOutputIsMatched) {
  REQUIRE_REFERENCE();
  for (const json& c : reference()["python_checked"]) {
    const std::string name = c["template"].get<std::string>();
    std::string dir;
    for (const json& t : reference()["templates"]) {
      if (t["name"] == name) {
        dir = t["dir"].get<std::string>();
      }
    }
    ASSERT_FALSE(dir.empty()) << name;
    const torchtp::ChatTemplate chat =
        torchtp::ChatTemplate::from_directory(dir);
    EXPECT_EQ(
        chat.render(
            c["messages"], c["add_generation_prompt"].get<bool>(), c["extra"]),
        c["output"].get<std::string>())
        << name << ": " << c["why"].get<std::string>();
  }
}

TEST(ChatTemplate, UnsupportedConstructsAreRefusedAtConstruction) {
  REQUIRE_REFERENCE();
  for (const json& r : reference()["refused"]) {
    const std::string name = r["name"].get<std::string>();
    try {
      torchtp::ChatTemplate chat(
          r["template"].get<std::string>(), {}, "refused case " + name);
      ADD_FAILURE() << name << ": accepted";
    } catch (const c10::Error& e) {
      const std::string msg = e.msg();
      EXPECT_NE(msg.find(r["message"].get<std::string>()), std::string::npos)
          << name << ": " << msg;
      const int line = r["line"].get<int>();
      if (line > 0) {
        EXPECT_NE(
            msg.find("line " + std::to_string(line) + ":"), std::string::npos)
            << name << ": " << msg;
      }
      EXPECT_NE(msg.find("[in refused case " + name + "]"), std::string::npos)
          << name << ": " << msg;
    }
  }
}

TEST(ChatTemplate, RaiseExceptionIsAValueErrorTypeErrorsAreTypeErrors) {
  torchtp::ChatTemplate raises("{{ raise_exception('roles must alternate') }}");
  EXPECT_THROW(raises.render(json::array(), false), c10::ValueError);
  try {
    raises.render(json::array(), false);
  } catch (const c10::ValueError& e) {
    EXPECT_EQ(
        std::string(e.msg()), "torchtp::ChatTemplate: roles must alternate");
  }
  torchtp::ChatTemplate bad("line one\n{{ 'a' + none }}");
  try {
    bad.render(json::array(), false);
    ADD_FAILURE() << "rendered";
  } catch (const c10::TypeError& e) {
    EXPECT_NE(std::string(e.msg()).find("line 2:"), std::string::npos)
        << e.msg();
  }
}

// A plain nlohmann::json (sorted keys) converts; the template sees the
// special tokens, the flag, tools/documents as none and the extra keys.
TEST(ChatTemplate, RenderContext) {
  torchtp::ChatTemplate chat(
      "{{ bos_token }}{{ messages | length }}{{ add_generation_prompt }}"
      "{{ tools is none }}{{ documents is none }}{{ custom }}",
      {{"bos_token", "<s>"}});
  const nlohmann::json messages =
      nlohmann::json::parse(R"([{"role": "user"}])");
  EXPECT_EQ(
      chat.render(messages, true, {{"custom", "x"}}), "<s>1truetruetruex");
  EXPECT_EQ(
      chat.render(messages, false, {{"tools", json::array()}}),
      "<s>1falsefalsetrue");
  EXPECT_THROW(chat.render(json::object(), false), c10::Error);
  // A client's deeply nested message is refused, not a stack overflow.
  json deep = "leaf";
  // (1,000 levels: nlohmann's own copies recurse too.)
  for (int i = 0; i < 1000; ++i) {
    deep = json::array({std::move(deep)});
  }
  EXPECT_THROW(
      chat.render(json::array({{{"role", "user"}, {"content", deep}}}), false),
      c10::ValueError);
}

std::string scratch_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/torchtp_chat_" + name;
  std::system(("mkdir -p '" + dir + "'").c_str());
  return dir;
}

void write_config(const std::string& dir, const std::string& text) {
  std::ofstream(dir + "/tokenizer_config.json") << text;
}

TEST(ChatTemplate, FromDirectoryReadsTokenizerConfig) {
  const std::string gpt2 = scratch_dir("gpt2");
  write_config(
      gpt2, R"({"model_max_length": 1024, "eos_token": "<|endoftext|>"})");
  EXPECT_FALSE(torchtp::ChatTemplate::has_chat_template(gpt2));
  try {
    torchtp::ChatTemplate::from_directory(gpt2);
    ADD_FAILURE() << "accepted a directory without a chat template";
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.msg()).find("has no chat_template"), std::string::npos)
        << e.msg();
  }
  EXPECT_FALSE(torchtp::ChatTemplate::has_chat_template(scratch_dir("empty")));

  const std::string named = scratch_dir("named");
  write_config(
      named, R"({"chat_template": [{"name": "rag", "template": "r"}]})");
  EXPECT_THROW(torchtp::ChatTemplate::from_directory(named), c10::Error);

  const std::string tokens = scratch_dir("tokens");
  write_config(tokens, R"({"bos_token": {"content": "<s>", "lstrip": false},
    "eos_token": "</s>", "pad_token": null,
    "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}"})");
  EXPECT_TRUE(torchtp::ChatTemplate::has_chat_template(tokens));
  EXPECT_EQ(
      torchtp::ChatTemplate::from_directory(tokens).render(
          json::array(), false),
      "<s>|</s>|false");

  // chat_template.jinja, where recent transformers save the template,
  // wins over tokenizer_config.json's; chat_template.json comes next.
  const std::string jinja = scratch_dir("jinja");
  write_config(jinja, R"({"bos_token": "<s>", "chat_template": "old"})");
  std::ofstream(jinja + "/chat_template.jinja") << "{{ bos_token }}new\n";
  EXPECT_EQ(
      torchtp::ChatTemplate::from_directory(jinja).render(json::array(), false),
      "<s>new");
  const std::string json_file = scratch_dir("json_file");
  std::ofstream(json_file + "/chat_template.json")
      << R"({"chat_template": "from json"})";
  EXPECT_TRUE(torchtp::ChatTemplate::has_chat_template(json_file));
  EXPECT_EQ(
      torchtp::ChatTemplate::from_directory(json_file).render(
          json::array(), false),
      "from json");

  const std::string refused = scratch_dir("refused");
  write_config(refused, R"({"chat_template": "{{ x | wordcount }}"})");
  try {
    torchtp::ChatTemplate::from_directory(refused);
    ADD_FAILURE() << "accepted an unsupported filter";
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.msg()).find(refused + "/tokenizer_config.json"),
        std::string::npos)
        << e.msg();
  }
}

TEST(ChatTemplate, RendersFromSeveralThreadsAtOnce) {
  REQUIRE_REFERENCE();
  const json& t = reference()["templates"][0];
  const torchtp::ChatTemplate chat =
      torchtp::ChatTemplate::from_directory(t["dir"].get<std::string>());
  const json& messages = reference()["conversations"]["multi_turn"]["messages"];
  const std::string expected = chat.render(messages, true);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) {
        ok[i] += chat.render(messages, true) == expected ? 1 : 0;
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ok[i], 50);
  }
}

} // namespace
