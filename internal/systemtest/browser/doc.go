// Package browser holds the browser tests of imgmill: its upload page driven in headless Chromium
// against `imgmill serve` run in the test process. It has tests only.
package browser
