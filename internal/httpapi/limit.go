package httpapi

import (
	"container/list"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxLimiterKeys caps how many clients' buckets a KeyedLimiter keeps at once by default (a few hundred
// bytes each).
const MaxLimiterKeys = 1 << 16

// KeyedLimiter is a token bucket per key (a client address, see ClientAddr). Memory stays bounded without a background
// goroutine: the buckets are kept in a list by last use, and every call first drops the buckets idle for
// longer than a full refill takes (such a bucket is full again, so a new one is the same), then, at the
// cap, the least recently used one.
type KeyedLimiter struct {
	limit rate.Limit
	burst int
	idle  time.Duration
	cap   int
	now   func() time.Time

	mu    sync.Mutex
	byKey map[string]*list.Element
	lru   list.List // of *bucket, most recently used at the front
}

type bucket struct {
	key  string
	lim  *rate.Limiter
	seen time.Time
}

// NewKeyedLimiter returns a limiter that allows each key burst events at once and perSecond after that,
// keeping at most capacity keys' buckets; now is the clock (time.Now).
func NewKeyedLimiter(perSecond float64, burst, capacity int, now func() time.Time) *KeyedLimiter {
	burst = max(burst, 1)
	idle := time.Duration(math.Ceil(float64(burst) / perSecond * float64(time.Second)))
	return &KeyedLimiter{limit: rate.Limit(perSecond), burst: burst, idle: max(idle, time.Second), cap: max(capacity, 1),
		now: now, byKey: map[string]*list.Element{}}
}

// Allow takes a token from key's bucket; when there is none it says how long until there is one.
func (l *KeyedLimiter) Allow(key string) (wait time.Duration, ok bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for el := l.lru.Back(); el != nil && now.Sub(el.Value.(*bucket).seen) >= l.idle; el = l.lru.Back() {
		l.drop(el)
	}
	el := l.byKey[key]
	if el == nil {
		for l.lru.Len() >= l.cap {
			l.drop(l.lru.Back())
		}
		el = l.lru.PushFront(&bucket{key: key, lim: rate.NewLimiter(l.limit, l.burst)})
		l.byKey[key] = el
	} else {
		l.lru.MoveToFront(el)
	}
	b := el.Value.(*bucket)
	b.seen = now
	if b.lim.AllowN(now, 1) {
		return 0, true
	}
	missing := 1 - b.lim.TokensAt(now)
	return time.Duration(math.Ceil(missing / float64(l.limit) * float64(time.Second))), false
}

func (l *KeyedLimiter) drop(el *list.Element) {
	l.lru.Remove(el)
	delete(l.byKey, el.Value.(*bucket).key)
}

// Len is how many buckets are kept.
func (l *KeyedLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
