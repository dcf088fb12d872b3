package redis

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lmx-go/lmx"
)

// lease is the Redis side of one granted request, and of the lmx.Leases of
// its owner's re-entries (see reenter).
type lease struct {
	lk     *Locker
	s      *session // nil for a KeepOnDisconnect lease: no session ends it
	id     string
	owner  string // "" without Owner
	shared bool
	lease  *lmx.Lease

	mu     sync.Mutex         // guards what follows; taken after the Locker's mu
	timer  *time.Timer        // expiry
	count  int                // grants not undone yet: 1 plus the re-entries
	grants []*lmx.Lease       // each grant
	ends   []func(error) bool // each grant's end
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
	v, err := l.lk.run(ctx, releaseScript, key, l.id, "")
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
