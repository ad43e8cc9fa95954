#pragma once

// The pieces of a tokenizer pipeline, as Hugging Face's `tokenizers` library
// composes them: added vocabulary -> normalizer -> pre-tokenizer -> BPE model
// -> post-processor for encoding; decoder chain for decoding. Internal to
// src/tokenizer/.

#include "detail/utf8.h"

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace torchtp::detail {

// ---------------------------------------------------------------- unicode.cpp

/// Byte offset of the first invalid UTF-8 sequence in `s`, or npos.
size_t find_invalid_utf8(std::string_view s);

/// Length in bytes of the UTF-8 character starting with byte `lead` (1 for
/// a byte that cannot start one); the text is valid UTF-8.
inline size_t utf8_length(unsigned char lead) {
  if (lead < 0xC0) {
    return 1;
  }
  if (lead < 0xE0) {
    return 2;
  }
  return lead < 0xF0 ? 3 : 4;
}

/// Rust's String::from_utf8_lossy: each maximal ill-formed subsequence
/// becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

/// Decodes the code point at `s[i]` (valid UTF-8) and advances `i`.
uint32_t next_code_point(std::string_view s, size_t& i);

/// GPT-2's byte-to-unicode table: byte b is spelled as code point
/// kByteToUnicode[b] in byte-level vocabularies.
const std::array<uint32_t, 256>& byte_to_unicode();

/// The bytes a byte-level token spells, or false when a character of it is
/// not in the table.
bool byte_level_to_bytes(std::string_view token, std::string& bytes);

/// Unicode's White_Space, as Rust's char::is_whitespace.
bool is_unicode_whitespace(uint32_t cp);

/// A compiled PCRE2 regular expression (UTF, Unicode properties, JIT where
/// the platform has it), matched as Oniguruma does in the Rust library.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  /// Calls out(begin, end) for every non-empty match in `text`, left to
  /// right, non-overlapping.
  template <typename F>
  void for_each_match(std::string_view text, F&& out) const {
    size_t pos = 0;
    size_t begin = 0;
    size_t end = 0;
    while (pos < text.size() && find(text, pos, begin, end)) {
      if (end > begin) {
        out(begin, end);
        pos = end;
      } else {
        pos = begin + utf8_length(static_cast<unsigned char>(text[begin]));
      }
    }
  }

 private:
  bool find(
      std::string_view text, size_t start, size_t& begin, size_t& end) const;
  void* code_ = nullptr;
  std::string where_;
};

/// Unicode normalization through ICU (NFC, NFD, NFKC, NFKD).
std::string unicode_normalize(std::string_view text, const std::string& form);

// ---------------------------------------------------------------- pipeline

/// A piece of text on its way to the model; `at_start` when it begins at
/// byte 0 of the original input (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  bool at_start = false;
};

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
  /// Whether the pieces leave as raw bytes that the model must see in
  /// GPT-2's byte-to-unicode spelling (a ByteLevel step).
  virtual bool byte_level() const {
    return false;
  }
};

struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

/// The ids the post-processor puts around a single sequence.
struct PostProcessor {
  std::vector<int64_t> before;
  std::vector<int64_t> after;
};

/// `where` names the file in error messages.
std::unique_ptr<Normalizer> make_normalizer(
    const nlohmann::json& j, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(
    const nlohmann::json& j, const std::string& where);
std::unique_ptr<Decoder> make_decoder(
    const nlohmann::json& j, const std::string& where);
PostProcessor make_post_processor(
    const nlohmann::json& j, const std::string& where);

/// GPT-2's ByteLevel pre-tokenizer and decoder (vocab.json + merges.txt).
std::unique_ptr<PreTokenizer> make_gpt2_pre_tokenizer(const std::string& where);
std::unique_ptr<Decoder> make_gpt2_decoder();

// ---------------------------------------------------------------- bpe.cpp

/// Open-addressing map from byte strings to ids.
class StringIdMap {
 public:
  void reserve(size_t n);
  /// Inserts or overwrites.
  void set(std::string_view key, int32_t id);
  /// -1 when absent.
  int32_t get(std::string_view key) const;
  size_t size() const {
    return keys_.size();
  }

 private:
  size_t slot_of(std::string_view key, uint64_t h) const;
  std::vector<std::string> keys_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> slots_; // index into keys_, -1 empty
  uint64_t mask_ = 0;
};

/// The BPE model: vocabulary, merges by rank, byte fallback, unknown token,
/// and a cache of words seen before.
class BpeModel {
 public:
  struct Options {
    std::string unk_token;
    bool has_unk = false;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
  };
  /// `merges` are pairs of token texts by rank. With `byte_level`, words
  /// arrive as raw bytes and the vocabulary is read in GPT-2's
  /// byte-to-unicode spelling.
  BpeModel(
      std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges,
      Options options,
      bool byte_level,
      const std::string& where);

  /// Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int64_t>& ids) const;

  /// -1 when absent (the token as written in the file).
  int32_t token_to_id(std::string_view token) const {
    return vocab_.get(token);
  }
  /// nullptr when absent.
  const std::string* id_to_token(int64_t id) const;
  size_t vocab_size() const {
    return vocab_.size();
  }
  const std::vector<std::string>& tokens() const {
    return tokens_by_id_;
  }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringIdMap vocab_;      // as written in the file
  StringIdMap model_keys_; // what the words are matched against
  std::vector<std::string> tokens_by_id_;
  std::vector<bool> has_id_;
  std::array<int32_t, 256> byte_ids_{};     // byte-level: the id of each byte
  std::array<int32_t, 256> fallback_ids_{}; // <0xNN> tokens
  bool byte_level_;
  Options options_;
  int32_t unk_id_ = -1;

  // (left id, right id) -> (rank, merged id), open addressing.
  struct MergeSlot {
    uint64_t key = ~uint64_t{0};
    uint32_t rank = 0;
    int32_t id = 0;
  };
  std::vector<MergeSlot> merges_;
  uint64_t merge_mask_ = 0;
  bool find_merge(int32_t a, int32_t b, uint32_t& rank, int32_t& id) const;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// ---------------------------------------------------------------- tokenizer

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

/// Leftmost-longest matcher over the added tokens' texts (a byte trie).
class AddedMatcher {
 public:
  void add(const std::string& pattern, size_t token_index);
  bool empty() const {
    return nodes_.size() <= 1;
  }
  /// The longest pattern starting at `pos`: its token index and end, or
  /// false.
  bool match_at(
      std::string_view text, size_t pos, size_t& token, size_t& end) const;
  bool may_start(unsigned char c) const {
    return first_[c];
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int64_t token = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

struct TokenizerImpl {
  std::string source;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, size_t> added_by_content;
  std::unordered_map<int64_t, size_t> added_by_id;
  AddedMatcher raw_matcher;        // tokens with normalized = false
  AddedMatcher normalized_matcher; // normalized = true, patterns normalized
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  PostProcessor post;
  std::unique_ptr<Decoder> decoder;
  int64_t vocab_size = 0;

  void add_tokens(std::vector<AddedToken> tokens);
  void encode_piece(
      std::string_view text,
      bool at_start,
      bool normalized_stage,
      std::vector<int64_t>& ids) const;
  void encode_pre_tokens(Piece piece, std::vector<int64_t>& ids) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const;
};

} // namespace torchtp::detail
