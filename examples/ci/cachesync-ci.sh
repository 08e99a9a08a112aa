#!/bin/sh
# cachesync-ci.sh - restore and save Go's module and build caches with
# cachesync, from any CI system (GitLab CI, Jenkins, Buildkite, cron...).
#
#   cachesync-ci.sh restore   At the start of a job: pull both caches. A miss
#                             or an unreachable mirror is a warning, never a
#                             failed build.
#   cachesync-ci.sh save      At the end of a successful job: push both caches.
#                             A push that fails or is refused fails (exit 1).
#
# cachesync reads its own settings from the environment:
#   CACHESYNC_CLIENT__MIRROR     the mirror, e.g. https://cachesync.example.com:7415
#   CACHESYNC_CLIENT__TOKEN      (or CACHESYNC_CLIENT__TOKEN_FILE) a read-only token
#                                for untrusted jobs, a read-write one where save runs
#   CACHESYNC_CLIENT__CA_FILE    the CA of an https:// mirror with a private CA
# Empty ones (an unset CI secret) are dropped rather than passed on.
#
# This script's own settings start with CSYNC_, not CACHESYNC_: cachesync takes
# every CACHESYNC_* variable for one of its settings and refuses unknown ones.
#   CSYNC_REF          the branch in the keys. Default: CI_COMMIT_REF_SLUG
#                      (GitLab), BRANCH_NAME (Jenkins multibranch), GIT_BRANCH
#                      (Jenkins, without "origin/"), else the checked-out branch.
#   CSYNC_DEFAULT_REF  the branch to fall back to (default: main)
#   CSYNC_PLATFORM     default: $(go env GOOS)-$(go env GOARCH), e.g. linux-amd64
#   CSYNC_CACHES       "mod build" (default), "mod" or "build"
#   CSYNC_CONFIG       a cachesync configuration file (--config)
#   CSYNC_BIN          the cachesync binary (default: cachesync from PATH)
#
# Keys: gomod/<platform>/<ref> for GOMODCACHE (profile go-mod) and
# gobuild/<platform>/<ref> for GOCACHE (profile go-build). A restore falls back
# to <prefix>/<platform>/<default ref>, then to the newest <prefix>/<platform>/.
# Characters a key does not allow (outside A-Z a-z 0-9 . _ - /) become "-".
#
# Exit status: 0 done; 1 a save failed; 2 usage or setup error (no go, no
# cachesync, flags or a configuration that cachesync refuses).

set -u
me=cachesync-ci

say() { printf '%s: %s\n' "$me" "$*"; }
warn() { printf '%s: warning: %s\n' "$me" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$me" "$*" >&2
	exit 2
}
usage() {
	echo "usage: $0 restore|save   ($0 --help for the settings)" >&2
	exit 2
}

[ $# -eq 1 ] || usage
mode=$1
case $mode in
restore | save) ;;
-h | --help)
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
	exit 0
	;;
*) usage ;;
esac

# A key segment from anything: disallowed characters become "-", no empty
# segments, at most 100 characters.
sanitize() {
	printf '%s' "$1" | tr -c 'A-Za-z0-9._/-' '-' | sed -e 's#//*#/#g' -e 's#^/##' -e 's#/$##' | cut -c1-100
}

bin=${CSYNC_BIN:-cachesync}
command -v "$bin" >/dev/null 2>&1 || die "cannot run '$bin': install cachesync on this machine or set CSYNC_BIN"
command -v go >/dev/null 2>&1 || die "go is not on PATH"

for v in CACHESYNC_CLIENT__MIRROR CACHESYNC_CLIENT__TOKEN CACHESYNC_CLIENT__TOKEN_FILE CACHESYNC_CLIENT__CA_FILE; do
	eval "value=\${$v-}"
	[ -n "$value" ] || unset "$v"
done
if [ -z "${CACHESYNC_CLIENT__MIRROR-}" ] && [ -z "${CSYNC_CONFIG-}" ]; then
	warn "CACHESYNC_CLIENT__MIRROR is not set: cachesync uses its default mirror, http://127.0.0.1:7415"
fi
set --
[ -n "${CSYNC_CONFIG-}" ] && set -- --config "$CSYNC_CONFIG"

caches=${CSYNC_CACHES:-mod build}
for c in $caches; do
	case $c in
	mod | build) ;;
	*) die "CSYNC_CACHES: unknown cache '$c' (known: mod, build)" ;;
	esac
done

ref=${CSYNC_REF:-${CI_COMMIT_REF_SLUG:-${BRANCH_NAME:-}}}
if [ -z "$ref" ] && [ -n "${GIT_BRANCH-}" ]; then
	ref=${GIT_BRANCH#origin/}
	ref=${ref#refs/heads/}
fi
if [ -z "$ref" ]; then
	ref=$(git rev-parse --abbrev-ref HEAD 2>/dev/null) || ref=
	[ "$ref" = HEAD ] && ref=
fi
ref=$(sanitize "$ref")
if [ -z "$ref" ]; then
	warn "no branch name found (set CSYNC_REF): the keys use 'detached'"
	ref=detached
fi
default_ref=$(sanitize "${CSYNC_DEFAULT_REF:-main}")
platform=${CSYNC_PLATFORM:-$(go env GOOS)-$(go env GOARCH)}
platform=$(sanitize "$platform")
[ -n "$platform" ] || die "cannot tell the platform: set CSYNC_PLATFORM"

worst=0
for c in $caches; do
	case $c in
	mod) prefix=gomod var=GOMODCACHE profile=go-mod ;;
	build) prefix=gobuild var=GOCACHE profile=go-build ;;
	esac
	dir=$(go env "$var") || die "go env $var failed"
	if [ -z "$dir" ] || [ "$dir" = off ]; then
		say "$var is empty or off: skipping $prefix"
		continue
	fi
	key=$prefix/$platform/$ref

	if [ "$mode" = restore ]; then
		say "restore $key into $dir"
		"$bin" "$@" pull --key "$key" \
			--restore-key "$prefix/$platform/$default_ref" --restore-key "$prefix/$platform/" "$dir"
		rc=$?
		case $rc in
		0) ;;
		2) die "cachesync refused its flags or configuration (see above)" ;;
		*) warn "$key not restored (cachesync pull exited $rc); the build goes on without it" ;;
		esac
	else
		if [ ! -d "$dir" ]; then
			say "$dir does not exist: nothing to save as $key"
			continue
		fi
		say "save $dir as $key"
		"$bin" "$@" push --key "$key" --profile "$profile" "$dir"
		rc=$?
		if [ $rc -ne 0 ]; then
			{
				echo "$me: ERROR: saving $key FAILED: cachesync push exited $rc (see above)."
				echo "$me:   If the mirror refused it, this job's token is read-only or not scoped to $prefix/."
				echo "$me:   Run save only where a read-write token is given (protected branches)."
			} >&2
			if [ $rc -eq 2 ]; then worst=2; elif [ $worst -eq 0 ]; then worst=1; fi
		fi
	fi
done
exit $worst
