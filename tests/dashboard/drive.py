"""Drives the dashboard in a real headless Chromium (Selenium), as an operator would.

Usage: drive.py main|prefix|open|outage ADMIN_URL PROXY_URL KEY SCREENSHOT_DIR GATEWAY_PID

`main`: a wrong key shows nothing; the right one shows the overview, routes with their
request rate, upstreams with node health, auth policies without secrets, the rejected
objects; an invalid edit is refused with its errors shown and nothing written; an edit
over a change someone else made since it was loaded is refused; a rejected version is
loaded as etcd holds it, fixed and written; a valid edit is written
and in force through the proxy. `prefix`: the same page works when ADMIN_URL is a proxy
serving the admin listener under a path prefix. `open`: with no admin key, the page opens
without asking for one. `outage` (etcd stopped): the last
snapshot is shown and the outage said; then the gateway itself stops (SIGSTOP) and the page
says it does not answer, keeping what it showed. Prints `OK step` lines; any failure raises.
"""

import json
import os
import signal
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

mode, admin, proxy, key, shots, gateway_pid = sys.argv[1:7]
WAIT = 15


def browser():
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for(driver, what, check):
    try:
        wait = WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(lambda d: check(d))
    except Exception as e:
        raise AssertionError(f"{what}: not seen within {WAIT}s; page text:\n{driver.find_element(By.TAG_NAME, 'body').text}") from e


def read(driver, css, how):
    """`how` of the first element `css` finds, or "" when there is none. The page redraws
    its views on every sample, so an element found can be replaced before it is read: then
    it is found again."""
    for _ in range(20):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        try:
            return how(found[0]) if found else ""
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css}: replaced on every read")


def text(driver, css):
    return read(driver, css, lambda element: element.text)


def go(driver, view):
    driver.find_element(By.CSS_SELECTOR, f'nav a[data-view="{view}"]').click()
    wait_for(driver, f"the {view} view", lambda d: d.find_element(By.CSS_SELECTOR, f'nav a[data-view="{view}"]').get_attribute("class") == "active")


def sign_in(driver, with_key):
    driver.get(admin + "/ui/")
    wait_for(driver, "the key form", lambda d: d.find_element(By.ID, "login").is_displayed())
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(with_key)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status


def admin_json(path):
    request = urllib.request.Request(admin + path, headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def status_of(url):
    try:
        return get(url)
    except urllib.error.HTTPError as e:
        return e.code


def see_rate(driver):
    """Sends requests to /hello until the routes view shows their rate."""
    deadline = time.time() + WAIT
    while True:
        for _ in range(20):
            get(proxy + "/hello")
        rate = text(driver, 'tr[data-route="hello"] td:nth-child(5)')
        if rate.endswith("/s") and float(rate[:-2]) > 0:
            return
        assert time.time() < deadline, f"no request rate on /hello: {text(driver, '#view')}"
        time.sleep(0.5)


def write_and_see(driver, area, yaml, path):
    """Writes `yaml` from the editor and waits for `path` to answer through the proxy."""
    area.clear()
    area.send_keys(yaml)
    driver.find_element(By.ID, "edit-write").click()
    wait_for(driver, "the write", lambda d: "Written at revision" in text(d, "#edit-written"))
    deadline = time.time() + WAIT
    while status_of(proxy + path) != 200:
        assert time.time() < deadline, f"{path} never answered"
        time.sleep(0.1)


def main(driver):
    # A wrong key: refused, and nothing of the configuration is shown.
    sign_in(driver, "not-the-key")
    wait_for(driver, "the refusal", lambda d: "refused" in text(d, "#login-error"))
    assert not driver.find_element(By.ID, "nav").is_displayed()
    assert text(driver, "#view") == "", text(driver, "#view")
    assert "hello" not in driver.page_source
    print("OK a wrong key shows nothing")

    sign_in(driver, key)
    wait_for(driver, "the overview", lambda d: text(d, "#revision").isdigit())
    assert "etcd" in text(driver, "#source-state")
    driver.save_screenshot(f"{shots}/overview.png")
    print("OK overview")

    # Traffic on a route shows in its row's rate within a few samples.
    go(driver, "routes")
    see_rate(driver)
    assert "/hello" in text(driver, 'tr[data-route="hello"]')
    # Each chart draws one point per sample: a few more samples, then the picture.
    for _ in range(12):
        for _ in range(10):
            get(proxy + "/hello")
        time.sleep(0.5)
    points = read(driver, 'tr[data-route="hello"] svg.spark polyline', lambda e: e.get_attribute("points"))
    assert len(points.split()) >= 3, points
    driver.save_screenshot(f"{shots}/routes.png")
    print("OK routes with their request rate")

    go(driver, "upstreams")
    wait_for(driver, "the node's health", lambda d: "healthy" in text(d, '[data-upstream="svc"]'))
    driver.save_screenshot(f"{shots}/upstreams.png")
    print("OK upstreams with node health")

    go(driver, "auth")
    wait_for(driver, "the policy", lambda d: "jwt-hs" in text(d, "#view"))
    for secret in ("dashboard-test-secret", "ZGFzaGJvYXJkLXRlc3Qtc2VjcmV0"):
        assert secret not in driver.page_source, "a secret is shown"
    print("OK auth policies without their secrets")

    go(driver, "rejected")
    wait_for(driver, "the rejected route", lambda d: "broken" in text(d, "#view") and "upstream" in text(d, "#view"))
    driver.save_screenshot(f"{shots}/rejected.png")
    print("OK rejected objects with their errors")

    # Edit: an invalid version is refused with its errors, nothing written.
    go(driver, "edit")
    kinds = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "edit-kind")).options]
    assert "auth" not in kinds, "auth policies cannot be written back without their secrets"
    Select(driver.find_element(By.ID, "edit-kind")).select_by_value("routes")
    driver.find_element(By.ID, "edit-id").send_keys("hello")
    driver.find_element(By.ID, "edit-load").click()
    area = driver.find_element(By.ID, "edit-yaml")
    wait_for(driver, "the route as YAML", lambda d: "/hello" in area.get_attribute("value"))
    original = area.get_attribute("value")
    area.clear()
    area.send_keys(original.replace("upstream: svc", "upstream: nowhere"))
    driver.find_element(By.ID, "edit-write").click()
    wait_for(driver, "the validation errors", lambda d: "nowhere" in text(d, "#edit-errors"))
    driver.save_screenshot(f"{shots}/edit-refused.png")
    assert status_of(proxy + "/hello") == 200
    print("OK an invalid edit is refused, its errors shown, nothing written")

    # An unchanged resource loaded and written back stays exactly as it was.
    before = admin_json("/admin/routes/tricky")
    driver.find_element(By.ID, "edit-id").clear()
    driver.find_element(By.ID, "edit-id").send_keys("tricky")
    driver.find_element(By.ID, "edit-load").click()
    wait_for(driver, "the tricky route", lambda d: "/tricky" in area.get_attribute("value"))
    driver.find_element(By.ID, "edit-write").click()
    wait_for(driver, "the write", lambda d: "Written at revision" in text(d, "#edit-written"))
    after = admin_json("/admin/routes/tricky")
    assert before == after, f"{before} became {after}"
    print("OK a resource loaded and written back unchanged stays as it was")

    # Someone else writes the resource after it was loaded here: the page's write is
    # refused, and the other version stays.
    driver.find_element(By.ID, "edit-load").click()
    wait_for(driver, "the tricky route", lambda d: "/tricky" in area.get_attribute("value"))
    theirs = admin_json("/admin/routes/tricky")
    request = urllib.request.Request(admin + "/admin/routes/tricky", method="PUT", data=json.dumps(theirs).encode(),
                                     headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    edited = area.get_attribute("value").replace("/tricky", "/tricky-here")
    area.clear()
    area.send_keys(edited)
    driver.find_element(By.ID, "edit-write").click()
    wait_for(driver, "the refusal", lambda d: "changed" in text(d, "#edit-changed"))
    assert admin_json("/admin/routes/tricky") == theirs
    assert status_of(proxy + "/tricky-here") == 404
    print("OK a write over someone else's newer change is refused")

    # A rejected version is loaded as etcd holds it, said to be the rejected one, fixed
    # and written: it is in force and no longer rejected.
    driver.find_element(By.ID, "edit-id").clear()
    driver.find_element(By.ID, "edit-id").send_keys("broken")
    driver.find_element(By.ID, "edit-load").click()
    wait_for(driver, "the rejected text", lambda d: "upstream: missing" in area.get_attribute("value"))
    assert "rejected" in text(driver, "#edit-rejected"), text(driver, "#edit-result")
    fixed = area.get_attribute("value").replace("upstream: missing", "upstream: svc")
    write_and_see(driver, area, fixed, "/broken")
    assert not admin_json("/admin/status")["rejected"], "the fixed route is still rejected"
    print("OK a rejected version is loaded, fixed and in force")

    # A valid edit is written and in force.
    driver.find_element(By.ID, "edit-id").clear()
    driver.find_element(By.ID, "edit-id").send_keys("hello")
    driver.find_element(By.ID, "edit-load").click()
    wait_for(driver, "the route as YAML", lambda d: "/hello" in area.get_attribute("value"))
    write_and_see(driver, area, original.replace("/hello", "/edited"), "/edited")
    assert status_of(proxy + "/hello") == 404
    print("OK a valid edit is in force")

    # Without loading anything, a write only creates: a new route is written, an existing
    # one is not overwritten.
    driver.find_element(By.ID, "edit-id").clear()
    driver.find_element(By.ID, "edit-id").send_keys("created-here")
    write_and_see(driver, area, 'match: { paths: ["/created-here"] }\nupstream: svc\n', "/created-here")
    driver.find_element(By.ID, "edit-id").clear()
    driver.find_element(By.ID, "edit-id").send_keys("tricky")
    area.clear()
    area.send_keys('match: { paths: ["/overwritten"] }\nupstream: svc\n')
    driver.find_element(By.ID, "edit-write").click()
    wait_for(driver, "the refusal", lambda d: "already" in text(d, "#edit-changed"))
    assert status_of(proxy + "/overwritten") == 404
    assert "/overwritten" not in json.dumps(admin_json("/admin/routes/tricky"))
    print("OK a write of nothing loaded only creates")


def prefix(driver):
    # `admin` is a proxy serving the admin listener under a path prefix: the page, the
    # admin API and the metrics are all read through it.
    driver.get(admin + "/ui")
    wait_for(driver, "the page after the redirect", lambda d: d.current_url.endswith("/ui/"))
    assert "/ui/" in driver.current_url and admin in driver.current_url, driver.current_url
    sign_in(driver, key)
    wait_for(driver, "the overview", lambda d: text(d, "#revision").isdigit())
    go(driver, "routes")
    see_rate(driver)
    print("OK behind a path prefix")


def open_reads(driver):
    # The gateway has no admin key: the page opens without asking for one.
    driver.get(admin + "/ui/")
    wait_for(driver, "the overview", lambda d: text(d, "#revision").isdigit())
    assert not driver.find_element(By.ID, "login").is_displayed(), "a key was asked for"
    go(driver, "routes")
    wait_for(driver, "the routes", lambda d: "/hello" in text(d, "#view"))
    print("OK without a key the page opens")


def outage(driver):
    sign_in(driver, key)
    wait_for(driver, "the outage said", lambda d: "cannot be reached" in text(d, "#outage"))
    assert "serving" in text(driver, "#outage") or "keeps serving" in text(driver, "#outage")
    go(driver, "routes")
    wait_for(driver, "the last snapshot's routes", lambda d: "edited" in text(d, "#view"))
    driver.save_screenshot(f"{shots}/outage.png")
    print("OK etcd down: the last snapshot shown, the outage said")

    os.kill(int(gateway_pid), signal.SIGSTOP)
    try:
        wait_for(driver, "the gateway said silent", lambda d: "does not answer" in text(d, "#outage"))
        assert "edited" in text(driver, "#view"), "what was shown stays"
    finally:
        os.kill(int(gateway_pid), signal.SIGCONT)
    print("OK the gateway stopped: said, and the last view kept")


driver = browser()
try:
    {"main": main, "prefix": prefix, "open": open_reads, "outage": outage}[mode](driver)
finally:
    driver.quit()
