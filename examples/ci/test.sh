#!/usr/bin/env bash
# Tests of cachesync-ci.sh with fake `go` and `cachesync` commands on PATH
# that record how they were called. The helper runs under /bin/sh (and under
# dash and busybox sh too when they are installed).
#
#   bash examples/ci/test.sh
#
# Prints "N passed, N failed" last; exits non-zero when anything failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
helper=$here/cachesync-ci.sh
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/bin" "$T/nogo" "$T/mod" "$T/build" "$T/repo"

cat >"$T/bin/go" <<'FAKE'
#!/bin/sh
[ "$1" = env ] || { echo "fake go: only 'go env'" >&2; exit 1; }
case $2 in
GOOS) echo linux ;;
GOARCH) echo amd64 ;;
GOMODCACHE) echo "$FAKE_GOMODCACHE" ;;
GOCACHE) echo "$FAKE_GOCACHE" ;;
*) exit 1 ;;
esac
FAKE
cat >"$T/bin/cachesync" <<'FAKE'
#!/bin/sh
# One line per call: the arguments, then the token it saw.
echo "$* | token=${CACHESYNC_CLIENT__TOKEN-<unset>} mirror=${CACHESYNC_CLIENT__MIRROR-<unset>}" >>"$FAKE_LOG"
key=; prev=
for a; do [ "$prev" = --key ] && key=$a; prev=$a; done
case $* in
*pull*)
  case ${FAKE_PULL:-ok} in
  ok) echo "restored $key" ;;
  miss) echo "no cache for key \"$key\"" ;;
  unreachable) echo "error: connecting to the mirror: connection refused" >&2; exit 1 ;;
  config) echo "error: unknown setting" >&2; exit 2 ;;
  esac ;;
*push*)
  case $key in *"${FAKE_REFUSE:-no such key}"*) echo "error: permission denied: read-only token" >&2; exit 1 ;; esac
  [ "${FAKE_PUSH:-ok}" = config ] && { echo "error: unknown setting" >&2; exit 2; }
  echo "pushed $key" ;;
esac
FAKE
chmod +x "$T/bin/go" "$T/bin/cachesync"
cp "$T/bin/cachesync" "$T/nogo/cachesync"

passed=0
failed=0
check() { # check NAME COMMAND...
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    sed 's/^/     /' "$T/out" 2>/dev/null | tail -n 15
    sed 's/^/     call: /' "$T/calls" 2>/dev/null
  fi
}

SHELL_UNDER_TEST=/bin/sh
# helper ARGS... [-- VAR=value...]: runs the helper in a clean environment (in
# $T/repo, not a git checkout); exit code in $rc, stdout+stderr in $T/out.
helper() {
  local args=() vars=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  vars=("$@")
  rm -f "$T/calls"
  local sh_cmd
  read -ra sh_cmd <<<"$SHELL_UNDER_TEST" # "busybox sh" is two words
  (cd "$T/repo" && env -i PATH="$T/bin:/usr/bin:/bin" HOME="$T" GIT_CEILING_DIRECTORIES="$T" FAKE_LOG="$T/calls" \
    FAKE_GOMODCACHE="$T/mod" FAKE_GOCACHE="$T/build" CACHESYNC_CLIENT__MIRROR=https://mirror.test:7415 \
    "${vars[@]}" "${sh_cmd[@]}" "$helper" "${args[@]}") >"$T/out" 2>&1
  rc=$?
}
call() { sed -n "${1}p" "$T/calls" 2>/dev/null; }
ncalls() { if [ -f "$T/calls" ]; then wc -l <"$T/calls" | tr -d ' '; else echo 0; fi; }
has() { grep -qF -- "$1" "$T/out"; }

# ------------------------------------------------------------ static
check "sh -n" sh -n "$helper"
if command -v shellcheck >/dev/null; then
  check "shellcheck -s sh" shellcheck -s sh "$helper"
else
  echo "skip shellcheck (not installed)"
fi
if python3 -c 'import yaml' 2>/dev/null; then
  check "gitlab-ci.yml parses" python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$here/gitlab-ci.yml"
else
  echo "skip YAML parse check (python3 with PyYAML not available)"
fi

shells=(/bin/sh)
for s in dash "busybox sh" bash; do
  first=${s%% *}
  command -v "$first" >/dev/null && [ "$(command -v "$first")" != "$(readlink -f /bin/sh)" ] && shells+=("$s")
done

for SHELL_UNDER_TEST in "${shells[@]}"; do
  echo "--- under $SHELL_UNDER_TEST"
  # ---------------------------------------------------------- restore
  helper restore -- CI_COMMIT_REF_SLUG=feature-x CACHESYNC_CLIENT__TOKEN=ro
  check "restore: exit 0, two pulls" test "$rc|$(ncalls)" = "0|2"
  check "restore: module cache argv" test "$(call 1)" = \
    "pull --key gomod/linux-amd64/feature-x --restore-key gomod/linux-amd64/main --restore-key gomod/linux-amd64/ $T/mod | token=ro mirror=https://mirror.test:7415"
  check "restore: build cache argv" test "$(call 2)" = \
    "pull --key gobuild/linux-amd64/feature-x --restore-key gobuild/linux-amd64/main --restore-key gobuild/linux-amd64/ $T/build | token=ro mirror=https://mirror.test:7415"

  helper restore -- BRANCH_NAME=PR-42 CSYNC_DEFAULT_REF=develop
  check "restore: Jenkins BRANCH_NAME, CSYNC_DEFAULT_REF" bash -c "[[ '$(call 1)' == 'pull --key gomod/linux-amd64/PR-42 --restore-key gomod/linux-amd64/develop '* ]]"
  helper restore -- GIT_BRANCH=origin/feature/login
  check "restore: GIT_BRANCH without origin/" bash -c "[[ '$(call 1)' == 'pull --key gomod/linux-amd64/feature/login '* ]]"
  helper restore -- 'CSYNC_REF=/feature//a+b c@d/' BRANCH_NAME=ignored
  check "restore: CSYNC_REF wins, sanitized" bash -c "[[ '$(call 1)' == 'pull --key gomod/linux-amd64/feature/a-b-c-d '* ]]"
  helper restore -- CSYNC_PLATFORM=linux-arm64 CSYNC_REF=main
  check "restore: CSYNC_PLATFORM" bash -c "[[ '$(call 1)' == 'pull --key gomod/linux-arm64/main '* ]]"
  helper restore
  check "restore: no branch known: 'detached' with a warning" bash -c "[ $rc = 0 ] && [[ '$(call 1)' == 'pull --key gomod/linux-amd64/detached '* ]] && grep -q 'set CSYNC_REF' '$T/out'"

  helper restore -- CSYNC_REF=main FAKE_PULL=miss
  check "restore, miss: exit 0" test "$rc|$(ncalls)" = "0|2"
  helper restore -- CSYNC_REF=main FAKE_PULL=unreachable
  check "restore, mirror unreachable: exit 0, both tried, warnings" bash -c \
    "[ $rc = 0 ] && [ $(ncalls) = 2 ] && [ \$(grep -c 'warning: .* not restored' '$T/out') = 2 ]"
  helper restore -- CSYNC_REF=main FAKE_PULL=config
  check "restore, configuration refused: exit 2" test "$rc|$(ncalls)" = "2|1"

  helper restore -- CSYNC_REF=main CSYNC_CACHES=mod
  check "restore: CSYNC_CACHES=mod pulls only modules" bash -c "[ $(ncalls) = 1 ] && [[ '$(call 1)' == 'pull --key gomod/'* ]]"
  helper restore -- CSYNC_REF=main CSYNC_CACHES='mod cargo'
  check "restore: unknown cache: exit 2 before any pull" test "$rc|$(ncalls)" = "2|0"
  helper restore -- CSYNC_REF=main FAKE_GOCACHE=off
  check "restore: GOCACHE=off is skipped" test "$rc|$(ncalls)" = "0|1"
  helper restore -- CSYNC_REF=main CSYNC_CONFIG=/etc/cachesync/client.toml
  check "restore: CSYNC_CONFIG becomes --config" bash -c "[[ '$(call 1)' == '--config /etc/cachesync/client.toml pull '* ]]"
  helper restore -- CSYNC_REF=main CACHESYNC_CLIENT__TOKEN= CACHESYNC_CLIENT__CA_FILE=
  check "restore: empty CACHESYNC_ settings are dropped" bash -c "[[ '$(call 1)' == *'token=<unset> '* ]]"
  helper restore -- CSYNC_REF=main CACHESYNC_CLIENT__MIRROR=
  check "restore: warns when no mirror is configured" bash -c "[ $rc = 0 ] && grep -q 'CACHESYNC_CLIENT__MIRROR is not set' '$T/out'"

  # ---------------------------------------------------------- save
  helper save -- CSYNC_REF=main CACHESYNC_CLIENT__TOKEN=rw
  check "save: exit 0, two pushes with profiles" test "$rc|$(call 1)|$(call 2)" = \
    "0|push --key gomod/linux-amd64/main --profile go-mod $T/mod | token=rw mirror=https://mirror.test:7415|push --key gobuild/linux-amd64/main --profile go-build $T/build | token=rw mirror=https://mirror.test:7415"
  helper save -- CSYNC_REF=main FAKE_REFUSE=gomod/
  check "save, one push refused: both tried, exit 1, loud" bash -c \
    "[ $rc = 1 ] && [ $(ncalls) = 2 ] && grep -q 'ERROR: saving gomod/linux-amd64/main FAILED' '$T/out' && grep -q 'read-only' '$T/out'"
  helper save -- CSYNC_REF=main FAKE_PUSH=config
  check "save, configuration refused: exit 2" test "$rc" = 2
  helper save -- CSYNC_REF=main FAKE_GOMODCACHE="$T/not-there"
  check "save: a missing directory is skipped" test "$rc|$(ncalls)" = "0|1"

  # ---------------------------------------------------------- setup errors
  helper
  check "no subcommand: exit 2" test "$rc" = 2
  helper backup
  check "unknown subcommand: exit 2" test "$rc" = 2
  helper --help
  check "--help prints the settings" bash -c "[ $rc = 0 ] && grep -q CSYNC_DEFAULT_REF '$T/out'"
  helper restore -- CSYNC_BIN=/nonexistent/cachesync
  check "no cachesync: exit 2 with a message" bash -c "[ $rc = 2 ] && grep -q 'install cachesync' '$T/out'"
  # A PATH with the system's tools but no go (the machine may have golang-go).
  for f in /usr/bin/* /bin/*; do
    n=${f##*/}
    [ "$n" = go ] || [ -e "$T/nogo/$n" ] || ln -s "$f" "$T/nogo/$n"
  done
  helper restore -- PATH="$T/nogo"
  check "no go: exit 2" bash -c "[ $rc = 2 ] && grep -q 'go is not on PATH' '$T/out'"
done

# In a git checkout with no CI variables, the branch comes from git.
if command -v git >/dev/null; then
  SHELL_UNDER_TEST=/bin/sh
  git -C "$T/repo" init -q -b topic/x 2>/dev/null || { git -C "$T/repo" init -q && git -C "$T/repo" checkout -q -b topic/x; }
  git -C "$T/repo" -c user.name=t -c user.email=t@t commit -q --allow-empty -m init
  helper restore
  check "restore: branch from git" bash -c "[[ '$(call 1)' == 'pull --key gomod/linux-amd64/topic/x '* ]]"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
