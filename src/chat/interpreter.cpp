#include "chat/interpreter.h"

#include "chat/js_text.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <ctime>

namespace torchtp::chat {

using Kind = Value::Kind;

Value Scope::lookup(const std::string& name) const {
  for (const Scope* s = this; s != nullptr; s = s->parent) {
    auto it = s->variables.find(name);
    if (it != s->variables.end()) {
      return it->second;
    }
  }
  return Value();
}

namespace {

struct BreakSignal {};
struct ContinueSignal {};

// Type errors carry the line of the construct that failed. Builtins,
// which know no line, raise LineError and the evaluator adds it.
struct LineError {
  std::string message;
};

[[noreturn]] void type_error(const std::string& message) {
  throw LineError{message};
}

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
  type_error(
      std::string("cannot compare a ") + kind_name(a.kind) + " with a " +
      kind_name(b.kind));
}

// Python's slice on a sequence of n items (the reference's `slice`).
std::vector<size_t> slice_indices(
    int64_t n, const Value& start_v, const Value& stop_v, const Value& step_v) {
  for (const Value* v : {&start_v, &stop_v, &step_v}) {
    if (!v->is(Kind::kInteger) && !v->is(Kind::kUndefined)) {
      type_error("slice bounds must be integers");
    }
  }
  const int64_t step =
      step_v.is(Kind::kUndefined) ? 1 : static_cast<int64_t>(step_v.number);
  if (step == 0) {
    type_error("slice step cannot be zero");
  }
  int64_t start, stop;
  if (step > 0) {
    start =
        start_v.is(Kind::kUndefined) ? 0 : static_cast<int64_t>(start_v.number);
    stop =
        stop_v.is(Kind::kUndefined) ? n : static_cast<int64_t>(stop_v.number);
    start = start < 0 ? std::max<int64_t>(n + start, 0) : std::min(start, n);
    stop = stop < 0 ? std::max<int64_t>(n + stop, 0) : std::min(stop, n);
  } else {
    start = start_v.is(Kind::kUndefined) ? n - 1
                                         : static_cast<int64_t>(start_v.number);
    stop =
        stop_v.is(Kind::kUndefined) ? -1 : static_cast<int64_t>(stop_v.number);
    start =
        start < 0 ? std::max<int64_t>(n + start, -1) : std::min(start, n - 1);
    stop = stop < -1 ? std::max<int64_t>(n + stop, -1) : std::min(stop, n - 1);
  }
  std::vector<size_t> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    out.push_back(static_cast<size_t>(i));
  }
  return out;
}

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
    type_error(std::string(what) + " expects a string argument");
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
    type_error("split() separator must be a string or none");
  }
  if (max_v != nullptr && !max_v->is(Kind::kInteger)) {
    type_error("split() maxsplit must be an integer");
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
    type_error("split(): empty separator");
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
    type_error("replace() count must be an integer or none");
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
        type_error("startswith/endswith: tuple members must be strings");
      }
      if (match(x.string)) {
        return Value::from(true);
      }
    }
    return Value::from(false);
  }
  type_error("startswith/endswith expects a string or a tuple of strings");
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
    type_error(std::string(name) + " must be a boolean");
  }
  return v->boolean;
}

Value dictsort(const Object& o, const Arguments& args) {
  const bool case_sensitive = bool_arg(args, 0, "case_sensitive", false);
  const Value* by_v = args.get(1, "by");
  const std::string by =
      by_v != nullptr && by_v->is(Kind::kString) ? by_v->string : "key";
  if (by != "key" && by != "value") {
    type_error("dictsort: by must be 'key' or 'value'");
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
          type_error("get() expects a string key");
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
      type_error("cannot test " + name + " on a " + kind_name(v.kind));
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
  type_error("unknown test " + name);
}

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

class Interpreter {
 public:
  std::string block(const NodeList& nodes, Scope& scope) {
    std::string out;
    for (const auto& node : nodes) {
      const Value v = eval(*node, scope);
      if (!v.is(Kind::kNone) && !v.is(Kind::kUndefined)) {
        out += v.to_output();
      }
    }
    return out;
  }

  Value eval(const Node& n, Scope& scope) {
    try {
      return eval_node(n, scope);
    } catch (const LineError& e) {
      TORCH_CHECK_TYPE(
          false, "torchtp::ChatTemplate: line ", n.line, ": ", e.message);
    }
  }

 private:
  Value eval_node(const Node& n, Scope& scope);
  Value eval_binary(const Node& n, Scope& scope);
  Value eval_member(const Node& n, Scope& scope);
  Value eval_call(const Node& n, Scope& scope);
  Value eval_filter(const Node& n, Scope& scope);
  Value apply_filter(
      const std::string& name,
      const Value& v,
      const Arguments& args,
      Scope& scope);
  Value eval_for(const Node& n, Scope& scope);
  Value eval_set(const Node& n, Scope& scope);
  Value define_macro(const Node& n, Scope& scope);
  Arguments eval_arguments(const NodeList& args, Scope& scope) {
    Arguments out;
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKeywordArgument) {
        out.positional.push_back(eval(*a, scope));
      }
    }
    for (const auto& a : args) {
      if (a->kind == NodeKind::kKeywordArgument) {
        if (out.keyword.find(a->name) != nullptr) {
          type_error("keyword argument '" + a->name + "' given twice");
        }
        out.keyword.set(a->name, eval(*a->a[0], scope));
      }
    }
    return out;
  }
};

Value Interpreter::eval_node(const Node& n, Scope& scope) {
  switch (n.kind) {
    case NodeKind::kText:
    case NodeKind::kString:
      return Value::from(n.text);
    case NodeKind::kComment:
      return Value::none();
    case NodeKind::kInteger:
      return Value::integer(n.number);
    case NodeKind::kFloat:
      return Value::floating(n.number);
    case NodeKind::kIdentifier:
      return scope.lookup(n.name);
    case NodeKind::kArray:
    case NodeKind::kTuple: {
      Array items;
      for (const auto& e : n.a) {
        items.push_back(eval(*e, scope));
      }
      return Value::from(std::move(items));
    }
    case NodeKind::kObject: {
      Object o;
      for (size_t i = 0; i < n.a.size(); ++i) {
        const Value key = eval(*n.a[i], scope);
        if (!key.is(Kind::kString)) {
          type_error(
              std::string("dict keys must be strings, got a ") +
              kind_name(key.kind));
        }
        o.set(key.string, eval(*n.body[i], scope));
      }
      return Value::from(std::move(o));
    }
    case NodeKind::kMember:
      return eval_member(n, scope);
    case NodeKind::kCall:
      return eval_call(n, scope);
    case NodeKind::kUnary: {
      const Value v = eval(*n.a[0], scope);
      if (n.name == "not") {
        return Value::from(!v.truthy());
      }
      if (!v.is_numeric() && !v.is(Kind::kBool)) {
        type_error("unary " + n.name + " on a " + kind_name(v.kind));
      }
      const double x = v.is(Kind::kBool) ? (v.boolean ? 1 : 0) : v.number;
      const double r = n.name == "-" ? -x : x;
      return v.is(Kind::kFloat) ? Value::floating(r) : Value::integer(r);
    }
    case NodeKind::kBinary:
      return eval_binary(n, scope);
    case NodeKind::kFilter:
      return eval_filter(n, scope);
    case NodeKind::kTest: {
      const Value v = eval(*n.a[0], scope);
      return Value::from(run_test(n.name, v, nullptr) != n.negated);
    }
    case NodeKind::kSelect:
      return eval(*n.a[1], scope).truthy() ? eval(*n.a[0], scope) : Value();
    case NodeKind::kTernary:
      return eval(*n.a[0], scope).truthy() ? eval(*n.a[1], scope)
                                           : eval(*n.a[2], scope);
    case NodeKind::kIf:
      return Value::from(
          block(eval(*n.a[0], scope).truthy() ? n.body : n.orelse, scope));
    case NodeKind::kFor:
      return eval_for(n, scope);
    case NodeKind::kSet:
      return eval_set(n, scope);
    case NodeKind::kMacro:
      return define_macro(n, scope);
    case NodeKind::kFilterBlock: {
      const Value text = Value::from(block(n.body, scope));
      return apply_filter(n.name, text, eval_arguments(n.a, scope), scope);
    }
    case NodeKind::kBreak:
      throw BreakSignal{};
    case NodeKind::kContinue:
      throw ContinueSignal{};
    case NodeKind::kSlice:
    case NodeKind::kKeywordArgument:
      break;
  }
  type_error("misplaced expression");
}

Value Interpreter::eval_binary(const Node& n, Scope& scope) {
  const std::string& op = n.name;
  const Value left = eval(*n.a[0], scope);
  if (op == "and") {
    return left.truthy() ? eval(*n.a[1], scope) : left;
  }
  if (op == "or") {
    return left.truthy() ? left : eval(*n.a[1], scope);
  }
  const Value right = eval(*n.a[1], scope);
  if (op == "==") {
    return Value::from(loose_equal(left, right));
  }
  if (op == "!=") {
    return Value::from(!loose_equal(left, right));
  }
  const bool membership = op == "in" || op == "not in";
  if (left.is(Kind::kUndefined) || right.is(Kind::kUndefined)) {
    if (right.is(Kind::kUndefined) && membership) {
      return Value::from(op == "not in");
    }
    type_error("cannot apply " + op + " to an undefined value");
  }
  if (left.is(Kind::kNone) || right.is(Kind::kNone)) {
    type_error("cannot apply " + op + " to none");
  }
  if (op == "~") {
    return Value::from(left.to_js_string() + right.to_js_string());
  }
  if (op == "**" && (left.is_numeric() || left.is(Kind::kBool)) &&
      (right.is_numeric() || right.is(Kind::kBool))) {
    // Booleans are 0 and 1 here.
    const double a = js_to_number(left), b = js_to_number(right);
    if (a == 0 && b < 0) {
      type_error("0 cannot be raised to a negative power");
    }
    const double r = std::pow(a, b);
    if (!std::isfinite(r)) {
      type_error("exponentiation result is not a finite real number");
    }
    return left.is(Kind::kFloat) || right.is(Kind::kFloat) || b < 0
               ? Value::floating(r)
               : Value::integer(r);
  }
  if (left.is_numeric() && right.is_numeric()) {
    const double a = left.number, b = right.number;
    const bool fl = left.is(Kind::kFloat) || right.is(Kind::kFloat);
    const auto number = [fl](double r) {
      return fl ? Value::floating(r) : Value::integer(r);
    };
    if (op == "+")
      return number(a + b);
    if (op == "-")
      return number(a - b);
    if (op == "*")
      return number(a * b);
    if (op == "/")
      return Value::floating(a / b);
    if (op == "//")
      return number(std::floor(a / b));
    if (op == "%")
      return number(std::fmod(a, b));
    if (op == "<")
      return Value::from(a < b);
    if (op == ">")
      return Value::from(a > b);
    if (op == "<=")
      return Value::from(a <= b);
    if (op == ">=")
      return Value::from(a >= b);
  } else if (left.is(Kind::kArray) && right.is(Kind::kArray)) {
    // Lists add; a list is never looked for in a list (the reference
    // raises there).
    if (op == "+") {
      Array out = *left.array;
      out.insert(out.end(), right.array->begin(), right.array->end());
      return Value::from(std::move(out));
    }
  } else if (right.is(Kind::kArray) && membership) {
    bool found = false;
    for (const Value& x : *right.array) {
      found = found || strict_equal(x, left);
    }
    return Value::from(found == (op == "in"));
  }
  if (op == "+" && (left.is(Kind::kString) || right.is(Kind::kString))) {
    return Value::from(left.to_js_string() + right.to_js_string());
  }
  if (membership && left.is(Kind::kString) && right.is(Kind::kString)) {
    const bool found = right.string.find(left.string) != std::string::npos;
    return Value::from(found == (op == "in"));
  }
  if (membership && left.is(Kind::kString) && right.is(Kind::kObject)) {
    const bool found = right.object->find(left.string) != nullptr;
    return Value::from(found == (op == "in"));
  }
  type_error(
      "unsupported operator " + op + " between a " + kind_name(left.kind) +
      " and a " + kind_name(right.kind));
}

Value Interpreter::eval_member(const Node& n, Scope& scope) {
  const Value object = eval(*n.a[0], scope);
  const Node& prop = *n.a[1];
  if (n.computed && prop.kind == NodeKind::kSlice) {
    const Value start = prop.a[0] ? eval(*prop.a[0], scope) : Value();
    const Value stop = prop.a[1] ? eval(*prop.a[1], scope) : Value();
    const Value step = prop.a[2] ? eval(*prop.a[2], scope) : Value();
    if (object.is(Kind::kArray)) {
      Array out;
      for (size_t i : slice_indices(
               static_cast<int64_t>(object.array->size()), start, stop, step)) {
        out.push_back((*object.array)[i]);
      }
      return Value::from(std::move(out));
    }
    if (object.is(Kind::kString)) {
      const auto cps = code_points(object.string);
      std::string out;
      for (size_t i :
           slice_indices(static_cast<int64_t>(cps.size()), start, stop, step)) {
        out += cps[i];
      }
      return Value::from(out);
    }
    type_error(std::string("cannot slice a ") + kind_name(object.kind));
  }
  Value key;
  if (n.computed) {
    key = eval(prop, scope);
  } else if (prop.kind == NodeKind::kInteger) {
    key = Value::integer(prop.number);
  } else {
    key = Value::from(prop.name);
  }
  if (object.is_mapping()) {
    if (!key.is(Kind::kString)) {
      type_error(
          std::string("a mapping's key must be a string, got a ") +
          kind_name(key.kind));
    }
    if (const Value* v = object.object->find(key.string)) {
      return *v;
    }
    return object.is(Kind::kObject) ? builtin_member(object, key.string)
                                    : Value();
  }
  if (object.is(Kind::kArray) || object.is(Kind::kString)) {
    if (key.is(Kind::kInteger)) {
      // Array.prototype.at: negative indices count from the end.
      if (object.is(Kind::kArray)) {
        const auto size = static_cast<int64_t>(object.array->size());
        int64_t i = static_cast<int64_t>(key.number);
        i = i < 0 ? i + size : i;
        return i >= 0 && i < size ? (*object.array)[i] : Value();
      }
      const auto cps = code_points(object.string);
      const auto size = static_cast<int64_t>(cps.size());
      int64_t i = static_cast<int64_t>(key.number);
      i = i < 0 ? i + size : i;
      return i >= 0 && i < size ? Value::from(cps[i]) : Value();
    }
    if (key.is(Kind::kString)) {
      return builtin_member(object, key.string);
    }
    type_error(
        std::string("cannot index a ") + kind_name(object.kind) + " with a " +
        kind_name(key.kind));
  }
  if (!key.is(Kind::kString)) {
    type_error(
        std::string("cannot index a ") + kind_name(object.kind) + " with a " +
        kind_name(key.kind));
  }
  return Value();
}

Value Interpreter::eval_call(const Node& n, Scope& scope) {
  Arguments args = eval_arguments(n.body, scope);
  const Value fn = eval(*n.a[0], scope);
  if (!fn.is(Kind::kFunction)) {
    type_error(std::string("cannot call a ") + kind_name(fn.kind));
  }
  return (*fn.function)(args, scope);
}

Value Interpreter::eval_filter(const Node& n, Scope& scope) {
  const Value v = eval(*n.a[0], scope);
  const Arguments args = eval_arguments(n.body, scope);
  return apply_filter(n.name, v, args, scope);
}

Value Interpreter::apply_filter(
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
        type_error("tojson: indent must be an integer");
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
          type_error("tojson: separators must be two strings");
        }
        o.custom_separators = true;
        o.item_separator = (*sep->array)[0].string;
        o.key_separator = (*sep->array)[1].string;
      } else if (!sep->is(Kind::kNone)) {
        type_error("tojson: separators must be two strings");
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
        type_error("join: separator must be a string");
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
          type_error(name + " expects an attribute name");
        }
      }
      const Value* test = args.get(i++, nullptr);
      const Value* arg = args.get(i, nullptr);
      if (test != nullptr && !test->is(Kind::kString)) {
        type_error(name + " expects a test name");
      }
      Array out;
      for (const Value& x : a) {
        Value subject = x;
        if (by_attribute) {
          if (!x.is_mapping()) {
            type_error(name + " applies to a list of mappings");
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
          type_error("unknown test '" + test->string + "' in " + name);
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
        type_error("map is supported with attribute= only");
      }
      const Value* dflt = args.keyword.find("default");
      Array out;
      for (const Value& x : a) {
        if (!x.is_mapping()) {
          type_error("map(attribute=...) applies to a list of mappings");
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
        type_error("join: separator must be a string");
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
        type_error("indent: width must be an integer");
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
  type_error("filter " + name + " does not apply to a " + kind_name(v.kind));
}

Value Interpreter::eval_for(const Node& n, Scope& scope) {
  Scope loop_scope(&scope);
  const Node* iterable_node = n.a[1].get();
  const Node* condition = nullptr;
  if (iterable_node->kind == NodeKind::kSelect) {
    condition = iterable_node->a[1].get();
    iterable_node = iterable_node->a[0].get();
  }
  Value iterable = eval(*iterable_node, loop_scope);
  if (iterable.is(Kind::kObject)) {
    Array keys;
    for (const auto& [k, v] : iterable.object->items) {
      keys.push_back(Value::from(k));
    }
    iterable = Value::from(std::move(keys));
  }
  if (!iterable.is(Kind::kArray)) {
    type_error(std::string("cannot loop over a ") + kind_name(iterable.kind));
  }
  const Node& target = *n.a[0];
  const auto bind = [&](Scope& s, const Value& item) {
    if (target.kind == NodeKind::kIdentifier) {
      s.set(target.name, item);
      return;
    }
    if (!item.is(Kind::kArray)) {
      type_error(std::string("cannot unpack a ") + kind_name(item.kind));
    }
    if (item.array->size() != target.a.size()) {
      type_error(
          std::string("too ") +
          (target.a.size() > item.array->size() ? "few" : "many") +
          " items to unpack");
    }
    for (size_t j = 0; j < target.a.size(); ++j) {
      if (target.a[j]->kind != NodeKind::kIdentifier) {
        type_error("a loop target must be names");
      }
      s.set(target.a[j]->name, (*item.array)[j]);
    }
  };
  Array items;
  for (const Value& item : *iterable.array) {
    if (condition != nullptr) {
      Scope test_scope(&loop_scope);
      bind(test_scope, item);
      if (!eval(*condition, test_scope).truthy()) {
        continue;
      }
    }
    items.push_back(item);
  }
  std::string out;
  bool no_iteration = true;
  const auto count = static_cast<double>(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const auto k = static_cast<double>(i);
    Object loop;
    loop.set("index", Value::integer(k + 1));
    loop.set("index0", Value::integer(k));
    loop.set("revindex", Value::integer(count - k));
    loop.set("revindex0", Value::integer(count - k - 1));
    loop.set("first", Value::from(i == 0));
    loop.set("last", Value::from(i + 1 == items.size()));
    loop.set("length", Value::integer(count));
    loop.set("previtem", i > 0 ? items[i - 1] : Value());
    loop.set("nextitem", i + 1 < items.size() ? items[i + 1] : Value());
    loop_scope.set("loop", Value::from(std::move(loop)));
    bind(loop_scope, items[i]);
    try {
      out += block(n.body, loop_scope);
    } catch (const ContinueSignal&) {
      continue;
    } catch (const BreakSignal&) {
      break;
    }
    no_iteration = false;
  }
  if (no_iteration) {
    out += block(n.orelse, loop_scope);
  }
  return Value::from(out);
}

Value Interpreter::eval_set(const Node& n, Scope& scope) {
  const Value rhs =
      n.a[1] ? eval(*n.a[1], scope) : Value::from(block(n.body, scope));
  const Node& target = *n.a[0];
  if (target.kind == NodeKind::kIdentifier) {
    scope.set(target.name, rhs);
  } else if (target.kind == NodeKind::kTuple) {
    if (!rhs.is(Kind::kArray)) {
      type_error(std::string("cannot unpack a ") + kind_name(rhs.kind));
    }
    if (rhs.array->size() != target.a.size()) {
      type_error(
          std::string("too ") +
          (target.a.size() > rhs.array->size() ? "few" : "many") +
          " items to unpack in set");
    }
    for (size_t i = 0; i < target.a.size(); ++i) {
      if (target.a[i]->kind != NodeKind::kIdentifier) {
        type_error("set can unpack to names only");
      }
      scope.set(target.a[i]->name, (*rhs.array)[i]);
    }
  } else {
    const Value object = eval(*target.a[0], scope);
    if (!object.is(Kind::kNamespace)) {
      type_error(
          "cannot assign an attribute of a " +
          std::string(kind_name(object.kind)) + " (only of a namespace)");
    }
    object.object->set(target.a[1]->name, rhs);
  }
  return Value::none();
}

Value Interpreter::define_macro(const Node& n, Scope& scope) {
  const Node* macro = &n;
  Interpreter* self = this;
  scope.set(
      n.name,
      Value::from(Function(
          [macro, self](const Arguments& args, Scope& caller) -> Value {
            Scope s(&caller);
            std::vector<const Node*> defaults;
            Object keywords = args.keyword;
            for (size_t i = 0; i < macro->a.size(); ++i) {
              const Node& p = *macro->a[i];
              const Value* v =
                  i < args.positional.size() ? &args.positional[i] : nullptr;
              Value bound;
              if (v == nullptr) {
                auto it = std::find_if(
                    keywords.items.begin(), keywords.items.end(),
                    [&](const auto& kv) { return kv.first == p.name; });
                if (it != keywords.items.end()) {
                  bound = it->second;
                  keywords.items.erase(it);
                } else if (p.kind == NodeKind::kKeywordArgument) {
                  defaults.push_back(&p);
                }
              } else {
                bound = *v;
              }
              s.set(p.name, bound);
            }
            if (!keywords.items.empty()) {
              type_error(
                  "macro '" + macro->name + "' takes no keyword argument '" +
                  keywords.items.front().first + "'");
            }
            if (args.positional.size() > macro->a.size()) {
              type_error(
                  "macro '" + macro->name + "' takes at most " +
                  std::to_string(macro->a.size()) + " arguments");
            }
            for (const Node* p : defaults) {
              s.set(p->name, self->eval(*p->a[0], s));
            }
            return Value::from(self->block(macro->body, s));
          })));
  return Value::none();
}

} // namespace

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
          type_error("strftime_now expects a format string");
        }
        return Value::from(strftime_now(f->string));
      })));
  scope.set(
      "range", Value::from(Function([](const Arguments& args, Scope&) -> Value {
        for (const Value& a : args.positional) {
          if (!a.is(Kind::kInteger)) {
            type_error("range expects integers");
          }
        }
        if (args.positional.empty() || args.positional.size() > 3) {
          type_error("range expects 1 to 3 arguments");
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
          type_error("range() step must not be zero");
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
          type_error("namespace expects at most one positional argument");
        }
        if (args.positional.size() == 1) {
          const Value& source = args.positional[0];
          if (source.is(Kind::kObject)) {
            entries = *source.object;
          } else if (source.is(Kind::kArray)) {
            for (const Value& pair : *source.array) {
              if (!pair.is(Kind::kArray) || pair.array->size() != 2 ||
                  !(*pair.array)[0].is(Kind::kString)) {
                type_error("namespace expects [key, value] pairs");
              }
              entries.set((*pair.array)[0].string, (*pair.array)[1]);
            }
          } else {
            type_error("namespace expects a mapping or pairs");
          }
        }
        for (const auto& [k, v] : args.keyword.items) {
          entries.set(k, v);
        }
        return Value::from(std::move(entries), Kind::kNamespace);
      })));
}

std::string render(const NodeList& program, Scope& scope) {
  Interpreter interpreter;
  try {
    return interpreter.block(program, scope);
  } catch (const BreakSignal&) {
    TORCH_CHECK_TYPE(
        false, "torchtp::ChatTemplate: {% break %} outside a loop");
  } catch (const ContinueSignal&) {
    TORCH_CHECK_TYPE(
        false, "torchtp::ChatTemplate: {% continue %} outside a loop");
  }
}

} // namespace torchtp::chat
