// torchtp::Tokenizer against Hugging Face's `tokenizers` (the Rust library,
// through its npm Node binding): tests/tokenizer/reference.js writes what the
// library gives for every string and id list in strings.js, on real
// vocabularies (GPT-2, Llama 2, Mistral, Llama 3, Qwen2-style) and variants
// of them;
// this test asks the C++ tokenizer for the same. TORCHTP_TOKENIZER_REFERENCE
// names the directory reference.js wrote (CTest's fixture runs it first).

#include <torchtp/tokenizer.h>

#include "tokenizer/tokenizer_impl.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using json = nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string reference_dir() {
  const char* dir = std::getenv("TORCHTP_TOKENIZER_REFERENCE");
  return dir != nullptr ? dir : "";
}

// The reference, read once.
const json& reference() {
  static const json j = [] {
    const std::string path = reference_dir() + "/expected.json";
    std::ifstream in(path);
    if (!in.good()) {
      return json();
    }
    return json::parse(in);
  }();
  return j;
}

const torchtp::Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<torchtp::Tokenizer>> loaded;
  auto& t = loaded[name];
  if (!t) {
    t = std::make_unique<torchtp::Tokenizer>(torchtp::Tokenizer::from_directory(
        reference()["models"][name]["dir"].get<std::string>()));
  }
  return *t;
}

// Printable form of a test string for failure messages.
std::string escaped(const std::string& s) {
  std::string out;
  for (const unsigned char c : s.substr(0, 120)) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return s.size() > 120 ? out + "..." : out;
}

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string out = "[";
  for (size_t k = 0; k < ids.size() && k < 40; ++k) {
    out += (k ? ", " : "") + std::to_string(ids[k]);
  }
  return out + (ids.size() > 40 ? ", ...]" : "]");
}

std::vector<int64_t> ids_of(const json& j) {
  return j.get<std::vector<int64_t>>();
}

class Reference : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    // Missing data is a failure, not a skip: scripts/setup.sh provides it.
    ASSERT_TRUE(reference().is_object())
        << "no reference at TORCHTP_TOKENIZER_REFERENCE='" << reference_dir()
        << "': run scripts/setup.sh (node, the npm tokenizers binding and "
           "the vocabularies), then ctest runs tests/tokenizer/reference.js";
    ASSERT_TRUE(reference()["models"].contains(GetParam()));
  }
  const json& model() const {
    return reference()["models"][GetParam()];
  }
  const json& strings() const {
    return reference()["strings"];
  }
};

TEST_P(Reference, EncodeEqualsHuggingFaceOnEveryString) {
  const auto& tok = tokenizer(GetParam());
  const json& cases = model()["cases"];
  int failures = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const std::string s = strings()[k].get<std::string>();
    const auto expected = ids_of(cases[k]["ids"]);
    const auto expected_plain = ids_of(cases[k]["ids_plain"]);
    const auto got = tok.encode(s);
    const auto got_plain = tok.encode(s, /*add_special_tokens=*/false);
    if ((got != expected || got_plain != expected_plain) && ++failures <= 8) {
      ADD_FAILURE() << GetParam() << " string " << k << " \"" << escaped(s)
                    << "\"\n  expected " << ids_text(expected) << " / plain "
                    << ids_text(expected_plain) << "\n  got      "
                    << ids_text(got) << " / plain " << ids_text(got_plain);
    }
  }
  EXPECT_EQ(failures, 0) << "strings encoded differently, of " << cases.size();
}

TEST_P(Reference, DecodeOfTheExpectedIdsEqualsHuggingFace) {
  const auto& tok = tokenizer(GetParam());
  const json& cases = model()["cases"];
  int failures = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const auto ids = ids_of(cases[k]["ids"]);
    const std::string expected = cases[k]["decoded"];
    const std::string expected_special = cases[k]["decoded_special"];
    const std::string got = tok.decode(ids);
    const std::string got_special = tok.decode(ids, false);
    if ((got != expected || got_special != expected_special) &&
        ++failures <= 8) {
      ADD_FAILURE() << GetParam() << " string " << k << " ids " << ids_text(ids)
                    << "\n  expected \"" << escaped(expected)
                    << "\" / with special \"" << escaped(expected_special)
                    << "\"\n  got      \"" << escaped(got)
                    << "\" / with special \"" << escaped(got_special) << "\"";
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(Reference, DecodeOfArbitraryIdListsEqualsHuggingFace) {
  // Byte tokens that split UTF-8 characters, special tokens, unknown ids.
  const auto& tok = tokenizer(GetParam());
  int failures = 0;
  for (const json& c : model()["id_lists"]) {
    const auto ids = ids_of(c["ids"]);
    const std::string got = tok.decode(ids);
    const std::string got_special = tok.decode(ids, false);
    if ((got != c["decoded"] || got_special != c["decoded_special"]) &&
        ++failures <= 8) {
      ADD_FAILURE() << GetParam() << " ids " << ids_text(ids)
                    << "\n  expected \""
                    << escaped(c["decoded"].get<std::string>())
                    << "\" / with special \""
                    << escaped(c["decoded_special"].get<std::string>())
                    << "\"\n  got      \"" << escaped(got)
                    << "\" / with special \"" << escaped(got_special) << "\"";
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(Reference, LongTextEncodesAndDecodesAsHuggingFace) {
  const auto& tok = tokenizer(GetParam());
  const std::string text = read_file(reference_dir() + "/long_text.txt");
  ASSERT_GT(text.size(), 300000u);
  const auto expected = ids_of(model()["long_ids"]);
  const auto got = tok.encode(text);
  ASSERT_EQ(got.size(), expected.size());
  size_t first = 0;
  while (first < got.size() && got[first] == expected[first]) {
    ++first;
  }
  EXPECT_EQ(first, got.size()) << "first difference at id " << first;
  EXPECT_EQ(tok.decode(expected), model()["long_decoded"].get<std::string>());
}

TEST_P(Reference, DecodeStreamEqualsDecode) {
  const auto& tok = tokenizer(GetParam());
  auto check = [&](const std::vector<int64_t>& ids, bool skip) {
    torchtp::DecodeStream stream(tok, skip);
    std::string text;
    for (const int64_t id : ids) {
      const std::string piece = stream.step(id);
      // Never a broken character: every piece is valid UTF-8 on its own.
      EXPECT_EQ(torchtp::detail::find_invalid_utf8(piece), std::string::npos)
          << GetParam() << " ids " << ids_text(ids);
      text += piece;
    }
    text += stream.finish();
    EXPECT_EQ(text, tok.decode(ids, skip))
        << GetParam() << " ids " << ids_text(ids);
  };
  for (const json& c : model()["cases"]) {
    check(ids_of(c["ids"]), true);
  }
  for (const json& c : model()["id_lists"]) {
    check(ids_of(c["ids"]), true);
    check(ids_of(c["ids"]), false);
  }
}

TEST_P(Reference, VocabularyAndTokenLookups) {
  const auto& tok = tokenizer(GetParam());
  EXPECT_EQ(tok.vocab_size(), model()["vocab_size"].get<int64_t>());
  for (const auto& [token, id] : model()["tokens"].items()) {
    const auto got = tok.token_to_id(token);
    if (id.is_null()) {
      EXPECT_FALSE(got.has_value()) << token;
    } else {
      ASSERT_TRUE(got.has_value()) << token;
      EXPECT_EQ(*got, id.get<int64_t>()) << token;
      EXPECT_EQ(tok.id_to_token(*got), token);
    }
  }
  EXPECT_THROW(tok.id_to_token(tok.vocab_size() + 1000), c10::Error);
}

INSTANTIATE_TEST_SUITE_P(
    Tokenizer,
    Reference,
    ::testing::Values(
        "gpt2",
        "gpt2-files",
        "gpt2-added",
        "gpt2-prefix",
        "llama2",
        "mistral",
        "mistral-metaspace",
        "mistral-metaspace-legacy",
        "llama3",
        "llama3-bos",
        "qwen3"),
    [](const auto& info) {
      std::string name = info.param;
      for (char& c : name) {
        c = c == '-' ? '_' : c;
      }
      return name;
    });

// ------------------------------------------------------------------ refusals

std::string minimal_json(
    const std::string& model_type,
    const std::string& field,
    const std::string& component) {
  json j = {
      {"version", "1.0"},
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model",
       {{"type", model_type},
        {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}},
        {"merges", {"a b"}}}}};
  if (!field.empty()) {
    j[field] = json::parse(component);
  }
  return j.dump();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "(no error)";
}

TEST(TokenizerLoading, AMinimalBpeLoadsAndMerges) {
  const auto tok = torchtp::Tokenizer::from_json(minimal_json("BPE", "", ""));
  EXPECT_EQ(tok.encode("abab"), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(tok.encode(""), (std::vector<int64_t>{}));
  EXPECT_EQ(tok.decode({2, 0, 99}), "ab a");
}

TEST(TokenizerLoading, RefusesUnknownComponentsByName) {
  const struct {
    std::string model;
    std::string field;
    std::string component;
    std::string named;
  } cases[] = {
      {"WordPiece", "", "", "model type 'WordPiece'"},
      {"Unigram", "", "", "model type 'Unigram'"},
      {"BPE", "normalizer", R"({"type": "Lowercase"})",
       "normalizer type 'Lowercase'"},
      {"BPE", "normalizer",
       R"({"type": "Sequence", "normalizers": [{"type": "BertNormalizer"}]})",
       "normalizer type 'BertNormalizer'"},
      {"BPE", "pre_tokenizer", R"({"type": "Whitespace"})",
       "pre-tokenizer type 'Whitespace'"},
      {"BPE", "decoder", R"({"type": "WordPiece", "prefix": "##"})",
       "decoder type 'WordPiece'"},
      {"BPE", "post_processor", R"({"type": "BertProcessing"})",
       "post-processor type 'BertProcessing'"},
      {"BPE", "pre_tokenizer",
       R"({"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"})",
       "does not compile"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of([&] {
      torchtp::Tokenizer::from_json(
          minimal_json(c.model, c.field, c.component), "dir/tokenizer.json");
    });
    EXPECT_NE(message.find(c.named), std::string::npos) << message;
    EXPECT_NE(message.find("dir/tokenizer.json"), std::string::npos) << message;
  }
}

TEST(TokenizerLoading, RefusesMalformedJson) {
  const std::string message = error_of(
      [] { torchtp::Tokenizer::from_json("{\"model\": [1, 2", "x.json"); });
  EXPECT_NE(message.find("x.json: not valid JSON"), std::string::npos)
      << message;
  const std::string wrong_shape = error_of([] {
    torchtp::Tokenizer::from_json(
        R"({"model": {"type": "BPE", "vocab": [1], "merges": []}})", "y.json");
  });
  EXPECT_NE(wrong_shape.find("y.json"), std::string::npos) << wrong_shape;
  const std::string bad_merge = error_of([] {
    torchtp::Tokenizer::from_json(
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}})",
        "z.json");
  });
  EXPECT_NE(bad_merge.find("not in model.vocab"), std::string::npos)
      << bad_merge;
}

TEST(TokenizerLoading, RefusesAMissingDirectoryOrFile) {
  const std::string message = error_of(
      [] { torchtp::Tokenizer::from_directory("/nonexistent/model"); });
  EXPECT_NE(
      message.find("/nonexistent/model has no tokenizer.json"),
      std::string::npos)
      << message;
}

TEST(TokenizerEncode, RefusesInvalidUtf8NamingTheByte) {
  const auto tok = torchtp::Tokenizer::from_json(minimal_json("BPE", "", ""));
  const std::string message =
      error_of([&] { tok.encode(std::string("ab\xC3(", 4)); });
  EXPECT_NE(message.find("not valid UTF-8 (byte 2"), std::string::npos)
      << message;
}

TEST(TokenizerEncode, IsSafeFromSeveralThreads) {
  ASSERT_TRUE(reference().is_object());
  const auto& tok = tokenizer("llama3");
  const json& model = reference()["models"]["llama3"];
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t k = t; k < model["cases"].size(); k += 2) {
        const auto got = tok.encode(reference()["strings"][k]);
        failures[t] += got != ids_of(model["cases"][k]["ids"]);
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

} // namespace
