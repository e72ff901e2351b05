# Reins developer set-up, sourced by ./dev. Installs what is missing, into the project where it can:
#   Node >= 22.12 (Node 24 from the npm registry into .tools/ when the machine's Node is older),
#   pnpm 10 (into .tools/), dependencies (pnpm install --frozen-lockfile), the build (tsc -b),
#   and nats-server (Debian's package via apt-get) unless NATS_URL or NATS_SERVER_BIN is set.
# Every step prints what it does; a step that cannot be done says how to do it by hand.

REINS_NODE_VERSION=24.21.0
REINS_PNPM_VERSION=10.34.8
REINS_ROOT=$(pwd)
TOOLS="$REINS_ROOT/.tools"
# Debian installs nats-server into /usr/sbin, which a plain user PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

step() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)?0:1)'
}

ensure_node() {
  local arch pkg bin
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch=unknown ;;
  esac
  pkg="node-linux-$arch"
  bin="$TOOLS/node/node_modules/$pkg/bin"
  if [ -x "$bin/node" ]; then export PATH="$bin:$PATH"; fi
  node_ok && return 0
  [ "$arch" = unknown ] && die "Node >= 22.12 is required and no prebuilt Node is known for $(uname -m); install Node 22.12+ and retry."
  command -v npm >/dev/null 2>&1 || die "Node >= 22.12 is required and npm is missing to fetch it. Install Node 22.12+ (https://nodejs.org) and retry."
  step "installing Node $REINS_NODE_VERSION into .tools/node (machine Node: $(node -v 2>/dev/null || echo none))"
  mkdir -p "$TOOLS/node"
  npm install --prefix "$TOOLS/node" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "$pkg@$REINS_NODE_VERSION" >&2 || die "could not install $pkg@$REINS_NODE_VERSION from the npm registry"
  export PATH="$bin:$PATH"
  node_ok || die "installed Node does not run: $bin/node"
}

ensure_pnpm() {
  local bin="$TOOLS/pnpm/node_modules/.bin"
  if [ -x "$bin/pnpm" ]; then export PATH="$bin:$PATH"; fi
  if command -v pnpm >/dev/null 2>&1 && [ "$(pnpm --version 2>/dev/null | cut -d. -f1)" = 10 ]; then return 0; fi
  step "installing pnpm $REINS_PNPM_VERSION into .tools/pnpm"
  mkdir -p "$TOOLS/pnpm"
  npm install --prefix "$TOOLS/pnpm" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
    "pnpm@$REINS_PNPM_VERSION" >&2 || die "could not install pnpm@$REINS_PNPM_VERSION from the npm registry"
  export PATH="$bin:$PATH"
}

ensure_deps() {
  step "installing dependencies (pnpm install --frozen-lockfile)"
  pnpm install --frozen-lockfile --prefer-offline --reporter=append-only >&2 || die "pnpm install failed"
}

ensure_build() {
  step "building (tsc -b)"
  pnpm run --silent build >&2 || die "build failed"
}

# $1 = "required": tests need a local nats-server binary even when NATS_URL is set.
ensure_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    [ -x "$NATS_SERVER_BIN" ] || die "NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file"
    return 0
  fi
  command -v nats-server >/dev/null 2>&1 && return 0
  if [ -n "${NATS_URL:-}" ] && [ "${1:-}" != required ]; then return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    step "installing nats-server from Debian (apt-get install nats-server)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q nats-server >&2 ||
      { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q nats-server >&2; } ||
      die "apt-get could not install nats-server. Install it by hand, or set NATS_SERVER_BIN=/path/to/nats-server (or NATS_URL=nats://host:4222 to use a running server for the demo)."
    command -v nats-server >/dev/null 2>&1 && return 0
  fi
  die "nats-server is not installed and cannot be installed here (needs apt-get as root or passwordless sudo).
  Install it:   sudo apt-get install -y nats-server   (or a release from https://github.com/nats-io/nats-server/releases)
  or point at one:   NATS_SERVER_BIN=/path/to/nats-server ./dev ...
  or (demo only) use a running server:   NATS_URL=nats://host:4222 ./dev demo"
}

reins_setup() {
  ensure_node
  ensure_pnpm
  ensure_deps
  ensure_build
  ensure_nats "${1:-}"
}
