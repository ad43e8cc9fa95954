# Helpers of the launcher tests (sourced): check NAME CONDITION... runs the
# condition and records PASS or FAIL; $out is shown on failure.
passed=0
failed=0

check() {
  local name=$1
  shift
  if "$@"; then
    echo "PASS: $name"
    passed=$((passed + 1))
  else
    echo "FAIL: $name"
    failed=$((failed + 1))
    [[ -n "${out:-}" ]] && printf '  output was:\n%s\n' "$out" | head -40
  fi
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
contains() { grep -qF -- "$2" <<<"$1"; }
not_contains() { ! contains "$1" "$2"; }
