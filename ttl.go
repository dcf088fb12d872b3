package lmx

import (
	"context"
	"time"
)

// ttlState is the TTL of a lease, guarded by the shard's mu. A TTL lease
// costs one runtime timer (time.AfterFunc) and no goroutine while it waits:
// a million TTL leases are a million timers in the runtime's heaps, not a
// million goroutines.
type ttlState struct {
	ttl       time.Duration // asked with TTL; KeepAlive renews by this much
	keepAlive time.Duration // asked with KeepAlive, or 0
	keepUntil time.Time     // grant + keepAlive: no renewal past it
	timer     *time.Timer
}

// startTTLLocked arms the TTL of l, granted at now.
func (sh *shard) startTTLLocked(l *Lease, now time.Time) {
	t := l.ttl
	l.setExpires(now.Add(t.ttl))
	if t.keepAlive > 0 {
		t.keepUntil = now.Add(t.keepAlive)
	}
	t.timer = time.AfterFunc(t.wake(now, l.expires), func() { sh.onTimer(l) })
}

// wake returns how long from now the timer of a lease expiring at expires
// should fire: at half the TTL before expiry while KeepAlive still renews,
// so the lease never looks expired while it is kept alive, else at expiry.
func (t *ttlState) wake(now, expires time.Time) time.Duration {
	at := expires
	if expires.Before(t.keepUntil) {
		at = expires.Add(-t.ttl / 2)
	}
	return at.Sub(now)
}

// onTimer renews l while KeepAlive allows, and otherwise ends it as expired
// unless Extend moved its expiry since the timer was set.
func (sh *shard) onTimer(l *Lease) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.state != stateHeld {
		return
	}
	t, now := l.ttl, time.Now()
	if now.Before(t.keepUntil) {
		exp := now.Add(t.ttl)
		if exp.After(t.keepUntil) {
			exp = t.keepUntil
		}
		if exp.After(l.expires) {
			l.setExpires(exp)
		}
	}
	if now.Before(l.expires) {
		t.timer.Reset(t.wake(now, l.expires))
		return
	}
	sh.st.expiries++
	sh.endLocked(l, errExpired)
}

// extend implements door for in-process leases.
func (sh *shard) extend(_ context.Context, l *Lease, ttl time.Duration) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.state != stateHeld {
		return l.notHeld()
	}
	now := time.Now()
	if l.ttl == nil {
		l.ttl = &ttlState{ttl: ttl}
		sh.startTTLLocked(l, now)
		return nil
	}
	exp := now.Add(ttl)
	l.setExpires(exp)
	l.ttl.timer.Reset(l.ttl.wake(now, exp))
	return nil
}
