package lmx

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
)

// A Broker is a lock table that lives in the caller's process. Local calls
// lock with no network hop; Listen exposes the same table to other
// processes. A Broker is safe for concurrent use and usable as soon as
// NewBroker returns.
type Broker struct {
	cfg      brokerConfig
	seed     maphash.Seed
	idTag    uint16 // random, the middle of every lock id (see stamp)
	closed   atomic.Bool
	readies  sync.Pool // waiters' wake-up channels, see newReady
	clock    msClock   // lock ids' time
	watchers watchers  // see Watch
	srv      server    // the network door, see listener.go
	bg       group     // the table's own goroutines: LockAll's watchers, timers' callbacks

	// tokens changes on every grant, from every core. The padding keeps it
	// off the cache lines of what every call reads (closed, seed, clock,
	// the shards): sharing one, those reads missed the cache on 2 cores.
	_      [64]byte
	tokens atomic.Uint64 // the last fencing token handed out
	_      [64]byte

	shards [numShards]shard
}

var (
	_ Locker = (*Broker)(nil)
	_ Admin  = (*Broker)(nil)
)

// NewBroker returns a Broker ready for use. Its fencing tokens start from the
// wall clock in nanoseconds, so they keep increasing across restarts.
func NewBroker(opts ...BrokerOption) *Broker {
	cfg := defaultBrokerConfig()
	for _, o := range opts {
		o(&cfg)
	}
	b := &Broker{cfg: cfg, seed: maphash.MakeSeed(), idTag: uint16(rand.Uint32())}
	b.readies.New = newReady
	b.tokens.Store(uint64(time.Now().UnixNano()))
	for i := range b.shards {
		b.shards[i].init(b)
	}
	return b
}

// Lock waits until key is granted and returns its lease. Waiters are granted
// in order of priority, then arrival; nothing polls: the lease is handed to
// the next waiter directly when its holder lets go. A wait cut short by ctx
// returns ctx.Err() and leaves nothing held.
func (b *Broker) Lock(ctx context.Context, key string, opts ...LockOption) (*Lease, error) {
	return b.acquire(ctx, key, opts, true)
}

// TryLock grants key if it can be granted now without overtaking a queued
// waiter; otherwise it fails at once with ErrLocked.
func (b *Broker) TryLock(ctx context.Context, key string, opts ...LockOption) (*Lease, error) {
	return b.acquire(ctx, key, opts, false)
}

func (b *Broker) acquire(ctx context.Context, key string, opts []LockOption, wait bool) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.check(key); err != nil {
		return nil, err
	}
	if len(opts) == 0 {
		return b.shardFor(key).acquire(ctx, key, &plainRequest, wait)
	}
	r, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	return b.shardFor(key).acquire(ctx, key, &r, wait)
}

// Release ends the lease of key whose lock id is id, as its Unlock would. A
// wrong id is ErrNotHeld and changes nothing.
func (b *Broker) Release(ctx context.Context, key string, id ulid.ULID) error {
	_, err := b.release(key, id, nil)
	return err
}

// release is Release on behalf of by, if not nil, the hook of a session:
// see shard.release.
func (b *Broker) release(key string, id ulid.ULID, by leaseHook) (ended bool, err error) {
	if err := b.check(key); err != nil {
		return false, err
	}
	return b.shardFor(key).release(key, id, by)
}

// ForceUnlock ends every lease of key with an error matching ErrForced, and
// the key passes to its waiters. It fails with ErrNotHeld when key has no
// holder.
func (b *Broker) ForceUnlock(ctx context.Context, key string) error {
	if err := b.check(key); err != nil {
		return err
	}
	return b.shardFor(key).forceUnlock(key)
}

// Inspect describes key's holders and waiters.
func (b *Broker) Inspect(ctx context.Context, key string) (KeyInfo, error) {
	if err := b.check(key); err != nil {
		return KeyInfo{}, err
	}
	return b.shardFor(key).inspect(key), nil
}

// List returns the live keys that start with prefix, sorted, at most limit
// of them (DefaultListLimit when limit <= 0, at most MaxListLimit).
func (b *Broker) List(ctx context.Context, prefix string, limit int) ([]KeyStat, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	limit = listLimit(limit)
	var keys []KeyStat
	for i := range b.shards {
		keys = b.shards[i].list(keys, prefix)
	}
	slices.SortFunc(keys, func(a, b KeyStat) int { return strings.Compare(a.Key, b.Key) })
	return keys[:min(len(keys), limit)], nil
}

func listLimit(limit int) int {
	if limit <= 0 {
		return DefaultListLimit
	}
	return min(limit, MaxListLimit)
}

// Stats counts what the table holds and has done. It fails only with
// ErrClosed.
func (b *Broker) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	if b.closed.Load() {
		return s, ErrClosed
	}
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		s.Keys += len(sh.keys)
		if sh.idle != nil && sh.reheld == nil {
			s.Keys--
		}
		s.Holders += sh.st.holders
		s.Waiters += sh.st.waiters
		s.Grants += sh.st.grants
		s.Expiries += sh.st.expiries
		s.Forced += sh.st.forced
		s.Preemptions += sh.st.preemptions
		s.SessionLost += sh.st.sessionLost
		s.WaitTime.add(&sh.st.wait)
		s.HoldTime.add(&sh.st.hold)
		sh.mu.Unlock()
	}
	s.Sessions = b.srv.sessionCount()
	return s, nil
}

// Close closes the broker's listeners and connections, ends every lease
// with an error matching ErrLeaseLost and ErrClosed, fails every waiting Lock
// with ErrClosed, and makes later calls fail with ErrClosed. It is immediate
// and idempotent; Shutdown is the graceful way.
func (b *Broker) Close() error {
	b.closed.Store(true)
	b.closeNetwork()
	b.clock.stop()
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		sh.closeLocked()
		sh.mu.Unlock()
	}
	for _, w := range b.watchers.all() {
		b.unwatch(w)
	}
	b.bg.close() // every lease has ended: LockAll's watchers return
	b.bg.wait()
	return nil
}

// start runs f in a goroutine that Close waits for; see group.
func (b *Broker) start(f func()) bool { return b.bg.start(f) }

// check fails calls on a closed broker and validates key.
func (b *Broker) check(key string) error {
	if b.closed.Load() {
		return ErrClosed
	}
	return checkKey(key, b.cfg.maxKeyLen)
}

// checkKey checks a key against the broker's limit on its length: the
// broker's own check, and a client's before it sends the key.
func checkKey(key string, maxLen int) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > maxLen {
		return fmt.Errorf("%w: key of %d bytes, the limit is %d", ErrInvalidKey, len(key), maxLen)
	}
	return nil
}

func (b *Broker) shardFor(key string) *shard {
	return &b.shards[maphash.String(b.seed, key)%numShards]
}

// stamp gives l, granted or named at ms, unix milliseconds, its fencing
// token and its lock id: a ULID of ms whose 80 other bits are the broker's
// idTag and then the token. Tokens never repeat, across restarts either, so
// neither do ids; and writing them costs less than drawing 80 random bits
// on every grant.
func (b *Broker) stamp(l *Lease, ms int64) {
	l.token = b.tokens.Add(1)
	_ = l.id.SetTime(uint64(ms)) // fails only past the year 10889
	binary.BigEndian.PutUint16(l.id[6:], b.idTag)
	binary.BigEndian.PutUint64(l.id[8:], l.token)
}

// newReady makes a waiter's wake-up channel. It is buffered so the granter
// never blocks; it carries one value per wait and is drained before it is
// pooled again. The pool is the broker's, not global, so that a broker made
// inside a testing/synctest bubble only ever uses that bubble's channels.
func newReady() any { return make(chan struct{}, 1) }
