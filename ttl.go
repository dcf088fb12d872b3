package lmx

import (
	"container/heap"
	"context"
	"slices"
	"time"
)

// TTLs cost little per lease: each shard keeps its TTL leases in a heap
// ordered by when they next need attention, and one runtime timer set for the
// earliest. A million TTL leases are a million heap slots, not a million
// timers or goroutines, and leases expiring together are ended in one pass
// under the shard's lock. A shard with no TTL lease has no timer pending.

// ttlState is the TTL of a lease, guarded by the shard's mu; a client's
// lease has no shard, and its expires and heard are guarded by its mu.
type ttlState struct {
	expires   time.Time     // see Lease.ttl
	ttl       time.Duration // asked with TTL; KeepAlive renews by this much
	keepAlive time.Duration // asked with KeepAlive, or 0
	keepUntil time.Time     // grant + keepAlive: no renewal past it
	wake      time.Time     // when the shard's timer must look at the lease
	index     int           // in the shard's deadlines, -1 when not in
	heard     time.Time     // a client's lease: when the broker told it expires
}

// deadlines is a min-heap of TTL leases by wake time.
type deadlines []*Lease

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].ttl.wake.Before(d[j].ttl.wake) }
func (d deadlines) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].ttl.index, d[j].ttl.index = i, j
}
func (d *deadlines) Push(x any) {
	l := x.(*Lease)
	l.ttl.index = len(*d)
	*d = append(*d, l)
}
func (d *deadlines) Pop() any {
	old := *d
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	l.ttl.index = -1
	return l
}

// startTTLLocked starts the TTL of l, granted at now.
func (sh *shard) startTTLLocked(l *Lease, now time.Time) {
	t := l.ttl
	l.setExpires(now.Add(t.ttl))
	if t.keepAlive > 0 {
		t.keepUntil = now.Add(t.keepAlive)
	}
	t.index = -1
	sh.scheduleLocked(l, now)
}

// scheduleLocked (re)places l in the heap at its next wake time: half the TTL
// before expiry while KeepAlive still renews, so a kept-alive lease never
// looks expired, else at expiry.
func (sh *shard) scheduleLocked(l *Lease, now time.Time) {
	t := l.ttl
	t.wake = t.expires
	if t.expires.Before(t.keepUntil) {
		t.wake = t.expires.Add(-t.ttl / 2)
	}
	if t.index < 0 {
		heap.Push(&sh.deadlines, l)
	} else {
		heap.Fix(&sh.deadlines, t.index)
	}
	if sh.deadlines[0] == l {
		sh.armLocked(now)
	}
}

// unscheduleLocked takes l out of the heap. The timer may then fire for
// nothing, and re-arms itself for the new earliest.
func (sh *shard) unscheduleLocked(l *Lease) {
	if l.ttl.index >= 0 {
		heap.Remove(&sh.deadlines, l.ttl.index)
	}
	// Give back the array of a burst of TTL leases that have gone, as
	// shrinkLocked does the map's slots.
	if d := sh.deadlines; cap(d) >= shrinkMin && len(d) <= cap(d)/shrinkRatio {
		sh.deadlines = slices.Clone(d)
	}
}

// armLocked sets the shard's timer for the earliest wake.
func (sh *shard) armLocked(now time.Time) {
	d := sh.deadlines[0].ttl.wake.Sub(now)
	if sh.timer == nil {
		sh.timer = time.AfterFunc(d, func() { sh.b.bg.run(sh.onTimer) })
	} else {
		sh.timer.Reset(d)
	}
}

// onTimer attends to every lease whose wake time has come: it renews those
// KeepAlive still covers, ends as expired those whose expiry has passed, and
// re-schedules those extended since.
func (sh *shard) onTimer() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := time.Now()
	for len(sh.deadlines) > 0 {
		l := sh.deadlines[0]
		t := l.ttl
		if t.wake.After(now) {
			sh.armLocked(now)
			return
		}
		if now.Before(t.keepUntil) {
			exp := now.Add(t.ttl)
			if exp.After(t.keepUntil) {
				exp = t.keepUntil
			}
			if exp.After(t.expires) {
				l.setExpires(exp)
			}
		}
		if now.Before(t.expires) {
			sh.scheduleLocked(l, now)
			continue
		}
		sh.st.expiries++
		sh.endLocked(l, errExpired)
	}
}

// stopKeepAliveLocked ends the renewals of l, whose holder is gone: a lease
// kept after its session ended renews no more, and expires at its TTL.
func (sh *shard) stopKeepAliveLocked(l *Lease, now time.Time) {
	if t := l.ttl; t != nil && now.Before(t.keepUntil) {
		t.keepUntil = now
	}
}

// expiry returns when the lease expires, as seen at now. A broker's lease
// has it in expires. A client's lease asked with KeepAlive is renewed by the
// broker (onTimer) out of the client's sight, so the client projects those
// renewals from the expiry it last heard: the first when half a TTL is left
// (at once, if less was left when it heard), each next one half a TTL
// later, each making the lease expire a TTL after it, never past keepUntil.
func (t *ttlState) expiry(now time.Time) time.Time {
	e, half := t.expires, t.ttl/2
	if t.heard.IsZero() || !e.Before(t.keepUntil) || half <= 0 {
		return e
	}
	first := e.Add(-half)
	if first.Before(t.heard) {
		first = t.heard
	}
	if now.Before(first) {
		return e
	}
	if r := first.Add(t.ttl); r.After(e) {
		e = r
	}
	if since := now.Sub(e.Add(-half)); since >= 0 {
		e = e.Add(half * (since/half + 1))
	}
	if e.After(t.keepUntil) {
		return t.keepUntil
	}
	return e
}

// heardExpiry records exp, the expiry the broker gave a client's lease
// (granting or extending it), heard at now.
func (l *Lease) heardExpiry(exp, now time.Time) {
	l.mu.Lock()
	if l.ttl == nil {
		l.ttl = new(ttlState)
	}
	l.ttl.expires, l.ttl.heard = exp, now
	l.mu.Unlock()
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
		t := &ttlState{ttl: ttl}
		l.mu.Lock()
		l.ttl = t
		l.mu.Unlock()
		sh.startTTLLocked(l, now)
		return nil
	}
	l.setExpires(now.Add(ttl))
	sh.scheduleLocked(l, now)
	return nil
}

// stopTimerLocked stops the shard's timer for good, when the broker closes.
func (sh *shard) stopTimerLocked() {
	if sh.timer != nil {
		sh.timer.Stop()
	}
}
