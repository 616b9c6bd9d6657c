"""Drives the hub's dashboard in a real browser (Debian's chromium through chromium-driver and
Selenium) against a running hub, and saves a screenshot of each page.

Run by tests/tests/e2e/dashboard.rs, which starts the hub with the rule `too-warm` (any device's
`temp` above 50 fires, and sends the device an `echo`) and an idle firmware-sim device (`door-1`,
answering commands), and seeds an hour of `door-1`'s readings (a number `temp`, a boolean `open`,
a string `mode`) and a few of `green-1`. This script makes its own tokens with the admin token,
then checks, each step waiting with a deadline (never a sleep):

1. sign in with a token pasted into the form; the fleet page lists both devices;
2. a reading published with mosquitto_pub shows on the fleet page live, then on the device
   page's value and charts without a reload: a point appended to the number's line chart and to
   the boolean's state band, and the string on top of its recent-values list;
3. the device's recent commands are listed under the form; a command sent from the form reaches
   firmware-sim and its result shows, and is still listed with its result after a reload;
4. the alerts page (from the navigation) shows door-1's alert firing as the stream announces it,
   then resolved, then firing again; the command the rule sent is on door-1's page;
5. a read-only token sees neither the command form nor the command list; a token limited to
   `green-*` never sees `door-1`: not in the fleet, its device page refused, none of its alerts
   (nor its alert events) on the alerts page, while green-1's show live;
6. after sign-out the page shows the sign-in form and the API refuses the old cookie; after its
   token is revoked a session is refused, on the page and on the WebSocket;
7. a page of another origin (same site: https://localhost on another port, served here with the
   hub's own server certificate) can neither open the stream nor post a form with the cookie.

The browser trusts the hub through `--ignore-certificate-errors`, for this test browser only.
Exit 0 when every check passes; otherwise a message and exit 1 (screenshots are kept).
"""

import argparse
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DEADLINE_S = 30


class Hub:
    """The hub's REST API with the admin token, trusting its CA."""

    def __init__(self, url, ca, admin):
        self.url = url
        self.admin = admin
        self.context = ssl.create_default_context(cafile=ca)

    def call(self, method, path, body=None, bearer=True, headers=None):
        """A request, with the admin token unless `bearer` is False; status and JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if bearer:
            request.add_header("authorization", f"Bearer {self.admin}")
        if data is not None:
            request.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def token(self, name, scopes, devices=()):
        status, body = self.call("POST", "/api/v1/tokens",
                                 {"name": name, "scopes": scopes, "devices": list(devices)})
        assert status == 201, (status, body)
        return body["secret"], body["id"]


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--ignore-certificate-errors", "--window-size=1280,900"):
        options.add_argument(flag)
    service = webdriver.ChromeService(
        executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def wait(driver, what, check):
    try:
        return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.1).until(lambda d: check(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for: {what}") from None


def js(driver, code, *args):
    return driver.execute_script(code, *args)


def sign_in(driver, url, token):
    driver.get(url + "/#/")
    field = wait(driver, "the sign-in form", lambda d: d.find_elements(By.ID, "token"))[0]
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    wait(driver, "the fleet page", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "fleet")


def sign_out(driver):
    driver.find_element(By.ID, "signout").click()
    wait(driver, "the sign-in form after sign-out", lambda d: d.find_elements(By.ID, "token"))


def fleet_ids(driver):
    return js(driver, "return [...document.querySelectorAll('#fleet tr[data-device]')].map(r => r.dataset.device)")


def publish(port, device, metrics):
    subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t", f"devices/{device}/telemetry",
                    "-m", json.dumps(metrics)], check=True, timeout=20)


def shot(driver, out, name):
    driver.execute_script("window.scrollTo(0, 0)")
    path = os.path.join(out, name)
    driver.save_screenshot(path)
    print(f"screenshot {path}")


def ready(driver, page):
    wait(driver, f"the {page} page", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == page)


def dataset(driver, selector, key):
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.dataset[arguments[1]] : null",
              selector, key)


def rows(driver, table):
    """The rows of an alerts table: (data-alert, data-state) of each."""
    return js(driver, "return [...document.querySelectorAll(arguments[0] + ' tr[data-alert]')]"
                      ".map(r => [r.dataset.alert, r.dataset.state])", table)


def value_shown(driver, selector, metric):
    return js(driver, "const e = document.querySelector(arguments[0] + ' [data-metric=\"' + arguments[1] + '\"]');"
                      "return e ? e.textContent : null", selector, metric)


class ForeignOrigin:
    """https://localhost:<port>, another origin of the same site, with a page that tries to use
    the hub's cookie: a WebSocket to the stream (its result in the title) and a form post."""

    def __init__(self, hub_url, cert, key):
        page = f"""<!doctype html><title>pending</title>
<form id="f" method="post" action="{hub_url}/api/v1/devices/door-1/commands">
<input name="name" value="echo"><button id="go">go</button></form>
<script>
const ws = new WebSocket("{hub_url.replace('https', 'wss')}/api/v1/stream");
ws.onopen = () => {{ document.title = "ws-open"; }};
ws.onclose = () => {{ if (document.title !== "ws-open") document.title = "ws-refused"; }};
</script>""".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--data", required=True, help="the hub's data directory")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.data, "admin.token")) as f:
        admin = f.read().strip()
    hub = Hub(a.url, os.path.join(a.data, "tls/ca.crt"), admin)
    operator, _ = hub.token("operator", ["read", "command"])
    reader, _ = hub.token("reader", ["read"])
    green, _ = hub.token("greenhouse", ["read", "command"], ["green-*"])
    doomed, doomed_id = hub.token("doomed", ["read"])

    driver = browser()
    try:
        # 1. Sign in; the fleet.
        sign_in(driver, a.url, operator)
        wait(driver, "both devices in the fleet", lambda d: {"door-1", "green-1"} <= set(fleet_ids(d)))
        cookies = driver.get_cookies()
        session = [c for c in cookies if c["name"] == "hub_session"]
        assert session and session[0]["httpOnly"] and session[0]["secure"], cookies
        assert session[0].get("sameSite") == "Strict", session
        assert js(driver, "return document.cookie") == "", "the cookie is not readable by scripts"
        assert js(driver, "return localStorage.length + sessionStorage.length") == 0, "nothing stored"

        # 2. A reading published now shows live on the fleet page...
        publish(a.mqtt_port, "door-1", {"temp": 31.25})
        wait(driver, "door-1's new temp on the fleet page",
             lambda d: value_shown(d, "#fleet tr[data-device='door-1']", "temp") == "temp 31.25")
        wait(driver, "the sink's lag at the top", lambda d: "Sink cloud lag" in d.find_element(By.ID, "main").text)
        shot(driver, a.out, "fleet.png")

        # ... and on the device page: its value and its charts, appended without a reload.
        driver.get(a.url + "/#/device/door-1")
        ready(driver, "device")
        temp, open_, mode = (f"section.chart[data-metric='{m}'] .plot" for m in ("temp", "open", "mode"))
        assert dataset(driver, temp, "kind") == "number"
        assert dataset(driver, open_, "kind") == "state", "a boolean is a state band"
        assert dataset(driver, mode, "kind") == "text", "a string is a list of recent values"
        assert js(driver, f"return document.querySelectorAll(\"{open_} canvas\").length") >= 1, "the band is drawn"
        assert js(driver, f"return document.querySelectorAll(\"{mode} canvas\").length") == 0, "no chart of a string"
        assert int(dataset(driver, open_, "points")) > 0, "the seeded hour of open"
        # The seeded modes: auto (45 readings), eco (45), boost (30), newest first, one entry each.
        runs = lambda d: js(d, f"return [...document.querySelectorAll(\"{mode} li\")]"
                               ".map(li => [li.querySelector('.text').textContent, li.dataset.count])")
        assert runs(driver) == [["boost", "30"], ["eco", "45"], ["auto", "45"]], runs(driver)
        assert dataset(driver, mode, "last") == "boost", "the newest mode first"
        before = int(dataset(driver, temp, "points"))
        band_before = int(dataset(driver, open_, "points"))
        publish(a.mqtt_port, "door-1", {"temp": 33.5, "open": True, "mode": "manual"})
        wait(driver, "the new temp on the device page", lambda d: value_shown(d, "#latest", "temp") == "temp 33.5")
        wait(driver, "a point appended to the chart",
             lambda d: int(dataset(d, temp, "points")) > before and dataset(d, temp, "last") == "33.5")
        wait(driver, "a point appended to the state band",
             lambda d: int(dataset(d, open_, "points")) > band_before and dataset(d, open_, "last") == "1")
        wait(driver, "the new string on top of its list",
             lambda d: dataset(d, mode, "last") == "manual" and runs(d)[0] == ["manual", "1"])
        assert runs(driver)[1:] == [["boost", "30"], ["eco", "45"], ["auto", "45"]], runs(driver)

        # 3. The device's recent commands (the echoes the test sent while firmware-sim started).
        wait(driver, "the recent commands", lambda d: js(d, "return document.querySelectorAll('#commands li').length") >= 1)
        # A command from the form reaches firmware-sim; its result shows on top of the list.
        driver.find_element(By.ID, "command-name").send_keys("echo")
        driver.find_element(By.ID, "command-args").send_keys('{"level": 3}')
        driver.find_element(By.CSS_SELECTOR, "#command-form button[type=submit]").click()
        first_command = ("const li = document.querySelector('#commands li');"
                         "return li && li.querySelector('.state').textContent === 'succeeded'"
                         " && li.querySelector('.result') && li.querySelector('.result').textContent === '{\"level\":3}'"
                         " ? li.dataset.command : null")
        sent = wait(driver, "the command's result", lambda d: js(d, first_command))
        # It is the hub's list, not the page's memory: still there after a reload.
        driver.refresh()
        ready(driver, "device")
        wait(driver, "the command listed after a reload", lambda d: js(d, first_command) == sent)
        # Tall enough for the charts, the command list and the events in one picture.
        driver.set_window_size(1280, 1800)
        shot(driver, a.out, "device.png")
        driver.set_window_size(1280, 900)
        js(driver, "delete document.getElementById('main').dataset.ready")
        driver.find_element(By.CSS_SELECTOR, "button[data-range='7d']").click()
        ready(driver, "device")
        shot(driver, a.out, "device-7d.png")
        driver.set_window_size(390, 844)
        shot(driver, a.out, "device-phone.png")
        driver.set_window_size(1280, 900)

        # The sync page: the sink whose receiver is not there, and a pull consumer behind.
        status, _ = hub.call("PUT", "/api/v1/sync/consumers/analytics", {"cursor": 60})
        assert status == 200, status
        driver.get(a.url + "/#/sync")
        ready(driver, "sync")
        wait(driver, "the sink failing and the consumer listed",
             lambda d: js(d, "return [...document.querySelectorAll('#sinks td')].slice(0, 3).map(t => t.textContent)")
             == ["cloud", "http", "failing"]
             and "analytics" in d.find_element(By.ID, "consumers").text)
        shot(driver, a.out, "sync.png")

        # 4. Alerts, from the navigation: door-1's fires live, resolves, fires again.
        driver.find_element(By.CSS_SELECTOR, "nav a[href='#/alerts']").click()
        ready(driver, "alerts")
        assert rows(driver, "#alerts-now") == [], rows(driver, "#alerts-now")
        publish(a.mqtt_port, "door-1", {"temp": 60.0})
        wait(driver, "door-1's alert firing, live",
             lambda d: ["too-warm/door-1", "firing"] in rows(d, "#alerts-now")
             and ["too-warm/door-1", "firing"] in rows(d, "#alerts-history")
             and "door-1" in dataset(d, "#main", "alertDevices").split())
        publish(a.mqtt_port, "door-1", {"temp": 30.0})
        wait(driver, "door-1's alert resolved",
             lambda d: rows(d, "#alerts-now") == [] and ["too-warm/door-1", "resolved"] in rows(d, "#alerts-history"))
        publish(a.mqtt_port, "door-1", {"temp": 65.0})
        publish(a.mqtt_port, "green-1", {"temp": 55.0})
        wait(driver, "door-1 and green-1 firing",
             lambda d: sorted(rows(d, "#alerts-now")) == [["too-warm/door-1", "firing"], ["too-warm/green-1", "firing"]])
        assert len(rows(driver, "#alerts-history")) == 4, rows(driver, "#alerts-history")
        shot(driver, a.out, "alerts.png")
        # The history a page at a time (25): 26 more firings make 30 transitions.
        for i in range(26):
            publish(a.mqtt_port, f"flap-{i}", {"temp": 61.0})
        wait(driver, "a full first page", lambda d: len(rows(d, "#alerts-history")) == 25
             and not d.find_element(By.ID, "history-older").get_attribute("disabled"))
        newest = js(driver, "return document.querySelector('#alerts-history tr[data-number]').dataset.number")
        assert driver.find_element(By.ID, "history-newer").get_attribute("disabled"), "no newer page"
        driver.find_element(By.ID, "history-older").click()
        wait(driver, "the second page", lambda d: len(rows(d, "#alerts-history")) == 5
             and js(d, "return [...document.querySelectorAll('#alerts-history tr[data-number]')].pop().dataset.number") == "0")
        assert driver.find_element(By.ID, "history-older").get_attribute("disabled"), "no older page"
        driver.find_element(By.ID, "history-newer").click()
        wait(driver, "back to the first page",
             lambda d: js(d, "return document.querySelector('#alerts-history tr[data-number]').dataset.number") == newest)
        filter_ = driver.find_element(By.ID, "history-filter")
        filter_.find_element(By.CSS_SELECTOR, "option[value='resolved']").click()
        wait(driver, "the resolved transitions only",
             lambda d: rows(d, "#alerts-history") == [["too-warm/door-1", "resolved"]])
        # The rule's command to door-1 is on door-1's page, answered.
        driver.get(a.url + "/#/device/door-1")
        ready(driver, "device")
        wait(driver, "the rule's command, answered",
             lambda d: js(d, "return [...document.querySelectorAll('#commands li')].some(li =>"
                             " li.querySelector('.args') && li.querySelector('.args').textContent.includes('too-warm')"
                             " && li.querySelector('.state').textContent === 'succeeded')"))

        # 6. Sign-out: the form again, and the old cookie is refused by the API.
        old = driver.get_cookie("hub_session")["value"]
        sign_out(driver)
        status, _ = hub.call("GET", "/api/v1/session", bearer=False,
                             headers={"cookie": f"hub_session={old}"})
        assert status == 401, f"the ended session is refused, got {status}"
        driver.get(a.url + "/#/")
        wait(driver, "the sign-in form on reload", lambda d: d.find_elements(By.ID, "token"))
        shot(driver, a.out, "signin.png")

        # 5. A read-only token: no command form, no command list.
        sign_in(driver, a.url, reader)
        driver.get(a.url + "/#/device/door-1")
        ready(driver, "device")
        assert not driver.find_elements(By.ID, "command-form"), "a reader sees no command form"
        assert not driver.find_elements(By.ID, "commands"), "nor the command list"
        assert not driver.find_elements(By.ID, "command-card")
        assert dataset(driver, "section.chart[data-metric='temp'] .plot", "kind") == "number", "but the charts"
        sign_out(driver)

        # 5. green-* only: never door-1.
        sign_in(driver, a.url, green)
        driver.get(a.url + "/#/")
        wait(driver, "the fleet page (green)", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "fleet")
        publish(a.mqtt_port, "door-1", {"temp": 40.0})
        publish(a.mqtt_port, "green-1", {"temp": 18.5})
        wait(driver, "green-1's live reading", lambda d: value_shown(d, "#fleet tr[data-device='green-1']", "temp") == "temp 18.5")
        assert fleet_ids(driver) == ["green-1"], fleet_ids(driver)
        assert "door-1" not in driver.find_element(By.ID, "main").text
        driver.get(a.url + "/#/device/door-1")
        wait(driver, "door-1 refused", lambda d: "No such device" in d.find_element(By.ID, "main").text)
        shot(driver, a.out, "green-only.png")
        # Its alerts page: green-1's alerts only, and only green-1's alert events from the stream
        # (door-1's transitions, published first, reach this page neither by the API nor live).
        driver.find_element(By.CSS_SELECTOR, "nav a[href='#/alerts']").click()
        ready(driver, "alerts")
        wait(driver, "green-1's transitions in the history",
             lambda d: ["too-warm/green-1", "resolved"] in rows(d, "#alerts-history"))
        # One page of green-1's own transitions, not the newest 25 of all devices filtered.
        assert rows(driver, "#alerts-history") == [["too-warm/green-1", "resolved"], ["too-warm/green-1", "firing"]], \
            rows(driver, "#alerts-history")
        assert driver.find_element(By.ID, "history-older").get_attribute("disabled"), "no more pages"
        publish(a.mqtt_port, "door-1", {"temp": 70.0})
        publish(a.mqtt_port, "green-1", {"temp": 57.0})
        wait(driver, "green-1's alert firing, live",
             lambda d: rows(d, "#alerts-now") == [["too-warm/green-1", "firing"]])
        assert dataset(driver, "#main", "alertDevices") == "green-1", "only green-1's events came"
        assert "door-1" not in driver.find_element(By.ID, "main").text
        status, alerts = hub.call("GET", "/api/v1/alerts")
        assert ["too-warm/door-1", "firing"] in [[f"{x['rule']}/{x['device']}", x["state"]] for x in alerts["alerts"]], \
            "door-1's alert does fire (the admin sees it)"
        shot(driver, a.out, "alerts-green.png")
        sign_out(driver)

        # 6. Revocation: the session of a revoked token is refused, page and stream.
        sign_in(driver, a.url, doomed)
        status, _ = hub.call("DELETE", f"/api/v1/tokens/{doomed_id}")
        assert status in (200, 204), status
        driver.get(a.url + "/#/sync")
        wait(driver, "the expired-session message",
             lambda d: d.find_elements(By.ID, "token") and "session has ended" in d.find_element(By.ID, "banner").text)
        # The stream refuses it too: an upgrade with the cookie and the hub's own Origin.
        js(driver, "window.wsResult = 'pending'; const w = new WebSocket(location.origin.replace('https', 'wss') + '/api/v1/stream');"
                   "w.onopen = () => { window.wsResult = 'open'; }; w.onclose = () => { if (window.wsResult !== 'open') window.wsResult = 'refused'; };")
        wait(driver, "the stream refused after revocation", lambda d: js(d, "return window.wsResult") == "refused")

        # 7. Another origin of the same site, with a live session in the browser.
        sign_in(driver, a.url, operator)
        foreign = ForeignOrigin(a.url, os.path.join(a.data, "tls/server.crt"), os.path.join(a.data, "tls/server.key"))
        driver.get(foreign.url)
        wait(driver, "the foreign page's WebSocket refused", lambda d: d.title in ("ws-open", "ws-refused"))
        assert driver.title == "ws-refused", "a page of another origin opened the stream"
        driver.find_element(By.ID, "go").click()
        wait(driver, "the foreign form post refused", lambda d: "403" in d.page_source or "Forbidden" in d.page_source)
        shot(driver, a.out, "foreign-origin.png")
    finally:
        driver.quit()
    print("dashboard checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"dashboard check failed: {e}", file=sys.stderr)
        sys.exit(1)
