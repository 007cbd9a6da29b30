"""The screenshots of docs/inspect.md: open a page written by ``mosaics inspect`` in headless
Chromium (selenium), optionally hover a three-moons retrieval map at a given query row, and save.

    python docs/figures/inspect/screenshots.py PAGE.html OUT.png [--height 1000] [--map I --row T]
"""

import argparse
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By


def main():
    p = argparse.ArgumentParser()
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--map", type=int, default=None, help="moons: index of the retrieval map to hover")
    p.add_argument("--row", type=int, default=0, help="moons: the query row t to hover")
    args = p.parse_args()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={args.width},{args.height}")
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        driver.get(Path(args.page).resolve().as_uri())
        if args.map is not None:
            canvas = driver.find_elements(By.CSS_SELECTOR, "canvas.retrieval-map")[args.map]
            T = int(driver.execute_script("return DATA.x.length"))
            size = canvas.size["height"]
            y = (args.row + 0.5) / T * size - size / 2  # offset from the canvas centre
            webdriver.ActionChains(driver).move_to_element_with_offset(canvas, 0, int(y)).perform()
        driver.save_screenshot(args.out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
