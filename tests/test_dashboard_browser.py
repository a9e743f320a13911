"""Browser tests of the dashboard's page, against a real ``queue.serve_dashboard()``.

Playwright drives Debian's chromium (``/usr/bin/chromium``; it never
downloads a browser). The module is skipped when either is missing, unless
``TASKQUEUE_REQUIRE_BROWSER=1`` says a missing browser is a failure (in CI).
One browser serves the module; each test gets a fresh context and page,
and waits with Playwright's auto-retrying ``expect``, never with a sleep.
Tasks are held on a :class:`threading.Event` where a test needs them running.

Every page is watched: it must raise no error, log no console error (a
Content-Security-Policy violation is one), and fetch nothing from any host
but the dashboard's own.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import pytest

from taskqueue import Task, TaskQueue, TaskState

from conftest import WAIT

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("TASKQUEUE_REQUIRE_BROWSER") == "1"
TOKEN = "s3cret-token"
EXPECT_MS = 10_000  # how long an expectation on the page may take to come true
XSS = '<img src=x onerror="window.__xss = 1">'


def _unavailable() -> Optional[str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}); pip install -e '.[browser]'"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def _unusable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"TASKQUEUE_REQUIRE_BROWSER=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


_reason = _unavailable()
if _reason is not None:
    _unusable(_reason)

from playwright.sync_api import Browser, Error, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.timeout(60)


# -- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=["--no-sandbox"])
        except Error as exc:
            _unusable(f"{CHROMIUM} does not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page, and what it did: every URL it asked for, its errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: List[str] = []
        self.posts: List[Dict[str, str]] = []
        self.errors: List[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        if request.method == "POST":
            self.posts.append({"url": request.url, **request.headers})

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        # The browser logs every API answer >= 400 (a refused token, an unknown
        # id, a closed server) and its own favicon request: the page handles
        # those. A page file that fails to load, a script error or a CSP
        # violation is still an error.
        path = urlsplit(message.location.get("url", "")).path
        if message.text.startswith("Failed to load resource") and (
                path.startswith("/api/") or path == "/favicon.ico"):
            return
        self.errors.append(f"console: {message.text} ({message.location})")

    def testid(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def post(self, path: str, authorization: Optional[str] = None) -> int:
        """POST ``path`` from the page's own context (as a forged script would); the status."""
        return self.page.evaluate(
            """async ([path, authorization]) => {
                 const headers = authorization === null ? {} : {Authorization: authorization};
                 const response = await fetch(path, {method: "POST", headers: headers});
                 return response.status;
               }""", [path, authorization])


@pytest.fixture
def watched(browser: Browser) -> Iterator[Callable[[Any], Watched]]:
    """Yield a factory: open a dashboard in a fresh page; every page is checked afterwards."""
    opened: List[tuple] = []

    def open_page(dashboard: Any) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        view = Watched(context.new_page())
        opened.append((context, view, dashboard.url))
        view.page.goto(dashboard.url)
        expect(view.testid("status-text")).to_contain_text("updated", timeout=EXPECT_MS)
        return view

    yield open_page
    for context, view, url in opened:
        try:
            origin = urlsplit(url).netloc
            foreign = [u for u in view.urls if urlsplit(u).netloc != origin]
            assert foreign == [], f"the page fetched from another host: {foreign}"
            assert view.errors == []
        finally:
            context.close()


@pytest.fixture
def gate(make_queue: Callable[..., TaskQueue]) -> Iterator[threading.Event]:
    """An Event that held tasks wait on; set afterwards, before the queues shut down."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def serve(make_queue: Callable[..., TaskQueue]) -> Iterator[Callable[..., Any]]:
    """Yield a factory of dashboards of a queue; each is closed afterwards."""
    made: List[Any] = []

    def make(queue: TaskQueue, token: Optional[str] = None, host: str = "127.0.0.1") -> Any:
        dashboard = queue.serve_dashboard(host=host, token=token)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()


def fail_first_time() -> Callable[[], str]:
    """A task function that raises on its first call and returns on the next."""
    failed = threading.Event()

    def flaky() -> str:
        if not failed.is_set():
            failed.set()
            raise ConnectionError("gateway timed out")
        return "ok"

    return flaky


def raise_error(message: str) -> None:
    raise ValueError(message)


def dead_letter_of(queue: TaskQueue, task: Task) -> str:
    """Submit ``task``, which fails, and return its id once it is a dead letter."""
    handle = queue.submit(task)
    with pytest.raises(Exception):
        handle.result(timeout=WAIT)
    assert any(letter.task_id == handle.id for letter in queue.dead_letters())
    return handle.id


# -- what the page shows ---------------------------------------------------------------

def test_the_page_shows_the_totals_of_a_real_queue(make_queue: Any, serve: Any,
                                                    watched: Any) -> None:
    queue = make_queue(workers=2, name="billing")
    for n in range(3):
        queue.submit(abs, -n).result(timeout=WAIT)
    view = watched(serve(queue))

    expect(view.testid("queue-name")).to_have_text("billing")
    expect(view.testid("total-submitted")).to_have_text("3")
    expect(view.testid("total-succeeded")).to_have_text("3")
    expect(view.testid("total-failed")).to_have_text("0")
    expect(view.testid("total-workers")).to_have_text("2")
    expect(view.testid("total-dead-letters")).to_have_text("0")
    expect(view.testid("mode")).to_have_text("read-only")
    expect(view.testid("chart").locator("svg")).to_have_count(1)
    expect(view.testid("process-row")).to_have_count(1)
    expect(view.testid("dead-empty")).to_be_visible()
    assert view.page.title() == "billing \u00b7 taskqueue"


def test_the_counts_change_as_tasks_run(make_queue: Any, serve: Any, watched: Any,
                                        gate: threading.Event) -> None:
    # Given two workers held by the first two of five tasks
    queue = make_queue(workers=2)
    started = threading.Semaphore(0)

    def held() -> None:
        started.release()
        gate.wait(WAIT)

    handles = [queue.submit(Task(held, name="held.job")) for _ in range(5)]
    assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
    view = watched(serve(queue))

    # Then the page shows two running and three pending
    expect(view.testid("total-running")).to_have_text("2", timeout=EXPECT_MS)
    expect(view.testid("total-pending")).to_have_text("3", timeout=EXPECT_MS)
    expect(view.testid("total-succeeded")).to_have_text("0")
    expect(view.testid("running-row")).to_have_count(2, timeout=EXPECT_MS)
    expect(view.testid("running-row").first).to_contain_text("held.job")
    expect(view.testid("priority-row")).to_have_count(1, timeout=EXPECT_MS)
    expect(view.testid("priority-row").locator("td").nth(1)).to_have_text("3")

    # When they are let go, the page follows them to the end
    gate.set()
    for handle in handles:
        handle.result(timeout=WAIT)
    expect(view.testid("total-succeeded")).to_have_text("5", timeout=EXPECT_MS)
    expect(view.testid("total-running")).to_have_text("0")
    expect(view.testid("total-pending")).to_have_text("0")
    expect(view.testid("running-empty")).to_be_visible()
    expect(view.testid("priorities-empty")).to_be_visible()
    # and the chart has drawn its completions from at least two samples
    expect(view.testid("chart-line")).to_have_count(1, timeout=EXPECT_MS)


def test_a_task_is_looked_up_by_id(make_queue: Any, serve: Any, watched: Any,
                                   gate: threading.Event) -> None:
    queue = make_queue(workers=1)
    started = threading.Event()

    def held() -> str:
        started.set()
        gate.wait(WAIT)
        return "done"

    handle = queue.submit(Task(held, name="reports.monthly"))
    assert started.wait(WAIT)
    view = watched(serve(queue))

    view.testid("lookup-input").fill(handle.id)
    view.testid("lookup-button").click()
    expect(view.testid("lookup-state")).to_have_text("running", timeout=EXPECT_MS)
    expect(view.testid("lookup-name")).to_have_text("reports.monthly")
    expect(view.testid("lookup-id")).to_have_text(handle.id)
    expect(view.testid("lookup-attempts")).to_have_text("1")

    # The result follows the task until it ends
    gate.set()
    handle.result(timeout=WAIT)
    expect(view.testid("lookup-state")).to_have_text("succeeded", timeout=EXPECT_MS)
    expect(view.testid("lookup-finished-at")).not_to_have_text("\u2013")

    view.testid("lookup-input").fill("no-such-task")
    view.testid("lookup-input").press("Enter")
    expect(view.testid("lookup-result")).to_have_text("unknown task no-such-task",
                                                      timeout=EXPECT_MS)


def test_a_task_name_with_html_is_shown_as_text(make_queue: Any, serve: Any,
                                                watched: Any) -> None:
    queue = make_queue(workers=1)
    error = '<script>window.__xss = 2</script>'
    task_id = dead_letter_of(queue, Task(raise_error, (error,), name=XSS))
    view = watched(serve(queue))

    expect(view.testid("dead-name")).to_have_text(XSS, timeout=EXPECT_MS)
    expect(view.testid("dead-error")).to_have_text(f"ValueError: {error}")
    view.testid("dead-error").click()  # open the traceback
    expect(view.testid("dead-traceback")).to_contain_text(error)
    view.testid("lookup-input").fill(task_id)
    view.testid("lookup-button").click()
    expect(view.testid("lookup-name")).to_have_text(XSS, timeout=EXPECT_MS)
    expect(view.testid("lookup-error")).to_have_text(f"ValueError: {error}")

    assert view.page.locator("img").count() == 0
    assert view.page.locator("main script").count() == 0
    assert view.page.evaluate("window.__xss") is None


def test_the_page_says_when_the_connection_is_lost(make_queue: Any, serve: Any,
                                                   watched: Any) -> None:
    queue = make_queue(workers=1)
    dashboard = serve(queue)
    view = watched(dashboard)
    dashboard.close()
    expect(view.testid("status-text")).to_contain_text("connection lost", timeout=EXPECT_MS)


# -- acting with the token ---------------------------------------------------------------

def test_a_dead_letter_is_requeued_with_the_token(make_queue: Any, serve: Any,
                                                  watched: Any) -> None:
    # Given a task that failed once and will succeed when run again
    queue = make_queue(workers=1)
    task_id = dead_letter_of(queue, Task(fail_first_time(), name="billing.charge"))
    view = watched(serve(queue, token=TOKEN))
    expect(view.testid("dead-row")).to_have_count(1, timeout=EXPECT_MS)
    expect(view.testid("total-dead-letters")).to_have_text("1")
    expect(view.testid("total-succeeded")).to_have_text("0")
    expect(view.testid("mode")).to_have_text("actions on")
    expect(view.testid("token-prompt")).to_have_count(0)

    # When requeue is clicked, the page asks for the token; a wrong one is refused
    view.testid("requeue-button").click()
    expect(view.testid("token-prompt")).to_be_visible()
    view.testid("token-input").fill("not-the-token")
    view.testid("token-submit").click()
    expect(view.testid("token-error")).to_be_visible(timeout=EXPECT_MS)
    assert queue.stats().dead_letters == 1
    view.testid("token-input").fill(TOKEN)
    view.testid("token-submit").click()

    # Then the task runs again and succeeds; its dead letter is gone
    expect(view.testid("token-prompt")).to_have_count(0)
    expect(view.testid("total-succeeded")).to_have_text("1", timeout=EXPECT_MS)
    expect(view.testid("total-dead-letters")).to_have_text("0")
    expect(view.testid("dead-row")).to_have_count(0)
    expect(view.testid("action-message")).to_contain_text(task_id)
    assert queue.dead_letters() == []
    assert view.posts[-1]["authorization"] == f"Bearer {TOKEN}"
    assert [p["authorization"] for p in view.posts] == ["Bearer not-the-token", f"Bearer {TOKEN}"]
    # kept in the tab's sessionStorage, never in a cookie
    assert view.page.evaluate("sessionStorage.getItem('taskqueue.dashboard.token')") == TOKEN
    assert view.page.evaluate("document.cookie") == ""
    assert view.page.context.cookies() == []


def test_the_token_is_asked_for_once(make_queue: Any, serve: Any, watched: Any) -> None:
    queue = make_queue(workers=1)
    for n in range(2):
        dead_letter_of(queue, Task(fail_first_time(), name=f"job{n}"))
    view = watched(serve(queue, token=TOKEN))
    expect(view.testid("dead-row")).to_have_count(2, timeout=EXPECT_MS)

    view.testid("requeue-button").first.click()
    view.testid("token-input").fill(TOKEN)
    view.testid("token-submit").click()
    expect(view.testid("dead-row")).to_have_count(1, timeout=EXPECT_MS)
    expect(view.testid("total-succeeded")).to_have_text("1", timeout=EXPECT_MS)
    # The second action (purge, asked twice) uses the kept token: no prompt
    view.testid("purge-button").click()
    view.testid("purge-confirm").click()
    expect(view.testid("dead-row")).to_have_count(0, timeout=EXPECT_MS)
    expect(view.testid("token-prompt")).to_have_count(0)
    assert queue.dead_letters() == []
    assert len(view.posts) == 2


def test_a_scheduled_task_is_cancelled_from_its_look_up(make_queue: Any, serve: Any,
                                                        watched: Any) -> None:
    queue = make_queue(workers=1)
    handle = queue.submit(Task(abs, (-1,), name="later.job", delay=60))
    view = watched(serve(queue, token=TOKEN))
    expect(view.testid("scheduled-row")).to_have_count(1, timeout=EXPECT_MS)
    expect(view.testid("scheduled-row")).to_contain_text("later.job")

    # A task's id in a table looks it up
    view.testid("scheduled-row").get_by_role("link").click()
    expect(view.testid("lookup-state")).to_have_text("scheduled", timeout=EXPECT_MS)
    view.testid("cancel-button").click()
    view.testid("token-input").fill(TOKEN)
    view.testid("token-submit").click()

    expect(view.testid("lookup-state")).to_have_text("cancelled", timeout=EXPECT_MS)
    expect(view.testid("total-cancelled")).to_have_text("1", timeout=EXPECT_MS)
    expect(view.testid("cancel-button")).to_have_count(0)
    expect(view.testid("scheduled-row")).to_have_count(0)
    assert handle.state is TaskState.CANCELLED


def test_on_a_public_address_the_page_asks_for_the_token_before_it_shows_anything(
        make_queue: Any, serve: Any, browser: Browser) -> None:
    queue = make_queue(workers=1)
    dead_letter_of(queue, Task(raise_error, ("secret detail",), name="job"))
    dashboard = serve(queue, token=TOKEN, host="0.0.0.0")
    context = browser.new_context()
    try:
        view = Watched(context.new_page())
        view.page.goto(f"http://127.0.0.1:{dashboard.port}/")
        # The page's files came, but no figure: the form asks for the token
        expect(view.testid("token-prompt")).to_be_visible(timeout=EXPECT_MS)
        expect(view.testid("total-failed")).not_to_have_text("1")
        assert "secret detail" not in view.page.content()
        # A wrong one is refused and asked for again
        view.testid("token-input").fill("wrong-token")
        view.testid("token-submit").click()
        expect(view.testid("token-error")).to_be_visible(timeout=EXPECT_MS)
        view.testid("token-input").fill(TOKEN)
        view.testid("token-submit").click()
        expect(view.testid("status-text")).to_contain_text("updated", timeout=EXPECT_MS)
        expect(view.testid("total-failed")).to_have_text("1", timeout=EXPECT_MS)
        expect(view.testid("dead-row")).to_contain_text("secret detail", timeout=EXPECT_MS)
        # Kept in the tab's sessionStorage, never a cookie
        assert view.page.evaluate("() => sessionStorage.length") == 1
        assert context.cookies() == []
        assert view.errors == []
    finally:
        context.close()


def test_on_a_public_address_a_cancelled_token_form_waits_for_a_click(
        make_queue: Any, serve: Any, browser: Browser) -> None:
    queue = make_queue(workers=1)
    dashboard = serve(queue, token=TOKEN, host="0.0.0.0")
    context = browser.new_context()
    try:
        view = Watched(context.new_page())
        view.page.goto(f"http://127.0.0.1:{dashboard.port}/")
        view.testid("token-cancel").click()
        # The form is not asked again by itself: a button in the top bar does
        expect(view.testid("token-needed")).to_be_visible(timeout=EXPECT_MS)
        expect(view.testid("status-text")).to_contain_text("needs the dashboard's token",
                                                           timeout=EXPECT_MS)
        asked = {urlsplit(u).path for u in view.urls if "/api/" in u}
        expect(view.testid("token-prompt")).to_have_count(0)
        view.testid("token-needed").click()
        view.testid("token-input").fill(TOKEN)
        view.testid("token-submit").click()
        expect(view.testid("status-text")).to_contain_text("updated", timeout=EXPECT_MS)
        expect(view.testid("token-needed")).to_have_count(0)
        assert asked == {"/api/config"}  # meanwhile only the config, every 2 s, was asked
        assert view.errors == []
    finally:
        context.close()


# -- refusing ------------------------------------------------------------------------

def test_without_a_token_the_page_has_no_buttons(make_queue: Any, serve: Any,
                                                 watched: Any) -> None:
    queue = make_queue(workers=1)
    dead_letter_of(queue, Task(raise_error, ("bad",), name="job"))
    scheduled = queue.submit(Task(abs, (-1,), name="later.job", delay=60))
    view = watched(serve(queue, token=None))
    expect(view.testid("dead-row")).to_have_count(1, timeout=EXPECT_MS)
    view.testid("lookup-input").fill(scheduled.id)
    view.testid("lookup-button").click()
    expect(view.testid("lookup-state")).to_have_text("scheduled", timeout=EXPECT_MS)

    # Not hidden: absent. The look-up's own button is the page's only one.
    buttons = view.page.locator("button, input[type=submit], input[type=button]")
    expect(buttons).to_have_count(1)
    expect(view.testid("lookup-button")).to_have_count(1)
    for testid in ("requeue-button", "purge-button", "purge-confirm", "cancel-button",
                   "token-prompt", "token-input"):
        expect(view.testid(testid)).to_have_count(0)
    expect(view.testid("mode")).to_have_text("read-only")


@pytest.mark.parametrize("token", [None, TOKEN], ids=["read-only", "with-token"])
def test_a_forged_post_from_the_page_is_refused(make_queue: Any, serve: Any, watched: Any,
                                                token: Optional[str]) -> None:
    queue = make_queue(workers=1)
    dead_id = dead_letter_of(queue, Task(raise_error, ("bad",), name="job"))
    scheduled = queue.submit(Task(abs, (-1,), name="later.job", delay=60))
    view = watched(serve(queue, token=token))
    before = queue.stats()

    for path in (f"/api/dead/{dead_id}/requeue", "/api/dead/purge",
                 f"/api/tasks/{scheduled.id}/cancel"):
        for authorization in (None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN):
            assert view.post(path, authorization) == 403, (path, authorization)

    # Nothing changed
    assert [letter.task_id for letter in queue.dead_letters()] == [dead_id]
    assert scheduled.state is TaskState.SCHEDULED
    after = queue.stats()
    assert (after.submitted, after.succeeded, after.cancelled, after.dead_letters) == \
        (before.submitted, before.succeeded, before.cancelled, before.dead_letters)
    expect(view.testid("total-dead-letters")).to_have_text("1")


def test_nothing_is_fetched_from_another_host(make_queue: Any, serve: Any,
                                              watched: Any) -> None:
    queue = make_queue(workers=1)
    dead_letter_of(queue, Task(raise_error, ("bad",), name="job"))
    dashboard = serve(queue, token=TOKEN)
    view = watched(dashboard)
    expect(view.testid("dead-row")).to_have_count(1, timeout=EXPECT_MS)
    # Two refreshes at least, and the token form opened
    with view.page.expect_request(lambda r: r.url.endswith("/api/stats"), timeout=EXPECT_MS):
        pass
    view.testid("requeue-button").click()
    expect(view.testid("token-prompt")).to_be_visible()
    view.testid("token-cancel").click()
    expect(view.testid("token-prompt")).to_have_count(0)

    paths = {urlsplit(url).path for url in view.urls}
    assert {"/", "/static/app.js", "/static/style.css", "/api/config", "/api/stats",
            "/api/series", "/api/overview", "/api/dead"} <= paths
    assert all(url.startswith(dashboard.url) for url in view.urls), view.urls
    assert view.posts == []  # cancelled: nothing was sent
    assert len(queue.dead_letters()) == 1
