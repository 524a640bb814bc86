"""The playground in a real headless Chromium: what a newcomer sees and clicks.

One real ``imaginebot playground`` (emulator, bot process, engine worker, page) serves the whole
module on the shipped demo model; each test opens fresh browsers on it. Waits are explicit
conditions on the page, never sleeps. ``pytest --readme-screenshot -k v1`` also saves the
README's picture (docs/img/playground.png) from the V1 test.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import ARTIFACTS, PHONE, set_viewport
from tests.support.playground_process import PlaygroundProcess, start_playground

pytestmark = pytest.mark.slow

README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "playground.png"
#: Tall enough for a whole result message: header, embed, grid and both rows of buttons.
README_VIEWPORT = (1280, 1100)
#: A job of the demo model on two busy cores, queueing included.
JOB_SECONDS = 90
#: Anything the page does without the engine: a reply, a user switch, a dialog.
UI_SECONDS = 20
GRID_BUTTONS = {"U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "🔄"}
EPHEMERAL = "Only you can see this"
#: The page shows its user's state, fetched once that user's websocket was open (app.js sets
#: both; a user switch clears ``live`` until then).
LIVE = "return document.body.dataset.ready === 'true' && document.body.dataset.live === 'true'"

#: One row per message the page shows, read in one round trip (a poll must not be slower than
#: what it watches).
READ_MESSAGES = """
return Array.from(document.querySelectorAll('#messages article.message')).map(a => ({
  id: a.dataset.messageId,
  text: a.innerText,
  buttons: Array.from(a.querySelectorAll('button')).map(
      b => ({text: b.innerText.trim(), disabled: b.disabled})),
  images: Array.from(a.querySelectorAll('img')).filter(i => !i.closest('.author')).map(
      i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0})),
}));
"""
#: Remembers every message that ever showed a progress preview (an image while the text says
#: "step n/m"), however briefly: previews last from one edit to the next.
WATCH_PREVIEWS = """
window.previewsSeen = new Set();
const look = () => {
  for (const a of document.querySelectorAll('#messages article.message')) {
    if (a.querySelector('img') && /step \\d+\\/\\d+/.test(a.textContent)) {
      window.previewsSeen.add(a.dataset.messageId);
    }
  }
};
new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
"""


@pytest.fixture(scope="module")
def playground(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaygroundProcess]:
    """The real command, with a preview on every step (so each progress edit shows one) and
    no cooldown between one user's requests (the tests send them back to back). When a test
    failed, the bot's log joins the browsers' artifacts."""
    failed = request.session.testsfailed
    process = start_playground(tmp_path_factory.mktemp("playground"), env={
        "IMAGINEBOT_PREVIEW_EVERY": "1", "IMAGINEBOT_COOLDOWN_SECONDS": "0"})
    yield process
    status = process.stop()
    if request.session.testsfailed > failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(process.data / "bot.log", ARTIFACTS / "playground-bot.log")
    assert status == 0, process.output()


class Channel:
    """One browser on the playground's page, as one user at a time."""

    def __init__(self, driver: Any, url: str, user: str = "alice") -> None:
        self.driver = driver
        driver.get(url)
        self.wait(lambda d: d.execute_script(LIVE), "the page to load and connect")
        self.switch(user)

    def wait(self, condition: Callable[[Any], Any], what: str, seconds: float = UI_SECONDS) -> Any:
        """``condition``'s first true value; on a timeout, the error the page showed, if any."""
        try:
            return WebDriverWait(self.driver, seconds, poll_frequency=0.1,
                                 ignored_exceptions=[StaleElementReferenceException]).until(
                condition)
        except TimeoutException:
            shown = self.driver.execute_script(
                "const e = document.getElementById('error'); return e && !e.hidden && e.innerText")
            raise AssertionError(f"waited {seconds} s for {what}; the page's error: "
                                 f"{shown or 'none'}") from None

    def labelled(self, css: str, name: str, within: Any = None) -> Any:
        """The element matching ``css`` whose accessible name is ``name``, or None."""
        root = within or self.driver
        return next((e for e in root.find_elements(By.CSS_SELECTOR, css)
                     if e.accessible_name == name), None)

    def box(self) -> Any:
        return self.labelled("textarea, input", "Message")

    def user_select(self) -> Any:
        return self.labelled("select", "User")

    def switch(self, user: str) -> None:
        """Act as ``user``, once the page shows that user's view and listens for its updates."""
        select = Select(self.user_select())
        if select.first_selected_option.text == user:
            return
        select.select_by_visible_text(user)  # the page clears its live flag at once
        self.wait(lambda d: Select(self.user_select()).first_selected_option.text == user
                  and d.execute_script(LIVE), f"the page to switch to {user}")

    def send(self, line: str) -> None:
        """Type a line into the message box and press Enter, as a person does."""
        box = self.box()
        box.clear()
        box.send_keys(line)
        box.send_keys(Keys.ENTER)
        self.wait(lambda _: self.box().get_attribute("value") == "",
                  f"the message box to send {line!r}")

    def messages(self) -> list[dict[str, Any]]:
        return list(self.driver.execute_script(READ_MESSAGES))

    def message(self, message_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages() if m["id"] == message_id), None)

    def ids(self) -> set[str]:
        return {m["id"] for m in self.messages()}

    def new_message(self, before: set[str], test: Callable[[dict[str, Any]], bool], what: str,
                    seconds: float = UI_SECONDS) -> dict[str, Any]:
        """The first message not in ``before`` that passes ``test``, once there is one."""
        def found(_: Any) -> dict[str, Any] | None:
            return next((m for m in self.messages() if m["id"] not in before and test(m)), None)
        return dict(self.wait(found, what, seconds))

    def new_grid(self, before: set[str]) -> dict[str, Any]:
        """A new finished grid: its buttons, enabled, and its image loaded."""
        return self.new_message(before, is_grid, "a new grid with U1–U4, V1–V4 and 🔄",
                                JOB_SECONDS)

    def imagine(self, prompt: str, options: str = "steps: 4") -> dict[str, Any]:
        before = self.ids()
        self.send(f"/imagine prompt: {prompt} {options}".strip())
        return self.new_grid(before)

    def click(self, message_id: str, label: str) -> None:
        """Press the message's real <button> whose text is (or ends with) ``label``."""
        article = self.driver.find_element(
            By.CSS_SELECTOR, f'#messages article.message[data-message-id="{message_id}"]')
        button = next(b for b in article.find_elements(By.TAG_NAME, "button")
                      if b.text.strip() == label or b.text.strip().endswith(f" {label}"))
        button.click()

    def no_horizontal_scroll(self) -> bool:
        return bool(self.driver.execute_script(
            "const e = document.scrollingElement;"
            "return e.scrollWidth <= e.clientWidth && document.body.scrollWidth <= innerWidth;"))


def is_grid(message: dict[str, Any]) -> bool:
    enabled = {b["text"] for b in message["buttons"] if not b["disabled"]}
    return enabled >= GRID_BUTTONS and any(image["loaded"] for image in message["images"])


def is_ephemeral_reply(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: EPHEMERAL in m["text"] and text in m["text"]


@pytest.fixture
def channel(open_browser: Callable[..., Any], playground: PlaygroundProcess) -> Channel:
    # open_browser first: without a browser the test is skipped before the playground starts
    return Channel(open_browser(), playground.url)


def test_imagine_shows_previews_then_the_grid(channel: Channel) -> None:
    channel.driver.execute_script(WATCH_PREVIEWS)
    before = channel.ids()
    channel.send("/imagine a large red circle on a white background")  # the prompt, unnamed

    grid = channel.new_grid(before)
    assert [image["alt"] for image in grid["images"]] == [
        "a large red circle on a white background"]
    # The progress edits and the result are the same message, edited in place.
    previews = channel.driver.execute_script("return Array.from(window.previewsSeen)")
    assert grid["id"] in previews, f"no preview was shown; the page saw previews of {previews}"
    assert channel.no_horizontal_scroll()


def test_v1_makes_a_new_grid(channel: Channel, request: pytest.FixtureRequest) -> None:
    prompt = "a large yellow star on a blue background"
    first = channel.imagine(prompt, "seed: 7")  # the demo model's default 20 steps
    before = channel.ids()
    channel.click(first["id"], "V1")

    variation = channel.new_grid(before)
    assert variation["id"] != first["id"]
    assert [image["alt"] for image in variation["images"]] == [prompt]
    if request.config.getoption("--readme-screenshot"):
        save_readme_screenshot(channel)


def save_readme_screenshot(channel: Channel) -> None:
    """The README's picture: the variation grid whole, with the side panel caught up."""
    channel.wait(lambda d: not re.search(r"\b(queued|running)\b",
                                         d.find_element(By.ID, "queue").text),
                 "the queue panel to show every job finished")
    set_viewport(channel.driver, *README_VIEWPORT)
    channel.driver.execute_script(
        "const log = document.getElementById('messages'); log.scrollTop = log.scrollHeight;")
    channel.driver.save_screenshot(str(README_SCREENSHOT))


def test_remix_dialog_submits(channel: Channel) -> None:
    grid = channel.imagine("a large red circle on a white background")
    channel.click(grid["id"], "Remix")
    dialog = channel.wait(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "dialog[open]")),
                                         None), "the Remix dialog")
    assert dialog.find_element(By.CSS_SELECTOR, "h1, h2, h3").text == "Remix"
    prompt = channel.labelled("textarea, input", "Prompt", within=dialog)
    assert prompt is not None, "the dialog has no input labelled Prompt"
    assert prompt.get_attribute("value") == "a large red circle on a white background"
    prompt.clear()
    prompt.send_keys("a small green square on a black background")
    before = channel.ids()
    next(b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text == "Submit").click()

    channel.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"),
                 "the dialog to close")
    remixed = channel.new_grid(before)
    assert [image["alt"] for image in remixed["images"]] == [
        "a small green square on a black background"]


def available(message: dict[str, Any]) -> int:
    """The "Available" balance of a /credits reply."""
    found = re.search(r"Available\s*\**(\d+)", message["text"])
    assert found, f"no Available balance in {message['text']!r}"
    return int(found.group(1))


def balance(channel: Channel) -> int | None:
    text = channel.driver.find_element(By.ID, "balance").text
    return int(text) if re.fullmatch(r"-?\d+", text.strip()) else None


def test_admin_grant_changes_the_members_balance(channel: Channel) -> None:
    channel.switch("bob")
    before = channel.ids()
    channel.send("/credits")
    had = available(channel.new_message(before, is_ephemeral_reply("Available"),
                                        "bob's /credits"))

    channel.switch("admin")
    before = channel.ids()
    channel.send("/credits-admin grant user: bob amount: 25 reason: a playground test")
    granted = channel.new_message(before, is_ephemeral_reply("Granted"), "the grant's answer")
    assert f"Granted 25 credits to @bob. Their balance is now {had + 25}." in granted["text"]

    channel.switch("bob")
    channel.wait(lambda _: balance(channel) == had + 25, f"bob's balance to show {had + 25}")


def test_an_ephemeral_message_is_invisible_to_another_user(
        open_browser: Callable[..., Any], playground: PlaygroundProcess) -> None:
    alice = Channel(open_browser(), playground.url, "alice")
    bob = Channel(open_browser(), playground.url, "bob")
    before = alice.ids()
    alice.send("/credits")
    alices = alice.new_message(before, is_ephemeral_reply("Available"), "alice's /credits")
    # bob's own reply comes after alice's: had hers reached bob's page, it would be there now.
    before = bob.ids()
    bob.send("/credits")
    bobs = bob.new_message(before, is_ephemeral_reply("Available"), "bob's /credits")
    assert alices["id"] not in bob.ids()
    assert bobs["id"] not in alice.ids()
    # The same page, switched to bob, drops alice's message too.
    alice.switch("bob")
    alice.wait(lambda _: bobs["id"] in alice.ids(), "bob's view in alice's browser")
    assert alices["id"] not in alice.ids()


def test_a_bad_option_value_gets_the_bots_ephemeral_refusal(channel: Channel) -> None:
    before = channel.ids()
    # Within Discord's range for the option (the client would refuse more), over the bot's limit.
    channel.send("/imagine prompt: a red fox steps: 101")
    refusal = channel.new_message(before, is_ephemeral_reply("Steps must be between 1 and 100"),
                                  "the bot's refusal")
    assert not refusal["buttons"] and not refusal["images"]


def test_the_layout_holds_on_a_phone(open_browser: Callable[..., Any],
                                     playground: PlaygroundProcess) -> None:
    phone = Channel(open_browser(*PHONE), playground.url)
    phone.imagine("a large red circle on a white background")
    assert phone.no_horizontal_scroll()
    box = phone.box()
    assert box.is_displayed()
    inside = phone.driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.left >= 0 && r.right <= innerWidth && r.top >= 0 && r.bottom <= innerHeight;",
        box)
    assert inside, "the message box is not within the phone's viewport"
