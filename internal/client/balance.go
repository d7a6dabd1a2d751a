package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// Endpoint yields the host:port of a peer, and learns which of its instances answer.
type Endpoint interface {
	Addr(ctx context.Context) (string, error)
	// Failed tells the endpoint addr could not be reached (or did not answer in time), so that it
	// avoids it for a while in favour of other instances.
	Failed(addr string)
	// Answered tells the endpoint addr answered, so that it is trusted again.
	Answered(addr string)
}

// Static is an Endpoint with a fixed host:port.
type Static string

func (s Static) Addr(context.Context) (string, error) { return string(s), nil }
func (Static) Failed(string)                          {}
func (Static) Answered(string)                        {}

// Resolver is an Endpoint for a service that may run as several instances. It looks up the instances
// registered under InstancePrefix(key) in the kv store (falling back to key itself, the reference
// registration, which names one of them), and spreads calls across them round-robin.
//
// Discovery is kept out of the data path: the list is looked up again every ttl in the background while
// the known one keeps serving calls, and when the kv store cannot be reached (or has lost the
// registrations, say after a restart) the known list stays in use. An instance that fails a connection
// is avoided for a while (a circuit breaker: 1 s, doubling up to 30 s while it keeps failing), even
// though its registration lives on in the kv store for a few seconds more, and the list is looked up
// again at once. A call waits for the kv store only when it knows no instance, or none that answers
// (then at most lookupPatience before it tries the known ones anyway).
type Resolver struct{ b balancer }

// NewResolver looks key's instances up in kv, again every ttl.
func NewResolver(kv *KV, key string, ttl time.Duration) *Resolver {
	return &Resolver{balancer{name: key, ttl: ttl, lookup: func(ctx context.Context) ([]string, error) {
		return kv.Instances(ctx, key)
	}}}
}

// knownAddrs is an Endpoint that can say which instances it knows without picking one (and so without
// moving its round-robin on).
type knownAddrs interface {
	KnownAddrs() []string
}

func (s Static) KnownAddrs() []string { return []string{string(s)} }

func (r *Resolver) KnownAddrs() []string                     { return r.b.known() }
func (r *Resolver) Addr(ctx context.Context) (string, error) { return r.b.addr(ctx) }
func (r *Resolver) Failed(addr string)                       { r.b.failed(addr) }
func (r *Resolver) Answered(addr string)                     { r.b.answered(addr) }

// Addrs is an Endpoint over a fixed list of instances (the kv service's --kv list), spread across
// round-robin, with the Resolver's circuit breaker.
type Addrs struct{ b balancer }

// NewAddrs returns an Endpoint over addrs.
func NewAddrs(addrs []string) *Addrs {
	list := slices.Clone(addrs)
	return &Addrs{balancer{name: strings.Join(list, ","), ttl: time.Duration(1<<63 - 1), lookup: func(context.Context) ([]string, error) {
		return list, nil
	}}}
}

func (a *Addrs) KnownAddrs() []string                     { return a.b.known() }
func (a *Addrs) Addr(ctx context.Context) (string, error) { return a.b.addr(ctx) }
func (a *Addrs) Failed(addr string)                       { a.b.failed(addr) }
func (a *Addrs) Answered(addr string)                     { a.b.answered(addr) }

// Circuit breaker and lookup timing.
const (
	breakMin = time.Second
	breakMax = 30 * time.Second
	// relookAfterFailure spaces out lookups while the kv store fails them, so that a kv outage is not
	// made worse by every caller asking again.
	relookAfterFailure = time.Second
	// lookupPatience is how long a call whose known instances all failed waits for the kv store to
	// name others before it tries the known ones again: a kv store that does not answer must not
	// stall calls.
	lookupPatience = time.Second
)

// balancer hands out the addresses lookup yields round-robin, skipping those whose breaker is open.
type balancer struct {
	name    string
	ttl     time.Duration
	lookup  func(ctx context.Context) ([]string, error)
	lookups singleflight.Group

	mu    sync.Mutex
	addrs []string  // the last list a lookup gave; kept while lookups fail
	next  int       // round-robin position
	fresh time.Time // until when addrs need no new lookup
	// lookupFailed is when a lookup last failed: failures of instances do not bring the next one
	// forward within relookAfterFailure of it.
	lookupFailed time.Time
	broken       map[string]tripped
}

// tripped is an open breaker: the address is avoided until until; trips counts failures in a row.
type tripped struct {
	until time.Time
	trips int
}

func (b *balancer) addr(ctx context.Context) (string, error) {
	b.mu.Lock()
	addr, healthy, known := b.pickLocked(time.Now())
	stale := !time.Now().Before(b.fresh)
	b.mu.Unlock()
	switch {
	case healthy:
		if stale {
			// Served from the known list; the new one arrives in the background.
			b.lookups.DoChan("", b.refresh)
		}
		return addr, nil
	case known && !stale:
		// Every known instance failed, and the kv store was asked just now: try them anyway.
		return addr, nil
	}
	// No instance known, or none that answers: ask the kv store now (a restarted instance may be
	// registered at a new address). When it does not answer soon, the known instances are tried anyway.
	ch := b.lookups.DoChan("", b.refresh)
	var patience <-chan time.Time
	if known {
		t := time.NewTimer(lookupPatience)
		defer t.Stop()
		patience = t.C
	}
	select {
	case res := <-ch:
		if res.Err != nil && !known {
			return "", fmt.Errorf("look up %s: %w", b.name, res.Err)
		}
	case <-patience:
	case <-ctx.Done():
		return "", fmt.Errorf("look up %s: %w", b.name, ctx.Err())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if addr, _, ok := b.pickLocked(time.Now()); ok {
		return addr, nil
	}
	return "", fmt.Errorf("look up %s: no instance registered", b.name)
}

// refresh looks the list up and keeps it; a failed or empty lookup keeps the known list, and is tried
// again after relookAfterFailure. It is not tied to one caller's context: it serves every waiter.
func (b *balancer) refresh() (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	addrs, err := b.lookup(ctx)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no instance registered")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.lookupFailed = time.Now()
		b.fresh = b.lookupFailed.Add(relookAfterFailure)
		return nil, err
	}
	b.addrs, b.fresh = addrs, time.Now().Add(b.ttl)
	for addr := range b.broken {
		if !slices.Contains(addrs, addr) {
			delete(b.broken, addr) // gone from discovery: nothing to remember
		}
	}
	return nil, nil
}

// pickLocked returns the next address round-robin whose breaker is closed (healthy), or, when every
// one is open, the next one anyway (there is nothing better to try); known is false when no address is
// known at all.
func (b *balancer) pickLocked(now time.Time) (addr string, healthy, known bool) {
	n := len(b.addrs)
	if n == 0 {
		return "", false, false
	}
	for range n {
		b.next = (b.next + 1) % n
		addr := b.addrs[b.next]
		if t, open := b.broken[addr]; !open || !now.Before(t.until) {
			return addr, true, true
		}
	}
	b.next = (b.next + 1) % n
	return b.addrs[b.next], false, true
}

// known returns the addresses of the last lookup (none before the first).
func (b *balancer) known() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.addrs)
}

func (b *balancer) failed(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.broken == nil {
		b.broken = map[string]tripped{}
	}
	t := b.broken[addr]
	d := breakMin << min(t.trips, 10)
	if d > breakMax {
		d = breakMax
	}
	b.broken[addr] = tripped{until: time.Now().Add(d), trips: t.trips + 1}
	// The instance may have moved (restarted on another port) or been replaced: look again now, unless
	// the kv store just failed a lookup.
	if time.Since(b.lookupFailed) >= relookAfterFailure {
		b.fresh = time.Time{}
	}
}

func (b *balancer) answered(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.broken, addr)
}
