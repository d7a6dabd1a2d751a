// Package etcdkv is a kvstore.Store on an etcd cluster, which several kv services can share: etcd keeps
// the entries replicated and consistent, and the client fails over between the members it is given.
//
// Every key is stored under a namespace (Options.Prefix). An entry with a TTL is attached to an etcd
// lease of its own, so etcd expires it on the leader's clock: a little after its expiry at worst, never
// before. Registrations are renewed every third of their ttl, so a renewal that changes nothing keeps
// the entry's lease alive instead of granting a new one; a lease that its key leaves (a new value or
// ttl, a permanent Set, a Delete) is revoked, so none piles up. One that a failure leaves behind holds
// no key and expires on its own, as nothing renews it.
//
// Every call is bounded (Options.DialTimeout, unless its context ends sooner) and requires a leader, so
// that a cluster that cannot be reached, or a member that lost its quorum, fails calls within seconds
// instead of holding them; such failures, and a cluster out of space, are transient (fault; see
// classify). The client reconnects on its own: a store opened while the cluster is away opens all the
// same, and works once the cluster answers.
package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/kvstore"
)

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("etcdkv: store closed")

const (
	// DefaultPrefix is the namespace of the keys when Options.Prefix is empty.
	DefaultPrefix = "imgmill/"
	// DefaultDialTimeout is Options.DialTimeout's default.
	DefaultDialTimeout = 5 * time.Second
	// maxPingTimeout bounds Ping: a health check wants an answer soon.
	maxPingTimeout = 5 * time.Second
	// maxReconnectDelay bounds the pause between the client's attempts to reconnect to a member, which
	// gRPC lets grow to two minutes: once a member is back, the store finds it within seconds.
	maxReconnectDelay = 5 * time.Second
	// what names the store in transient errors (fault).
	what = "the key-value store"
)

// ParseURL returns the endpoints (host:port) of an etcd://HOST:PORT[,HOST:PORT...] URL.
func ParseURL(raw string) ([]string, error) {
	const want = "want etcd://HOST:PORT[,HOST:PORT...]"
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, fmt.Errorf("etcdkv: %q is not a URL: %s", raw, want)
	}
	if !strings.EqualFold(scheme, "etcd") {
		return nil, fmt.Errorf("etcdkv: %q: scheme %q is not etcd: %s", raw, scheme, want)
	}
	if rest == "" {
		return nil, fmt.Errorf("etcdkv: %q lists no endpoint: %s", raw, want)
	}
	var endpoints []string
	for ep := range strings.SplitSeq(rest, ",") {
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			return nil, fmt.Errorf("etcdkv: %q: endpoint %q is not HOST:PORT: %w", raw, ep, err)
		}
		if host == "" || strings.ContainsAny(host, "/?#@ ") {
			return nil, fmt.Errorf("etcdkv: %q: endpoint %q has no valid host: %s", raw, ep, want)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("etcdkv: %q: endpoint %q has no valid port: %s", raw, ep, want)
		}
		if slices.Contains(endpoints, ep) {
			return nil, fmt.Errorf("etcdkv: %q lists %s twice", raw, ep)
		}
		endpoints = append(endpoints, ep)
	}
	return endpoints, nil
}

// Options configures Open.
type Options struct {
	// Endpoints are the members' client addresses, host:port (see ParseURL). The client spreads its calls
	// across them and moves off a member that is down.
	Endpoints []string
	// Prefix is the namespace of the keys: key k is stored in etcd as Prefix+k, so that other users of the
	// cluster (or other tests) do not see them. "" means DefaultPrefix.
	Prefix string
	// DialTimeout bounds connecting to a member, each call (unless its context ends sooner) and Open's
	// check that the cluster answers. 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger gets what the store cannot return as an error (an unused lease it failed to revoke, a
	// cluster that did not answer at Open). nil means slog.Default().
	Logger *slog.Logger
}

// Store is a kvstore.Store on etcd. It is safe for concurrent use.
type Store struct {
	client      *clientv3.Client
	prefix      string
	dialTimeout time.Duration
	logger      *slog.Logger
	// minTTL is the cluster's minimum lease TTL in seconds, learnt when it granted more than asked for
	// (0 until then), so that renewing an entry whose ttl is below it still keeps the lease.
	minTTL atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ kvstore.Store = (*Store)(nil)

// Open connects to the etcd cluster at opts.Endpoints and checks that it answers a read, which needs a
// quorum. A cluster that cannot be reached, or has no quorum, within ctx and the dial timeout does not
// fail Open: the store logs a warning and is returned, its calls fail with transient errors until the
// cluster answers, and the client reconnects on its own. The end of ctx, or an answer that refuses the
// store (a permanent error), fails Open.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcdkv: no endpoints")
	}
	s := &Store{prefix: opts.Prefix, dialTimeout: opts.DialTimeout, logger: opts.Logger}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.dialTimeout <= 0 {
		s.dialTimeout = DefaultDialTimeout
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	endpoints := strings.Join(opts.Endpoints, ",")
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   slices.Clone(opts.Endpoints),
		DialTimeout: s.dialTimeout,
		// Pings find a member that vanished without closing the connection (a partition, a powered-off
		// host) between calls. etcd refuses pings more often than every 5s by default.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: s.dialTimeout,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxReconnectDelay},
			MinConnectTimeout: s.dialTimeout,
		})},
		// The client logs each retry and reconnection; what matters reaches the caller as an error.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdkv: connect to %s: %w", endpoints, err)
	}
	s.client = client
	// clientv3.New does not dial: without this check a cluster that refuses us would only show at the
	// first call, and one that is away would go unmentioned.
	cctx, cancel := s.bound(ctx)
	_, err = client.Get(cctx, s.prefix, clientv3.WithCountOnly())
	err = failed(ctx, cctx, err)
	cancel()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		client.Close()
		return nil, fmt.Errorf("etcdkv: etcd at %s does not answer (waited up to %v): %w", endpoints, s.dialTimeout, err)
	case !fault.IsTransient(err):
		client.Close()
		return nil, fmt.Errorf("etcdkv: etcd at %s: %w", endpoints, err)
	default:
		s.logger.Warn("etcdkv: etcd at "+endpoints+" does not answer yet; calls fail until it does",
			"waited", s.dialTimeout, "err", err)
	}
	return s, nil
}

// bound returns the context of a call: ctx, ended after the dial timeout unless it ends sooner, so that
// a call to a cluster that does not answer fails (the client waits for a connection otherwise); and
// requiring a leader, so that a member without quorum refuses the call at once (ErrNoLeader) instead of
// holding it until it times out.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, s.dialTimeout)
	return clientv3.WithRequireLeader(ctx), cancel
}

// classify marks the error of a call made with ctx as transient when it is the cluster's failure rather
// than the call's: the cluster cannot be reached, has no leader (quorum), is overloaded or did not
// answer in time (fault.Unavailable), or its database is full (fault.NoSpace). The caller's own
// cancellation or deadline and every other error come back unchanged.
func classify(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return err // the caller gave up, whatever the call met meanwhile
	case fault.IsTransient(err):
		return err
	case errors.Is(err, rpctypes.ErrNoSpace), errors.Is(err, rpctypes.ErrGRPCNoSpace):
		// The cluster raised its NOSPACE alarm: writes fail until an operator compacts, defragments and
		// disarms it.
		return fault.NoSpace(what, err)
	case errors.Is(err, context.DeadlineExceeded), rpctypes.ErrorDesc(err) == context.DeadlineExceeded.Error():
		// The call's own bound (see bound), ctx being live; etcd answers a call whose deadline (ours,
		// passed on) ran out inside the server with an error of code Unknown that says so.
		return fault.Unavailable(what, err)
	}
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		switch {
		case transientCode(etcdErr.Code()):
			// ErrNoLeader, ErrLeaderChanged, ErrStopped, ErrTimeout (and its kinds), ErrUnhealthy,
			// ErrTooManyRequests.
			return fault.Unavailable(what, err)
		case etcdErr == rpctypes.ErrNotCapable, etcdErr == rpctypes.ErrNotLeader:
			return fault.Unavailable(what, err) // a cluster mid-upgrade, a leader mid-change
		}
		return err
	}
	if transientCode(status.Code(err)) {
		// The client's own: no connection to any member ("connection refused", "there is no address
		// available"), a deadline of the server's.
		return fault.Unavailable(what, err)
	}
	return err
}

// failed classifies the error of a call made on behalf of ctx within cctx, its bound (see bound): a call
// that ran out of its bound failed because the cluster did not answer in time, whatever its error says.
func failed(ctx, cctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil && cctx.Err() != nil && !fault.IsTransient(err) {
		return fault.Unavailable(what, err)
	}
	return classify(ctx, err)
}

// transientCode reports whether a gRPC code says the cluster cannot serve now rather than that the call
// is wrong.
func transientCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.ResourceExhausted || c == codes.DeadlineExceeded
}

// check refuses a call on a closed store, an empty key (the namespace itself) and a context that has
// ended, which the client would not always notice before sending.
func (s *Store) check(ctx context.Context, op, key string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if key == "" {
		return fmt.Errorf("etcdkv: %s: empty key", op)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcdkv: %s %s: %w", op, key, err)
	}
	return nil
}

// leaseSeconds is ttl in whole seconds, rounded up: etcd's lease TTLs are seconds, and rounding down
// would expire an entry early.
func leaseSeconds(ttl time.Duration) int64 {
	secs := int64(ttl / time.Second)
	if ttl%time.Second != 0 {
		secs++
	}
	return secs
}

// Set implements kvstore.Store.
func (s *Store) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	if err := s.check(ctx, "set", key); err != nil {
		return err
	}
	cctx, cancel := s.bound(ctx)
	defer cancel()
	if err := s.set(cctx, s.prefix+key, value, ttl); err != nil {
		return fmt.Errorf("etcdkv: set %s: %w", key, failed(ctx, cctx, err))
	}
	return nil
}

// set stores value under k, the key in etcd.
func (s *Store) set(ctx context.Context, k, value string, ttl time.Duration) error {
	if ttl <= 0 {
		// A Put without a lease detaches the key from its lease, if it had one.
		resp, err := s.client.Put(ctx, k, value, clientv3.WithPrevKV())
		if err != nil {
			return err
		}
		if resp.PrevKv != nil {
			s.release(ctx, clientv3.LeaseID(resp.PrevKv.Lease))
		}
		return nil
	}
	secs := leaseSeconds(ttl)
	renewed, err := s.renew(ctx, k, value, secs)
	if err != nil || renewed {
		return err
	}
	lease, err := s.client.Grant(ctx, secs)
	if err != nil {
		return fmt.Errorf("grant a %ds lease: %w", secs, err)
	}
	if lease.TTL > secs {
		s.minTTL.Store(lease.TTL)
	}
	// WithPrevKV tells, atomically with the Put, which lease the key leaves: the one to revoke, even when
	// another writer raced us.
	resp, err := s.client.Put(ctx, k, value, clientv3.WithLease(lease.ID), clientv3.WithPrevKV())
	if err != nil {
		// The lease is not revoked: the Put may have been applied all the same, and a lease that nothing
		// renews expires within ttl anyway.
		return err
	}
	if resp.PrevKv != nil && clientv3.LeaseID(resp.PrevKv.Lease) != lease.ID {
		s.release(ctx, clientv3.LeaseID(resp.PrevKv.Lease))
	}
	return nil
}

// renew renews key k in place when it already holds value on a lease of secs seconds, by keeping that
// lease alive, and reports whether it did.
func (s *Store) renew(ctx context.Context, k, value string, secs int64) (bool, error) {
	resp, err := s.client.Get(ctx, k)
	if err != nil {
		return false, err
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 || string(resp.Kvs[0].Value) != value {
		return false, nil
	}
	ka, err := s.client.KeepAliveOnce(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false, nil // it expired (or was replaced) since the Get: a new lease it is
	}
	if err != nil {
		return false, fmt.Errorf("renew lease: %w", err)
	}
	// A lease of another ttl was renewed for nothing: the caller replaces it, and revokes it.
	return ka.TTL == secs || (ka.TTL > secs && ka.TTL == s.minTTL.Load()), nil
}

// release revokes lease id (NoLease: nothing to do), which the key it held has just left. Each lease
// this store grants holds one key, so nothing else uses it.
func (s *Store) release(ctx context.Context, id clientv3.LeaseID) {
	if id == clientv3.NoLease {
		return
	}
	// The write that freed it succeeded: finish the clean-up even if the caller's context ends now.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.dialTimeout)
	defer cancel()
	if _, err := s.client.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.logger.Warn("etcdkv: revoke an unused lease (it expires on its own)", "lease", int64(id), "err", err)
	}
}

// SetIfAbsent implements kvstore.Store in one transaction: the key's creation revision is 0 when it
// does not exist (an expired entry is deleted with its lease).
func (s *Store) SetIfAbsent(ctx context.Context, key, value string) (string, error) {
	if err := s.check(ctx, "set-if-absent", key); err != nil {
		return "", err
	}
	k := s.prefix + key
	cctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.client.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, value)).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("etcdkv: set-if-absent %s: %w", key, failed(ctx, cctx, err))
	}
	if resp.Succeeded {
		return value, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 {
		return "", fmt.Errorf("etcdkv: set-if-absent %s: the key exists but the transaction read %d entries", key, len(kvs))
	}
	return string(kvs[0].Value), nil
}

// Get implements kvstore.Store.
func (s *Store) Get(ctx context.Context, key string) (string, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return "", err
	}
	cctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.client.Get(cctx, s.prefix+key)
	if err != nil {
		return "", fmt.Errorf("etcdkv: get %s: %w", key, failed(ctx, cctx, err))
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("etcdkv: get %s: %w", key, kvstore.ErrNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, "delete", key); err != nil {
		return err
	}
	cctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.client.Delete(cctx, s.prefix+key, clientv3.WithPrevKV())
	if err != nil {
		return fmt.Errorf("etcdkv: delete %s: %w", key, failed(ctx, cctx, err))
	}
	// etcd keeps a lease whose keys are deleted until it expires.
	for _, kv := range resp.PrevKvs {
		s.release(cctx, clientv3.LeaseID(kv.Lease))
	}
	return nil
}

// List implements kvstore.Store. etcd returns a range sorted by key, in byte order.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.Entry, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcdkv: list %q: %w", prefix, err)
	}
	cctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.client.Get(cctx, s.prefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcdkv: list %q: %w", prefix, failed(ctx, cctx, err))
	}
	entries := make([]kvstore.Entry, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		entries[i] = kvstore.Entry{Key: string(kv.Key[len(s.prefix):]), Value: string(kv.Value)}
	}
	return entries, nil
}

// Ping implements kvstore.Store: a count-only read of one key, which needs the cluster's quorum, bounded
// by the dial timeout or 5s, whichever is shorter.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcdkv: ping: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, min(s.dialTimeout, maxPingTimeout))
	defer cancel()
	if _, err := s.client.Get(clientv3.WithRequireLeader(cctx), s.prefix, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcdkv: ping: %w", failed(ctx, cctx, err))
	}
	return nil
}

// Close implements kvstore.Store: it closes the client and its connections. Closing twice is not an
// error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if err := s.client.Close(); err != nil {
			s.closeErr = fmt.Errorf("etcdkv: close: %w", err)
		}
	})
	return s.closeErr
}
