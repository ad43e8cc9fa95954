#include "chat/builtins.h"

#include "chat/js_text.h"
#include "chat/scope.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <ctime>

namespace torchtp::chat {

namespace {

// Filters of @huggingface/jinja that chat templates use, plus Jinja's
// `select` / `reject` with a test name (Llama 3.1 filters its builtin tools
// with `reject('equalto', ...)`).
constexpr std::array kFilters = {
    "abs",     "capitalize", "default", "dictsort", "first",      "float",
    "indent",  "int",        "items",   "join",     "keys",       "last",
    "length",  "list",       "lower",   "map",      "reject",     "rejectattr",
    "replace", "reverse",    "safe",    "select",   "selectattr", "sort",
    "string",  "title",      "tojson",  "trim",     "unique",     "upper",
    "values"};
constexpr std::array kTests = {"boolean",  "callable",  "defined",  "eq",
                               "equalto",  "even",      "false",    "integer",
                               "iterable", "lower",     "mapping",  "none",
                               "number",   "odd",       "sequence", "string",
                               "true",     "undefined", "upper"};
constexpr std::array kMethods = {
    "capitalize", "dictsort", "endswith", "get",    "items", "keys",
    "lower",      "lstrip",   "replace",  "rstrip", "split", "startswith",
    "strip",      "title",    "upper",    "values"};
constexpr std::array kFunctions = {
    "namespace", "raise_exception", "range", "strftime_now"};

template <size_t N>
bool contains(const std::array<const char*, N>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

template <size_t N>
std::string join(const std::array<const char*, N>& names) {
  std::string out;
  for (const char* n : names) {
    out += out.empty() ? "" : ", ";
    out += n;
  }
  return out;
}

} // namespace

bool is_known_filter(const std::string& name) {
  return contains(kFilters, name);
}
bool is_known_test(const std::string& name) {
  return contains(kTests, name);
}
bool is_known_method(const std::string& name) {
  return contains(kMethods, name);
}
bool is_known_function(const std::string& name) {
  return contains(kFunctions, name);
}
std::string known_filters() {
  return join(kFilters);
}
std::string known_tests() {
  return join(kTests);
}
std::string known_methods() {
  return join(kMethods);
}
std::string known_functions() {
  return join(kFunctions);
}

namespace {

using Kind = Value::Kind;

// Python's str.strip(chars) family, on code points.
std::string strip_chars(
    const std::string& s, const std::string& chars, bool left, bool right) {
  const std::vector<std::string> set = code_points(chars);
  const auto in_set = [&](const std::string& cp) {
    return std::find(set.begin(), set.end(), cp) != set.end();
  };
  const std::vector<std::string> cps = code_points(s);
  size_t b = 0, e = cps.size();
  while (left && b < e && in_set(cps[b])) {
    ++b;
  }
  while (right && e > b && in_set(cps[e - 1])) {
    --e;
  }
  std::string out;
  for (size_t i = b; i < e; ++i) {
    out += cps[i];
  }
  return out;
}

const Value& string_arg(
    const Arguments& args, size_t i, const char* name, const char* what) {
  const Value* v = args.get(i, name);
  if (v == nullptr || !v->is(Kind::kString)) {
    kind_error(std::string(what) + " expects a string argument");
  }
  return *v;
}

// A strip-family method: JavaScript's trim without an argument; with one,
// Python's meaning (strip those characters) rather than the reference's,
// which ignores the argument and strips whitespace.
Value strip_method(
    const std::string& s, const Arguments& args, bool left, bool right) {
  const Value* chars = args.get(0, "chars");
  if (chars != nullptr && chars->is(Kind::kString)) {
    return Value::from(strip_chars(s, chars->string, left, right));
  }
  if (left && right) {
    return Value::from(js_trim(s));
  }
  return Value::from(left ? js_trim_start(s) : js_trim_end(s));
}

std::string title_case(const std::string& s) {
  // /\b\w/g upper-cased: the first ASCII word character after a non-word.
  std::string out = s;
  const auto word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  for (size_t i = 0; i < out.size(); ++i) {
    if (word(out[i]) && (i == 0 || !word(out[i - 1]))) {
      out[i] =
          static_cast<char>(std::toupper(static_cast<unsigned char>(out[i])));
    }
  }
  return out;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) {
    return s;
  }
  size_t i = 0;
  decode_utf8(s, i);
  return js_upper(s.substr(0, i)) + s.substr(i);
}

Value split_method(const std::string& s, const Arguments& args) {
  const Value* sep = args.get(0, "sep");
  const Value* max_v = args.get(1, "maxsplit");
  if (sep != nullptr && !sep->is(Kind::kString) && !sep->is(Kind::kNone)) {
    kind_error("split() separator must be a string or none");
  }
  if (max_v != nullptr && !max_v->is(Kind::kInteger)) {
    kind_error("split() maxsplit must be an integer");
  }
  const int64_t maxsplit =
      max_v == nullptr ? -1 : static_cast<int64_t>(max_v->number);
  Array parts;
  if (sep == nullptr || sep->is(Kind::kNone)) {
    const std::string text = js_trim_start(s);
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i;
      while (j < text.size() && js_space_at(text, j) == 0) {
        size_t k = j;
        decode_utf8(text, k);
        j = k;
      }
      if (maxsplit != -1 && static_cast<int64_t>(parts.size()) >= maxsplit) {
        parts.push_back(Value::from(text.substr(i)));
        break;
      }
      parts.push_back(Value::from(text.substr(i, j - i)));
      i = j;
      while (size_t n = js_space_at(text, i)) {
        i += n;
      }
    }
    return Value::from(std::move(parts));
  }
  const std::string& d = sep->string;
  if (d.empty()) {
    kind_error("split(): empty separator");
  }
  size_t start = 0;
  while (true) {
    const size_t at = s.find(d, start);
    if (at == std::string::npos ||
        (maxsplit != -1 && static_cast<int64_t>(parts.size()) >= maxsplit)) {
      parts.push_back(Value::from(s.substr(start)));
      break;
    }
    parts.push_back(Value::from(s.substr(start, at - start)));
    start = at + d.size();
  }
  return Value::from(std::move(parts));
}

Value replace_method(const std::string& s, const Arguments& args) {
  const std::string& from = string_arg(args, 0, "old", "replace()").string;
  const std::string& to = string_arg(args, 1, "new", "replace()").string;
  const Value* count_v = args.get(2, "count");
  if (count_v != nullptr && !count_v->is(Kind::kInteger) &&
      !count_v->is(Kind::kNone)) {
    kind_error("replace() count must be an integer or none");
  }
  int64_t remaining =
      count_v == nullptr || count_v->is(Kind::kNone) || count_v->number < 0
          ? INT64_MAX
          : static_cast<int64_t>(count_v->number);
  std::string out;
  if (from.empty()) {
    // An empty pattern matches between code points and at both ends.
    const auto cps = code_points(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (remaining > 0) {
        out += to;
        --remaining;
      }
      if (i < cps.size()) {
        out += cps[i];
      }
    }
    return Value::from(out);
  }
  size_t start = 0;
  while (remaining > 0) {
    const size_t at = s.find(from, start);
    if (at == std::string::npos) {
      break;
    }
    out += s.substr(start, at - start) + to;
    start = at + from.size();
    --remaining;
  }
  return Value::from(out + s.substr(start));
}

Value starts_or_ends(const std::string& s, const Arguments& args, bool ends) {
  const Value* p = args.get(0, nullptr);
  const auto match = [&](const std::string& x) {
    return ends ? s.size() >= x.size() &&
                      s.compare(s.size() - x.size(), x.size(), x) == 0
                : s.compare(0, x.size(), x) == 0;
  };
  if (p != nullptr && p->is(Kind::kString)) {
    return Value::from(match(p->string));
  }
  if (p != nullptr && p->is(Kind::kArray)) {
    for (const Value& x : *p->array) {
      if (!x.is(Kind::kString)) {
        kind_error("startswith/endswith: tuple members must be strings");
      }
      if (match(x.string)) {
        return Value::from(true);
      }
    }
    return Value::from(false);
  }
  kind_error("startswith/endswith expects a string or a tuple of strings");
}

Value items_of(const Object& o) {
  Array out;
  for (const auto& [k, v] : o.items) {
    out.push_back(Value::from(Array{Value::from(k), v}));
  }
  return Value::from(std::move(out));
}

bool bool_arg(const Arguments& args, size_t i, const char* name, bool dflt) {
  const Value* v = args.get(i, name);
  if (v == nullptr) {
    return dflt;
  }
  if (!v->is(Kind::kBool)) {
    kind_error(std::string(name) + " must be a boolean");
  }
  return v->boolean;
}

Value dictsort(const Object& o, const Arguments& args) {
  const bool case_sensitive = bool_arg(args, 0, "case_sensitive", false);
  const Value* by_v = args.get(1, "by");
  const std::string by =
      by_v != nullptr && by_v->is(Kind::kString) ? by_v->string : "key";
  if (by != "key" && by != "value") {
    kind_error("dictsort: by must be 'key' or 'value'");
  }
  const bool reverse = bool_arg(args, 2, "reverse", false);
  Array items = *items_of(o).array;
  const size_t index = by == "key" ? 0 : 1;
  std::stable_sort(
      items.begin(), items.end(), [&](const Value& a, const Value& b) {
        const int r = compare_values(
            (*a.array)[index], (*b.array)[index], case_sensitive);
        return reverse ? r > 0 : r < 0;
      });
  return Value::from(std::move(items));
}

} // namespace

// The methods and properties of strings, mappings and lists.
Value builtin_member(const Value& object, const std::string& name) {
  const auto method = [](auto f) {
    return Value::from(Function(
        [f](const Arguments& args, Scope&) -> Value { return f(args); }));
  };
  if (object.is(Kind::kString)) {
    const std::string s = object.string;
    if (name == "length") {
      return Value::integer(static_cast<double>(utf16_length(s)));
    }
    if (name == "upper") {
      return method([s](const Arguments&) { return Value::from(js_upper(s)); });
    }
    if (name == "lower") {
      return method([s](const Arguments&) { return Value::from(js_lower(s)); });
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const bool left = name != "rstrip", right = name != "lstrip";
      return method([s, left, right](const Arguments& a) {
        return strip_method(s, a, left, right);
      });
    }
    if (name == "title") {
      return method(
          [s](const Arguments&) { return Value::from(title_case(s)); });
    }
    if (name == "capitalize") {
      return method(
          [s](const Arguments&) { return Value::from(capitalize(s)); });
    }
    if (name == "startswith" || name == "endswith") {
      const bool ends = name == "endswith";
      return method(
          [s, ends](const Arguments& a) { return starts_or_ends(s, a, ends); });
    }
    if (name == "split") {
      return method([s](const Arguments& a) { return split_method(s, a); });
    }
    if (name == "replace") {
      return method([s](const Arguments& a) { return replace_method(s, a); });
    }
    return Value();
  }
  if (object.is(Kind::kArray)) {
    if (name == "length") {
      return Value::integer(static_cast<double>(object.array->size()));
    }
    return Value();
  }
  if (object.is(Kind::kObject)) {
    const std::shared_ptr<Object> o = object.object;
    if (name == "get") {
      return method([o](const Arguments& a) {
        const Value* key = a.get(0, "key");
        if (key == nullptr || !key->is(Kind::kString)) {
          kind_error("get() expects a string key");
        }
        if (const Value* v = o->find(key->string)) {
          return *v;
        }
        const Value* dflt = a.get(1, "default");
        return dflt != nullptr ? *dflt : Value::none();
      });
    }
    if (name == "items") {
      return method([o](const Arguments&) { return items_of(*o); });
    }
    if (name == "keys" || name == "values") {
      const bool keys = name == "keys";
      return method([o, keys](const Arguments&) {
        Array out;
        for (const auto& [k, v] : o->items) {
          out.push_back(keys ? Value::from(k) : v);
        }
        return Value::from(std::move(out));
      });
    }
    if (name == "dictsort") {
      return method([o](const Arguments& a) { return dictsort(*o, a); });
    }
  }
  return Value();
}

bool run_test(const std::string& name, const Value& v, const Value* arg) {
  if (name == "defined")
    return !v.is(Kind::kUndefined);
  if (name == "undefined")
    return v.is(Kind::kUndefined);
  if (name == "none")
    return v.is(Kind::kNone);
  if (name == "string")
    return v.is(Kind::kString);
  if (name == "boolean")
    return v.is(Kind::kBool);
  if (name == "true")
    return v.is(Kind::kBool) && v.boolean;
  if (name == "false")
    return v.is(Kind::kBool) && !v.boolean;
  if (name == "number")
    return v.is_numeric();
  if (name == "integer")
    return v.is(Kind::kInteger);
  if (name == "mapping")
    return v.is(Kind::kObject);
  if (name == "iterable")
    return v.is(Kind::kArray) || v.is(Kind::kString);
  if (name == "sequence") {
    return v.is(Kind::kArray) || v.is(Kind::kObject) || v.is(Kind::kString);
  }
  if (name == "callable")
    return v.is(Kind::kFunction);
  if (name == "odd" || name == "even") {
    if (!v.is(Kind::kInteger)) {
      kind_error("cannot test " + name + " on a " + kind_name(v.kind));
    }
    const bool odd = std::fmod(v.number, 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  if (name == "lower" || name == "upper") {
    return v.is(Kind::kString) &&
           v.string ==
               (name == "lower" ? js_lower(v.string) : js_upper(v.string));
  }
  if (name == "equalto" || name == "eq") {
    return strict_equal(v, arg != nullptr ? *arg : Value());
  }
  kind_error("unknown test " + name);
}

namespace {

std::string strftime_now(const std::string& format) {
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  static const char* kLongMonths[] = {
      "January", "February", "March",     "April",   "May",      "June",
      "July",    "August",   "September", "October", "November", "December"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  const auto pad2 = [](int n) {
    return (n < 10 ? "0" : "") + std::to_string(n);
  };
  // The directives the reference implements; any other stays as written.
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 >= format.size()) {
      out += format[i];
      continue;
    }
    const char d = format[i + 1];
    switch (d) {
      case 'Y':
        out += std::to_string(tm.tm_year + 1900);
        break;
      case 'm':
        out += pad2(tm.tm_mon + 1);
        break;
      case 'd':
        out += pad2(tm.tm_mday);
        break;
      case 'b':
        out += kMonths[tm.tm_mon];
        break;
      case 'B':
        out += kLongMonths[tm.tm_mon];
        break;
      case 'H':
        out += pad2(tm.tm_hour);
        break;
      case 'M':
        out += pad2(tm.tm_min);
        break;
      case '%':
        out += '%';
        break;
      default:
        out += format[i];
        continue;
    }
    ++i;
  }
  return out;
}

} // namespace

Value apply_filter(
    const std::string& name,
    const Value& v,
    const Arguments& args,
    Scope& scope) {
  if (name == "safe") {
    return v;
  }
  if (name == "tojson") {
    JsonOptions o;
    if (const Value* indent = args.keyword.find("indent")) {
      if (!indent->is(Kind::kInteger) && !indent->is(Kind::kNone)) {
        kind_error("tojson: indent must be an integer");
      }
      o.indent =
          indent->is(Kind::kInteger) ? static_cast<int>(indent->number) : 0;
    }
    o.ensure_ascii = bool_arg(args, SIZE_MAX, "ensure_ascii", false);
    o.sort_keys = bool_arg(args, SIZE_MAX, "sort_keys", false);
    if (const Value* sep = args.keyword.find("separators")) {
      if (sep->is(Kind::kArray)) {
        if (sep->array->size() != 2 || !(*sep->array)[0].is(Kind::kString) ||
            !(*sep->array)[1].is(Kind::kString)) {
          kind_error("tojson: separators must be two strings");
        }
        o.custom_separators = true;
        o.item_separator = (*sep->array)[0].string;
        o.key_separator = (*sep->array)[1].string;
      } else if (!sep->is(Kind::kNone)) {
        kind_error("tojson: separators must be two strings");
      }
    }
    return Value::from(to_json(v, o));
  }
  if (name == "default") {
    const Value* dflt = args.get(0, "default_value");
    const bool boolean = bool_arg(args, 1, "boolean", false);
    if (v.is(Kind::kUndefined) || (boolean && !v.truthy())) {
      return dflt != nullptr ? *dflt : Value::from(std::string());
    }
    return v;
  }
  if (name == "length") {
    if (v.is(Kind::kString)) {
      return Value::integer(static_cast<double>(utf16_length(v.string)));
    }
    if (v.is(Kind::kArray)) {
      return Value::integer(static_cast<double>(v.array->size()));
    }
    if (v.is(Kind::kObject)) {
      return Value::integer(static_cast<double>(v.object->items.size()));
    }
  }
  if (name == "string") {
    if (v.is(Kind::kArray)) {
      JsonOptions o;
      o.undefined_as_null = false;
      return Value::from(to_json(v, o));
    }
    if (v.is(Kind::kString) || v.is_numeric() || v.is(Kind::kBool)) {
      return Value::from(v.to_output());
    }
  }
  if (name == "int" || name == "float") {
    const bool to_int = name == "int";
    const Value* dflt = args.get(0, "default");
    if (v.is(Kind::kString)) {
      // parseInt / parseFloat: the longest numeric prefix after spaces.
      const std::string s = js_trim_start(v.string);
      char* end = nullptr;
      const double d =
          to_int ? static_cast<double>(std::strtoll(s.c_str(), &end, 10))
                 : std::strtod(s.c_str(), &end);
      if (end == s.c_str()) {
        if (dflt != nullptr) {
          return *dflt;
        }
        return to_int ? Value::integer(0) : Value::floating(0);
      }
      return to_int ? Value::integer(d) : Value::floating(d);
    }
    if (v.is_numeric()) {
      if (!args.positional.empty() || !args.keyword.items.empty()) {
        return v;
      }
      return to_int ? Value::integer(std::floor(v.number))
                    : Value::floating(v.number);
    }
    if (v.is(Kind::kBool)) {
      return to_int ? Value::integer(v.boolean) : Value::floating(v.boolean);
    }
  }
  if (v.is(Kind::kArray)) {
    const Array& a = *v.array;
    if (name == "list")
      return v;
    if (name == "first")
      return a.empty() ? Value() : a.front();
    if (name == "last")
      return a.empty() ? Value() : a.back();
    if (name == "reverse")
      return Value::from(Array(a.rbegin(), a.rend()));
    if (name == "join") {
      const Value* sep = args.get(0, "separator");
      if (sep != nullptr && !sep->is(Kind::kString)) {
        kind_error("join: separator must be a string");
      }
      std::string out;
      for (size_t i = 0; i < a.size(); ++i) {
        out += i > 0 && sep != nullptr ? sep->string : "";
        // Array.prototype.join over the members' JavaScript values:
        // none and undefined are empty, numbers as JavaScript prints them,
        // a list joins its members with ",".
        const Value& e = a[i];
        if (!e.is(Kind::kNone) && !e.is(Kind::kUndefined)) {
          out += e.is(Kind::kString) || e.is(Kind::kBool) ? e.to_output()
                                                          : e.to_js_string();
        }
      }
      return Value::from(out);
    }
    if (name == "unique") {
      Array out;
      for (const Value& x : a) {
        bool seen = false;
        for (const Value& y : out) {
          seen = seen || strict_equal(x, y);
        }
        if (!seen) {
          out.push_back(x);
        }
      }
      return Value::from(std::move(out));
    }
    if (name == "sort") {
      const bool reverse = bool_arg(args, 0, "reverse", false);
      const bool case_sensitive = bool_arg(args, 1, "case_sensitive", false);
      const Value* attribute = args.get(2, "attribute");
      const auto key = [&](const Value& x) -> Value {
        if (attribute == nullptr || attribute->is(Kind::kNone)) {
          return x;
        }
        std::string path = attribute->is(Kind::kInteger)
                               ? js_number(attribute->number)
                               : attribute->string;
        Value cur = x;
        size_t start = 0;
        while (true) {
          const size_t dot = path.find('.', start);
          const std::string part = path.substr(start, dot - start);
          if (cur.is_mapping()) {
            const Value* next = cur.object->find(part);
            cur = next != nullptr ? *next : Value();
          } else if (cur.is(Kind::kArray)) {
            char* end = nullptr;
            const long i = std::strtol(part.c_str(), &end, 10);
            cur = end != part.c_str() && i >= 0 &&
                          static_cast<size_t>(i) < cur.array->size()
                      ? (*cur.array)[i]
                      : Value();
          } else {
            return Value();
          }
          if (dot == std::string::npos) {
            return cur;
          }
          start = dot + 1;
        }
      };
      Array out = a;
      std::stable_sort(
          out.begin(), out.end(), [&](const Value& x, const Value& y) {
            const int r = compare_values(key(x), key(y), case_sensitive);
            return reverse ? r > 0 : r < 0;
          });
      return Value::from(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" ||
        name == "reject") {
      const bool by_attribute = name.size() > 6; // selectattr, rejectattr
      const bool keep = name.rfind("select", 0) == 0;
      size_t i = 0;
      const Value* attr = nullptr;
      if (by_attribute) {
        attr = args.get(i++, nullptr);
        if (attr == nullptr || !attr->is(Kind::kString)) {
          kind_error(name + " expects an attribute name");
        }
      }
      const Value* test = args.get(i++, nullptr);
      const Value* arg = args.get(i, nullptr);
      if (test != nullptr && !test->is(Kind::kString)) {
        kind_error(name + " expects a test name");
      }
      Array out;
      for (const Value& x : a) {
        Value subject = x;
        if (by_attribute) {
          if (!x.is_mapping()) {
            kind_error(name + " applies to a list of mappings");
          }
          const Value* field = x.object->find(attr->string);
          if (field == nullptr) {
            if (!keep) {
              out.push_back(x);
            }
            continue;
          }
          subject = *field;
        }
        bool pass;
        if (test == nullptr) {
          pass = subject.truthy();
        } else if (
            test->string == "defined" || test->string == "undefined" ||
            test->string == "none" || test->string == "string" ||
            test->string == "number" || test->string == "equalto" ||
            test->string == "eq" || test->string == "true" ||
            test->string == "false" || test->string == "mapping" ||
            test->string == "iterable" || test->string == "sequence" ||
            test->string == "boolean" || test->string == "integer" ||
            test->string == "odd" || test->string == "even" ||
            test->string == "lower" || test->string == "upper" ||
            test->string == "callable") {
          pass = run_test(test->string, subject, arg);
        } else {
          kind_error("unknown test '" + test->string + "' in " + name);
        }
        if (pass == keep) {
          out.push_back(x);
        }
      }
      return Value::from(std::move(out));
    }
    if (name == "map") {
      const Value* attr = args.keyword.find("attribute");
      if (attr == nullptr || !attr->is(Kind::kString)) {
        kind_error("map is supported with attribute= only");
      }
      const Value* dflt = args.keyword.find("default");
      Array out;
      for (const Value& x : a) {
        if (!x.is_mapping()) {
          kind_error("map(attribute=...) applies to a list of mappings");
        }
        const Value* field = x.object->find(attr->string);
        out.push_back(
            field != nullptr  ? *field
            : dflt != nullptr ? *dflt
                              : Value());
      }
      return Value::from(std::move(out));
    }
  }
  if (v.is(Kind::kString)) {
    const std::string& s = v.string;
    if (name == "upper")
      return Value::from(js_upper(s));
    if (name == "lower")
      return Value::from(js_lower(s));
    if (name == "title")
      return Value::from(title_case(s));
    if (name == "capitalize")
      return Value::from(capitalize(s));
    if (name == "trim")
      return Value::from(js_trim(s));
    if (name == "list") {
      Array out;
      for (auto& cp : code_points(s)) {
        out.push_back(Value::from(cp));
      }
      return Value::from(std::move(out));
    }
    if (name == "join") {
      const Value* sep = args.get(0, "separator");
      if (sep == nullptr) {
        return v;
      }
      if (!sep->is(Kind::kString)) {
        kind_error("join: separator must be a string");
      }
      std::string out;
      const auto cps = code_points(s);
      for (size_t i = 0; i < cps.size(); ++i) {
        out += (i > 0 ? sep->string : "") + cps[i];
      }
      return Value::from(out);
    }
    if (name == "indent") {
      const Value* width_v = args.get(0, "width");
      if (width_v != nullptr && !width_v->is(Kind::kInteger)) {
        kind_error("indent: width must be an integer");
      }
      const std::string pad(
          width_v != nullptr ? static_cast<size_t>(width_v->number) : 4, ' ');
      const Value* first_v = args.get(1, "first");
      const Value* blank_v = args.get(2, "blank");
      const bool first = first_v != nullptr && first_v->truthy();
      const bool blank = blank_v != nullptr && blank_v->truthy();
      std::string out;
      size_t start = 0, index = 0;
      while (true) {
        const size_t nl = s.find('\n', start);
        const std::string line = s.substr(start, nl - start);
        const bool skip = (!first && index == 0) || (!blank && line.empty());
        out += (index > 0 ? "\n" : "") + (skip ? "" : pad) + line;
        if (nl == std::string::npos) {
          break;
        }
        start = nl + 1;
        ++index;
      }
      return Value::from(out);
    }
    if (name == "replace") {
      return replace_method(s, args);
    }
  }
  if (v.is_numeric() && name == "abs") {
    return v.is(Kind::kFloat) ? Value::floating(std::fabs(v.number))
                              : Value::integer(std::fabs(v.number));
  }
  if (v.is(Kind::kObject)) {
    if (name == "items")
      return items_of(*v.object);
    const Value method = builtin_member(v, name);
    if (method.is(Kind::kFunction)) {
      return (*method.function)(args, scope);
    }
  }
  kind_error("filter " + name + " does not apply to a " + kind_name(v.kind));
}

void add_globals(Scope& scope) {
  scope.set("true", Value::from(true));
  scope.set("false", Value::from(false));
  scope.set("none", Value::none());
  scope.set("True", Value::from(true));
  scope.set("False", Value::from(false));
  scope.set("None", Value::none());
  scope.set(
      "raise_exception",
      Value::from(Function([](const Arguments& args, Scope&) -> Value {
        const std::string message =
            args.positional.empty() ? "" : args.positional[0].to_output();
        TORCH_CHECK_VALUE(false, "torchtp::ChatTemplate: ", message);
      })));
  scope.set(
      "strftime_now",
      Value::from(Function([](const Arguments& args, Scope&) -> Value {
        const Value* f = args.get(0, nullptr);
        if (f == nullptr || !f->is(Kind::kString)) {
          kind_error("strftime_now expects a format string");
        }
        return Value::from(strftime_now(f->string));
      })));
  scope.set(
      "range", Value::from(Function([](const Arguments& args, Scope&) -> Value {
        for (const Value& a : args.positional) {
          if (!a.is(Kind::kInteger)) {
            kind_error("range expects integers");
          }
        }
        if (args.positional.empty() || args.positional.size() > 3) {
          kind_error("range expects 1 to 3 arguments");
        }
        double start = 0, stop, step = 1;
        if (args.positional.size() == 1) {
          stop = args.positional[0].number;
        } else {
          start = args.positional[0].number;
          stop = args.positional[1].number;
        }
        if (args.positional.size() == 3) {
          step = args.positional[2].number;
        }
        if (step == 0) {
          kind_error("range() step must not be zero");
        }
        Array out;
        for (double i = start; step > 0 ? i < stop : i > stop; i += step) {
          out.push_back(Value::integer(i));
        }
        return Value::from(std::move(out));
      })));
  scope.set(
      "namespace",
      Value::from(Function([](const Arguments& args, Scope&) -> Value {
        Object entries;
        if (args.positional.size() > 1) {
          kind_error("namespace expects at most one positional argument");
        }
        if (args.positional.size() == 1) {
          const Value& source = args.positional[0];
          if (source.is(Kind::kObject)) {
            entries = *source.object;
          } else if (source.is(Kind::kArray)) {
            for (const Value& pair : *source.array) {
              if (!pair.is(Kind::kArray) || pair.array->size() != 2 ||
                  !(*pair.array)[0].is(Kind::kString)) {
                kind_error("namespace expects [key, value] pairs");
              }
              entries.set((*pair.array)[0].string, (*pair.array)[1]);
            }
          } else {
            kind_error("namespace expects a mapping or pairs");
          }
        }
        for (const auto& [k, v] : args.keyword.items) {
          entries.set(k, v);
        }
        return Value::from(std::move(entries), Kind::kNamespace);
      })));
}

} // namespace torchtp::chat
