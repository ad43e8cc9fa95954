#pragma once

// Hugging Face tokenizers in C++: the byte-level BPE of GPT-2, Llama 3 and
// Qwen2, and the SentencePiece-style BPE (byte fallback) of Llama 2,
// Mistral and TinyLlama, read from a model directory and reproducing the
// Rust `tokenizers` library id for id and byte for byte. Needs no LibTorch
// (only c10's error type): see docs/tokenizers.md.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace torchtp {

namespace detail {
struct TokenizerImpl;
} // namespace detail

/// A tokenizer loaded from a Hugging Face model directory.
///
/// `encode` runs the pipeline of `tokenizer.json` (added tokens, normalizer,
/// pre-tokenizer, BPE model, post-processor) and `decode` its decoder,
/// exactly as Hugging Face's `tokenizers` library does; transformers'
/// optional `clean_up_tokenization_spaces` pass is not applied. A component
/// this code does not implement is refused when the tokenizer loads, with
/// the file and the component's type named. A Tokenizer is a cheap handle
/// (copies share one immutable state) and is safe to use from several
/// threads at once.
///
/// Example:
/// ```
///   auto tok = torchtp::Tokenizer::from_directory("Llama-2-7b-hf");
///   std::vector<int64_t> ids = tok.encode("Hello world");  // {1, 15043, 3186}
///   std::string text = tok.decode(ids);                   // "Hello world"
/// ```
class Tokenizer {
 public:
  /// Loads `dir/tokenizer.json`, or, in a GPT-2 directory without one,
  /// `dir/vocab.json` + `dir/merges.txt` (byte-level BPE with GPT-2's
  /// pre-tokenizer and decoder, `<|endoftext|>` a special token when the
  /// vocabulary has it, as transformers' GPT-2 tokenizer converts them).
  /// `tokenizer_config.json` is not read: the `tokenizers` library does not
  /// read it either, and `tokenizer.json` already carries its post-processor.
  static Tokenizer from_directory(const std::string& dir);

  /// Parses the text of a `tokenizer.json`; `source` names it in errors.
  static Tokenizer from_json(
      const std::string& tokenizer_json_text,
      const std::string& source = "tokenizer.json");

  /// Byte-level BPE from GPT-2's `vocab.json` and `merges.txt` texts.
  static Tokenizer from_vocab_and_merges(
      const std::string& vocab_json_text,
      const std::string& merges_text,
      const std::string& source = "vocab.json + merges.txt");

  /// The ids of `text` (UTF-8; invalid UTF-8 raises c10::Error naming the
  /// byte offset). With `add_special_tokens`, the post-processor's tokens
  /// (e.g. a BOS) are added; added and special tokens written in the text
  /// are recognised as those tokens either way. An empty text is valid.
  std::vector<int64_t> encode(
      const std::string& text, bool add_special_tokens = true) const;

  /// The text of `ids` through the decoder. Ids that are not in the
  /// vocabulary are skipped, as the library does; with
  /// `skip_special_tokens` special tokens are left out. Byte tokens that do
  /// not form valid UTF-8 decode to U+FFFD as the library's decoders say.
  std::string decode(
      const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  /// Distinct tokens of the model's vocabulary and the added tokens.
  int64_t vocab_size() const;

  /// The id of a token's text (an added token's content, or a model
  /// vocabulary entry as written in the file); none when absent.
  std::optional<int64_t> token_to_id(const std::string& token) const;

  /// The text of a token as written in the vocabulary (byte-level tokens in
  /// their byte-to-unicode spelling). Raises c10::Error for an unknown id.
  std::string id_to_token(int64_t id) const;

  /// Whether `id` is an added token marked `special` (what
  /// `skip_special_tokens` leaves out).
  bool is_special(int64_t id) const;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerImpl> impl);
  std::shared_ptr<const detail::TokenizerImpl> impl_;
  friend class DecodeStream;
};

/// Incremental decoding for streaming, as the Rust library's DecodeStream:
/// `step(id)` returns the text that this id completes, never a broken UTF-8
/// character (bytes are held until their character completes, and the
/// decoder's leading-space rules see the context they would in a full
/// decode; a run of byte-fallback tokens is held until a token ends it,
/// since a later byte can make the whole run invalid). `finish()` returns
/// what is still held (U+FFFD for bytes that never completed), so the
/// concatenation of every `step` and `finish` is `decode(all ids)`.
///
/// Example:
/// ```
///   torchtp::DecodeStream stream(tok);
///   for (int64_t id : ids) std::cout << stream.step(id) << std::flush;
///   std::cout << stream.finish();
/// ```
class DecodeStream {
 public:
  /// A stream over `tokenizer` (which it keeps alive).
  explicit DecodeStream(
      const Tokenizer& tokenizer, bool skip_special_tokens = true);

  /// Adds one id; returns the newly complete text (may be empty).
  std::string step(int64_t id);

  /// Returns the text still held back and resets the stream.
  std::string finish();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::vector<int64_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
  bool in_byte_run_ = false;
};

} // namespace torchtp
