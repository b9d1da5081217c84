"""The operator console in a real headless Chromium (Debian's chromium and chromium-driver).

Driven by the Rust test `console::the_console_in_a_real_browser`, which starts the service and the
simulator, plants a parked sync and a member, and passes:
  argv[1] the admin URL, argv[2] `pointsync status --json` as a file, argv[3] the parked sync id,
  argv[4] a member openid, argv[5] the folder for screenshots.
Exits 0 when every check passes; prints the failure otherwise.
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

admin, status_file, parked_id, openid, shots = sys.argv[1:6]
status = json.load(open(status_file))

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--window-size=1200,900"]:
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.implicitly_wait(5)


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        driver.save_screenshot(f"{shots}/console-failure.png")
        driver.quit()
        sys.exit(1)
    print("ok  ", what)


try:
    # the overview loads and its backlog equals `pointsync status --json`
    driver.get(admin + "/")
    check("overview" in driver.title, "the overview loads")
    for state in ["pending", "inflight", "parked", "dead", "done"]:
        shown = int(driver.find_element(By.ID, f"backlog-{state}").text)
        check(shown == status["syncs"].get(state, 0), f"backlog {state} = {shown} as in status --json")
    check(driver.find_element(By.ID, "chart").tag_name == "svg", "the activity chart is drawn")
    check("days" in driver.find_element(By.ID, "trusted").text,
          "the trusted platform certificate and its expiry are shown")
    driver.save_screenshot(f"{shots}/console-overview.png")

    # the parked sync shows WeChat's reason; retry re-queues it
    driver.get(admin + "/parked")
    row = driver.find_element(By.ID, f"parked-{parked_id}")
    check("WeChat Pay answered HTTP 400" in row.text, "the parked sync shows WeChat's reason")
    driver.save_screenshot(f"{shots}/console-parked.png")
    driver.find_element(By.ID, f"retry-{parked_id}").click()
    check(f"sync #{parked_id} re-queued" in driver.find_element(By.ID, "notice").text,
          "clicking retry re-queues the parked sync")

    # a member lookup from the search box, then an adjustment through the form
    driver.get(admin + "/")
    driver.find_element(By.ID, "member-search").send_keys(openid)
    driver.find_element(By.ID, "member-go").click()
    before = int(driver.find_element(By.ID, "balance").text)
    check(driver.find_element(By.ID, "authorization").text == "authorized", "the member page loads")
    driver.find_element(By.ID, "adjust-points").send_keys("-5")
    driver.find_element(By.ID, "adjust-reference").send_keys("DESK-BROWSER-1")
    driver.find_element(By.ID, "adjust-reason").send_keys("redeemed at the desk")
    shown = driver.find_element(By.ID, "balance")
    driver.find_element(By.ID, "adjust-go").click()
    # the form posts and the member page loads again: read the new page's balance, not the old one
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(shown))
    after = int(driver.find_element(By.ID, "balance").text)
    check(after == before - 5, f"the adjustment applies ({before} → {after})")
    check("DESK-BROWSER-1" in driver.find_element(By.ID, "ledger").text, "the ledger shows it")
    driver.save_screenshot(f"{shots}/console-member.png")

    driver.get(admin + "/callbacks")
    check("MALL_TRANSACTION.SUCCESS" in driver.find_element(By.ID, "callbacks").text,
          "recent callbacks are listed")
finally:
    driver.quit()
print("console: all checks passed")
