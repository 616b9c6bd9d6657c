"""The dashboard section of bench/run: headless chromium (Selenium) against a release hub whose
store bench/dashboard.sh filled (100 devices over 7 days, and dense-0 reporting every 10 s).

Prints one JSON object:
  fleet_ms        navigation to a usable fleet page (every device listed with its latest
                  values, the hub's figures at the top): the page's own `ready-fleet`
                  performance mark, ms after navigation start; median of --repeats loads
  device_ms       navigation to dense-0's device page with its 1 h charts drawn
  chart_7d_ms     a click on "7d" to the 7-day charts drawn (buckets sized to the chart's
                  width, fetched and drawn); median of --repeats clicks
  buckets_7d      the points the 7-day temperature chart drew
The 304 rate is measured by bench/dashboard.sh from the hub's own request counters while this
script keeps the fleet page open (--hold seconds)."""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "py"))
from dashboard_check import browser, sign_in, wait  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def mark(driver, name):
    return driver.execute_script(
        "const e = performance.getEntriesByName(arguments[0]); return e.length ? e[e.length - 1].startTime : null", name)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hold", type=float, default=0)
    p.add_argument("--hold-started", help="a file written when the hold begins")
    a = p.parse_args()
    driver = browser()
    try:
        sign_in(driver, a.url, a.token)
        fleet, device, seven = [], [], []
        points = None
        for _ in range(a.repeats):
            driver.get("about:blank")
            driver.get(a.url + "/#/")
            wait(driver, "the fleet", lambda d: mark(d, "ready-fleet") is not None)
            fleet.append(mark(driver, "ready-fleet"))
            driver.get("about:blank")
            driver.get(a.url + "/#/device/dense-0")
            wait(driver, "the device page", lambda d: mark(d, "ready-device") is not None)
            device.append(mark(driver, "ready-device"))
            before = driver.execute_script("return performance.getEntriesByName('ready-device').length")
            started = driver.execute_script(
                "const t = performance.now(); document.querySelector(\"button[data-range='7d']\").click(); return t")
            wait(driver, "the 7 d charts", lambda d: d.execute_script(
                "return performance.getEntriesByName('ready-device').length") > before)
            seven.append(mark(driver, "ready-device") - started)
            points = int(driver.execute_script(
                "return document.querySelector(\"section.chart[data-metric='temperature'] .plot\").dataset.points"))
        if a.hold:
            driver.get("about:blank")
            driver.get(a.url + "/#/")
            wait(driver, "the fleet", lambda d: d.find_element(By.ID, "main").get_attribute("data-ready") == "fleet")
            if a.hold_started:
                open(a.hold_started, "w").close()
            time.sleep(a.hold)  # the page is left open on purpose: the hold is the measurement
        print(json.dumps({
            "fleet_ms": round(statistics.median(fleet), 1),
            "device_ms": round(statistics.median(device), 1),
            "chart_7d_ms": round(statistics.median(seven), 1),
            "buckets_7d": points,
            "fleet_ms_all": [round(x, 1) for x in fleet],
            "chart_7d_ms_all": [round(x, 1) for x in seven],
        }))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
