#!/usr/bin/env bash
# Start a throwaway Redis server for the scale-out tests.
#
#   eval "$(.ci/redis.sh)"           # or: source .ci/redis.sh
#   .ci/redis.sh stop DIR            # stop it and delete DIR
#
# Prints IMAGINEBOT_TEST_REDIS_URL=... and IMAGINEBOT_TEST_REDIS_DIR=... (exported when sourced,
# appended to $GITHUB_ENV when set). Installs Debian's redis-server package if no redis-server
# is found. The server listens on a free loopback port only, keeps its files in DIR and saves
# nothing to disk: the tests that need persistence (AOF) start servers of their own
# (tests/support/redis.py).
set -euo pipefail

if [ "${1:-}" = stop ]; then
    dir=${2:?usage: redis.sh stop DIR}
    if [ -f "$dir/redis.pid" ]; then
        kill -9 "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
    exit 0
fi

if ! command -v redis-server >/dev/null; then
    echo "redis.sh: installing redis-server" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends redis-server >&2
fi

dir=$(mktemp -d /tmp/imaginebot-redis.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Debian's package also starts a system service on 6379; this one is separate and ours alone.
redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/log" --save "" --appendonly no \
    --maxmemory-policy noeviction >/dev/null
for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
redis-cli -p "$port" ping | grep -q PONG || { cat "$dir/log" >&2; exit 1; }

url="redis://127.0.0.1:$port/0"
echo "IMAGINEBOT_TEST_REDIS_URL=$url"
echo "IMAGINEBOT_TEST_REDIS_DIR=$dir"
if [ -n "${GITHUB_ENV:-}" ]; then
    printf 'IMAGINEBOT_TEST_REDIS_URL=%s\nIMAGINEBOT_TEST_REDIS_DIR=%s\n' "$url" "$dir" >>"$GITHUB_ENV"
fi
# When sourced, leave the variables in the caller's shell.
export IMAGINEBOT_TEST_REDIS_URL="$url" IMAGINEBOT_TEST_REDIS_DIR="$dir"
