#!/usr/bin/env bash
# Tests of the GitHub Action (main.js, post.js) without GitHub: the runner is
# simulated (INPUT_* variables, GITHUB_OUTPUT and GITHUB_STATE files, state
# handed from the main step to the post step as STATE_*), and `cachesync` is a
# fake script on PATH that records its arguments and environment.
#
#   bash examples/github-actions/test.sh
#
# Needs bash and node (20 or later). Prints "N passed, N failed" last; exits
# non-zero when anything failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "node is required"; echo "0 passed, 1 failed"; exit 1; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/bin" "$T/fake" "$T/home" "$T/ws" "$T/tmp" "$T/elsewhere"

# ---------------------------------------------------------------- the fake
cat >"$T/bin/cachesync" <<'FAKE'
#!/bin/sh
# Fake cachesync: records argv and environment, behaves as FAKE_PULL / FAKE_PUSH say.
dir=${FAKE_DIR:?}
printf '%s\n' "$@" >"$dir/argv"
echo "$1" >>"$dir/calls"
{
  echo "TOKEN=${CACHESYNC_CLIENT__TOKEN-<unset>}"
  echo "CA=${CACHESYNC_CLIENT__CA_FILE-<unset>}"
  echo "OUTPUT=${GITHUB_OUTPUT-<unset>}"
  echo "INPUTS=$(env | grep -c '^INPUT_')"
  echo "EMPTY_CACHESYNC=$(env | grep -c '^CACHESYNC_[A-Z_]*=$')"
} >"$dir/env"
key=; prev=; fail_on_miss=no
for a; do
  [ "$prev" = --key ] && key=$a
  [ "$a" = --fail-on-miss ] && fail_on_miss=yes
  prev=$a
done
out() { [ -n "${GITHUB_OUTPUT-}" ] && printf 'cache-hit=%s\nrestored-key=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"; }
json() { printf '{"hit":%s,"cache_hit":%s,"restored_key":"%s","files":3,"bytes":2048,"bytes_sent":0,"bytes_received":1024,"duration_ms":1500}\n' "$1" "$2" "$3"; }
case $1 in
pull)
  case ${FAKE_PULL:-hit} in
  hit) out true "$key"; json true true "$key" ;;
  fallback) out false "$FAKE_RESTORED"; json true false "$FAKE_RESTORED" ;;
  text) out true "$key"; echo "restored $key (as text)" ;;
  miss)
    if [ $fail_on_miss = yes ]; then echo "error: no cache for key $key" >&2; exit 1; fi
    out false ""; json false false "" ;;
  unreachable) echo "error: connecting to the mirror: connection refused" >&2; exit 1 ;;
  config) echo "error: unknown setting" >&2; exit 2 ;;
  esac ;;
push)
  case ${FAKE_PUSH:-ok} in
  ok) printf '{"key":"%s","generation":4,"files":3,"bytes":2048,"bytes_sent":512,"bytes_received":0,"duration_ms":900,"unchanged":false}\n' "$key" ;;
  unchanged) echo "nothing changed since the pull of $key" ;;
  refused) echo "error: permission denied: the token is read-only" >&2; exit 1 ;;
  esac ;;
*) echo "unexpected: $*" >&2; exit 3 ;;
esac
FAKE
chmod +x "$T/bin/cachesync"
cp "$T/bin/cachesync" "$T/elsewhere/my-cachesync"

# ---------------------------------------------------------------- helpers
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() {
  failed=$((failed + 1))
  echo "FAIL $1"
  [ -n "${2-}" ] && printf '%s\n' "$2" | sed 's/^/     /'
  return 0
}
check() { # check NAME COMMAND...: passes when COMMAND succeeds
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name" "$(tail -n 20 "$T/step.log" 2>/dev/null)"; fi
}

# Values a step wrote to a file command (both name=value and name<<DELIM forms), as name=value lines.
filecmd() {
  local line name delim value l first
  [ -f "$1" ] || return 0
  while IFS= read -r line; do
    if [[ $line == *'<<'* ]]; then
      name=${line%%<<*} delim=${line#*<<} value='' first=1
      while IFS= read -r l && [[ $l != "$delim" ]]; do
        if ((first)); then value=$l first=0; else value+=$'\n'$l; fi
      done
      printf '%s=%s\n' "$name" "$value"
    elif [[ $line == *=* ]]; then
      printf '%s\n' "$line"
    fi
  done <"$1"
}
value() { filecmd "$1" | grep "^$2=" | tail -n 1 | cut -d= -f2-; }
count() { filecmd "$1" | grep -c "^$2="; }

# Default inputs, as the runner sets them from action.yml.
defaults=(INPUT_MIRROR= INPUT_KEY= INPUT_RESTORE-KEYS= INPUT_PATH= INPUT_PROFILE=generic INPUT_TOKEN=
  INPUT_CA-FILE= INPUT_FAIL-ON-MISS=false INPUT_SAVE=true INPUT_CACHESYNC-PATH=)
common=(INPUT_MIRROR=https://mirror.test:7415 INPUT_KEY=gomod/Linux-X64/main
  "INPUT_RESTORE-KEYS=gomod/Linux-X64/main
gomod/Linux-X64/"
  INPUT_PATH="$T/home/go/pkg/mod" INPUT_PROFILE=go-mod INPUT_TOKEN=s3cret)

# run_main [VAR=value...]: a fresh job, then the main step. Exit code in $rc.
# (The step runs in the workspace, as the runner does; the single quotes are meant.)
# shellcheck disable=SC2016
run_main() {
  rm -f "$T/fake/"* "$T/output" "$T/state"
  : >"$T/output"
  : >"$T/state"
  env -i PATH="$T/bin:/usr/bin:/bin:$(dirname "$(command -v node)")" HOME="$T/home" \
    RUNNER_TEMP="$T/tmp" GITHUB_WORKSPACE="$T/ws" GITHUB_OUTPUT="$T/output" GITHUB_STATE="$T/state" \
    FAKE_DIR="$T/fake" "${defaults[@]}" "$@" \
    bash -c 'cd "$GITHUB_WORKSPACE" && exec node "$0"' "$here/main.js" >"$T/step.log" 2>&1
  rc=$?
}

# run_post [VAR=value...]: the post step of the same job: same inputs, the
# state the main step saved as STATE_*, a new GITHUB_OUTPUT.
# shellcheck disable=SC2016
run_post() {
  local states=() line
  while IFS= read -r line; do states+=("STATE_$line"); done < <(filecmd "$T/state")
  rm -f "$T/fake/"*
  : >"$T/post-output"
  env -i PATH="$T/bin:/usr/bin:/bin:$(dirname "$(command -v node)")" HOME="$T/home" \
    RUNNER_TEMP="$T/tmp" GITHUB_WORKSPACE="$T/ws" GITHUB_OUTPUT="$T/post-output" GITHUB_STATE="$T/post-state" \
    FAKE_DIR="$T/fake" "${defaults[@]}" "${states[@]}" "$@" \
    bash -c 'cd "$GITHUB_WORKSPACE" && exec node "$0"' "$here/post.js" >"$T/step.log" 2>&1
  rc=$?
}

argv() { paste -sd' ' "$T/fake/argv" 2>/dev/null; }
fakeenv() { grep "^$1=" "$T/fake/env" | cut -d= -f2-; }
called() { [ -f "$T/fake/calls" ]; }
logged() { grep -qF -- "$1" "$T/step.log"; }

# ---------------------------------------------------------------- static checks
for f in lib.js main.js post.js; do
  check "node --check $f" node --check "$here/$f"
done

action=$here/action.yml
check "action.yml: using node24" grep -qE '^  using: node24$' "$action"
check "action.yml: main main.js, post post.js" bash -c "grep -qE '^  main: main.js$' '$action' && grep -qE '^  post: post.js$' '$action'"
check "action.yml: post-if success()" grep -qE '^  post-if: success\(\)$' "$action"
check "action.yml: outputs cache-hit and restored-key" bash -c "grep -qE '^  cache-hit:$' '$action' && grep -qE '^  restored-key:$' '$action'"

declared=$(sed -n '/^inputs:/,/^outputs:/p' "$action" | grep -E '^  [a-z-]+:$' | tr -d ' :' | sort)
used=$(cat "$here"/*.js | grep -oE "(input|boolInput|listInput)\('[a-z-]+'" | sed -E "s/.*'([a-z-]+)'/\1/" | sort -u)
check "inputs read by the JavaScript = inputs declared in action.yml" test "$declared" = "$used"
harness=$(printf '%s\n' "${defaults[@]}" | sed -E 's/^INPUT_([^=]*)=.*/\1/' | tr '[:upper:]' '[:lower:]' | sort)
check "this harness sets a default for every declared input" test "$declared" = "$harness"
check "action.yml defaults match the harness" bash -c "
  sed -n '/^inputs:/,/^outputs:/p' '$action' | grep -q \"default: 'false'\" &&
  sed -n '/^  profile:/,/^  [a-z-]*:\$/p' '$action' | grep -q 'default: generic' &&
  sed -n '/^  save:/,/^  [a-z-]*:\$/p' '$action' | grep -q \"default: 'true'\""

if python3 -c 'import yaml' 2>/dev/null; then
  check "YAML files parse" python3 - "$here"/*.yml <<'PY'
import sys, yaml
for f in sys.argv[1:]:
    with open(f) as fh:
        yaml.safe_load(fh)
PY
else
  echo "skip YAML parse check (python3 with PyYAML not available)"
fi

# ---------------------------------------------------------------- main: restore
run_main "${common[@]}"
check "hit: main exits 0" test "$rc" = 0
check "hit: pull argv" test "$(argv)" = "pull --mirror https://mirror.test:7415 --key gomod/Linux-X64/main --restore-key gomod/Linux-X64/main --restore-key gomod/Linux-X64/ --json $T/home/go/pkg/mod"
check "hit: cache-hit=true" test "$(value "$T/output" cache-hit)" = true
check "hit: restored-key" test "$(value "$T/output" restored-key)" = gomod/Linux-X64/main
check "hit: each output set once" test "$(count "$T/output" cache-hit)$(count "$T/output" restored-key)" = 11
check "hit: cachesync wrote its outputs to a private file, not the step's" bash -c "[ \"\$(grep '^OUTPUT=' '$T/fake/env' | cut -d= -f2-)\" != '$T/output' ] && [ -z \"\$(ls -A '$T/tmp')\" ]"
check "hit: token passed as CACHESYNC_CLIENT__TOKEN" test "$(fakeenv TOKEN)" = s3cret
check "hit: no INPUT_* variables reach cachesync" test "$(fakeenv INPUTS)" = 0
check "hit: token masked in the log" logged "::add-mask::s3cret"
check "hit: summary in the log" logged "Cache restored from gomod/Linux-X64/main (exact key)"
check "hit: state for post (key, path, profile, mirror, bin)" test \
  "$(value "$T/state" key)|$(value "$T/state" path)|$(value "$T/state" profile)|$(value "$T/state" mirror)|$(value "$T/state" bin)" = \
  "gomod/Linux-X64/main|$T/home/go/pkg/mod|go-mod|https://mirror.test:7415|cachesync"
check "hit: state save=true" test "$(value "$T/state" save)" = true
check "hit: token not saved in state" bash -c "! grep -q s3cret '$T/state'"
check "hit: no warning" bash -c "! grep -q '::warning::' '$T/step.log'"

run_main "${common[@]}" FAKE_PULL=fallback FAKE_RESTORED=gomod/Linux-X64/main INPUT_KEY=gomod/Linux-X64/feature-x
check "fallback: exits 0, cache-hit=false, restored-key=main" test \
  "$rc|$(value "$T/output" cache-hit)|$(value "$T/output" restored-key)" = "0|false|gomod/Linux-X64/main"
check "fallback: log says restore key" logged "(restore key)"

run_main "${common[@]}" FAKE_PULL=miss
check "miss: exits 0, cache-hit=false, restored-key empty" test \
  "$rc|$(value "$T/output" cache-hit)|$(value "$T/output" restored-key)" = "0|false|"
check "miss: no warning, a note" bash -c "! grep -q '::warning::' '$T/step.log' && grep -q 'No cache for' '$T/step.log'"

run_main "${common[@]}" FAKE_PULL=miss INPUT_FAIL-ON-MISS=true
check "miss + fail-on-miss: --fail-on-miss passed" bash -c "grep -qx -- --fail-on-miss '$T/fake/argv'"
check "miss + fail-on-miss: step fails with an error" bash -c "[ $rc = 1 ] && grep -q '::error::no cache restored' '$T/step.log'"
check "miss + fail-on-miss: outputs still set" test "$(value "$T/output" cache-hit)" = false

run_main "${common[@]}" FAKE_PULL=unreachable
check "unreachable: exits 0 with a warning" bash -c "[ $rc = 0 ] && grep -q '::warning::Cache not restored' '$T/step.log'"
check "unreachable: cachesync's error reaches the log" logged "connection refused"
check "unreachable: outputs false / empty" test "$(value "$T/output" cache-hit)|$(value "$T/output" restored-key)" = "false|"
check "unreachable: state saved anyway (post can still push)" test "$(value "$T/state" key)" = gomod/Linux-X64/main

run_main "${common[@]}" FAKE_PULL=config
check "configuration refused (exit 2): step fails" bash -c "[ $rc = 1 ] && grep -q '::error::cachesync pull refused' '$T/step.log'"

run_main "${common[@]}" FAKE_PULL=text
check "text output (no JSON): outputs from cachesync's GITHUB_OUTPUT lines" test \
  "$rc|$(value "$T/output" cache-hit)|$(value "$T/output" restored-key)" = "0|true|gomod/Linux-X64/main"
check "text output: printed to the log" logged "(as text)"

run_main "${common[@]}" INPUT_KEY='gomod/Linux-X64/feat+x'
check "invalid key: step fails before running cachesync" bash -c "[ $rc = 1 ] && ! [ -f '$T/fake/calls' ] && grep -q 'not a valid cache key' '$T/step.log'"

run_main "${common[@]}" INPUT_KEY=
check "missing key: step fails" bash -c "[ $rc = 1 ] && grep -q 'input \"key\" is required' '$T/step.log'"

run_main "${common[@]}" INPUT_SAVE=yes
check "save: yes (not a boolean): step fails" bash -c "[ $rc = 1 ] && grep -q 'must be true or false' '$T/step.log'"

run_main "${common[@]}" PATH="/usr/bin:/bin:$(dirname "$(command -v node)")"
check "no cachesync on PATH: step fails, says how to install" bash -c "[ $rc = 1 ] && grep -q 'not found. Install cachesync' '$T/step.log'"

run_main "${common[@]}" INPUT_CACHESYNC-PATH="$T/elsewhere/my-cachesync" PATH="/usr/bin:/bin:$(dirname "$(command -v node)")"
check "cachesync-path: that binary runs and is saved for post" test "$rc|$(value "$T/state" bin)" = "0|$T/elsewhere/my-cachesync"

run_main "${common[@]}" INPUT_CACHESYNC-PATH="$T/elsewhere/missing"
check "cachesync-path not executable: step fails" bash -c "[ $rc = 1 ] && grep -q 'is not an executable file' '$T/step.log'"

run_main "${common[@]}" INPUT_MIRROR= CACHESYNC_CLIENT__MIRROR=http://from-env:7415
check "no mirror input: no --mirror flag (cachesync's own setting)" bash -c "[ $rc = 0 ] && ! grep -qx -- --mirror '$T/fake/argv'"

run_main "${common[@]}" INPUT_PATH='~/go/pkg/mod'
check "path ~/...: expanded to HOME" test "$(tail -n 1 "$T/fake/argv")" = "$T/home/go/pkg/mod"
run_main "${common[@]}" INPUT_PATH=.cache/x
check "relative path: taken from the workspace" test "$(tail -n 1 "$T/fake/argv")" = "$T/ws/.cache/x"

run_main "${common[@]}" $'INPUT_RESTORE-KEYS=\r\n  gomod/a/ \r\n\r\ngomod/b\r\n'
check "restore-keys: CRLF, blanks and spaces ignored" test "$(argv)" = "pull --mirror https://mirror.test:7415 --key gomod/Linux-X64/main --restore-key gomod/a/ --restore-key gomod/b --json $T/home/go/pkg/mod"

run_main "${common[@]}" INPUT_TOKEN= CACHESYNC_CLIENT__TOKEN=from-job-env
check "no token input: the job's CACHESYNC_CLIENT__TOKEN is used" test "$(fakeenv TOKEN)" = from-job-env
run_main "${common[@]}" INPUT_TOKEN= CACHESYNC_CLIENT__TOKEN= CACHESYNC_CLIENT__TOKEN_FILE=
check "empty CACHESYNC_* variables (unset secrets) are dropped" test "$(fakeenv TOKEN)|$(fakeenv EMPTY_CACHESYNC)" = "<unset>|0"
run_main "${common[@]}" INPUT_CA-FILE=certs/ca.pem
check "ca-file: CACHESYNC_CLIENT__CA_FILE, absolute" test "$(fakeenv CA)" = "$T/ws/certs/ca.pem"

# ---------------------------------------------------------------- post: save
mkdir -p "$T/home/go/pkg/mod"
run_main "${common[@]}"
run_post "${common[@]}"
check "post: exits 0" test "$rc" = 0
check "post: push argv" test "$(argv)" = "push --mirror https://mirror.test:7415 --key gomod/Linux-X64/main --profile go-mod --json $T/home/go/pkg/mod"
check "post: token passed, no INPUT_*" test "$(fakeenv TOKEN)|$(fakeenv INPUTS)" = "s3cret|0"
check "post: summary in the log" logged "Cache saved as gomod/Linux-X64/main (generation 4)"

run_main "${common[@]}"
run_post "${common[@]}" INPUT_KEY=gomod/other INPUT_PATH=/elsewhere INPUT_PROFILE=generic
check "post: key, path and profile come from the main step's state" test "$(argv)" = "push --mirror https://mirror.test:7415 --key gomod/Linux-X64/main --profile go-mod --json $T/home/go/pkg/mod"

run_main "${common[@]}" INPUT_CACHESYNC-PATH="$T/elsewhere/my-cachesync" PATH="/usr/bin:/bin:$(dirname "$(command -v node)")"
run_post "${common[@]}" INPUT_CACHESYNC-PATH="$T/elsewhere/my-cachesync" PATH="/usr/bin:/bin:$(dirname "$(command -v node)")"
check "post: runs the binary main used" test "$rc|$(head -n 1 "$T/fake/argv")" = "0|push"

run_main "${common[@]}" FAKE_PULL=unreachable
run_post "${common[@]}"
check "post after an unreachable pull: still pushes" test "$rc|$(head -n 1 "$T/fake/argv")" = "0|push"

run_main "${common[@]}" INPUT_SAVE=false
run_post "${common[@]}" INPUT_SAVE=false
check "post with save: false: cachesync not run, exit 0" bash -c "[ $rc = 0 ] && ! [ -f '$T/fake/calls' ] && grep -q 'save is false' '$T/step.log'"
check "save: false is recorded by the main step" test "$(value "$T/state" save)" = false

rm -f "$T/state"
: >"$T/state"
run_post "${common[@]}"
check "post without state (main stopped early): nothing run, exit 0" bash -c "[ $rc = 0 ] && ! [ -f '$T/fake/calls' ]"

run_main "${common[@]}" INPUT_PATH="$T/home/not-there" FAKE_PULL=unreachable
run_post "${common[@]}" INPUT_PATH="$T/home/not-there"
check "post when the directory does not exist: nothing run, exit 0" bash -c "[ $rc = 0 ] && ! [ -f '$T/fake/calls' ]"

run_main "${common[@]}"
run_post "${common[@]}" FAKE_PUSH=refused
check "post refused (read-only token): step fails loudly" bash -c "[ $rc = 1 ] && grep -q '::error::cachesync push to gomod/Linux-X64/main failed' '$T/step.log' && grep -q 'read-only' '$T/step.log'"

run_main "${common[@]}"
run_post "${common[@]}" FAKE_PUSH=unchanged
check "post after an exact hit with nothing changed: exit 0, message shown" bash -c "[ $rc = 0 ] && grep -q 'nothing changed since the pull' '$T/step.log'"

run_main "${common[@]}" INPUT_MIRROR=
run_post "${common[@]}" INPUT_MIRROR=
check "post without mirror input: no --mirror flag" bash -c "[ $rc = 0 ] && ! grep -qx -- --mirror '$T/fake/argv'"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
