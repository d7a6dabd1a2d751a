// Package fairness holds the system test of fair claims: one client's backlog does not hold back
// another client's task, through `imgmill serve` with API keys, as clients would use it. It has tests
// only.
package fairness
