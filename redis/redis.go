// Package redis is an lmx.Locker over a single Redis server, for teams that
// run Redis and no other lock service. Importing it registers the redis://,
// rediss:// (TLS) and rpm+redis:// (ipc-mutex's spelling) schemes with
// lmx.Open:
//
//	redis://[user:password@]host:port[/db][?prefix=locks:&session_ttl=5s]
//
// Each key has a queue in Redis, ordered by priority then arrival, and every
// change of it is one Lua script (see scripts.go for the layout). A waiter
// is told of its grant by a message on its Locker's pub/sub channel, to
// which the Locker subscribed before it queued anything; it looks again only
// when its Locker reconnects to Redis, when a holder before it may end on its
// own (at its TTL, or at its session's), and every few hundred milliseconds
// against a lost message. Fencing tokens come from one counter in Redis
// (INCR), which a new Redis starts at the time in microseconds, so that they
// keep increasing across restarts of every client and of Redis.
//
// A Locker has a session: a Redis key it refreshes while it lives
// (SessionTTL, default 5s). The leases and waiters of a session whose key
// has expired are dead: whoever next touches their lock key removes them and
// grants the next waiter, and waiters look again when a holder's session
// may have expired, so a dead process frees its keys within the session TTL.
// An expiry is a release like any other: it grants the next waiter.
//
// Every lock option is supported: TTL, KeepAlive, KeepOnDisconnect (a TTL
// lease that outlives its session), Limit (semaphores), Shared, Priority
// (with the broker's bound against starvation), Preempt and NoPreempt (as
// the broker does them: the holders in the way of a waiter at the head of
// its queue are revoked by a message to their Lockers, and after the grace
// a script ends them with lmx.ErrPreempted and grants the waiter a newer
// token; the waiter's Locker looks again at the deadline), Owner (re-entry
// through the same Locker: an lmx.Lease of its own with the same id and
// token, counted) and LockDelay (after an expiry, a ForceUnlock or a lost
// session, kept in Redis). *Locker implements lmx.Admin, lmx.Lister and
// lmx.Watcher, across every Locker on the same Redis prefix, and
// lmx.MultiLocker through lmx.LockAll.
//
// A single Redis promises less than etcd: a failover to a replica that had
// not yet received a grant loses it, and two holders then believe they hold
// the key. Fencing tokens are the guard: a resource that checks them
// (lmx.Fence) rejects the older holder. This package does not implement
// Redlock's quorum over several masters, and does not run on Redis Cluster
// (its scripts touch keys of several slots).
package redis

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/oklog/ulid/v2"
	goredis "github.com/redis/go-redis/v9"
)

func init() {
	for _, s := range []string{"redis", "rediss", "rpm+redis"} {
		lmx.Register(s, openURL)
	}
}

// DefaultSessionTTL is the TTL of a Locker's session unless SessionTTL says
// otherwise: how long the keys of a Locker that Redis no longer hears stay
// held.
const DefaultSessionTTL = 5 * time.Second

// DefaultPrefix is the prefix of the Redis keys of a Locker opened by a URL
// without one.
const DefaultPrefix = "lmx:"

// recheck is about how long a waiter waits for a message before it looks
// at its request again, against a lost message.
const recheck = 500 * time.Millisecond

// An Option configures a Locker made by New.
type Option func(*config)

type config struct {
	sessionTTL time.Duration
}

// SessionTTL sets the TTL of the Locker's session; d <= 0 means
// DefaultSessionTTL. Redis keys have millisecond TTLs; the Locker refreshes
// its session every third of d.
func SessionTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.sessionTTL = d
		}
	}
}

// A Locker is an lmx.Locker whose lock table is in Redis. Its methods are
// safe for concurrent use.
type Locker struct {
	rdb *goredis.Client
	own bool // Close closes rdb
	pfx string
	arg any    // pfx, as the scripts' first argument
	id  string // the Locker's id: its channel is pfx "c:" id
	ttl time.Duration
	ps  *goredis.PubSub

	recheck time.Duration // see the constant; set before the first Lock

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the background goroutines
	calls  sync.WaitGroup // the Lock calls under way

	// Lock order: smu, then mu, then a lease's mu. Only smu is held across
	// a Redis call: the one that starts a session.
	smu sync.Mutex // serializes starting sessions

	mu      sync.Mutex
	sess    *session           // nil until a Lock needs one, or after one was lost
	waiters map[string]*waiter // by lock id
	leases  map[string]*lease  // by lock id
	owned   map[string]*lease  // the leases with an Owner, by ownedKey
	orphans map[string]orphan  // by lock id: see abandon
	closed  bool
}

// waiter is a Lock call waiting for its grant.
type waiter struct {
	granted chan grant    // the message that granted it
	look    chan struct{} // look again: the Locker reconnected, or a preemption round started for it
	revoked bool          // guarded by the Locker's mu: a revoke came before its lease was made
}

// grant is what a grant message says.
type grant struct {
	token uint64
	ttl   time.Duration // 0: none
}

// New returns a Locker whose keys live under prefix in the Redis rdb talks
// to (a plain or a failover client: not Redis Cluster). The caller keeps rdb
// and closes it after the Locker. ctx bounds the subscription New makes.
//
// The Locker handles a failed request itself. A client that retries
// commands (go-redis's default) may run a script twice when Redis ran it
// but the reply was lost: the scripts make that harmless, but an Unlock
// so retried reports lmx.ErrNotHeld. lmx.Open's clients do not retry
// unless the URL sets max_retries.
func New(ctx context.Context, rdb *goredis.Client, prefix string, opts ...Option) (*Locker, error) {
	c := config{sessionTTL: DefaultSessionTTL}
	for _, o := range opts {
		o(&c)
	}
	lctx, cancel := context.WithCancel(context.Background())
	lk := &Locker{
		rdb: rdb, pfx: prefix, arg: prefix, id: ulid.Make().String(), ttl: c.sessionTTL, recheck: recheck,
		ctx: lctx, cancel: cancel,
		waiters: map[string]*waiter{}, leases: map[string]*lease{}, owned: map[string]*lease{},
		orphans: map[string]orphan{},
	}
	// Subscribe before anything is queued, and wait for Redis to confirm:
	// from then on no grant of this Locker's is published unheard.
	lk.ps = rdb.Subscribe(ctx, lk.channel())
	if _, err := lk.ps.Receive(ctx); err != nil {
		lk.ps.Close()
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("lmx/redis: subscribe: %w", err)
	}
	lk.wg.Go(lk.listen)
	lk.wg.Go(lk.refresh)
	return lk, nil
}

// openURL is the lmx.Driver of redis://, rediss:// and rpm+redis://.
func openURL(ctx context.Context, u *url.URL) (lmx.Locker, error) {
	v := *u
	if v.Scheme == "rpm+redis" {
		v.Scheme = "redis"
	}
	q := v.Query()
	prefix := DefaultPrefix
	if q.Has("prefix") {
		prefix = q.Get("prefix")
	}
	var opts []Option
	if s := q.Get("session_ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("lmx/redis: session_ttl %q: a positive Go duration, such as 5s", s)
		}
		opts = append(opts, SessionTTL(d))
	}
	q.Del("prefix")
	q.Del("session_ttl")
	v.RawQuery = q.Encode()
	o, err := goredis.ParseURL(v.String())
	if err != nil {
		return nil, fmt.Errorf("lmx/redis: %s: %w", u.Redacted(), err)
	}
	if !q.Has("max_retries") {
		o.MaxRetries = -1 // see New
	}
	rdb := goredis.NewClient(o)
	lk, err := New(ctx, rdb, prefix, opts...)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	lk.own = true
	return lk, nil
}

// keys returns the Redis keys of key's queue, holders and metadata.
func (lk *Locker) keys(key string) []string {
	return []string{lk.pfx + "q:" + key, lk.pfx + "h:" + key, lk.pfx + "m:" + key}
}

// checkKey refuses a key the backend does not take.
func checkKey(key string) error {
	if key == "" || len(key) > lmx.DefaultMaxKeyLen {
		return fmt.Errorf("%w: %d bytes (1..%d)", lmx.ErrInvalidKey, len(key), lmx.DefaultMaxKeyLen)
	}
	return nil
}

// Lock waits until key is granted.
func (lk *Locker) Lock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, false)
}

// TryLock grants key if it is free and no waiter it conflicts with is
// queued before it, and otherwise fails with lmx.ErrLocked.
func (lk *Locker) TryLock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, true)
}

var _ lmx.MultiLocker = (*Locker)(nil)

// LockAll locks every key in keys and returns one lease for them all, as
// lmx.LockAll does on any Locker: the keys are locked one by one in sorted
// order, and the lease ends with any of them.
func (lk *Locker) LockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.LockAll(ctx, lk, keys, opts...)
}

// TryLockAll is LockAll that never waits; see lmx.TryLockAll.
func (lk *Locker) TryLockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.TryLockAll(ctx, lk, keys, opts...)
}

// Close ends the Locker: its waiters fail with lmx.ErrClosed, its leases
// end with lmx.ErrClosed and are released, and its session key is
// deleted. A KeepOnDisconnect lease ends here too, but stays held in Redis
// until its TTL. Close is idempotent.
func (lk *Locker) Close() error {
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil
	}
	lk.closed = true
	s := lk.sess
	lk.sess = nil
	var held []*lease
	for _, l := range lk.leases {
		held = append(held, l)
	}
	lk.mu.Unlock()
	if s != nil {
		lk.endSession(s, lmx.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, l := range held {
		l.lost(lmx.ErrClosed)
		if l.s != nil {
			lk.run(ctx, releaseScript, l.lease.Key(), l.id, "")
		}
	}
	if s != nil {
		lk.rdb.Del(ctx, lk.pfx+"s:"+s.id)
	}
	lk.calls.Wait() // the waiters saw the session end and took back their requests
	lk.cancel()
	lk.ps.Close()
	lk.wg.Wait()
	if lk.own {
		return lk.rdb.Close()
	}
	return nil
}

// Session returns the id of the Locker's current session ("" when it has
// none): deleting the Redis key PREFIX "s:" id is how a test kills it.
func (lk *Locker) Session() string {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.sess == nil {
		return ""
	}
	return lk.sess.id
}

func (lk *Locker) lock(ctx context.Context, key string, opts []lmx.LockOption, try bool) (*lmx.Lease, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	req, err := lmx.ParseLockOptions(opts...)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := lk.session(ctx)
	if err != nil {
		return nil, err
	}
	if req.Owner != "" {
		if l, err := lk.reenter(ctx, key, req); l != nil || err != nil {
			return l, err
		}
	}
	id := ulid.Make()
	r := &request{lk: lk, key: key, id: id, ids: id.String(), keys: lk.keys(key), req: req, s: s,
		w: waiter{granted: make(chan grant, 1), look: make(chan struct{}, 1)}}
	if !lk.enter(r) {
		return nil, lmx.ErrClosed
	}
	defer lk.leave(r)
	rep, err := r.acquire(ctx, try)
	if err != nil {
		return nil, err
	}
	return r.await(ctx, rep)
}
