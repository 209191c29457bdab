# shellcheck shell=bash
# The browser side (clients/web): Debian's Chromium, the pinned npm packages
# of clients/web/package-lock.json, and the build of the tracker and the live
# page. Source it after scripts/lib.sh; it defines functions and runs nothing.
#
# The npm packages go into the tools cache, one directory per lock file
# ($TB_TOOLS_DIR/web/node-<sha256 of package-lock.json>), installed with
# `npm ci --ignore-scripts` (esbuild and buf run from their platform
# packages without their postinstall steps) and PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1:
# playwright-core drives Debian's /usr/bin/chromium and never downloads a
# browser. clients/web/node_modules is a link to that directory. A second run
# costs a hash and a stat.

TB_WEB_DIR="$TB_ROOT/clients/web"
TB_WEB_CHROMIUM=/usr/bin/chromium
# The built page (index.html, page.js, tributary.js, ...): state, not source.
TB_WEB_OUT="$TB_STATE_DIR/web"
TB_WEB_PORT=${TRIBUTARY_WEB_PORT:-8088}
# Node.js 20 or newer (playwright-core 1.65 wants it).
TB_WEB_NODE_MAJOR=20

web_node_dir() {
  local hash
  hash=$(sha256sum "$TB_WEB_DIR/package-lock.json" | cut -c1-16)
  printf '%s/web/node-%s\n' "$TB_TOOLS_DIR" "$hash"
}

# ensure_node: node and npm, at least Node.js 20.
ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null || ensure_apt nodejs npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || die "node does not run"
  ((major >= TB_WEB_NODE_MAJOR)) || die "clients/web needs Node.js >= $TB_WEB_NODE_MAJOR (found $(node --version))"
}

# ensure_chromium: Debian's chromium (headless browser tests and screenshots).
ensure_chromium() {
  ensure_apt chromium
  [[ -x "$TB_WEB_CHROMIUM" ]] || die "$TB_WEB_CHROMIUM is missing after installing chromium"
}

# ensure_web_deps: the npm packages of clients/web, exactly as locked.
ensure_web_deps() {
  ensure_node
  local dir
  dir=$(web_node_dir)
  if [[ ! -f "$dir/.installed" ]]; then
    mkdir -p "$TB_TOOLS_DIR/web"
    (
      flock 9
      [[ -f "$dir/.installed" ]] && exit 0
      log_info "installing the npm packages of clients/web into $dir (npm ci, pinned by package-lock.json)"
      rm -rf "$dir" && mkdir -p "$dir" || exit 1
      cp "$TB_WEB_DIR/package.json" "$TB_WEB_DIR/package-lock.json" "$dir/" || exit 1
      (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund >&2) || exit 1
      touch "$dir/.installed"
    ) 9>"$TB_TOOLS_DIR/web/.lock" || die "npm ci for clients/web failed"
  fi
  # A link, not a copy: node resolves the packages through it.
  if [[ "$(readlink "$TB_WEB_DIR/node_modules" 2>/dev/null)" != "$dir/node_modules" ]]; then
    rm -rf "$TB_WEB_DIR/node_modules"
    ln -s "$dir/node_modules" "$TB_WEB_DIR/node_modules"
  fi
}

# web_build [OUTDIR]: the tracker bundles and the live page (esbuild; under
# a second). Prints the tracker's minified+gzip size on stderr.
web_build() {
  local out=${1:-$TB_WEB_OUT}
  ensure_web_deps
  mkdir -p "$out"
  (cd "$TB_WEB_DIR" && node build.mjs --outdir "$out" >&2) || die "building clients/web failed"
}

# web_generate [DIR]: regenerates the protobuf-es code from proto/ into
# clients/web/src/gen (or, with DIR, into a copy of the layout under DIR, for
# the regenerate-and-diff check; prints the generated directory).
web_generate() {
  local root=${1:-}
  ensure_web_deps
  if [[ -z "$root" ]]; then
    (cd "$TB_WEB_DIR" && PATH="$TB_WEB_DIR/node_modules/.bin:$PATH" buf generate >&2) || die "buf generate failed"
    printf '%s\n' "$TB_WEB_DIR/src/gen"
    return
  fi
  mkdir -p "$root/clients/web"
  cp -r "$TB_ROOT/proto" "$root/proto"
  cp -r "$TB_WEB_DIR/buf.gen.yaml" "$TB_WEB_DIR/proto" "$root/clients/web/"
  ln -s "$TB_WEB_DIR/node_modules" "$root/clients/web/node_modules"
  (cd "$root/clients/web" && PATH="$TB_WEB_DIR/node_modules/.bin:$PATH" buf generate >&2) || return 1
  printf '%s\n' "$root/clients/web/src/gen"
}
