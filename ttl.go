package lmx

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"
)

// TTLs cost little per lease: each shard keeps its TTL leases in a heap
// ordered by when they next need attention, and one runtime timer set for the
// earliest. A million TTL leases are a million heap slots, not a million
// timers or goroutines, and leases expiring together are ended in one pass
// under the shard's lock. A shard with no TTL lease has no timer pending.

// ttlState is the TTL of a lease, guarded by the shard's mu; a client's
// lease has no shard, and its expires and heard are guarded by mu alone. It
// is 56 bytes (a 64-byte allocation): its times are nanoseconds since epoch
// (see there), and when the shard's timer must look at the lease is worked
// out (wake), not kept.
type ttlState struct {
	mu        sync.Mutex    // guards expires and heard for Expires; taken after the shard's mu
	expires   int64         // written holding mu and, for a broker's lease, the shard's mu
	ttl       time.Duration // asked with TTL; KeepAlive renews by this much
	keepAlive time.Duration // asked with KeepAlive, or 0
	keepUntil int64         // grant + keepAlive: no renewal past it; with keepAlive only
	heard     int64         // a client's lease: when the broker told it expires; else 0
	index     int32         // in the shard's deadlines, -1 when not in
}

// epoch is the origin of the TTL times. A broker reads its own (monoNow)
// on the monotonic clock, so that a step of the wall clock moves no
// expiry; the times a lease is given (a client's from its broker, a
// backend's) are read on the wall clock (nanos), as they come. Inside a
// testing/synctest bubble, whose times have no monotonic reading, both are
// wall-clock time.
var epoch = time.Now()

// monoNow returns the time now, in nanoseconds since epoch.
func monoNow() int64 { return int64(time.Since(epoch)) }

// nanos returns t, in nanoseconds since epoch on the wall clock.
func nanos(t time.Time) int64 { return int64(t.Round(0).Sub(epoch)) }

// timeAt is the time n nanoseconds after epoch, on the wall clock.
func timeAt(n int64) time.Time { return epoch.Add(time.Duration(n)).Round(0) }

// renews reports whether KeepAlive still renews the lease at n.
func (t *ttlState) renews(n int64) bool { return t.keepAlive > 0 && n < t.keepUntil }

// wake returns when the shard's timer must look at the lease: half the TTL
// before expiry while KeepAlive still renews, so that a kept-alive lease
// never looks expired, else at expiry.
func (t *ttlState) wake() int64 {
	if t.renews(t.expires) {
		return t.expires - int64(t.ttl/2)
	}
	return t.expires
}

// deadlines is a min-heap of TTL leases by wake time. A lease's place is
// fixed (heap.Fix) whenever what its wake depends on changes.
type deadlines []*Lease

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].ttl.Load().wake() < d[j].ttl.Load().wake() }
func (d deadlines) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].ttl.Load().index, d[j].ttl.Load().index = int32(i), int32(j)
}
func (d *deadlines) Push(x any) {
	l := x.(*Lease)
	l.ttl.Load().index = int32(len(*d))
	*d = append(*d, l)
}
func (d *deadlines) Pop() any {
	old := *d
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	l.ttl.Load().index = -1
	return l
}

// startTTLLocked starts the TTL of l, granted at now.
func (sh *shard) startTTLLocked(l *Lease, now int64) {
	t := l.ttl.Load()
	l.setExpiresAt(now + int64(t.ttl))
	if t.keepAlive > 0 {
		t.keepUntil = now + int64(t.keepAlive)
	}
	t.index = -1
	sh.scheduleLocked(l, now)
}

// scheduleLocked (re)places l in the heap at its wake time.
func (sh *shard) scheduleLocked(l *Lease, now int64) {
	if t := l.ttl.Load(); t.index < 0 {
		heap.Push(&sh.deadlines, l)
	} else {
		heap.Fix(&sh.deadlines, int(t.index))
	}
	if sh.deadlines[0] == l {
		sh.armLocked(now)
	}
}

// unscheduleLocked takes l out of the heap. The timer may then fire for
// nothing, and re-arms itself for the new earliest.
func (sh *shard) unscheduleLocked(l *Lease) {
	if t := l.ttl.Load(); t.index >= 0 {
		heap.Remove(&sh.deadlines, int(t.index))
	}
	// Give back the array of a burst of TTL leases that have gone, as
	// shrinkLocked does the map's slots.
	if d := sh.deadlines; cap(d) >= shrinkMin && len(d) <= cap(d)/shrinkRatio {
		sh.deadlines = slices.Clone(d)
	}
}

// armLocked sets the shard's timer for the earliest wake.
func (sh *shard) armLocked(now int64) {
	d := time.Duration(sh.deadlines[0].ttl.Load().wake() - now)
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
	now := monoNow()
	for len(sh.deadlines) > 0 {
		l := sh.deadlines[0]
		t := l.ttl.Load()
		if t.wake() > now {
			sh.armLocked(now)
			return
		}
		if t.renews(now) {
			if exp := min(now+int64(t.ttl), t.keepUntil); exp > t.expires {
				l.setExpiresAt(exp)
			}
		}
		if now < t.expires {
			sh.scheduleLocked(l, now)
			continue
		}
		sh.st.expiries++
		sh.endLocked(l, errExpired)
	}
}

// stopKeepAliveLocked ends the renewals of l, whose holder is gone: a lease
// kept after its session ended renews no more, and expires at its TTL.
func (sh *shard) stopKeepAliveLocked(l *Lease, now int64) {
	if t := l.ttl.Load(); t != nil && t.renews(now) {
		t.keepUntil = now
		if t.index >= 0 {
			heap.Fix(&sh.deadlines, int(t.index)) // its wake moved
		}
	}
}

// expiry returns when the lease expires, as seen at now. A broker's lease
// has it in expires. A client's lease asked with KeepAlive is renewed by the
// broker (onTimer) out of the client's sight, so the client projects those
// renewals from the expiry it last heard: the first when half a TTL is left
// (at once, if less was left when it heard), each next one half a TTL
// later, each making the lease expire a TTL after it, never past keepUntil.
// The client reads all of these on the wall clock, as the broker's frames
// give them.
func (t *ttlState) expiry(now time.Time) time.Time {
	e, half := t.expires, int64(t.ttl/2)
	if t.heard == 0 || !t.renews(e) || half <= 0 {
		return timeAt(e)
	}
	first := max(e-half, t.heard)
	n := nanos(now)
	if n < first {
		return timeAt(e)
	}
	e = max(e, first+int64(t.ttl))
	if since := n - (e - half); since >= 0 {
		e += half * (since/half + 1)
	}
	return timeAt(min(e, t.keepUntil))
}

// clientTTL is the TTL of a client's lease granted with expiry exp, heard
// at now, asked with ttl and keepAlive: the broker renews it until the
// grant plus keepAlive, that is exp less ttl plus keepAlive.
func clientTTL(exp time.Time, ttl, keepAlive time.Duration, now time.Time) *ttlState {
	t := &ttlState{expires: nanos(exp), ttl: ttl, heard: nanos(now)}
	if keepAlive > 0 {
		t.keepAlive, t.keepUntil = keepAlive, t.expires+int64(keepAlive-ttl)
	}
	return t
}

// heardExpiry records exp, the expiry the broker gave a client's lease
// (granting or extending it), heard at now.
func (l *Lease) heardExpiry(exp, now time.Time) {
	t := l.ttlState()
	t.mu.Lock()
	t.expires, t.heard = nanos(exp), nanos(now)
	t.mu.Unlock()
}

// extend implements door for in-process leases.
func (sh *shard) extend(_ context.Context, l *Lease, ttl time.Duration) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.state != stateHeld {
		return l.notHeld()
	}
	now := monoNow()
	if l.ttl.Load() == nil {
		l.ttl.Store(&ttlState{ttl: ttl})
		sh.startTTLLocked(l, now)
		return nil
	}
	l.setExpiresAt(now + int64(ttl))
	sh.scheduleLocked(l, now)
	return nil
}

// stopTimerLocked stops the shard's timer for good, when the broker closes.
func (sh *shard) stopTimerLocked() {
	if sh.timer != nil {
		sh.timer.Stop()
	}
}
