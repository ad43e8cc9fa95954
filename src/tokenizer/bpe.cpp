// The BPE model: merges applied by rank over a linked list of symbols with a
// priority queue, in the order the Rust library applies them (lowest rank,
// then leftmost), plus byte fallback, the unknown token and a word cache.

#include "tokenizer/tokenizer_impl.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <queue>

namespace torchtp::detail {

namespace {

uint64_t hash_bytes(std::string_view s) {
  // FNV-1a over 8-byte words, then a final mix: fast for short keys.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < s.size(); ++i) {
    h = (h ^ static_cast<unsigned char>(s[i])) * 0x100000001b3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

uint64_t hash_pair(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdull;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ull;
  key ^= key >> 33;
  return key;
}

size_t table_size_for(size_t n) {
  size_t size = 16;
  while (size < n * 2) {
    size *= 2;
  }
  return size;
}

// Words longer than this are not cached (the Rust library's bound).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kCacheCapacity = 10000;

} // namespace

// ------------------------------------------------------------ StringIdMap

void StringIdMap::reserve(size_t n) {
  keys_.reserve(n);
  ids_.reserve(n);
  const size_t size = table_size_for(n);
  if (size <= slots_.size()) {
    return;
  }
  slots_.assign(size, -1);
  mask_ = size - 1;
  for (size_t k = 0; k < keys_.size(); ++k) {
    size_t s = hash_bytes(keys_[k]) & mask_;
    while (slots_[s] >= 0) {
      s = (s + 1) & mask_;
    }
    slots_[s] = static_cast<int32_t>(k);
  }
}

size_t StringIdMap::slot_of(std::string_view key, uint64_t h) const {
  size_t s = h & mask_;
  while (slots_[s] >= 0 && keys_[slots_[s]] != key) {
    s = (s + 1) & mask_;
  }
  return s;
}

void StringIdMap::set(std::string_view key, int32_t id) {
  if (slots_.empty() || (keys_.size() + 1) * 2 > slots_.size()) {
    reserve(std::max<size_t>(16, keys_.size() * 2 + 1));
  }
  const size_t s = slot_of(key, hash_bytes(key));
  if (slots_[s] >= 0) {
    ids_[slots_[s]] = id;
    return;
  }
  slots_[s] = static_cast<int32_t>(keys_.size());
  keys_.emplace_back(key);
  ids_.push_back(id);
}

int32_t StringIdMap::get(std::string_view key) const {
  if (slots_.empty()) {
    return -1;
  }
  const size_t s = slot_of(key, hash_bytes(key));
  return slots_[s] >= 0 ? ids_[slots_[s]] : -1;
}

// ------------------------------------------------------------ BpeModel

BpeModel::BpeModel(
    std::vector<std::pair<std::string, int32_t>> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges,
    Options options,
    bool byte_level,
    const std::string& where)
    : byte_level_(byte_level), options_(std::move(options)) {
  vocab_.reserve(vocab.size());
  model_keys_.reserve(vocab.size());
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) {
    TORCH_CHECK(
        id >= 0, where, ": model.vocab gives '", token, "' the negative id ",
        id);
    max_id = std::max(max_id, id);
  }
  tokens_by_id_.resize(static_cast<size_t>(max_id + 1));
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  byte_ids_.fill(-1);
  fallback_ids_.fill(-1);
  std::string bytes;
  for (auto& [token, id] : vocab) {
    vocab_.set(token, id);
    if (byte_level_) {
      // Tokens that are not byte-level spellings cannot come out of the
      // byte-level pre-tokenizer: they match nothing.
      if (byte_level_to_bytes(token, bytes)) {
        model_keys_.set(bytes, id);
        if (bytes.size() == 1) {
          byte_ids_[static_cast<unsigned char>(bytes[0])] = id;
        }
      }
    }
    has_id_[id] = true;
    tokens_by_id_[id] = std::move(token);
  }
  // Byte fallback looks up exactly "<0x%02X>" for each byte.
  for (int b = 0; b < 256; ++b) {
    char spelled[8];
    std::snprintf(spelled, sizeof(spelled), "<0x%02X>", b);
    fallback_ids_[b] = vocab_.get(spelled);
  }
  if (options_.has_unk) {
    unk_id_ = vocab_.get(options_.unk_token);
    TORCH_CHECK(
        unk_id_ >= 0, where, ": the unk_token '", options_.unk_token,
        "' is not in model.vocab");
  }
  const size_t size = table_size_for(merges.size());
  merges_.assign(size, MergeSlot{});
  merge_mask_ = size - 1;
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const int32_t ia = vocab_.get(a);
    const int32_t ib = vocab_.get(b);
    joined.assign(a).append(b);
    const int32_t merged = vocab_.get(joined);
    TORCH_CHECK(
        ia >= 0 && ib >= 0, where, ": merge ", rank, " ('", a, "' '", b,
        "') has a token that is not in model.vocab");
    TORCH_CHECK(
        merged >= 0, where, ": merge ", rank, " ('", a, "' '", b, "') makes '",
        joined, "', which is not in model.vocab");
    const uint64_t key =
        (static_cast<uint64_t>(ia) << 32) | static_cast<uint32_t>(ib);
    size_t s = hash_pair(key) & merge_mask_;
    while (merges_[s].key != ~uint64_t{0} && merges_[s].key != key) {
      s = (s + 1) & merge_mask_;
    }
    // A repeated pair keeps the later rank, as the library's map does.
    merges_[s] = MergeSlot{key, static_cast<uint32_t>(rank), merged};
  }
}

bool BpeModel::find_merge(
    int32_t a, int32_t b, uint32_t& rank, int32_t& id) const {
  const uint64_t key =
      (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b);
  size_t s = hash_pair(key) & merge_mask_;
  while (true) {
    const MergeSlot& slot = merges_[s];
    if (slot.key == key) {
      rank = slot.rank;
      id = slot.id;
      return true;
    }
    if (slot.key == ~uint64_t{0}) {
      return false;
    }
    s = (s + 1) & merge_mask_;
  }
}

const std::string* BpeModel::id_to_token(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= has_id_.size() || !has_id_[id]) {
    return nullptr;
  }
  return &tokens_by_id_[id];
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;
};

struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t id;
  bool operator<(const Candidate& o) const {
    // std::priority_queue pops the largest: lowest rank, then leftmost.
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

struct MergeScratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

} // namespace

void BpeModel::merge_word(
    std::string_view word, std::vector<int32_t>& out) const {
  thread_local MergeScratch scratch;
  auto& symbols = scratch.symbols;
  symbols.clear();
  auto add = [&](int32_t id, uint32_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, n + 1, len});
  };
  if (byte_level_) {
    for (const char c : word) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        add(id, 1);
      } else if (options_.has_unk) {
        // A byte-level vocabulary without a byte: the unknown token.
        if (options_.fuse_unk && !symbols.empty() &&
            symbols.back().id == unk_id_) {
          symbols.back().len += 1;
        } else {
          add(unk_id_, 1);
        }
      }
    }
  } else {
    int32_t unk_len = 0; // a pending unknown run, as the library keeps it
    size_t i = 0;
    while (i < word.size()) {
      const size_t len = utf8_length(static_cast<unsigned char>(word[i]));
      const std::string_view ch = word.substr(i, len);
      i += len;
      const int32_t id = vocab_.get(ch);
      if (id >= 0) {
        if (unk_len > 0) {
          add(unk_id_, unk_len);
          unk_len = 0;
        }
        add(id, static_cast<uint32_t>(len));
        continue;
      }
      if (options_.byte_fallback) {
        bool all = true;
        for (const char c : ch) {
          all = all && fallback_ids_[static_cast<unsigned char>(c)] >= 0;
        }
        if (all) {
          for (const char c : ch) {
            add(fallback_ids_[static_cast<unsigned char>(c)], 1);
          }
          continue;
        }
      }
      if (options_.has_unk) {
        if (unk_len > 0 && !options_.fuse_unk) {
          add(unk_id_, unk_len);
          unk_len = 0;
        }
        unk_len += static_cast<int32_t>(len);
      }
    }
    if (unk_len > 0) {
      add(unk_id_, unk_len);
    }
  }
  if (!symbols.empty()) {
    symbols.back().next = -1;
  }

  auto& heap = scratch.heap;
  heap.clear();
  uint32_t rank = 0;
  int32_t merged = 0;
  for (size_t k = 0; k + 1 < symbols.size(); ++k) {
    if (find_merge(symbols[k].id, symbols[k + 1].id, rank, merged)) {
      heap.push_back(Candidate{rank, static_cast<int32_t>(k), merged});
    }
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) {
      continue;
    }
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    if (!find_merge(left.id, right.id, rank, merged) || merged != top.id) {
      continue; // stale: one side has changed since it was queued
    }
    left.id = top.id;
    left.len += right.len;
    left.next = right.next;
    symbols[right_pos].len = 0;
    if (right.next >= 0) {
      symbols[right.next].prev = top.pos;
    }
    if (left.prev >= 0 &&
        find_merge(symbols[left.prev].id, left.id, rank, merged)) {
      heap.push_back(Candidate{rank, left.prev, merged});
      std::push_heap(heap.begin(), heap.end());
    }
    if (left.next >= 0 &&
        find_merge(left.id, symbols[left.next].id, rank, merged)) {
      heap.push_back(Candidate{rank, top.pos, merged});
      std::push_heap(heap.begin(), heap.end());
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) {
      out.push_back(s.id);
    }
  }
}

void BpeModel::tokenize(
    std::string_view word, std::vector<int64_t>& ids) const {
  if (word.empty()) {
    return;
  }
  if (options_.ignore_merges) {
    const int32_t id = byte_level_ ? model_keys_.get(word) : vocab_.get(word);
    if (id >= 0) {
      ids.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  thread_local std::vector<int32_t> merged;
  merged.clear();
  merge_word(word, merged);
  ids.insert(ids.end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(std::string(word), merged);
    }
  }
}

} // namespace torchtp::detail
