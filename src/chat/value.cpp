#include "chat/value.h"

#include "chat/js_text.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace torchtp::chat {

const Value* Object::find(const std::string& key) const {
  for (const auto& [k, v] : items) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

void Object::set(const std::string& key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(key, std::move(value));
}

const Value* Arguments::get(size_t index, const char* name) const {
  if (index < positional.size()) {
    return &positional[index];
  }
  return name != nullptr ? keyword.find(name) : nullptr;
}

Value Value::none() {
  Value v;
  v.kind = Kind::kNone;
  return v;
}

Value Value::from(bool b) {
  Value v;
  v.kind = Kind::kBool;
  v.boolean = b;
  return v;
}

Value Value::integer(double i) {
  Value v;
  v.kind = Kind::kInteger;
  v.number = i;
  return v;
}

Value Value::floating(double f) {
  Value v;
  v.kind = Kind::kFloat;
  v.number = f;
  return v;
}

Value Value::from(std::string s) {
  Value v;
  v.kind = Kind::kString;
  v.string = std::move(s);
  return v;
}

Value Value::from(Array a) {
  Value v;
  v.kind = Kind::kArray;
  v.array = std::make_shared<const Array>(std::move(a));
  return v;
}

Value Value::from(Object o, Kind kind) {
  Value v;
  v.kind = kind;
  v.object = std::make_shared<Object>(std::move(o));
  return v;
}

Value Value::from(Function f) {
  Value v;
  v.kind = Kind::kFunction;
  v.function = std::make_shared<const Function>(std::move(f));
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j, int depth) {
  TORCH_CHECK_VALUE(
      depth <= kMaxDepth,
      "torchtp::ChatTemplate: the messages nest deeper "
      "than ",
      kMaxDepth, " levels");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return none();
    case nlohmann::ordered_json::value_t::boolean:
      return from(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return integer(static_cast<double>(j.get<int64_t>()));
    case nlohmann::ordered_json::value_t::number_unsigned:
      return integer(static_cast<double>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: {
      const double d = j.get<double>();
      return std::isfinite(d) && std::trunc(d) == d ? integer(d) : floating(d);
    }
    case nlohmann::ordered_json::value_t::string:
      return from(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array a;
      for (const auto& e : j) {
        a.push_back(from_json(e, depth + 1));
      }
      return from(std::move(a));
    }
    case nlohmann::ordered_json::value_t::object: {
      Object o;
      for (const auto& [k, e] : j.items()) {
        o.set(k, from_json(e, depth + 1));
      }
      return from(std::move(o));
    }
    default:
      TORCH_CHECK(
          false, "torchtp::ChatTemplate: unsupported JSON value (",
          j.type_name(), ")");
  }
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return boolean;
    case Kind::kInteger:
    case Kind::kFloat:
      return number != 0 && !std::isnan(number);
    case Kind::kString:
      return !string.empty();
    case Kind::kArray:
      return !array->empty();
    case Kind::kObject:
      return !object->items.empty();
    case Kind::kNamespace:
    case Kind::kFunction:
      return true;
  }
  return false;
}

std::string Value::to_js_string() const {
  switch (kind) {
    case Kind::kBool:
      return boolean ? "true" : "false";
    case Kind::kInteger:
    case Kind::kFloat:
      return js_number(number);
    case Kind::kString:
      return string;
    case Kind::kArray: {
      // Array.prototype.toString over the reference's values: members
      // joined with ",", each as the reference prints it.
      std::string out;
      for (size_t i = 0; i < array->size(); ++i) {
        const Value& e = (*array)[i];
        out += i > 0 ? "," : "";
        // The reference's none holds JavaScript's undefined.
        out += e.is(Kind::kNone) || e.is(Kind::kUndefined) ? "undefined"
                                                           : e.to_output();
      }
      return out;
    }
    case Kind::kObject:
    case Kind::kNamespace:
      // The reference would print "[object Map]": no prompt wants that.
      kind_error(
          "cannot turn a mapping into part of a string (the reference "
          "writes \"[object Map]\"); use tojson");
    default:
      kind_error(
          std::string("cannot turn a ") + kind_name(kind) +
          " into part of a string");
  }
}

std::string Value::to_output() const {
  switch (kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return "";
    case Kind::kFloat:
      if (number == 0 && std::signbit(number)) {
        return "-0.0";
      }
      if (std::isfinite(number) && std::trunc(number) == number &&
          std::fabs(number) < 1e21) {
        // toFixed(1): the double's exact digits, not the shortest ones.
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.1f", number);
        return buf;
      }
      return js_number(number);
    case Kind::kArray:
    case Kind::kObject:
    case Kind::kNamespace: {
      JsonOptions o;
      o.undefined_as_null = false;
      return to_json(*this, o);
    }
    case Kind::kFunction:
      TORCH_CHECK(false, "torchtp::ChatTemplate: cannot print a function");
    default:
      return to_js_string();
  }
}

void kind_error(const std::string& message) {
  throw KindError{message};
}

using Kind = Value::Kind;

// ===, as the reference compares list members and unique/equalto.
bool strict_equal(const Value& a, const Value& b) {
  if (a.is_numeric() && b.is_numeric()) {
    return a.number == b.number;
  }
  if (a.kind != b.kind) {
    return false;
  }
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kBool:
      return a.boolean == b.boolean;
    case Kind::kString:
      return a.string == b.string;
    case Kind::kArray:
      return a.array == b.array;
    case Kind::kObject:
    case Kind::kNamespace:
      return a.object == b.object;
    case Kind::kFunction:
      return a.function == b.function;
    default:
      return false;
  }
}

// The number JavaScript's == converts a primitive to.
double js_to_number(const Value& v) {
  if (v.is(Kind::kBool)) {
    return v.boolean ? 1 : 0;
  }
  if (v.is_numeric()) {
    return v.number;
  }
  const std::string s = js_trim(v.string);
  if (s.empty()) {
    return 0;
  }
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() ? d : NAN;
}

// ==: JavaScript's loose equality on the underlying values, which is what
// the reference evaluates (so 1 == true and '1' == 1).
bool loose_equal(const Value& a, const Value& b) {
  const bool a_nullish = a.is(Kind::kUndefined) || a.is(Kind::kNone);
  const bool b_nullish = b.is(Kind::kUndefined) || b.is(Kind::kNone);
  if (a_nullish || b_nullish) {
    return a_nullish && b_nullish;
  }
  const auto primitive = [](const Value& v) {
    return v.is(Kind::kBool) || v.is_numeric() || v.is(Kind::kString);
  };
  if (!primitive(a) && !primitive(b)) {
    return strict_equal(a, b);
  }
  // A list or mapping against a primitive: JavaScript compares the
  // primitive with the object's string ("1,2" or "[object Map]").
  if (!primitive(a) || !primitive(b)) {
    const Value& object = primitive(a) ? b : a;
    const Value& other = primitive(a) ? a : b;
    const Value text = Value::from(
        object.is(Kind::kArray) ? object.to_js_string() : "[object Map]");
    return loose_equal(text, other);
  }
  if (a.is(Kind::kString) && b.is(Kind::kString)) {
    return a.string == b.string;
  }
  return js_to_number(a) == js_to_number(b);
}

// The sort order of the reference's sort / dictsort.
int compare_values(const Value& a, const Value& b, bool case_sensitive) {
  if (a.is(Kind::kNone) && b.is(Kind::kNone)) {
    return 0;
  }
  if (a.is(Kind::kUndefined) && b.is(Kind::kUndefined)) {
    return 0;
  }
  const auto numeric_like = [](const Value& v) {
    return v.is_numeric() || v.is(Kind::kBool);
  };
  if (numeric_like(a) && numeric_like(b)) {
    const double x = js_to_number(a), y = js_to_number(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is(Kind::kString) && b.is(Kind::kString)) {
    std::string x = a.string, y = b.string;
    if (!case_sensitive) {
      x = js_lower(x);
      y = js_lower(y);
    }
    // JavaScript compares UTF-16 code units; for text without surrogate
    // pairs that is the order of the code points, which UTF-8 bytes keep.
    return x < y ? -1 : x > y ? 1 : 0;
  }
  kind_error(
      std::string("cannot compare a ") + kind_name(a.kind) + " with a " +
      kind_name(b.kind));
}

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::kUndefined:
      return "undefined";
    case Value::Kind::kNone:
      return "none";
    case Value::Kind::kBool:
      return "boolean";
    case Value::Kind::kInteger:
      return "integer";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "string";
    case Value::Kind::kArray:
      return "list";
    case Value::Kind::kObject:
      return "mapping";
    case Value::Kind::kNamespace:
      return "namespace";
    case Value::Kind::kFunction:
      return "function";
  }
  return "?";
}

std::string to_json(const Value& v, const JsonOptions& options, int depth) {
  std::string item_sep = options.indent ? "," : ", ";
  std::string key_sep = ": ";
  if (options.custom_separators) {
    item_sep = options.item_separator;
    key_sep = options.key_separator;
  }
  const std::string unit(options.indent, ' ');
  std::string base = "\n";
  for (int i = 0; i < depth; ++i) {
    base += unit;
  }
  const std::string child = base + unit;
  switch (v.kind) {
    case Value::Kind::kNone:
      return "null";
    case Value::Kind::kUndefined:
      return options.undefined_as_null ? "null" : "undefined";
    case Value::Kind::kBool:
    case Value::Kind::kInteger:
    case Value::Kind::kFloat:
      return std::isfinite(v.number) || v.kind == Value::Kind::kBool
                 ? v.to_js_string()
                 : "null";
    case Value::Kind::kString:
      return js_json_quote(v.string, options.ensure_ascii);
    case Value::Kind::kArray: {
      if (v.array->empty()) {
        return "[]";
      }
      std::string out = "[";
      bool first = true;
      for (const Value& e : *v.array) {
        out += first ? "" : item_sep;
        out += options.indent ? child : "";
        out += to_json(e, options, depth + 1);
        first = false;
      }
      return out + (options.indent ? base : "") + "]";
    }
    case Value::Kind::kObject:
    case Value::Kind::kNamespace: {
      if (v.object->items.empty()) {
        return "{}";
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.object->items) {
        items.push_back(&item);
      }
      if (options.sort_keys) {
        // Python's json.dumps order (code points; UTF-8 bytes keep it), not
        // the reference's localeCompare.
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) {
          return a->first < b->first;
        });
      }
      std::string out = "{";
      bool first = true;
      for (const auto* item : items) {
        out += first ? "" : item_sep;
        out += options.indent ? child : "";
        out += js_json_quote(item->first, options.ensure_ascii) + key_sep +
               to_json(item->second, options, depth + 1);
        first = false;
      }
      return out + (options.indent ? base : "") + "}";
    }
    case Value::Kind::kFunction:
      TORCH_CHECK(
          false, "torchtp::ChatTemplate: cannot convert a function to JSON");
  }
  return "";
}

} // namespace torchtp::chat
