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
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/internal/orphans"
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

// session is one session key and what hangs on it.
type session struct {
	id     string
	done   chan struct{} // closed when the session ends
	reason error         // why, set before done closes
	alive  atomic.Int64  // until when (Unix ns) Redis keeps it at least: the last refresh it answered, sent then, plus the TTL
}

// sure reports whether Redis keeps s for margin from now at least.
func (s *session) sure(margin time.Duration) bool {
	return time.Until(time.Unix(0, s.alive.Load())) >= margin
}

// err is why the session ended, as a waiter of it reports it.
func (s *session) err() error {
	if errors.Is(s.reason, lmx.ErrClosed) {
		return lmx.ErrClosed
	}
	return fmt.Errorf("%w: %w", lmx.ErrSessionLost, s.reason)
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
		rdb: rdb, pfx: prefix, id: ulid.Make().String(), ttl: c.sessionTTL, recheck: recheck,
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

func (lk *Locker) channel() string { return lk.pfx + "c:" + lk.id }

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

// session returns the current session, starting one if need be.
func (lk *Locker) session(ctx context.Context) (*session, error) {
	lk.smu.Lock()
	defer lk.smu.Unlock()
	lk.mu.Lock()
	s, closed := lk.sess, lk.closed
	lk.mu.Unlock()
	switch {
	case closed:
		return nil, lmx.ErrClosed
	case s != nil:
		return s, nil
	}
	s = &session{id: ulid.Make().String(), done: make(chan struct{})}
	sent := time.Now()
	if err := lk.rdb.Set(ctx, lk.pfx+"s:"+s.id, lk.id, lk.ttl).Err(); err != nil {
		return nil, lk.wrap(ctx, err)
	}
	s.alive.Store(sent.Add(lk.ttl).UnixNano())
	lk.mu.Lock()
	closed = lk.closed
	if !closed {
		lk.sess = s
	}
	lk.mu.Unlock()
	if closed {
		lk.rdb.Del(context.WithoutCancel(ctx), lk.pfx+"s:"+s.id)
		return nil, lmx.ErrClosed
	}
	return s, nil
}

// refresh keeps the session alive until Close. A session whose key is
// gone (expired, or a Redis that restarted), or that it could not refresh
// for two thirds of its TTL, is lost: its leases end with
// lmx.ErrSessionLost, no later than Redis lets the key expire.
func (lk *Locker) refresh() {
	t := time.NewTicker(lk.ttl / 3)
	defer t.Stop()
	var last time.Time // when the last refresh that succeeded was sent
	var seen *session
	for {
		select {
		case <-lk.ctx.Done():
			return
		case <-t.C:
		}
		lk.mu.Lock()
		s := lk.sess
		lk.mu.Unlock()
		if s == nil {
			continue
		}
		if s != seen {
			seen, last = s, time.Now()
		}
		ctx, cancel := context.WithTimeout(lk.ctx, lk.ttl/3)
		sent := time.Now()
		ok, err := lk.rdb.PExpire(ctx, lk.pfx+"s:"+s.id, lk.ttl).Result()
		cancel()
		switch {
		case err == nil && ok:
			last = sent
			s.alive.Store(sent.Add(lk.ttl).UnixNano())
		case err == nil:
			lk.sessionLost(s, errors.New("the session key is gone"))
		case time.Since(last) >= lk.ttl*2/3:
			lk.sessionLost(s, fmt.Errorf("not refreshed for %v: %w", time.Since(last).Round(time.Millisecond), err))
		}
	}
}

// sessionLost ends s, which is no longer alive in Redis.
func (lk *Locker) sessionLost(s *session, why error) {
	lk.mu.Lock()
	if lk.sess == s {
		lk.sess = nil
	}
	lk.mu.Unlock()
	lk.endSession(s, why)
}

// endSession ends s for reason: its leases end, its waiters wake.
func (lk *Locker) endSession(s *session, reason error) {
	lk.mu.Lock()
	select {
	case <-s.done:
		lk.mu.Unlock()
		return
	default:
	}
	s.reason = reason
	close(s.done)
	var ended []*lease
	for _, l := range lk.leases {
		if l.s == s {
			ended = append(ended, l)
		}
	}
	lk.mu.Unlock()
	if errors.Is(reason, lmx.ErrClosed) {
		for _, l := range ended {
			l.lost(reason)
		}
		return
	}
	reason = fmt.Errorf("%w: %w", lmx.ErrSessionLost, reason)
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	for _, l := range ended {
		l.lost(reason)
		// Hand the key on now rather than when a waiter looks again.
		lk.run(ctx, pokeScript, l.lease.Key(), "", "")
	}
}

// listen reads the Locker's channel until Close, on this goroutine, so
// that a grant reaches its waiter with no hop between. A subscription
// confirmed again means that the connection was lost and made anew, and
// messages maybe with it: every waiter looks again and every lease is
// checked.
func (lk *Locker) listen() {
	receive(lk.ctx, lk.ps, func(m any) {
		switch m := m.(type) {
		case *goredis.Message:
			lk.dispatch(m.Payload)
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				lk.wg.Go(lk.reconnected)
			}
		}
	})
}

// receive hands what ps reads to handle until ctx ends. A read that fails
// makes the next one connect and subscribe again; an idle connection is
// pinged, so that a dead one fails.
func receive(ctx context.Context, ps *goredis.PubSub, handle func(any)) {
	for {
		m, err := ps.ReceiveTimeout(ctx, 2*time.Second)
		if ctx.Err() != nil {
			return
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			ps.Ping(pctx)
			cancel()
		case err != nil:
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		default:
			handle(m)
		}
	}
}

// dispatch acts on one message: "g|id|token|ttl|key", "e|id|why",
// "v|id" or "l|id". A grant that no Lock call waits for any more (it gave
// up while Redis did not answer) is taken back.
func (lk *Locker) dispatch(msg string) {
	f := strings.SplitN(msg, "|", 5)
	switch {
	case len(f) == 5 && f[0] == "g":
		tok, err1 := strconv.ParseUint(f[2], 10, 64)
		ms, err2 := strconv.ParseInt(f[3], 10, 64)
		lk.mu.Lock()
		w, l := lk.waiters[f[1]], lk.leases[f[1]]
		lk.mu.Unlock()
		switch {
		case w != nil && err1 == nil && err2 == nil:
			select {
			case w.granted <- grant{token: tok, ttl: time.Duration(ms) * time.Millisecond}:
			default:
			}
		case w == nil && l == nil:
			lk.abandon(f[4], f[1], "")
		}
	case len(f) == 3 && f[0] == "e":
		lk.mu.Lock()
		l := lk.leases[f[1]]
		lk.mu.Unlock()
		if l != nil {
			l.lost(reason(f[2]))
		}
	case len(f) == 2 && f[0] == "v":
		// A revoke may come before the Lock call that was granted has
		// made its lease: granted revokes that one.
		lk.mu.Lock()
		l, w := lk.leases[f[1]], lk.waiters[f[1]]
		if l == nil && w != nil {
			w.revoked = true
		}
		lk.mu.Unlock()
		if l != nil {
			l.revoke()
		}
	case len(f) == 2 && f[0] == "l":
		lk.mu.Lock()
		w := lk.waiters[f[1]]
		lk.mu.Unlock()
		if w != nil {
			select {
			case w.look <- struct{}{}:
			default:
			}
		}
	}
}

// reason is the error of a lease ended for why, as the scripts say it.
func reason(why string) error {
	switch why {
	case "x":
		return lmx.ErrExpired
	case "f":
		return lmx.ErrForced
	case "r":
		return lmx.ErrReleased
	case "p":
		return lmx.ErrPreempted
	}
	return fmt.Errorf("%w: its session expired in Redis", lmx.ErrSessionLost)
}

// reconnected makes every waiter look again and checks every lease: one
// gone from Redis ends, one with a preemption deadline is revoked.
func (lk *Locker) reconnected() {
	lk.mu.Lock()
	for _, w := range lk.waiters {
		select {
		case w.look <- struct{}{}:
		default:
		}
	}
	var ls []*lease
	for _, l := range lk.leases {
		ls = append(ls, l)
	}
	lk.mu.Unlock()
	if len(ls) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	cmds := make([]*goredis.StringCmd, len(ls))
	_, err := lk.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, l := range ls {
			cmds[i] = p.HGet(ctx, lk.pfx+"h:"+l.lease.Key(), l.id)
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return // the refresh tells whether the session survived
	}
	for i, l := range ls {
		rec, err := cmds[i].Result()
		switch {
		case errors.Is(err, goredis.Nil):
			// Only a lease still here is lost: one its holder took out
			// since (an Unlock under way) is gone from Redis because it
			// released it.
			if l.forget() {
				l.end(l.gone())
			}
		case err == nil:
			if h, ok := parseHolder(rec); ok && h.preempt {
				l.revoke()
			}
		}
	}
}

// wrap returns ctx.Err() itself when ctx ended, else err made an lmx error.
func (lk *Locker) wrap(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	lk.mu.Lock()
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		return lmx.ErrClosed
	}
	return fmt.Errorf("lmx/redis: %w", err)
}

// record is the waiter record of a request (see scripts.go).
func (lk *Locker) record(id string, s *session, r lmx.LockRequest) string {
	grace := int64(-1)
	if r.Preempt >= 0 {
		grace = r.Preempt.Milliseconds()
	}
	return strings.Join([]string{id, s.id, lk.id, flag(r.Shared, "s", "x"), strconv.FormatInt(r.TTL.Milliseconds(), 10),
		flag(r.KeepOnDisconnect, "1", "0"), strconv.Itoa(r.Priority),
		strconv.FormatInt(max(r.LockDelay, 0).Milliseconds(), 10), strconv.FormatInt(grace, 10),
		flag(r.NoPreempt, "1", "0"), r.Owner}, "|")
}

func flag(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// holderRecord is what the Go side reads of a holder record (see
// scripts.go).
type holderRecord struct {
	token          uint64
	shared         bool
	since, expires time.Time // expires zero for none
	preempt        bool      // a preemption deadline is set
	owner          string
}

// waiterFields is how many fields a waiter record has; the last, the
// owner, may hold "|". A holder record has as many.
const waiterFields = 11

func parseHolder(rec string) (h holderRecord, ok bool) {
	f := strings.SplitN(rec, "|", waiterFields)
	if len(f) != waiterFields {
		return h, false
	}
	h.token, _ = strconv.ParseUint(f[0], 10, 64)
	h.shared = f[3] == "s"
	if f[4] != "0" {
		h.expires = msTime(f[4])
	}
	h.since = msTime(f[5])
	h.preempt = f[9] != "0"
	h.owner = f[10]
	return h, true
}

// reply is a script's answer about the caller's request.
type reply struct {
	kind  string // "g" granted, "w" waiting, "n" gone, "l" locked, "m" limit mismatch
	token uint64
	ms    int64 // g: ms left of its TTL (0: none); w: ms until a holder may end (-1: never); m: the key's limit
}

func parseReply(v any) (reply, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return reply{}, fmt.Errorf("lmx/redis: %w", errUnexpected(v))
	}
	r := reply{}
	r.kind, _ = a[0].(string)
	for i, x := range a[1:] {
		var n int64
		switch x := x.(type) {
		case int64:
			n = x
		case string:
			n, _ = strconv.ParseInt(x, 10, 64)
		}
		if i == 0 && r.kind == "g" {
			r.token = uint64(n)
		} else {
			r.ms = n
		}
	}
	return r, nil
}

// run runs a script about key's request id with the args after the
// script's first three.
func (lk *Locker) run(ctx context.Context, s *goredis.Script, key, id string, args ...any) (any, error) {
	return s.Run(ctx, lk.rdb, lk.keys(key), append([]any{lk.pfx, key, id}, args...)...).Result()
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
	w := &waiter{granted: make(chan grant, 1), look: make(chan struct{}, 1)}
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil, lmx.ErrClosed
	}
	lk.waiters[id.String()] = w
	lk.calls.Add(1)
	lk.mu.Unlock()
	defer func() {
		lk.mu.Lock()
		delete(lk.waiters, id.String())
		lk.mu.Unlock()
		lk.calls.Done()
	}()
	tryArg := "0"
	if try {
		tryArg = "1"
	}
	var rec string
	var start time.Time
	var r reply
	for attempt := 0; ; attempt++ {
		rec = lk.record(id.String(), s, req)
		// Not ctx: a script cut short may still run, and leave the request
		// queued; its outcome is needed to take it back.
		start = time.Now()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		v, err := lk.run(sctx, acquireScript, key, id.String(), rec, req.Limit, tryArg)
		cancel()
		if err == nil {
			r, err = parseReply(v)
		}
		if err != nil {
			lk.takeBack(key, id.String(), rec)
			return nil, lk.wrap(ctx, err)
		}
		if r.kind != "d" || attempt > 0 {
			break
		}
		// The session expired (or Redis lost it) before the refresh
		// noticed: start another.
		lk.sessionLost(s, errors.New("the session key is gone"))
		if s, err = lk.session(ctx); err != nil {
			return nil, err
		}
	}
	for {
		switch r.kind {
		case "g":
			return lk.granted(s, key, id, r.token, time.Duration(r.ms)*time.Millisecond, start, req)
		case "l":
			return nil, lmx.ErrLocked
		case "m":
			return nil, fmt.Errorf("%w: key %q has Limit(%d), asked %d", lmx.ErrLimitMismatch, key, r.ms, req.Limit)
		case "n", "d":
			return nil, fmt.Errorf("%w: the request is no longer queued in Redis", lmx.ErrSessionLost)
		}
		if err := ctx.Err(); err != nil {
			lk.takeBack(key, id.String(), rec)
			return nil, err
		}
		// Wait for the grant's message. Look again when a holder may end
		// on its own (a little after, so that Redis's clock has passed
		// it), and now and then against a lost message.
		wait := lk.recheck/2 + rand.N(lk.recheck)
		if r.ms >= 0 {
			wait = min(wait, time.Duration(r.ms+2)*time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case g := <-w.granted:
			t.Stop()
			if s.sure(lk.ttl / 3) {
				return lk.granted(s, key, id, g.token, g.ttl, start, req)
			}
			// The session has not been refreshed for a while: Redis may
			// have dropped it, and the grant with it, while the message
			// was on its way. Ask Redis.
		case <-w.look:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			lk.takeBack(key, id.String(), rec)
			return nil, ctx.Err()
		case <-s.done:
			t.Stop()
			lk.takeBack(key, id.String(), rec)
			return nil, s.err()
		}
		t.Stop()
		start = time.Now()
		sctx, cancel := context.WithTimeout(lk.ctx, 10*time.Second)
		v, err := lk.run(sctx, pokeScript, key, id.String(), rec)
		cancel()
		if err == nil {
			r, err = parseReply(v)
		}
		if err != nil {
			// Redis is out of reach: wait on; the session tells whether
			// the request survives it.
			r = reply{kind: "w", ms: -1}
		}
	}
}

// takeBack takes the request id (waiter record rec, "" once granted) back
// from Redis, without relying on any caller's ctx: out of the queue, or, if
// it was granted, out of the holders, handing the key on. If Redis does not
// answer, the Locker keeps trying (see abandon).
func (lk *Locker) takeBack(key, id, rec string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := lk.run(ctx, cancelScript, key, id, rec); err != nil {
		lk.abandon(key, id, rec)
	}
}

// takeBackLater takes the lease id back from Redis in the background.
func (lk *Locker) takeBackLater(key, id string) {
	lk.wg.Go(func() { lk.takeBack(key, id, "") })
}

// orphan is a request or lease that its Locker gave up but Redis may still
// have: while its session lives, nobody else would ever remove it.
type orphan struct{ key, rec string }

// abandon has the Locker take the request id back from Redis in the
// background, until Redis has answered or the Locker closes (and deletes
// its session, with which Redis drops what is left).
func (lk *Locker) abandon(key, id, rec string) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.closed {
		return
	}
	lk.orphans[id] = orphan{key: key, rec: rec}
	if len(lk.orphans) == 1 {
		lk.wg.Go(lk.takeBackOrphans)
	}
}

// takeBackOrphans takes the orphans back until none is left, trying again
// with a backoff while Redis does not answer.
func (lk *Locker) takeBackOrphans() {
	orphans.TakeBack(lk.ctx, &lk.mu, &lk.orphans, func(ctx context.Context, id string, o orphan) error {
		_, err := lk.run(ctx, cancelScript, o.key, id, o.rec)
		return err
	})
}

// granted makes the lease of a granted request: its TTL (ttl, 0 for none)
// runs from start, when the request that learned of the grant was sent, so
// that the lease does not believe itself held after Redis expires it.
func (lk *Locker) granted(s *session, key string, id ulid.ULID, token uint64, ttl time.Duration, start time.Time, req lmx.LockRequest) (*lmx.Lease, error) {
	l := &lease{lk: lk, s: s, id: id.String(), owner: req.Owner, shared: req.Shared, count: 1}
	if req.KeepOnDisconnect {
		l.s = nil
	}
	var exp time.Time
	if req.TTL > 0 {
		exp = start.Add(ttl)
	}
	var end func(error) bool
	l.lease, end = lmx.NewLease(key, id, token, exp, l)
	l.grants, l.ends = []*lmx.Lease{l.lease}, []func(error) bool{end}
	lk.mu.Lock()
	select {
	case <-s.done:
		if l.s != nil {
			lk.mu.Unlock()
			lk.takeBack(key, l.id, "")
			return nil, s.err()
		}
	default:
	}
	lk.leases[l.id] = l
	revoked := lk.waiters[l.id] != nil && lk.waiters[l.id].revoked
	if l.owner != "" {
		lk.owned[ownedKey(key, l.owner)] = l
	}
	if req.TTL > 0 {
		l.mu.Lock()
		l.timer = time.AfterFunc(time.Until(exp), l.expire)
		l.mu.Unlock()
	}
	lk.mu.Unlock()
	if revoked {
		l.revoke()
	}
	if req.KeepAlive > 0 {
		lmx.KeepAliveLease(l.lease, req.TTL, req.KeepAlive)
	}
	return l.lease, nil
}

// ownedKey is the key of lk.owned for owner's lease of key.
func ownedKey(key, owner string) string { return key + "\x00" + owner }

// reenter grants key at once to req's owner if it holds key through this
// Locker and Redis still has it: a new lmx.Lease with the same lock id and
// token, counted by the lease it re-enters (and in Redis, for Inspect). It
// returns nil and no error when the owner holds nothing here. An owner that
// holds key through another Locker, a process of its own, queues like any
// other request.
func (lk *Locker) reenter(ctx context.Context, key string, req lmx.LockRequest) (*lmx.Lease, error) {
	lk.mu.Lock()
	l := lk.owned[ownedKey(key, req.Owner)]
	lk.mu.Unlock()
	if l == nil {
		return nil, nil
	}
	if l.shared && !req.Shared {
		return nil, fmt.Errorf("%w: owner %q holds %q shared and cannot re-enter exclusive", lmx.ErrInvalidOption, req.Owner, key)
	}
	v, err := lk.run(ctx, countScript, key, l.id, 1)
	if err != nil {
		return nil, lk.wrap(ctx, err)
	}
	if v != int64(1) {
		l.lost(l.gone())
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease.Err() != nil {
		// Ended while Redis counted: the count goes with the holder.
		return nil, nil
	}
	g, end := lmx.NewLease(key, l.lease.ID(), l.lease.Token(), l.lease.Expires(), l)
	l.count++
	l.grants, l.ends = append(l.grants, g), append(l.ends, end)
	select {
	case <-l.lease.Revoked(): // a preemptor waits for the grant re-entered
		lmx.RevokeLease(g)
	default:
	}
	return g, nil
}

// recount adds delta to the re-entries Redis counts for l, for Inspect.
func (lk *Locker) recount(ctx context.Context, l *lease, delta int) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	lk.run(ctx, countScript, l.lease.Key(), l.id, delta)
}

func errUnexpected(v any) error { return fmt.Errorf("unexpected script reply %v", v) }
