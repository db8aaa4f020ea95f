#!/usr/bin/env bash
# Makes real Beam engines available locally, pinned, and cached where the Python SDK looks,
# so that `--runner PrismRunner` and `--runner FlinkRunner --flink_version 1.19` need no
# download at run time.
#
# Usage: engines/fetch.sh [prism] [flink] [flink-dist] [all]     (no argument = prism flink)
#   prism       go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<beam version of
#               pyproject.toml>; stage it as the release zip PrismRunner would download.
#   flink       assemble a Flink 1.19 job server jar with Maven (engines/flink-job-server/pom.xml)
#               and stage it as the job server jar FlinkRunner would download.
#   flink-dist  unpack a Flink distribution (PyPI apache-flink + apache-flink-libraries,
#               unpacked, not installed) for engines/flink-cluster.sh.
#
# Idempotent: a component whose outputs exist and match their recorded sha256 is skipped.
# Offline with a warm cache: Go is tried with GOPROXY=off and Maven with -o first; a registry
# is contacted only when something is missing, and if it cannot be reached one line says which
# and the script exits 2. Other failures exit 1 with the path of a log.
#
# Environment (all optional):
#   BEAM_ENGINES_CACHE           cache root (default ~/.cache/beam-feature-engines)
#   APACHE_BEAM_CACHE            Beam's own cache (default ~/.apache_beam/cache)
#   FLINK_JS_BEAM_VERSION        Java Beam version of the job server (default 2.62.0)
#   FLINK_JS_JOBSERVICE_VERSION  beam-runners-java-job-service version (default = the above;
#                                2.70.0 needs 2.65.0: job-service 2.70.0 is not served)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${BEAM_ENGINES_CACHE:-$HOME/.cache/beam-feature-engines}"
BEAM_CACHE="${APACHE_BEAM_CACHE:-$HOME/.apache_beam/cache}"
PY="$(command -v python3 || command -v python || true)"

FLINK_MINOR=1.19
FLINK_JS_BEAM_VERSION="${FLINK_JS_BEAM_VERSION:-2.62.0}"
FLINK_JS_JOBSERVICE_VERSION="${FLINK_JS_JOBSERVICE_VERSION:-$FLINK_JS_BEAM_VERSION}"
# Flink distribution matching the job server's Flink (beam-runners-flink-1.19 depends on 1.19.0).
FLINK_DIST_VERSION=1.19.0
FLINK_WHEEL="apache_flink-1.19.0-cp311-cp311-manylinux1_x86_64.whl"
FLINK_WHEEL_SHA256=fb607231f5c80ff232ab67925a1df7f8784c99e153c283f464cf59e0ef5873b5
FLINK_LIBS="apache-flink-libraries-1.19.0.tar.gz"
FLINK_LIBS_SHA256=bb3115c1c63702f95c3f89d5d952e9d98e26fd35b980a265d139790a6ea2c2a2

MAVEN_CENTRAL=https://repo.maven.apache.org/maven2
PYPI_SIMPLE=https://pypi.org/simple

say() { echo "fetch.sh: $*" >&2; }
die() { say "$*"; exit 1; }
unreachable() { say "cannot reach $1 ($2), needed for $3 which is not cached"; exit 2; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# --- arguments ---------------------------------------------------------------------------
want_prism=0 want_flink=0 want_dist=0
[ $# -eq 0 ] && set -- prism flink
for a in "$@"; do
  case "$a" in
    prism) want_prism=1 ;;
    flink) want_flink=1 ;;
    flink-dist) want_dist=1 ;;
    all) want_prism=1 want_flink=1 want_dist=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (use prism, flink, flink-dist or all)" ;;
  esac
done

BEAM_VERSION="$(sed -n 's/.*"apache-beam\(\[[^]]*\]\)\{0,1\}==\([0-9][0-9.]*\)".*/\2/p' "$REPO/pyproject.toml" | head -1)"
[ -n "$BEAM_VERSION" ] || die "no pinned apache-beam==X in $REPO/pyproject.toml"

mkdir -p "$CACHE/logs"
exec 9>"$CACHE/.lock"
flock 9  # one run at a time; a second concurrent run waits, then finds everything done

# A stamp holds "<key>" on line 1 and "<sha256> <path>" lines after; it is valid when the key
# matches and every file still has its sha256.
stamp_ok() {
  local stamp="$1" key="$2"
  [ -f "$stamp" ] || return 1
  [ "$(head -1 "$stamp")" = "$key" ] || return 1
  tail -n +2 "$stamp" | sha256sum --status --strict -c - 2>/dev/null
}
stamp_write() {
  local stamp="$1" key="$2"; shift 2
  { echo "$key"; for f in "$@"; do sha256sum "$f"; done; } > "$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
}
reachable() { curl -sS -o /dev/null -m 20 --retry 1 -f "$1" 2>/dev/null; }

# --- Prism -------------------------------------------------------------------------------
fetch_prism() {
  local ver="v$BEAM_VERSION" os arch
  os="$(uname -s | tr '[:upper:]' '[:lower:]')"
  case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m) for prism" ;;
  esac
  local name="apache_beam-$ver-prism-$os-$arch"   # what PrismRunner downloads for $ver
  local bindir="$BEAM_CACHE/prism/bin" gobin="$CACHE/prism/$ver"
  local bin="$gobin/prism" zip="$bindir/$name.zip" unzipped="$bindir/$name"
  local stamp="$CACHE/prism-$ver.stamp" key="prism $ver $os-$arch"
  if stamp_ok "$stamp" "$key"; then say "prism $ver: cached ($unzipped)"; return; fi

  command -v go >/dev/null || die "prism: 'go' is not on PATH"
  local pkg=github.com/apache/beam/sdks/v2/go/cmd/prism
  local log="$CACHE/logs/prism-$ver.log"
  mkdir -p "$gobin" "$bindir"
  # A binary built for exactly this module version elsewhere (e.g. ~/go/bin) is reused.
  if [ ! -x "$bin" ] || ! go version -m "$bin" 2>/dev/null | grep -qE "^\s+mod\s+github.com/apache/beam/sdks/v2\s+$ver\s"; then
    local other; other="$(go env GOBIN)"; other="${other:-$(go env GOPATH | cut -d: -f1)/bin}/prism"
    if [ -x "$other" ] && go version -m "$other" 2>/dev/null | grep -qE "^\s+path\s+$pkg$" \
        && go version -m "$other" | grep -qE "^\s+mod\s+github.com/apache/beam/sdks/v2\s+$ver\s"; then
      say "prism $ver: reusing $other"
      cp -f "$other" "$bin.tmp" && mv -f "$bin.tmp" "$bin"
    else
      # First from the module cache only (its download dir serves as a file:// proxy, so this
      # works offline), then through the configured proxy. Go checks every module against
      # go.sum / the checksum database itself.
      local modcache; modcache="$(go env GOMODCACHE)"
      if ! GOBIN="$gobin" GOPROXY="file://$modcache/cache/download" go install "$pkg@$ver" >"$log" 2>&1; then
        local proxy; proxy="$(go env GOPROXY | cut -d, -f1 | cut -d'|' -f1)"
        case "$proxy" in off|direct|"") ;; *)
          reachable "$proxy/github.com/apache/beam/sdks/v2/@v/$ver.info" \
            || unreachable "the Go module proxy" "$proxy" "prism $ver" ;;
        esac
        say "prism $ver: go install $pkg@$ver (a cold build takes minutes; log $log)"
        GOBIN="$gobin" go install "$pkg@$ver" >>"$log" 2>&1 || die "prism: go install failed, see $log"
      fi
    fi
  fi
  go version -m "$bin" | grep -qE "^\s+mod\s+github.com/apache/beam/sdks/v2\s+$ver\s" \
    || die "prism: $bin is not built from github.com/apache/beam/sdks/v2 $ver"

  # PrismRunner (apache_beam/runners/portability/prism_runner.py) without --prism_location
  # uses $bindir/<release zip name> if present and extracts member <name> to $bindir/<name>
  # unless that file already exists. Stage both, so nothing is downloaded or unzipped.
  [ -n "$PY" ] || die "prism: python3 is needed to write the zip"
  "$PY" - "$bin" "$zip" "$name" <<'EOF'
import os, sys, zipfile
src, dst, member = sys.argv[1:]
info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = 0o755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(src, 'rb') as f, zipfile.ZipFile(dst + '.tmp', 'w') as z:
    z.writestr(info, f.read())
os.replace(dst + '.tmp', dst)
EOF
  cp -f "$bin" "$unzipped.tmp" && chmod 755 "$unzipped.tmp" && mv -f "$unzipped.tmp" "$unzipped"
  stamp_write "$stamp" "$key" "$bin" "$zip" "$unzipped"
  say "prism $ver: staged $zip and $unzipped"
}

# --- Flink job server --------------------------------------------------------------------
# Checks every jar of the resolved tree against the .sha1 Maven fetched from Central with it
# (or, where the local repository has none, the .sha1 Central publishes).
verify_maven_tree() {
  local list="$1" bad=0 n=0 f sum want rel
  local m2; m2="$(dirname "$(dirname "$(sed -n 's/.*:\(\/.*\.jar\)$/\1/p' "$list" | head -1)")")"
  while IFS= read -r f; do
    n=$((n + 1))
    sum="$(sha1sum "$f" | cut -d' ' -f1)"
    if [ -f "$f.sha1" ]; then
      want="$(cut -c1-40 "$f.sha1")"
    else
      rel="${f#*/repository/}"
      want="$(curl -sSf -m 30 "$MAVEN_CENTRAL/$rel.sha1" 2>/dev/null | cut -c1-40)" \
        || { say "no .sha1 for $f locally and Central did not answer"; bad=1; continue; }
    fi
    [ "$sum" = "$want" ] || { say "sha1 mismatch: $f"; bad=1; }
  done < <(grep -o ':/[^ ]*\.jar' "$list" | cut -c2- | sort -u)
  [ "$n" -gt 0 ] || { say "no jars listed in $list"; return 1; }
  return $bad
}

fetch_flink() {
  local js="$FLINK_JS_BEAM_VERSION" jsvc="$FLINK_JS_JOBSERVICE_VERSION"
  local pom="$HERE/flink-job-server/pom.xml"
  local build="$CACHE/flink-job-server/$FLINK_MINOR-$js-$jsvc"
  local jar="$CACHE/flink-job-server/beam-runners-flink-$FLINK_MINOR-job-server-$js-assembled.jar"
  # FlinkRunner(flink_version=1.19) without --flink_job_server_jar asks
  # subprocess_server.JavaJarServer.local_jar for
  #   .../beam-runners-flink-1.19-job-server-<python beam version>.jar
  # and uses $BEAM_CACHE/jars/<that name> if it exists.
  local staged="$BEAM_CACHE/jars/beam-runners-flink-$FLINK_MINOR-job-server-$BEAM_VERSION.jar"
  local stamp="$CACHE/flink-job-server-$FLINK_MINOR-$js-for-$BEAM_VERSION.stamp"
  local key="flink $FLINK_MINOR $js $jsvc $(sha256 "$pom")"
  if stamp_ok "$stamp" "$key"; then say "flink job server $FLINK_MINOR/$js: cached ($staged)"; return; fi

  command -v mvn >/dev/null || die "flink: 'mvn' is not on PATH"
  command -v java >/dev/null || die "flink: 'java' is not on PATH"
  [ -n "$PY" ] || die "flink: python3 is needed"
  local log="$CACHE/logs/flink-job-server-$FLINK_MINOR-$js.log"
  mkdir -p "$build" "$(dirname "$staged")"
  cp -f "$pom" "$build/pom.xml"
  local props=(-Dbeam.version="$js" -Djobservice.version="$jsvc" -Dflink.minor="$FLINK_MINOR")
  # --strict-checksums: a download whose .sha1 from Central does not match fails the build.
  if ! (cd "$build" && mvn -B -o --strict-checksums "${props[@]}" package \
        dependency:list -DoutputAbsoluteArtifactFilename=true -DoutputFile=deps.txt -DincludeScope=runtime) >"$log" 2>&1; then
    reachable "$MAVEN_CENTRAL/org/apache/beam/beam-runners-flink-$FLINK_MINOR/maven-metadata.xml" \
      || unreachable "Maven Central" "$MAVEN_CENTRAL" "the Flink job server"
    say "flink job server $FLINK_MINOR/$js: mvn package (log $log)"
    (cd "$build" && mvn -B --strict-checksums "${props[@]}" package \
        dependency:list -DoutputAbsoluteArtifactFilename=true -DoutputFile=deps.txt -DincludeScope=runtime) >>"$log" 2>&1 \
      || die "flink: mvn package failed, see $log"
  fi
  verify_maven_tree "$build/deps.txt" || die "flink: checksum verification failed (see above)"
  # The runner jar itself also against the .sha512 Central publishes (when reachable).
  local rj="beam-runners-flink-$FLINK_MINOR-$js.jar" rpath
  rpath="$(grep -o "/[^ ]*/$rj" "$build/deps.txt" | head -1)"
  if [ -n "$rpath" ] && want="$(curl -sSf -m 30 "$MAVEN_CENTRAL/org/apache/beam/beam-runners-flink-$FLINK_MINOR/$js/$rj.sha512" 2>/dev/null | cut -c1-128)"; then
    [ "$(sha512sum "$rpath" | cut -c1-128)" = "$want" ] || die "flink: sha512 mismatch for $rpath"
  fi
  "$PY" -c 'import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read("META-INF/MANIFEST.MF").decode())' \
      "$build/target/flink-job-server.jar" | grep -q "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver" \
    || die "flink: assembled jar has no FlinkJobServerDriver main class"
  cp -f "$build/target/flink-job-server.jar" "$jar.tmp" && mv -f "$jar.tmp" "$jar"
  ln -f "$jar" "$staged.tmp" 2>/dev/null || cp -f "$jar" "$staged.tmp"
  mv -f "$staged.tmp" "$staged"
  rm -rf "$build/target/classes" "$build/target/original-flink-job-server.jar"
  stamp_write "$stamp" "$key" "$jar" "$staged"
  say "flink job server $FLINK_MINOR/$js: staged $staged"
}

# --- Flink distribution (for engines/flink-cluster.sh) -------------------------------------
fetch_flink_dist() {
  local home="$CACHE/flink-$FLINK_DIST_VERSION" dl="$CACHE/downloads"
  local stamp="$CACHE/flink-dist-$FLINK_DIST_VERSION.stamp"
  local key="flink-dist $FLINK_DIST_VERSION $FLINK_WHEEL_SHA256 $FLINK_LIBS_SHA256"
  if stamp_ok "$stamp" "$key" && [ -x "$home/bin/start-cluster.sh" ]; then
    say "flink $FLINK_DIST_VERSION distribution: cached ($home)"; return; fi
  [ -n "$PY" ] || die "flink-dist: python3 is needed"
  local log="$CACHE/logs/flink-dist-$FLINK_DIST_VERSION.log"
  mkdir -p "$dl"
  get() {  # file sha256 pip-args...
    local file="$1" want="$2" name="${1%%-[0-9]*}"; shift 2
    if [ -f "$dl/$file" ] && [ "$(sha256 "$dl/$file")" = "$want" ]; then return; fi
    reachable "$PYPI_SIMPLE/${name//_/-}/" || unreachable "PyPI" "$PYPI_SIMPLE" "the Flink distribution"
    echo "${name//_/-}==$FLINK_DIST_VERSION --hash=sha256:$want" > "$dl/$file.req"
    # pip checks the pinned sha256 (--require-hashes); nothing is installed.
    "$PY" -m pip download --no-deps --require-hashes -d "$dl" "$@" -r "$dl/$file.req" >>"$log" 2>&1 \
      || die "flink-dist: pip download of $file failed, see $log"
    [ "$(sha256 "$dl/$file")" = "$want" ] || die "flink-dist: sha256 mismatch for $dl/$file"
  }
  get "$FLINK_WHEEL" "$FLINK_WHEEL_SHA256" \
    --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11 --implementation cp --abi cp311
  get "$FLINK_LIBS" "$FLINK_LIBS_SHA256" --no-binary=:all:
  say "flink $FLINK_DIST_VERSION distribution: unpacking into $home"
  rm -rf "$home.tmp"; mkdir -p "$home.tmp/log"
  # lib/ plugins/ bin/bash-java-utils.jar from apache-flink-libraries; bin/*.sh conf/ from the
  # pyflink wheel. Without bin/find_flink_home.py the scripts take FLINK_HOME = bin/.. .
  tar xzf "$dl/$FLINK_LIBS" --no-same-owner -C "$home.tmp" --strip-components=2 \
    "apache-flink-libraries-$FLINK_DIST_VERSION/deps/lib" "apache-flink-libraries-$FLINK_DIST_VERSION/deps/plugins" \
    "apache-flink-libraries-$FLINK_DIST_VERSION/deps/bin"
  "$PY" - "$dl/$FLINK_WHEEL" "$home.tmp" <<'EOF'
import os, sys, zipfile
whl, home = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(('pyflink/bin/', 'pyflink/conf/')) and not n.endswith('/'):
            out = os.path.join(home, n[len('pyflink/'):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, 'wb') as f:
                f.write(z.read(n))
            if n.endswith('.sh') or n == 'pyflink/bin/flink':
                os.chmod(out, 0o755)
EOF
  [ -f "$home.tmp/lib/flink-dist-$FLINK_DIST_VERSION.jar" ] || die "flink-dist: no flink-dist jar after unpacking"
  rm -rf "$home"; mv "$home.tmp" "$home"
  stamp_write "$stamp" "$key" "$home/lib/flink-dist-$FLINK_DIST_VERSION.jar" "$home/bin/config.sh" "$home/conf/config.yaml"
  say "flink $FLINK_DIST_VERSION distribution: ready (FLINK_HOME=$home; start with engines/flink-cluster.sh start)"
}

[ $want_prism = 1 ] && fetch_prism
[ $want_flink = 1 ] && fetch_flink
[ $want_dist = 1 ] && fetch_flink_dist
exit 0
