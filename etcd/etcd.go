// Package etcd is an lmx.Locker over etcd, for locks that must survive the
// machine of a single broker. Importing it registers the etcd:// scheme with
// lmx.Open:
//
//	etcd://10.0.0.5:2379,10.0.0.6:2379/locks/app
//
// Layout: the queue of key K is the etcd keys PREFIX K "\x00" SESSION "."
// SLOT, one per request (waiting or granted), each attached to the Locker's
// session (an etcd lease kept alive while the Locker lives); its value holds
// the request's lock id and options. The queue is ordered by create
// revision: a request is granted when the requests created before it allow
// it, and its fencing token is its create revision, so tokens of a key
// increase in grant order. A session reuses its slots, the lowest free one
// first, as concurrency.Mutex reuses its session's key: etcd keeps a deleted
// key in its index until it compacts, and a read of a queue walks every
// name the queue ever had, so names that grew with every request would make
// a busy key slower by the hour on an etcd that is not compacted. Every
// write to a request's key compares its create revision, so that an
// operation about a request that ended never touches the next one on the
// same name.
//
// A Locker hears only about its own requests. A waiter watches the one
// request before it (a semaphore's first waiter, its holders), so a release
// is one etcd write and wakes one waiter, not a herd, and the cost of a
// hand-off does not grow with the number of Lockers. A holder watches
// nothing: its session's keepalive tells it when etcd drops its keys, and
// Release and ForceUnlock of another Locker write a word into the inbox
// of the holder's session (PREFIX "\x00i/" SESSION "/" ...) in the same
// transaction that deletes its key, which one watch per session hears.
//
// Supported options: TTL, KeepAlive, Limit (semaphores), Shared (without
// Limit), Owner, KeepOnDisconnect, LockDelay and NoPreempt (nothing is ever
// preempted). Priority other than 0, Preempt and Shared with Limit fail
// with an error matching ErrUnsupported and lmx.ErrInvalidOption.
//
// Owner re-enters within one Locker: the re-entry is an lmx.Lease of its
// own with the same lock id and token, and the key is released when every
// grant is unlocked. An owner that holds a key through another Locker (a
// process of its own) queues like any other request.
//
// KeepOnDisconnect gives a granted key an etcd lease of its own, of the
// TTL rounded up to a second, so that the key outlives the Locker's
// session until about its TTL, or until Release by id; the Locker's own
// lmx.Lease ends with the session.
//
// LockDelay: when a lease expires or is forced, its key is not deleted but
// turned into a marker on an etcd lease of the delay, rounded up to a
// second (and at least etcd's shortest lease, about 2s with its default
// timing), which holds the key at the head of its queue until etcd drops
// it. A lease lost with its session is not delayed: its key goes with the
// session's etcd lease.
//
// TTL is enforced by the holder's Locker: when it runs out, the key is
// deleted and the lease ends (lmx.ErrExpired). A holder whose process dies
// or loses etcd frees its keys when the session's etcd lease expires
// (SessionTTL, default 5s); its leases end with lmx.ErrSessionLost as soon
// as the Locker's keepalive finds the session gone. A waiter is granted
// only by a read that finds its own request still queued, so one whose key
// went with its session while its link stalled is never granted: its Lock
// fails with lmx.ErrSessionLost. A key deleted in etcd by something other
// than lmx is noticed by its holder at its next Unlock (lmx.ErrNotHeld) or
// Extend. An Unlock that etcd does not answer ends the lease with
// lmx.ErrSessionLost, never nil: the key is deleted once etcd answers, or
// with the session.
//
// *Locker implements lmx.MultiLocker through lmx.LockAll: a LockAll is a
// Lock of each key in one canonical order, a lease (and token) per key.
//
// *Locker implements lmx.Admin, lmx.Lister and lmx.Watcher: Release and
// ForceUnlock work across processes (the holder learns the reason from its
// inbox); Inspect, Stats and List read the queues from etcd (Stats keeps
// no counters of what happened); Watch follows the prefix in etcd.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/internal/orphans"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func init() { lmx.Register("etcd", openURL) }

var _ lmx.MultiLocker = (*Locker)(nil)

// ErrUnsupported: the etcd backend cannot honour a lock option. It is
// always wrapped together with lmx.ErrInvalidOption.
var ErrUnsupported = errors.New("lmx/etcd: option not supported by the etcd backend")

// DefaultSessionTTL is the TTL of a Locker's session unless SessionTTL says
// otherwise: how long etcd keeps the keys of a Locker it no longer hears.
const DefaultSessionTTL = 5 * time.Second

// An Option configures a Locker made by New.
type Option func(*config)

type config struct {
	sessionTTL time.Duration
}

// SessionTTL sets the TTL of the Locker's session, rounded up to a second
// (etcd's lease granularity); d <= 0 means DefaultSessionTTL.
func SessionTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.sessionTTL = d
		}
	}
}

// A Locker is an lmx.Locker whose lock table is in etcd. Its methods are
// safe for concurrent use.
type Locker struct {
	cli    *clientv3.Client
	own    bool // Close closes cli
	pfx    string
	ttl    int64 // session TTL, seconds
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	sess     *session      // nil after one was lost, until a request starts the next
	starting chan struct{} // closed when the session being started is set or has failed
	closed   bool
	orphans  map[string]orphan // request keys to delete once etcd answers
	wg       sync.WaitGroup
}

// orphan is a request's key that etcd did not delete when asked.
type orphan struct {
	sess clientv3.LeaseID // the session it is attached to
	rev  int64            // its create revision, or 0 if unknown
}

// session is one etcd lease and what hangs on it.
type session struct {
	id     clientv3.LeaseID
	hex    string        // id as it is written into request values and inbox keys
	done   chan struct{} // closed when the session ends
	reason error         // why, set before done closes
	leases map[string]*lease
	owned  map[string]*lease  // the leases asked with Owner, by queue and owner
	slots  map[string][]bool  // by queue, the slots in use (guarded by lk.mu)
	stop   context.CancelFunc // stops the inbox watch
}

// New returns a Locker whose keys live under prefix in the etcd cluster cli
// talks to, with its session started, so that its first Lock costs no more
// than the others. The caller keeps cli and closes it after the Locker.
func New(ctx context.Context, cli *clientv3.Client, prefix string, opts ...Option) (*Locker, error) {
	c := config{sessionTTL: DefaultSessionTTL}
	for _, o := range opts {
		o(&c)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	lctx, cancel := context.WithCancel(context.Background())
	lk := &Locker{cli: cli, pfx: prefix, ctx: lctx, cancel: cancel, ttl: seconds(c.sessionTTL)}
	if _, err := lk.session(ctx); err != nil {
		lk.Close()
		return nil, err
	}
	return lk, nil
}

// openURL is the lmx.Driver of etcd://host:port[,host:port]/prefix.
func openURL(ctx context.Context, u *url.URL) (lmx.Locker, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("lmx/etcd: %q names no endpoint", u.Redacted())
	}
	var eps []string
	for _, h := range strings.Split(u.Host, ",") {
		eps = append(eps, "http://"+h)
	}
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Context: context.Background()}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	var opts []Option
	if s := u.Query().Get("session_ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("%w: lmx/etcd: session_ttl: %w", lmx.ErrInvalidOption, err)
		}
		opts = append(opts, SessionTTL(d))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("lmx/etcd: %w", err)
	}
	lk, err := New(ctx, cli, strings.TrimPrefix(u.Path, "/"), opts...)
	if err != nil {
		cli.Close()
		return nil, err
	}
	lk.own = true
	return lk, nil
}

// Lock waits until key is granted.
func (lk *Locker) Lock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, false)
}

// TryLock grants key if the requests before it allow it now, and otherwise
// fails with lmx.ErrLocked.
func (lk *Locker) TryLock(ctx context.Context, key string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lk.lock(ctx, key, opts, true)
}

// LockAll locks every key in keys and returns one lease for them all, or
// none: lmx.LockAll through this Locker, with the broker's semantics (one
// canonical order, a token per key in Parts).
func (lk *Locker) LockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.LockAll(ctx, lk, keys, opts...)
}

// TryLockAll is LockAll that never waits: if a key cannot be granted at
// once, it releases those it took and fails with lmx.ErrLocked.
func (lk *Locker) TryLockAll(ctx context.Context, keys []string, opts ...lmx.LockOption) (*lmx.Lease, error) {
	return lmx.TryLockAll(ctx, lk, keys, opts...)
}

// Close ends the session: its leases end (lmx.ErrClosed), its waiters fail
// with lmx.ErrClosed, and etcd drops its keys. Close is idempotent.
func (lk *Locker) Close() error {
	lk.mu.Lock()
	if lk.closed {
		lk.mu.Unlock()
		return nil
	}
	lk.closed = true
	s := lk.sess
	lk.sess = nil
	lk.mu.Unlock()
	if s != nil {
		lk.endSession(s, lmx.ErrClosed)
		lk.revoke(s.id)
	}
	lk.cancel()
	lk.wg.Wait()
	if lk.own {
		return lk.cli.Close()
	}
	return nil
}

// Session returns the etcd lease id of the Locker's current session, or 0
// when it has none (one was lost, and no request has started the next):
// revoking it is how a test kills the session.
func (lk *Locker) Session() clientv3.LeaseID {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.sess == nil {
		return 0
	}
	return lk.sess.id
}

// session returns the current session, starting one if need be. One caller
// starts it while the others wait for it or for their ctx. The etcd round
// trip that starts it runs without lk.mu and ends with Close, so a slow or
// unreachable etcd holds up only the callers that need a session, never
// Close or the leases of the session that ended.
func (lk *Locker) session(ctx context.Context) (*session, error) {
	for {
		lk.mu.Lock()
		if lk.closed {
			lk.mu.Unlock()
			return nil, lmx.ErrClosed
		}
		if s := lk.sess; s != nil {
			lk.mu.Unlock()
			return s, nil
		}
		wait := lk.starting
		if wait == nil {
			break // lk.mu is held
		}
		lk.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	done := make(chan struct{})
	lk.starting = done
	lk.mu.Unlock()

	gctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lk.ctx, cancel)
	g, err := lk.cli.Grant(gctx, lk.ttl)
	stop()
	cancel()
	lk.mu.Lock()
	lk.starting = nil
	close(done) // the waiters see what follows once lk.mu is free
	if lk.closed {
		lk.mu.Unlock()
		if err == nil {
			lk.revoke(g.ID)
		}
		return nil, lmx.ErrClosed
	}
	defer lk.mu.Unlock()
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, unreachable(err)
	}
	ka, err := lk.cli.KeepAlive(lk.ctx, g.ID)
	if err != nil {
		return nil, unreachable(err)
	}
	sctx, scancel := context.WithCancel(lk.ctx)
	s := &session{id: g.ID, hex: strconv.FormatInt(int64(g.ID), 16), done: make(chan struct{}),
		leases: map[string]*lease{}, owned: map[string]*lease{}, slots: map[string][]bool{}, stop: scancel}
	lk.sess = s
	lk.wg.Go(func() {
		for range ka {
		}
		lk.sessionLost(s)
	})
	// Nothing is written into the inbox before this session's first
	// request, which follows the Grant: watching from the Grant's revision
	// misses nothing.
	lk.wg.Go(func() { lk.watchInbox(sctx, s, g.ResponseHeader.Revision+1) })
	return s, nil
}

// unreachable is the error of a request that etcd did not answer: the
// Locker cannot keep a session with it.
func unreachable(err error) error {
	return fmt.Errorf("%w: lmx/etcd: %v", lmx.ErrSessionLost, err)
}

// revoke asks etcd to drop the session id and its keys, waiting at most 5s.
func (lk *Locker) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lk.cli.Revoke(ctx, id)
}

// sessionLost ends s after its keepalive stopped.
func (lk *Locker) sessionLost(s *session) {
	lk.mu.Lock()
	if lk.sess == s {
		lk.sess = nil
	}
	closed := lk.closed
	lk.mu.Unlock()
	if closed {
		lk.endSession(s, lmx.ErrClosed)
	} else {
		lk.endSession(s, lmx.ErrSessionLost)
	}
}

// endSession ends every lease of s with reason and wakes its waiters.
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
	s.stop()
	leases := s.leases
	s.leases, s.owned = map[string]*lease{}, map[string]*lease{}
	for k, o := range lk.orphans {
		if o.sess == s.id {
			delete(lk.orphans, k) // etcd drops them with the session
		}
	}
	lk.mu.Unlock()
	for _, l := range leases {
		l.stopTimers()
		l.end(reason)
	}
}

// wrap returns ctx.Err() itself when ctx ended, ErrClosed after Close, and
// otherwise err as an lmx error: one etcd refused or did not answer is
// ErrSessionLost.
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
	return unreachable(err)
}

// unsupported checks the options the backend cannot honour.
func unsupported(r lmx.LockRequest) error {
	var what string
	switch {
	case r.Priority != 0:
		what = "Priority"
	case r.Preempt >= 0:
		what = "Preempt"
	case r.Shared && r.Limit > 1:
		what = "Shared with Limit"
	default:
		return nil
	}
	return fmt.Errorf("%w: %w: %s", lmx.ErrInvalidOption, ErrUnsupported, what)
}

// waiter describes one request in a key's queue.
type waiter struct {
	key    string    // etcd key
	id     ulid.ULID // lock id
	rev    int64     // create revision
	limit  int
	shared bool
	sess   string           // the session of the Locker that asked, in hex
	lease  clientv3.LeaseID // the etcd lease the key is attached to
	owner  string
	delay  time.Duration // LockDelay
	marker bool          // no request: the lock-delay of one that ended
}

// encodeValue is the value of a request's key: its mode ("x" exclusive,
// "s" shared, "d" a lock-delay's marker) and limit, the session of its
// Locker, which is where Release and ForceUnlock tell it that its key
// went, its LockDelay in milliseconds, its lock id, and its owner.
func encodeValue(w waiter) string {
	mode := "x"
	switch {
	case w.marker:
		mode = "d"
	case w.shared:
		mode = "s"
	}
	return mode + strconv.Itoa(w.limit) + " " + w.sess + " " + strconv.FormatInt(w.delay.Milliseconds(), 10) + " " + w.id.String() + " " + w.owner
}

func decode(kv *mvccpb.KeyValue) waiter {
	w := waiter{key: string(kv.Key), rev: kv.CreateRevision, limit: 1, lease: clientv3.LeaseID(kv.Lease)}
	f := strings.SplitN(string(kv.Value), " ", 5)
	v := f[0]
	if len(f) == 5 {
		w.sess, w.owner = f[1], f[4]
		ms, _ := strconv.ParseInt(f[2], 10, 64)
		w.delay = time.Duration(ms) * time.Millisecond
		w.id, _ = ulid.ParseStrict(f[3])
	}
	if len(v) > 1 {
		w.shared = v[0] == 's'
		w.marker = v[0] == 'd'
		if n, err := strconv.Atoi(v[1:]); err == nil {
			w.limit = n
		}
	}
	return w
}

// decision is what the requests before one make of it.
type decision struct {
	granted bool
	targets []string // keys whose change may grant it
}

// decide applies the rules of the queue to a request and the requests
// created before it, in create order.
func decide(me waiter, lower []waiter) decision {
	if me.shared {
		for i := len(lower) - 1; i >= 0; i-- {
			if !lower[i].shared {
				return decision{targets: []string{lower[i].key}}
			}
		}
		return decision{granted: true}
	}
	switch n := len(lower); {
	case n < me.limit:
		return decision{granted: true}
	case n == me.limit:
		// The first waiter of a semaphore: any holder may let it in.
		d := decision{}
		for _, w := range lower {
			d.targets = append(d.targets, w.key)
		}
		return d
	default:
		return decision{targets: []string{lower[n-1].key}}
	}
}

func (lk *Locker) lock(ctx context.Context, key string, opts []lmx.LockOption, try bool) (*lmx.Lease, error) {
	queue, err := lk.queueOf(key)
	if err != nil {
		return nil, err
	}
	req, err := lmx.ParseLockOptions(opts...)
	if err != nil {
		return nil, err
	}
	if err := unsupported(req); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.Owner != "" {
		if l, err := lk.reenter(ctx, key, queue, req); l != nil || err != nil {
			return l, err
		}
	}
	me := waiter{id: ulid.Make(), limit: req.Limit, shared: req.Shared, owner: req.Owner, delay: max(0, req.LockDelay)}
	var s *session
	var resp *clientv3.TxnResponse
	slot := -1 // me's slot of s, while this call owns it
	defer func() {
		if slot >= 0 {
			lk.freeSlot(s, queue, slot)
		}
	}()
	for attempt := 0; ; {
		if s, err = lk.session(ctx); err != nil {
			return nil, err
		}
		slot = lk.takeSlot(s, queue)
		me.key, me.sess, me.lease = queue+s.hex+"."+strconv.Itoa(slot), s.hex, s.id
		// Not ctx: a Put cut short may still land after the Delete that
		// would undo it, and leave the key held. An etcd that does not
		// answer for as long as a session lives has lost the session.
		pctx, cancel := context.WithTimeout(lk.ctx, time.Duration(lk.ttl)*time.Second)
		resp, err = lk.cli.Txn(pctx).
			If(clientv3.Compare(clientv3.CreateRevision(me.key), "=", 0)).
			Then(
				clientv3.OpPut(me.key, encodeValue(me), clientv3.WithLease(s.id)),
				clientv3.OpGet(queue, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1)),
				clientv3.OpGet(queue, newest(me, 2)...), // me, then the requests before me
			).Commit()
		cancel()
		switch {
		case err == nil && resp.Succeeded:
		case err == nil:
			// The name is still taken: by a lock-delay's marker, or by a
			// request etcd did not delete when asked. It stays out of use
			// until this call returns, and the next slot is tried.
			defer lk.freeSlot(s, queue, slot)
			continue
		case errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
			// The session ended before its keepalive noticed: start another.
			attempt++
			lk.freeSlot(s, queue, slot)
			slot = -1
			lk.sessionLost(s)
			continue
		default:
			// Whether the Put landed, etcd did not say: the name is deleted
			// whatever request it holds, so its slot stays in use while s
			// lives, and no later request of s can be on it.
			lk.abandon(s, me.key, 0)
			slot = -1
			return nil, lk.wrap(ctx, err)
		}
		break
	}
	me.rev = resp.Header.Revision
	if err := ctx.Err(); err != nil {
		lk.abandon(s, me.key, me.rev) // ctx ended while the txn ran on lk.ctx
		return nil, err
	}
	if first := resp.Responses[1].GetResponseRange().Kvs; len(first) == 1 {
		if f := decode(first[0]); f.limit != me.limit {
			lk.abandon(s, me.key, me.rev)
			return nil, fmt.Errorf("%w: key %q has Limit(%d), asked %d", lmx.ErrLimitMismatch, key, f.limit, me.limit)
		}
	}
	// me is the newest request of the txn's read: none is created after it
	// at its own revision. The first decision holds at me.rev.
	lower, rev := decodeLower(resp.Responses[2].GetResponseRange().Kvs[1:]), me.rev
	w := newWaits(lk, s, me.limit == 1)
	defer w.stop()
	for {
		// Every decision is made on a read that found me's own key still
		// queued (the txn that wrote it, or lower): a key that went, with
		// its session's etcd lease behind a link that stalled, is never
		// granted, whatever woke its waiter.
		d := decide(me, lower)
		if d.granted {
			l, err := lk.granted(s, key, queue, me, req, slot)
			if err == nil {
				slot = -1 // the lease's now
			}
			return l, err
		}
		if try {
			lk.abandon(s, me.key, me.rev)
			return nil, lmx.ErrLocked
		}
		// Each target is watched from when its watch was made: a watch made
		// after rev leaves a gap, and the queue is read again once it runs.
		from, err := w.watch(ctx, d.targets)
		if err == nil && from <= rev {
			select {
			case <-w.wake:
				from = w.seen()
			case <-ctx.Done():
				err = ctx.Err()
			case <-s.done:
				return nil, s.err()
			}
		}
		if err == nil {
			lower, rev, err = lk.lower(ctx, queue, me, from)
		}
		switch {
		case errors.Is(err, errGone):
			return nil, lk.gone(s, me)
		case err != nil:
			lk.abandon(s, me.key, me.rev)
			return nil, lk.wrap(ctx, err)
		}
	}
}

// err is why the session ended: ErrSessionLost while it has not.
func (s *session) err() error {
	<-s.done // the request's key went with the session: done is closing
	if errors.Is(s.reason, lmx.ErrClosed) {
		return lmx.ErrClosed
	}
	return fmt.Errorf("%w: %w", lmx.ErrSessionLost, s.reason)
}

// errGone: a waiting request's own key is gone.
var errGone = errors.New("lmx/etcd: the request's key is gone")

// gone is the error of a request whose key went while it waited: with its
// session, or by a ForceUnlock that found it granted before it knew.
func (lk *Locker) gone(s *session, me waiter) error {
	select {
	case <-s.done:
		return s.err()
	default:
	}
	ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
	defer cancel()
	resp, err := lk.cli.Delete(ctx, inboxKey(lk.pfx, s.hex, me.key, me.rev), clientv3.WithPrevKV())
	if err != nil {
		return lk.wrap(ctx, err)
	}
	return fmt.Errorf("%w: %w: as it was granted", lmx.ErrLeaseLost, why(resp.PrevKvs))
}

// lower reads the requests of queue created before me, in create order, at
// a revision at least from, and returns them and that revision. For a mutex
// only the last one counts. It fails with errGone when me is gone.
func (lk *Locker) lower(ctx context.Context, queue string, me waiter, from int64) ([]waiter, int64, error) {
	opts := append(newest(me, 2), clientv3.WithMaxCreateRev(me.rev))
	// A serializable read is served by the member the client talks to,
	// without a round through raft; it will do when that member has seen
	// what woke the waiter, and a linearizable read is the fallback.
	resp, err := lk.cli.Get(ctx, queue, append(opts, clientv3.WithSerializable())...)
	if err != nil || resp.Header.Revision < from {
		if resp, err = lk.cli.Get(ctx, queue, opts...); err != nil {
			return nil, 0, err
		}
	}
	if len(resp.Kvs) == 0 || string(resp.Kvs[0].Key) != me.key || resp.Kvs[0].CreateRevision != me.rev {
		return nil, 0, errGone
	}
	return decodeLower(resp.Kvs[1:]), resp.Header.Revision, nil
}

// newest are the options of a read of a queue's requests newest first: for
// me a mutex, only the n newest, since only the last one before me counts.
func newest(me waiter, n int64) []clientv3.OpOption {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend)}
	if !me.shared && me.limit == 1 {
		opts = append(opts, clientv3.WithLimit(n))
	}
	return opts
}

// decodeLower turns requests read newest first into waiters in create order.
func decodeLower(kvs []*mvccpb.KeyValue) []waiter {
	lower := make([]waiter, len(kvs))
	for i, kv := range kvs {
		lower[len(lower)-1-i] = decode(kv)
	}
	return lower
}

// abandon deletes a request's key of session s, created at rev (0:
// whatever request it holds), without relying on any caller's ctx. When
// etcd does not answer, the key is kept in lk.orphans and deleted once it
// does, so that it never stays queued for as long as the session lives.
func (lk *Locker) abandon(s *session, etcdKey string, rev int64) {
	ctx, cancel := context.WithTimeout(lk.ctx, 2*time.Second)
	err := lk.deleteRequest(ctx, etcdKey, rev)
	cancel()
	if err == nil || lk.ctx.Err() != nil {
		return
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	select {
	case <-s.done:
		return // etcd drops the key with the session
	default:
	}
	if lk.orphans == nil {
		lk.orphans = map[string]orphan{}
	}
	if len(lk.orphans) == 0 {
		lk.wg.Go(lk.deleteOrphans)
	}
	lk.orphans[etcdKey] = orphan{sess: s.id, rev: rev}
}

// deleteRequest deletes etcdKey if it is still the request created at rev
// (any request if rev is 0).
func (lk *Locker) deleteRequest(ctx context.Context, etcdKey string, rev int64) error {
	if rev == 0 {
		_, err := lk.cli.Delete(ctx, etcdKey)
		return err
	}
	_, err := lk.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(etcdKey), "=", rev)).
		Then(clientv3.OpDelete(etcdKey)).
		Commit()
	return err
}

// takeSlot returns the lowest slot of queue that s does not use, now in
// use.
func (lk *Locker) takeSlot(s *session, queue string) int {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	used := s.slots[queue]
	n := slices.Index(used, false)
	if n < 0 {
		n = len(used)
		used = append(used, false)
	}
	used[n] = true
	s.slots[queue] = used
	return n
}

// freeSlot gives slot n of queue back to s.
func (lk *Locker) freeSlot(s *session, queue string, n int) {
	lk.mu.Lock()
	defer lk.mu.Unlock()
	s.freeSlotLocked(queue, n)
}

func (s *session) freeSlotLocked(queue string, n int) {
	used := s.slots[queue]
	if n >= len(used) {
		return
	}
	used[n] = false
	for len(used) > 0 && !used[len(used)-1] {
		used = used[:len(used)-1]
	}
	if len(used) == 0 {
		delete(s.slots, queue)
	} else {
		s.slots[queue] = used
	}
}

// deleteOrphans deletes the keys of lk.orphans until none is left, trying
// again with a backoff while etcd does not answer.
func (lk *Locker) deleteOrphans() {
	orphans.TakeBack(lk.ctx, &lk.mu, &lk.orphans, func(ctx context.Context, k string, o orphan) error {
		return lk.deleteRequest(ctx, k, o.rev)
	})
}

// reenter grants key at once to req's owner if it holds key through this
// Locker: a new lmx.Lease with the same lock id and token, counted by the
// lease it re-enters. It returns nil and no error when the owner holds
// nothing here. An owner that holds key through another Locker, a process
// of its own, queues like any other request.
func (lk *Locker) reenter(ctx context.Context, key, queue string, req lmx.LockRequest) (*lmx.Lease, error) {
	s, err := lk.session(ctx)
	if err != nil {
		return nil, err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	l := s.owned[queue+req.Owner]
	if l == nil || s.leases[l.etcdKey] != l {
		return nil, nil
	}
	if l.shared && !req.Shared {
		return nil, fmt.Errorf("%w: owner %q holds %q shared and cannot re-enter exclusive", lmx.ErrInvalidOption, req.Owner, key)
	}
	g, end := lmx.NewLease(key, l.lease.ID(), l.lease.Token(), l.lease.Expires(), l)
	l.count++
	l.ends = append(l.ends, end)
	return g, nil
}

// granted makes the lease of a granted request.
func (lk *Locker) granted(s *session, key, queue string, me waiter, req lmx.LockRequest, slot int) (*lmx.Lease, error) {
	l := &lease{lk: lk, s: s, etcdKey: me.key, queue: queue, slot: slot, rev: me.rev, owner: req.Owner, shared: me.shared, count: 1,
		gone: make(chan struct{}), me: me, leaseID: s.id}
	var exp time.Time
	if req.TTL > 0 {
		exp = time.Now().Add(req.TTL)
	}
	var end func(error) bool
	if req.KeepOnDisconnect {
		if err := l.keep(req.TTL); err != nil {
			lk.abandon(s, me.key, me.rev)
			return nil, err
		}
	}
	l.lease, end = lmx.NewLease(key, me.id, uint64(me.rev), exp, l)
	l.ends = []func(error) bool{end}
	lk.mu.Lock()
	select {
	case <-s.done:
		lk.mu.Unlock()
		return nil, s.err()
	default:
	}
	s.leases[me.key] = l
	if l.owner != "" {
		s.owned[queue+l.owner] = l
	}
	l.mu.Lock()
	if req.TTL > 0 {
		l.timer = time.AfterFunc(req.TTL, l.expire)
	}
	l.mu.Unlock()
	lk.mu.Unlock()
	if req.KeepAlive > 0 {
		lmx.KeepAliveLease(l.lease, req.TTL, req.KeepAlive)
	}
	if me.limit > 1 && !req.KeepOnDisconnect { // keep wrote the key already
		// Tell the request behind this one that it may be the first waiter.
		ctx, cancel := context.WithTimeout(lk.ctx, 5*time.Second)
		lk.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(me.key), "=", me.rev)).
			Then(clientv3.OpPut(me.key, encodeValue(me), clientv3.WithIgnoreLease())).
			Commit()
		cancel()
	}
	return l.lease, nil
}

// lease is the etcd side of one granted request: of its lmx.Lease, and of
// those of its owner's re-entries.
type lease struct {
	lk      *Locker
	s       *session
	etcdKey string
	queue   string     // the etcd prefix of the key's queue
	slot    int        // of s, on queue: l's own until l ends
	rev     int64      // the key's create revision: the token
	lease   *lmx.Lease // the first grant's
	owner   string
	shared  bool
	gone    chan struct{} // closed once end has ended every grant
	kept    bool          // KeepOnDisconnect: the key has an etcd lease of its own
	me      waiter        // the request, as it was written

	// Guarded by lk.mu.
	count   int                // grants not undone yet
	ends    []func(error) bool // each grant's end
	endOnce sync.Once

	mu      sync.Mutex
	timer   *time.Timer      // expiry
	leaseID clientv3.LeaseID // the etcd lease of the key: while it is l's, l holds
}

// end ends every grant of l with reason.
func (l *lease) end(reason error) {
	l.endOnce.Do(func() {
		l.lk.mu.Lock()
		ends := l.ends
		l.s.freeSlotLocked(l.queue, l.slot)
		l.lk.mu.Unlock()
		for _, end := range ends {
			end(reason)
		}
		close(l.gone)
	})
}

// keep gives l's key an etcd lease of its own, of ttl rounded up to a
// second, so that it outlives the session until about its TTL: this is
// KeepOnDisconnect. While it waited, the request went with the session.
func (l *lease) keep(ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(l.lk.ctx, time.Duration(l.lk.ttl)*time.Second)
	defer cancel()
	g, err := l.lk.cli.Grant(ctx, seconds(ttl))
	if err != nil {
		return l.lk.wrap(ctx, err)
	}
	resp, err := l.lk.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.etcdKey), "=", l.rev)).
		Then(clientv3.OpPut(l.etcdKey, "", clientv3.WithIgnoreValue(), clientv3.WithLease(g.ID))).
		Commit()
	switch {
	case err != nil:
		return l.lk.wrap(ctx, err)
	case !resp.Succeeded:
		return fmt.Errorf("%w: the key went as it was granted", lmx.ErrSessionLost)
	}
	l.kept = true
	l.mu.Lock()
	l.leaseID = g.ID
	l.mu.Unlock()
	return nil
}

// mine is the condition that l's key is still l's request, not gone nor
// turned into a lock-delay's marker, nor a later request on the same name.
func (l *lease) mine() []clientv3.Cmp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(l.etcdKey), "=", l.rev),
		clientv3.Compare(clientv3.LeaseValue(l.etcdKey), "=", l.leaseID),
	}
}

// endOp is the operation that ends the granted request w: its deletion,
// or with a LockDelay, its turning into a marker that holds the key until
// an etcd lease of the delay, rounded up to a second, runs out.
func (lk *Locker) endOp(ctx context.Context, w waiter) (clientv3.Op, error) {
	if w.delay <= 0 {
		return clientv3.OpDelete(w.key), nil
	}
	g, err := lk.cli.Grant(ctx, seconds(w.delay))
	if err != nil {
		return clientv3.Op{}, err
	}
	w.marker = true
	return clientv3.OpPut(w.key, encodeValue(w), clientv3.WithLease(g.ID)), nil
}

// seconds is d in whole seconds, rounded up: an etcd lease's TTL.
func seconds(d time.Duration) int64 { return max(1, int64((d+time.Second-1)/time.Second)) }

// released marks l as ended by the Unlock of its last grant, which the
// lmx.Lease then ends itself.
func (l *lease) released() {
	l.endOnce.Do(func() {
		l.lk.freeSlot(l.s, l.queue, l.slot)
		close(l.gone)
	})
}

// take takes l out of its session and stops its timers; it reports whether
// l was still there. Whoever takes a lease out ends it: a caller that finds
// it gone waits for l.gone.
func (l *lease) take() bool {
	l.lk.mu.Lock()
	here := l.s.leases[l.etcdKey] == l
	if here {
		delete(l.s.leases, l.etcdKey)
		if l.owner != "" && l.s.owned[l.queue+l.owner] == l {
			delete(l.s.owned, l.queue+l.owner)
		}
	}
	l.lk.mu.Unlock()
	if here {
		l.stopTimers()
	}
	return here
}

func (l *lease) stopTimers() {
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
}

// expire ends l when its TTL ran out.
func (l *lease) expire() {
	if !l.take() {
		return
	}
	if h := expiring.Load(); h != nil {
		(*h)()
	}
	// Delete first, as a broker would expire the key before telling the
	// holder, so that the key is free when Done closes; but never keep the
	// holder believing past a second.
	ctx, cancel := context.WithTimeout(l.lk.ctx, time.Second)
	end, err := l.lk.endOp(ctx, l.me)
	if err == nil {
		_, err = l.lk.cli.Txn(ctx).
			If(l.mine()...).
			Then(end, clientv3.OpPut(l.inboxKey(), whyExpired, clientv3.WithLease(l.s.id))).
			Commit()
	}
	cancel()
	l.end(lmx.ErrExpired)
	if err != nil {
		l.lk.abandon(l.s, l.etcdKey, l.rev)
	}
}

// expiring, if set, is called by an expiry once it has taken its lease out
// of the session and before it deletes the key: a test's window onto the
// race of an Unlock with the expiry.
var expiring atomic.Pointer[func()]

// Unlock implements lmx.LeaseBackend: it undoes one grant, and releases
// the key with the last.
func (l *lease) Unlock(ctx context.Context, _ *lmx.Lease) error {
	l.lk.mu.Lock()
	if l.count > 1 && l.s.leases[l.etcdKey] == l {
		l.count--
		l.lk.mu.Unlock()
		return nil
	}
	l.lk.mu.Unlock()
	if !l.take() {
		// Its expiry, its session's end or a word from its inbox took it
		// out and is ending it: Unlock reports why once it has.
		<-l.gone
		return lmx.ErrNotHeld
	}
	if ctx.Err() != nil {
		l.released()
		l.lk.wg.Go(func() { l.lk.abandon(l.s, l.etcdKey, l.rev) })
		return ctx.Err()
	}
	word := clientv3.OpDelete(l.inboxKey(), clientv3.WithPrevKV())
	resp, err := l.lk.cli.Txn(ctx).If(l.mine()...).
		Then(clientv3.OpDelete(l.etcdKey), word).
		Else(word).
		Commit()
	if err != nil {
		l.lk.wg.Go(func() { l.lk.abandon(l.s, l.etcdKey, l.rev) })
		if ctx.Err() != nil {
			l.released()
			return ctx.Err()
		}
		// Released here and deleted once etcd answers, or with the
		// session; but whether the key was still l's until now, etcd did
		// not say: its session may have ended behind the link that failed.
		l.end(lmx.ErrSessionLost)
		return l.lk.wrap(ctx, err)
	}
	if !resp.Succeeded {
		// Release, ForceUnlock or the end of the session took the key first.
		l.end(why(resp.Responses[0].GetResponseDeleteRange().PrevKvs))
		return lmx.ErrNotHeld
	}
	l.released()
	return nil
}

// ended reports whether l has ended.
func (l *lease) ended() bool {
	select {
	case <-l.gone:
		return true
	default:
		return false
	}
}

// Extend implements lmx.LeaseBackend: the key must still be there.
func (l *lease) Extend(ctx context.Context, _ *lmx.Lease, ttl time.Duration) (time.Time, error) {
	var then []clientv3.Op
	var kept clientv3.LeaseID
	if l.kept { // the key's own etcd lease is extended too: a new one
		g, err := l.lk.cli.Grant(ctx, seconds(ttl))
		if err != nil {
			return time.Time{}, l.lk.wrap(ctx, err)
		}
		kept = g.ID
		then = append(then, clientv3.OpPut(l.etcdKey, "", clientv3.WithIgnoreValue(), clientv3.WithLease(g.ID)))
	}
	resp, err := l.lk.cli.Txn(ctx).
		If(l.mine()...).
		Then(then...).
		Else(clientv3.OpDelete(l.inboxKey(), clientv3.WithPrevKV())).
		Commit()
	if err != nil {
		return time.Time{}, l.lk.wrap(ctx, err)
	}
	if !resp.Succeeded {
		if l.take() {
			l.end(why(resp.Responses[0].GetResponseDeleteRange().PrevKvs))
		}
		<-l.gone
		return time.Time{}, lmx.ErrNotHeld
	}
	exp := time.Now().Add(ttl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if kept != 0 {
		l.leaseID = kept
	}
	if l.ended() {
		return time.Time{}, lmx.ErrNotHeld
	}
	switch {
	case l.timer == nil:
		l.timer = time.AfterFunc(ttl, l.expire)
	case l.timer.Stop():
		l.timer.Reset(ttl)
	default: // expiring as we speak
		l.mu.Unlock()
		<-l.gone
		l.mu.Lock()
		return time.Time{}, lmx.ErrNotHeld
	}
	return exp, nil
}
