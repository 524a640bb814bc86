#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the playground's browser tests.
#
#   .ci/chromium.sh                  # before the test run; does nothing when all is there
#
# The browser tests (tests/support/browser.py) drive /usr/bin/chromium through
# /usr/bin/chromedriver; nothing is downloaded at test time (the tests have no network). With
# CI=true a missing browser or driver fails those tests instead of skipping them, so CI runs
# this first. fonts-noto-color-emoji draws the bot's emoji buttons (🔄, 🎨) in the screenshots
# a failed test leaves, and in docs/img/playground.png. Prints the two versions, which match.
set -euo pipefail

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] \
        || [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then
    echo "chromium.sh: installing chromium, chromium-driver and fonts-noto-color-emoji" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
        chromium chromium-driver fonts-noto-color-emoji >&2
fi

# The launcher script may complain about its own flags files on stderr; the version is on stdout.
/usr/bin/chromium --version 2>/dev/null
/usr/bin/chromedriver --version
