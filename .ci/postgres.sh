#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the ledger tests.
#
#   eval "$(.ci/postgres.sh)"        # or: source .ci/postgres.sh
#   .ci/postgres.sh stop DIR         # stop it and delete DIR
#
# Prints IMAGINEBOT_TEST_POSTGRES_URL=... and IMAGINEBOT_TEST_POSTGRES_DIR=... (exported when
# sourced, appended to $GITHUB_ENV when set). Installs Debian's postgresql package if no
# initdb is found. PostgreSQL refuses to run as root, so as root the cluster belongs to the
# postgres user.
set -euo pipefail

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

find_bindir() {
    local initdb
    initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    # /usr/local/bin may hold links to only some of the tools: use the real directory.
    [ -n "$initdb" ] && dirname "$(readlink -f "$initdb")"
}

if [ "${1:-}" = stop ]; then
    dir=${2:?usage: postgres.sh stop DIR}
    bindir=$(find_bindir)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    exit 0
fi

if ! bindir=$(find_bindir); then
    echo "postgres.sh: installing postgresql" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends postgresql >&2
    bindir=$(find_bindir)
fi

dir=$(mktemp -d /tmp/imaginebot-pg.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres imaginebot_test

url="postgresql+asyncpg://postgres@127.0.0.1:$port/imaginebot_test"
echo "IMAGINEBOT_TEST_POSTGRES_URL=$url"
echo "IMAGINEBOT_TEST_POSTGRES_DIR=$dir"
if [ -n "${GITHUB_ENV:-}" ]; then
    printf 'IMAGINEBOT_TEST_POSTGRES_URL=%s\nIMAGINEBOT_TEST_POSTGRES_DIR=%s\n' "$url" "$dir" >>"$GITHUB_ENV"
fi
# When sourced, leave the variables in the caller's shell.
export IMAGINEBOT_TEST_POSTGRES_URL="$url" IMAGINEBOT_TEST_POSTGRES_DIR="$dir"
