# Browser tests: Debian's Chromium, driven by Playwright for Python, opens the demo chat page
# (services/gate/src/goverse/gate/web/) against real gates. `make test` runs them when a
# Chromium is present and skips them, saying what is missing, when not; this target installs
# Chromium when it can and fails when the tests cannot run. docs/browser.md, "Tests".
BROWSER_ARGS ?= -v

.PHONY: test-browser

test-browser: $(STAMP) ## Run the browser tests (tests/browser) on Chromium, installing it when missing
	scripts/browser/install.sh
	GOVERSE_REQUIRE_BROWSER=1 $(BIN)/pytest tests/browser $(BROWSER_ARGS) $(PYTEST_ARGS)
