package lmx

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
)

// Locker is what every door to a lock table implements: the in-process
// *Broker, the network *Client, and the backends.
type Locker interface {
	// Lock waits until key is granted and returns the lease. A wait cut short
	// by ctx returns ctx.Err() and leaves nothing held.
	Lock(ctx context.Context, key string, opts ...LockOption) (*Lease, error)

	// TryLock grants key if it can be granted now without overtaking a
	// queued waiter, and otherwise fails at once with ErrLocked.
	TryLock(ctx context.Context, key string, opts ...LockOption) (*Lease, error)

	// Close ends the door: calls fail with ErrClosed afterwards.
	Close() error
}

// Admin is what the doors offer beyond Locker to operators and tools: lock
// ids from another process, introspection and the escape hatch. *Broker and
// *Client implement it.
type Admin interface {
	// Release ends the lease of key whose lock id is id, as its Unlock would:
	// this is how a lock taken by one process is released from another. A
	// wrong id is ErrNotHeld and changes nothing.
	Release(ctx context.Context, key string, id ulid.ULID) error

	// ForceUnlock ends every lease of key with an error matching ErrForced;
	// the key passes to its waiters. It fails with ErrNotHeld when key has no
	// holder.
	ForceUnlock(ctx context.Context, key string) error

	// Inspect describes key's holders and waiters. An idle key has none.
	Inspect(ctx context.Context, key string) (KeyInfo, error)

	// Stats counts what the lock table holds and has done.
	Stats(ctx context.Context) (Stats, error)
}

// Watcher is implemented by the doors that stream lock events: *Broker and
// *Client.
type Watcher interface {
	// Watch streams the events of keys starting with prefix until ctx
	// ends or the door closes; then it closes the channel.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
}

// MultiLocker is implemented by the doors that lock several keys as one:
// *Broker and *Client.
type MultiLocker interface {
	LockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error)
	TryLockAll(ctx context.Context, keys []string, opts ...LockOption) (*Lease, error)
}

var (
	_ Watcher     = (*Broker)(nil)
	_ Watcher     = (*Client)(nil)
	_ MultiLocker = (*Broker)(nil)
	_ MultiLocker = (*Client)(nil)
)

// Lister is implemented by the doors that list their keys: *Broker and
// *Client.
type Lister interface {
	// List returns the live keys that start with prefix, sorted, at most
	// limit of them (DefaultListLimit when limit <= 0, at most MaxListLimit).
	List(ctx context.Context, prefix string, limit int) ([]KeyStat, error)
}

var (
	_ Lister = (*Broker)(nil)
	_ Lister = (*Client)(nil)
)

// Limits of List.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 10000
)

// KeyStat summarizes one live key, as List sees it.
type KeyStat struct {
	Key     string
	Limit   int // holders admitted at once
	Holders int
	Waiters int
}

// KeyInfo describes one key, as Inspect sees it.
type KeyInfo struct {
	Key     string
	Limit   int          // holders admitted at once; 0 when the key is idle
	Holders []HolderInfo // in grant order
	Waiters []WaiterInfo // in queue order: the first is granted next
}

// HolderInfo describes one lease of a key.
type HolderInfo struct {
	ID      ulid.ULID
	Token   uint64
	Owner   string // "" unless asked with Owner
	Shared  bool
	Count   int       // grants held through re-entrancy, at least 1
	Since   time.Time // when granted, to the millisecond
	Expires time.Time // zero without a TTL
}

// WaiterInfo describes one queued request for a key.
type WaiterInfo struct {
	Owner    string
	Priority int
	Shared   bool
}

// Stats counts what a lock table holds now and what it has done since it
// started.
type Stats struct {
	Keys     int // keys with a holder or a waiter
	Holders  int // leases held
	Waiters  int // requests queued
	Sessions int // network sessions open

	Grants      uint64 // leases granted (re-entry not counted)
	Expiries    uint64 // leases ended by their TTL
	Forced      uint64 // leases ended by ForceUnlock
	Preemptions uint64 // leases ended by preemption
	SessionLost uint64 // leases ended because their session ended

	WaitTime Histogram // how long granted requests waited in a queue
	HoldTime Histogram // how long ended leases were held
}

// histogramBounds are the upper bounds of a Histogram's buckets, from a
// millisecond's wait to a lease held for hours. Unexported, so that no
// importer can change how a broker counts; HistogramBounds returns a copy.
var histogramBounds = [...]time.Duration{
	time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second,
	10 * time.Second, time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 4 * time.Hour,
}

// HistogramBounds returns the upper bounds of a Histogram's buckets, in
// increasing order: 1ms, 5ms, 10ms, 50ms, 100ms, 500ms, 1s, 5s, 10s, 1m, 5m,
// 15m, 1h and 4h. The slice is the caller's.
func HistogramBounds() []time.Duration { return slices.Clone(histogramBounds[:]) }

// A Histogram counts durations, to the millisecond, in the buckets of
// HistogramBounds: Counts[i] those up to HistogramBounds()[i], and the last
// count those above every bound.
type Histogram struct {
	Counts [len(histogramBounds) + 1]uint64
	Sum    time.Duration
}

// observe counts d.
func (h *Histogram) observe(d time.Duration) {
	i := 0
	for i < len(histogramBounds) && d > histogramBounds[i] {
		i++
	}
	h.Counts[i]++
	h.Sum += d
}

// add adds o's counts to h.
func (h *Histogram) add(o *Histogram) {
	for i := range h.Counts {
		h.Counts[i] += o.Counts[i]
	}
	h.Sum += o.Sum
}

// Count returns how many durations h counted.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// entry is the state of one live key that has more than its holder (see
// shard). It is recycled once idle. Guarded by its shard's mu.
type entry struct {
	key     string
	limit   int32     // exclusive holders admitted at once, fixed at creation
	excl    int32     // exclusive holders
	shared  int32     // shared holders
	stop    uint32    // the Stop the chain's session has yet to answer, or 0
	holders leaseList // in grant order
	waiters leaseList // ordered by priority, then arrival
	delay   *delay    // a lock-delay in force, or nil
	chain   *Lease    // the last waiter named to the holder's session, or nil (see chain.go)
	anchor  Lease     // what the shard's keys holds for the key: no lease, its key and e only
}

// fits reports whether l could hold the key alongside the present holders.
func (e *entry) fits(l *Lease) bool {
	if e.delay != nil {
		return false
	}
	if l.shared {
		return e.excl == 0
	}
	return e.shared == 0 && e.excl < e.limit
}

// idle reports whether the entry can be freed.
func (e *entry) idle() bool { return e.holders.n == 0 && e.waiters.n == 0 && e.delay == nil }

// heldBy returns the lease of key held by owner through hook (the same
// network session, or in-process when nil), or nil.
func (e *entry) heldBy(owner string, hook leaseHook) *Lease {
	for h := e.holders.head; h != nil; h = h.next {
		if h.owner() == owner && h.hook() == hook {
			return h
		}
	}
	return nil
}

// heldWithID returns the lease of key with lock id id, or nil.
func (e *entry) heldWithID(id ulid.ULID) *Lease {
	for h := e.holders.head; h != nil; h = h.next {
		if h.id == id {
			return h
		}
	}
	return nil
}

// info describes the entry for Inspect.
func (e *entry) info() KeyInfo {
	ki := KeyInfo{Key: e.key, Limit: int(e.limit)}
	for h := e.holders.head; h != nil; h = h.next {
		ki.Holders = append(ki.Holders, h.info())
	}
	for w := e.waiters.head; w != nil; w = w.next {
		ki.Waiters = append(ki.Waiters, WaiterInfo{Owner: w.owner(), Priority: int(w.prio()), Shared: w.shared})
	}
	return ki
}

// info describes the held lease l for Inspect.
func (l *Lease) info() HolderInfo {
	return HolderInfo{
		ID:      l.id,
		Token:   l.token,
		Owner:   l.owner(),
		Shared:  l.shared,
		Count:   int(l.count),
		Since:   time.UnixMilli(l.granted()),
		Expires: l.expiresLocked(),
	}
}

// waitersLocked returns how many wait for the key of l, which is held or
// waiting; the caller holds the shard's mu.
func (l *Lease) waitersLocked() int {
	if l.e == nil {
		return 0
	}
	return l.e.waiters.n
}

// inspect describes key for Inspect.
func (sh *shard) inspect(key string) KeyInfo {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch lone, e := sh.lookupLocked(key); {
	case e != nil:
		return e.info()
	case lone != nil:
		return KeyInfo{Key: key, Limit: 1, Holders: []HolderInfo{lone.info()}}
	}
	return KeyInfo{Key: key}
}

// list appends to keys the live keys of the shard that start with prefix.
func (sh *shard) list(keys []KeyStat, prefix string) []KeyStat {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for k, v := range sh.keys {
		if v == sh.idle {
			v = sh.reheld // nil unless its key is held again
		}
		switch {
		case v == nil || !strings.HasPrefix(k, prefix):
		case v.e == nil:
			keys = append(keys, KeyStat{Key: k, Limit: 1, Holders: 1})
		default:
			e := v.e
			keys = append(keys, KeyStat{Key: k, Limit: int(e.limit), Holders: e.holders.n, Waiters: e.waiters.n})
		}
	}
	return keys
}
