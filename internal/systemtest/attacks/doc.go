// Package attacks holds the bad-input table: requests an attacker (or a broken client) sends to every
// public and internal endpoint of `imgmill serve`, each followed by the checks that it cost the app
// nothing: every service healthy, a normal upload processed, and every earlier result unchanged. It has
// tests only.
package attacks
