// Package e2e holds the end-to-end tests of imgmill: the split deployment, every service its own
// process, and `imgmill serve`, used through their entry points as clients would; with a token; and
// with one upload traced across every service's logs and metrics. It has tests only.
package e2e
