#pragma once

// The values a chat template computes with, as @huggingface/jinja has them:
// undefined and none apart, integers apart from floats, mappings that keep
// their insertion order, namespaces (the one mutable kind), functions.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torchtp::chat {

struct Value;
struct Scope;
using Array = std::vector<Value>;

/// Keys in insertion order, as a JavaScript Map keeps them (tojson prints
/// them in that order).
struct Object {
  std::vector<std::pair<std::string, Value>> items;

  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

/// Positional and keyword arguments of a call.
struct Arguments {
  std::vector<Value> positional;
  Object keyword;

  /// The argument at `index`, else the keyword `name`, else null.
  const Value* get(size_t index, const char* name) const;
};

/// A builtin or a macro; `caller` is the scope of the call (macros see
/// their caller's variables, as in @huggingface/jinja).
using Function = std::function<Value(const Arguments&, Scope& caller)>;

struct Value {
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInteger,
    kFloat,
    kString,
    kArray,
    kObject,
    kNamespace,
    kFunction,
  };

  Kind kind = Kind::kUndefined;
  bool boolean = false;
  double number = 0; // integers too: JavaScript numbers, as the reference
  std::string string;
  std::shared_ptr<const Array> array;
  std::shared_ptr<Object> object; // kObject and kNamespace
  std::shared_ptr<const Function> function;

  static Value none();
  static Value from(bool b);
  static Value integer(double i);
  static Value floating(double f);
  static Value from(std::string s);
  static Value from(Array a);
  static Value from(Object o, Kind kind = Kind::kObject);
  static Value from(Function f);
  /// JSON to a value: integral numbers become integers, as they do in
  /// JavaScript (where 1.0 is 1). Nesting deeper than kMaxDepth is refused:
  /// messages come from clients, and every walk over a value recurses.
  static Value from_json(const nlohmann::ordered_json& j, int depth = 0);
  static constexpr int kMaxDepth = 256;

  bool is(Kind k) const {
    return kind == k;
  }
  bool is_numeric() const {
    return kind == Kind::kInteger || kind == Kind::kFloat;
  }
  bool is_mapping() const {
    return kind == Kind::kObject || kind == Kind::kNamespace;
  }
  /// Jinja truthiness: empty strings, arrays and mappings are false.
  bool truthy() const;
  /// What `{{ value }}` prints (floats keep a ".0", booleans are
  /// "true"/"false", arrays and mappings print as JSON).
  std::string to_output() const;
  /// JavaScript's String(value): what `+` and `~` concatenate (a list
  /// joins its members with ","; a mapping raises c10::TypeError).
  std::string to_js_string() const;
};

const char* kind_name(Value::Kind kind);

/// An operation on values of the wrong kind. Raised where no line is known
/// (value code, builtins); the interpreter turns it into c10::TypeError
/// naming the line of the construct that failed.
struct KindError {
  std::string message;
};
[[noreturn]] void kind_error(const std::string& message);

/// JavaScript's ===, as the reference compares list members (in, unique,
/// equalto): numbers by value, lists and mappings by identity.
bool strict_equal(const Value& a, const Value& b);
/// The number JavaScript's == converts a primitive to.
double js_to_number(const Value& v);
/// JavaScript's ==, which the reference evaluates: 1 == true, '1' == 1, a
/// list against a primitive as its string.
bool loose_equal(const Value& a, const Value& b);
/// The order of the reference's sort and dictsort: numbers (and booleans)
/// with numbers, strings with strings (folded unless case_sensitive).
int compare_values(const Value& a, const Value& b, bool case_sensitive);

struct JsonOptions {
  int indent = 0; // 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool custom_separators = false;
  std::string item_separator;
  std::string key_separator;
  // Undefined prints as "null" (tojson) or "undefined" (printing a list).
  bool undefined_as_null = true;
};

/// The tojson filter: Python's json.dumps layout as @huggingface/jinja
/// writes it (", " and ": ", or "," and newlines with an indent).
std::string to_json(const Value& v, const JsonOptions& options, int depth = 0);

} // namespace torchtp::chat
