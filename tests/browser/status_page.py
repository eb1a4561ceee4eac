"""The status page in a real headless browser (Debian's chromium, driven by Selenium over
Debian's chromedriver): with the admin token (HTTP Basic, as a person would type it) the page
shows the restart count, its button restarts the app, and the count goes up; without the token
the page shows nothing of the status.

Usage: status_page.py ADMIN_ADDR TOKEN_FILE   (exits 0 when every check held)
"""
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

addr, token_file = sys.argv[1], sys.argv[2]
token = open(token_file).read().strip()
PATIENCE = 30.0

options = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
    options.add_argument(arg)
# The chromium binary and driver Debian installs (no download by Selenium Manager).
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(PATIENCE)


def restarts():
    return int(driver.find_element(By.ID, "restarts").text)


def until(what, cond):
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            if cond():
                return
        except Exception:  # the page is between two refreshes
            pass
        if time.monotonic() > deadline:
            sys.exit(f"not within {PATIENCE}s: {what}\n{driver.page_source[:2000]}")
        time.sleep(0.1)


try:
    # Without the token: refused (the browser would ask for it), no status, no button.
    driver.get(f"http://{addr}/")
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "restarts" not in body, body
    assert not driver.find_elements(By.ID, "restart"), driver.page_source

    # With it (user name free, the token as password): the page and its button.
    driver.get(f"http://tandem:{token}@{addr}/")
    until("the page shows the restart count", lambda: restarts() >= 0)
    before = restarts()
    driver.find_element(By.ID, "restart").click()
    # The page refreshes itself every 2 s: the count it shows goes up.
    until("the page shows one more restart", lambda: restarts() == before + 1)
    print(f"restarts on the page: {before} -> {restarts()}")
finally:
    driver.quit()
