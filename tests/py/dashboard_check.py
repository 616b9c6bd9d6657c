"""Drives the hub's dashboard in a real browser (Debian's chromium through chromium-driver and
Selenium) against a running hub, and saves a screenshot of each page.

Run by tests/tests/e2e/dashboard.rs, which starts the hub and an idle firmware-sim device
(`door-1`, answering commands) and seeds readings of `door-1` and `green-1`. This script makes its
own tokens with the admin token, then checks, each step waiting with a deadline (never a sleep):

1. sign in with a token pasted into the form; the fleet page lists both devices;
2. a reading published with mosquitto_pub shows on the fleet page live, then on the device
   page's value and chart (the chart's point count grows without a reload);
3. a command sent from the form reaches firmware-sim and its result shows;
4. a read-only token sees no command form; a token limited to `green-*` never sees `door-1`
   (not in the fleet, and its device page is refused);
5. after sign-out the page shows the sign-in form and the API refuses the old cookie; after its
   token is revoked a session is refused, on the page and on the WebSocket;
6. a page of another origin (same site: https://localhost on another port, served here with the
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
        shot(driver, a.out, "fleet.png")

        # ... and on the device page: its value and its chart, appended without a reload.
        driver.get(a.url + "/#/device/door-1")
        wait(driver, "the device page", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "device")
        plot = "section.chart[data-metric='temp'] .plot"
        before = int(js(driver, f"return document.querySelector(\"{plot}\").dataset.points"))
        publish(a.mqtt_port, "door-1", {"temp": 33.5})
        wait(driver, "the new temp on the device page", lambda d: value_shown(d, "#latest", "temp") == "temp 33.5")
        wait(driver, "a point appended to the chart",
             lambda d: int(js(d, f"return document.querySelector(\"{plot}\").dataset.points")) > before
             and js(d, f"return document.querySelector(\"{plot}\").dataset.last") == "33.5")
        assert js(driver, "return document.querySelectorAll('canvas').length") >= 1, "uPlot drew"

        # 3. A command from the form reaches firmware-sim; its result shows.
        driver.find_element(By.ID, "command-name").send_keys("echo")
        driver.find_element(By.ID, "command-args").send_keys('{"level": 3}')
        driver.find_element(By.CSS_SELECTOR, "#command-form button[type=submit]").click()
        wait(driver, "the command's result",
             lambda d: js(d, "const li = document.querySelector('#commands li');"
                             "return li && li.querySelector('.state').textContent === 'succeeded'"
                             " && li.querySelector('.result').textContent === '{\"level\":3}'"))
        js(driver, "delete document.getElementById('main').dataset.ready")
        driver.find_element(By.CSS_SELECTOR, "button[data-range='7d']").click()
        wait(driver, "the 7 d chart", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "device")
        shot(driver, a.out, "device.png")
        driver.set_window_size(390, 844)
        shot(driver, a.out, "device-phone.png")
        driver.set_window_size(1280, 900)

        driver.get(a.url + "/#/sync")
        wait(driver, "the sync page", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "sync")
        shot(driver, a.out, "sync.png")

        # 5a. Sign-out: the form again, and the old cookie is refused by the API.
        old = driver.get_cookie("hub_session")["value"]
        sign_out(driver)
        status, _ = hub.call("GET", "/api/v1/session", bearer=False,
                             headers={"cookie": f"hub_session={old}"})
        assert status == 401, f"the ended session is refused, got {status}"
        driver.get(a.url + "/#/")
        wait(driver, "the sign-in form on reload", lambda d: d.find_elements(By.ID, "token"))
        shot(driver, a.out, "signin.png")

        # 4. A read-only token: no command form.
        sign_in(driver, a.url, reader)
        driver.get(a.url + "/#/device/door-1")
        wait(driver, "the device page (reader)", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "device")
        assert not driver.find_elements(By.ID, "command-form"), "a reader sees no command form"
        sign_out(driver)

        # 4. green-* only: never door-1.
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
        sign_out(driver)

        # 5b. Revocation: the session of a revoked token is refused, page and stream.
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

        # 6. Another origin of the same site, with a live session in the browser.
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
