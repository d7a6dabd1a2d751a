// Package taskstoretest is the contract suite every taskstore.Store implementation must pass, in the
// style of River's riverdrivertest: an implementation's test calls Run with a function that opens a
// fresh, empty store.
//
// Tokens are compared only with each other (0 before any claim, larger with every claim), never with
// literals, so a store may number them per task or from one global counter.
package taskstoretest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// OpenFunc opens a fresh, empty store whose notion of "now" is clock. The suite closes the store
// when the subtest ends, so OpenFunc must not register its own Close. Run calls it from parallel
// subtests, so it must be safe for concurrent use.
type OpenFunc func(t *testing.T, clock func() time.Time) taskstore.Store

// Run runs the contract suite. Every subtest opens its own store on its own fake clock and shares
// nothing else, so the subtests run in parallel.
func Run(t *testing.T, open OpenFunc) {
	t.Helper()
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"CreateIDsConsecutive", testCreateIDsConsecutive},
		{"MaxAttempts", testMaxAttempts},
		{"Op", testOp},
		{"GetUnknown", testGetUnknown},
		{"ClaimFIFO", testClaimFIFO},
		{"ClaimEmpty", testClaimEmpty},
		{"ClaimNDistinct", testClaimNDistinct},
		{"ClaimNLapsed", testClaimNLapsed},
		{"ClaimNFair", testClaimNFair},
		{"ClaimNConcurrent", testClaimNConcurrent},
		{"ClaimNConcurrentOwners", testClaimNConcurrentOwners},
		{"PendingAndActivate", testPendingAndActivate},
		{"TokensGrow", testTokensGrow},
		{"Finish", testFinish},
		{"FinishTokens", testFinishTokens},
		{"Extend", testExtend},
		{"FailTransient", testFailTransient},
		{"FailPermanent", testFailPermanent},
		{"FailAfterLapse", testFailAfterLapse},
		{"Release", testRelease},
		{"LeaseExpiry", testLeaseExpiry},
		{"LapseExhausted", testLapseExhausted},
		{"LapsedLeaseInIDOrder", testLapsedLeaseInIDOrder},
		{"ExpirePending", testExpirePending},
		{"Set", testSet},
		{"SetFailed", testSetFailed},
		{"SetErrors", testSetErrors},
		{"List", testList},
		{"ListEarlyStop", testListEarlyStop},
		{"ListCanceledContext", testListCanceledContext},
		{"Counts", testCounts},
		{"CountsPendingSetByHand", testCountsPendingSetByHand},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentClaim", testConcurrentClaim},
		{"ConcurrentFinishVsReclaim", testConcurrentFinishVsReclaim},
		{"Retry", testRetry},
		{"RetryWho", testRetryWho},
		{"RetryBackoff", testRetryBackoff},
		{"RetryCleared", testRetryCleared},
		{"CountsRetryAndPending", testCountsRetryAndPending},
		{"CreateOnce", testCreateOnce},
		{"CreateOncePending", testCreateOncePending},
		{"ConcurrentCreateOnce", testConcurrentCreateOnce},
		{"Abandon", testAbandon},
		{"CanceledContext", testCanceledContext},
		{"OwnerKept", testOwnerKept},
		{"FairBurst", testFairBurst},
		{"FairInterleave", testFairInterleave},
		{"FairNoOwner", testFairNoOwner},
		{"FairRequeued", testFairRequeued},
		{"FairPendingKeepsTurn", testFairPendingKeepsTurn},
		{"FairConcurrent", testFairConcurrent},
		{"CancelStates", testCancelStates},
		{"CancelHolder", testCancelHolder},
		{"RequeueStates", testRequeueStates},
		{"RequeueHolder", testRequeueHolder},
		{"Name", testName},
		{"DeleteStates", testDeleteStates},
		{"DeleteHolder", testDeleteHolder},
		{"PurgeDeleted", testPurgeDeleted},
		{"ClaimExpired", testClaimExpired},
		{"ClaimExpiredConcurrent", testClaimExpiredConcurrent},
		{"Usage", testUsage},
		{"UsageDeleteQueued", testUsageDeleteQueued},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock()
			s := open(t, clk.Now)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, &harness{s: s, clk: clk, ctx: t.Context()})
		})
	}
}

// lease is the default lease; whole seconds keep every time representable at microsecond
// precision (PostgreSQL's), so stores need not round-trip nanoseconds.
const lease = time.Minute

// past is how far to advance the clock to make a lease of length lease lapse.
const past = lease + time.Second

// defMax is the attempt limit of a task created without one.
const defMax = taskstore.DefaultMaxAttempts

// start is the fake clock's initial time: whole seconds, far from any zero value.
var start = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

// lapsed is the Error of a task whose lease lapsed on attempt n of max.
func lapsed(n, max int) string { return fmt.Sprintf("lease lapsed on attempt %d of %d", n, max) }

// expired is the Error of a pending task that ExpirePending failed.
const expired = "upload never completed"

// fakeClock is a mutex-guarded time the suite advances by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: start} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}
