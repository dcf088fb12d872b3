package redis

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/lmx-go/lmx/internal/orphans"
)

// lease is the Redis side of one granted request, and of the lmx.Leases of
// its owner's re-entries (see reenter).
type lease struct {
	lk     *Locker
	s      *session // nil for a KeepOnDisconnect lease: no session ends it
	id     string
	keys   []string // its key's Redis keys
	owner  string   // "" without Owner
	shared bool
	sole   bool // exclusive with Limit 1: the key's only holder
	lease  *lmx.Lease

	mu     sync.Mutex         // guards what follows; taken after the Locker's mu
	timer  *time.Timer        // expiry
	count  int                // grants not undone yet: 1 plus the re-entries
	grants []*lmx.Lease       // each grant
	ends   []func(error) bool // each grant's end

	grant0 [1]*lmx.Lease       // the first grant: where grants starts
	end0   [1]func(error) bool // its end: where ends starts
}

// revoke closes the Revoked channel of every grant of l: a preemptor waits.
func (l *lease) revoke() {
	l.mu.Lock()
	grants := l.grants
	l.mu.Unlock()
	for _, g := range grants {
		lmx.RevokeLease(g)
	}
}

// forget takes l out of its Locker and stops its timer; it reports whether
// l was still there.
func (l *lease) forget() bool {
	l.lk.mu.Lock()
	here := l.lk.leases[l.id] == l
	delete(l.lk.leases, l.id)
	if l.owner != "" && l.lk.owned[ownedKey(l.lease.Key(), l.owner)] == l {
		delete(l.lk.owned, ownedKey(l.lease.Key(), l.owner))
	}
	l.lk.mu.Unlock()
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	return here
}

// end ends every grant of l with reason.
func (l *lease) end(reason error) {
	l.mu.Lock()
	ends := l.ends
	l.mu.Unlock()
	for _, end := range ends {
		end(reason)
	}
}

// lost ends l for reason; Redis has ended it already, or will.
func (l *lease) lost(reason error) {
	l.forget()
	l.end(reason)
}

// gone is why l is no longer in Redis, as far as its Locker can tell.
func (l *lease) gone() error {
	if exp := l.lease.Expires(); !exp.IsZero() && !time.Now().Before(exp) {
		return lmx.ErrExpired
	}
	return fmt.Errorf("%w: the lease is gone from Redis", lmx.ErrSessionLost)
}

// expire ends l when its TTL ran out: Redis may not have reaped it yet, so
// the Locker releases it first, and the key is free when Done closes.
func (l *lease) expire() {
	if !l.forget() {
		return
	}
	ctx, cancel := context.WithTimeout(l.lk.ctx, time.Second)
	l.lk.run(ctx, releaseScript, l.lease.Key(), l.id, "x")
	cancel()
	l.end(lmx.ErrExpired)
}

// Unlock implements lmx.LeaseBackend. The Unlock of one of several grants
// of an owner only counts it down.
func (l *lease) Unlock(ctx context.Context, _ *lmx.Lease) error {
	l.lk.mu.Lock()
	here := l.lk.leases[l.id] == l
	l.lk.mu.Unlock()
	l.mu.Lock()
	if here && l.count > 1 {
		l.count--
		l.mu.Unlock()
		l.lk.recount(ctx, l, -1)
		return nil
	}
	l.mu.Unlock()
	if !l.forget() {
		return lmx.ErrNotHeld
	}
	key := l.lease.Key()
	if ctx.Err() != nil {
		l.lk.takeBackLater(key, l.id)
		return ctx.Err()
	}
	v, err := l.lk.runOn(ctx, releaseScript, l.keys, key, l.id, "", flag(l.sole, "1", "0"))
	if err != nil {
		l.lk.takeBackLater(key, l.id)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Released here, and in Redis once it answers; but whether the key
		// was still l's until now, Redis did not say: its TTL or its
		// session may have run out behind the link that failed.
		l.end(fmt.Errorf("%w: Redis did not answer the release: %w", lmx.ErrSessionLost, err))
		return l.lk.wrap(ctx, err)
	}
	switch v {
	case int64(1):
		return nil
	case "x":
		l.end(lmx.ErrExpired)
	default:
		l.end(l.gone())
	}
	return lmx.ErrNotHeld
}

// Extend implements lmx.LeaseBackend: the lease must still be held in
// Redis, whose clock then runs its new TTL; the lease's own runs from
// before the request, so that it never outlasts Redis's.
func (l *lease) Extend(ctx context.Context, _ *lmx.Lease, ttl time.Duration) (time.Time, error) {
	start := time.Now()
	v, err := l.lk.run(ctx, extendScript, l.lease.Key(), l.id, ttl.Milliseconds())
	if err != nil {
		return time.Time{}, l.lk.wrap(ctx, err)
	}
	if v != int64(1) {
		l.lost(l.gone())
		return time.Time{}, lmx.ErrNotHeld
	}
	exp := start.Add(ttl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease.Err() != nil {
		return time.Time{}, lmx.ErrNotHeld
	}
	if l.timer == nil {
		l.timer = time.AfterFunc(time.Until(exp), l.expire)
	} else if !l.timer.Stop() {
		return time.Time{}, lmx.ErrNotHeld // expiring as we speak
	} else {
		l.timer.Reset(time.Until(exp))
	}
	return exp, nil
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

// granted makes the lease of the granted request r: its TTL (ttl, 0 for
// none) runs from r.start, when the request that learned of the grant was
// sent, so that the lease does not believe itself held after Redis expires
// it.
func (lk *Locker) granted(r *request, token uint64, ttl time.Duration) (*lmx.Lease, error) {
	s, key, req := r.s, r.key, r.req
	l := &lease{lk: lk, s: s, id: r.ids, keys: r.keys, owner: req.Owner, shared: req.Shared,
		sole: !req.Shared && req.Limit == 1, count: 1}
	if req.KeepOnDisconnect {
		l.s = nil
	}
	var exp time.Time
	if req.TTL > 0 {
		exp = r.start.Add(ttl)
	}
	var end func(error) bool
	l.lease, end = lmx.NewLease(key, r.id, token, exp, l)
	l.grant0[0], l.end0[0] = l.lease, end
	l.grants, l.ends = l.grant0[:], l.end0[:]
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
