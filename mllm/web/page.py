"""Drive the page of ``mllm web`` from a headless Chromium (Playwright): what the browser test
(``tests/test_web.py``) and the screenshot script (``scripts/web_screenshots.py``) share.

Playwright is a development dependency (``mllm[dev]``) and drives the system's Chromium
(Debian: ``apt-get install chromium``), since its own browser download is not reachable
everywhere. ``MLLM_CHROMIUM`` names another Chromium executable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("MLLM_CHROMIUM", "/usr/bin/chromium"))

#: Counts the page's answers: a generation starts when the Stop button appears and ends when
#: it goes (the page hides it again in every case: answered, stopped or failed). A
#: MutationObserver sees each change, however short, so a fast answer is not missed.
_WATCH_ANSWERS = """
() => {
  window.mllmAnswers = 0;
  window.mllmBusy = false;
  new MutationObserver(() => {
    const stop = document.querySelector('#stop');
    const busy = stop !== null && stop.offsetParent !== null;
    if (window.mllmBusy && !busy) window.mllmAnswers += 1;
    window.mllmBusy = busy;
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}
"""


#: Gradio's error and warning messages.
_TOAST = "[data-testid='toast-text']"


class PageError(AssertionError):
    """The page showed an error or a warning where an answer was expected."""


class ChromiumMissingError(RuntimeError):
    """No Chromium at :data:`CHROMIUM`; the message says how to install one."""


@contextmanager
def chromium(executable: Path = CHROMIUM) -> Iterator[Browser]:
    """A headless Chromium from ``executable``, closed on exit.

    Raises:
        ChromiumMissingError: ``executable`` does not exist.
    """
    if not executable.is_file():
        raise ChromiumMissingError(
            f"no Chromium at {executable}: install Debian's (apt-get install chromium) or set "
            "MLLM_CHROMIUM to a Chromium executable (Playwright's own download is not used)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class DemoPage:
    """One tab of the page, with the steps a user takes; each answer step waits until the page
    is idle again."""

    def __init__(self, page: Page, url: str, *, timeout_s: float = 60) -> None:
        self.page = page
        self._answers_before = 0  # when the answer :meth:`start` started began
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        page.locator("#send").wait_for()
        page.evaluate(_WATCH_ANSWERS)

    def upload(self, image: Path) -> None:
        """Choose ``image`` and wait until the page shows an image (the first upload of a tab;
        the page starts a new conversation when the image changes, before or with the next
        answer)."""
        self.page.locator("#image input[type=file]").set_input_files(str(image))
        self.page.locator("#image img").wait_for()

    def ask(self, question: str, *, press_enter: bool = False) -> str:
        """Type ``question``, send it (Send, or Enter), and return the finished answer."""
        box = self.page.locator("#question textarea")
        box.fill(question)
        self._run(lambda: box.press("Enter") if press_enter else self.page.locator("#send").click())
        return self.answers()[-1]

    def regenerate(self) -> str:
        self._run(lambda: self.page.locator("#regenerate").click())
        return self.answers()[-1]

    def start(self, question: str) -> None:
        """Send ``question`` and return once generation has started (Stop is shown)."""
        self.page.locator("#question textarea").fill(question)
        self._answers_before = self._answers_done()
        self.page.locator("#send").click()
        self.page.locator("#stop").wait_for(state="visible")

    def stop(self) -> None:
        """Press Stop and wait until the page is idle."""
        self.page.locator("#stop").click()
        self._wait_idle(self._answers_before)

    def clear(self) -> None:
        self.page.locator("#clear").click()
        self.wait_for_empty_chat()

    def wait_for_empty_chat(self) -> None:
        self.page.locator("#chat [data-testid='user']").first.wait_for(state="detached")

    def choose_example(self, index: int, question: str) -> None:
        """Click example ``index`` and wait until it has filled the image and ``question``."""
        from playwright.sync_api import expect

        self.page.locator("#examples tr.tr-body").nth(index).click()
        expect(self.page.locator("#question textarea")).to_have_value(question)
        self.page.locator("#image img").wait_for()

    def question_text(self) -> str:
        return self.page.locator("#question textarea").input_value()

    def questions(self) -> list[str]:
        return [
            t.strip() for t in self.page.locator("#chat [data-testid='user']").all_inner_texts()
        ]

    def answers(self) -> list[str]:
        return [t.strip() for t in self.page.locator("#chat [data-testid='bot']").all_inner_texts()]

    def model_card(self) -> str:
        return self.page.locator("#model-card").inner_text()

    def _answers_done(self) -> int:
        return self.page.evaluate("window.mllmAnswers")

    def _run(self, action: Callable[[], None]) -> None:
        before = self._answers_done()
        action()
        self._wait_idle(before)

    def _wait_idle(self, before: int) -> None:
        """Wait until an answer that started after ``before`` answers has ended.

        Raises:
            PageError: the page showed an error or a warning instead.
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                f"(window.mllmAnswers > {before} && !window.mllmBusy)"
                f" || document.querySelector({_TOAST!r}) !== null",
                polling=50,
            )
        except PlaywrightTimeout:
            answers, busy = self.page.evaluate("[window.mllmAnswers, window.mllmBusy]")
            raise PageError(
                f"no answer ended: {answers - before} answers ended, Stop "
                f"{'shown' if busy else 'hidden'}; questions {self.questions()}, "
                f"answers {self.answers()}"
            ) from None
        toasts = self.page.locator(_TOAST).all_inner_texts()
        if toasts:
            raise PageError("; ".join(toasts))
