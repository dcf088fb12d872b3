package lmx

import (
	"context"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// numShards splits the table so that unrelated keys rarely share a mutex.
const numShards = 64

// A shard owns the keys that hash to it. Its mu guards every field below, the
// entries in keys and the broker state of their leases (see Lease). Nothing
// blocks and no user code runs while mu is held.
//
// A key costs its map slot and its holder's Lease, and no more while it has
// one holder and nothing else: keys holds that lease itself. A key gets an
// entry when a second party comes (a waiter, another shared holder), when
// its limit is not 1, or for a lock-delay, and keeps it until it is idle;
// keys then holds the entry's anchor.
type shard struct {
	ref  doorRef // its leases' door: sh
	b    *Broker
	mu   sync.Mutex
	keys map[string]*Lease // a lone holder (e nil), or an entry's anchor
	peak int               // the most keys since keys was made
	free []*entry
	st   counters

	// idle is what keys holds for the last key to have gone idle: the lease
	// that held it alone, or its entry's anchor. It is left in keys so that
	// locking the key again, the commonest pattern, costs no map insert. At
	// most one per shard: idle keys still cost next to nothing. Inspect and
	// Stats do not see it.
	idle *Lease

	// reheld is the lease that holds idle's key alone again, while keys
	// still holds the idle lease for it, or nil: so locking and unlocking
	// that key again write no map at all (see atLocked, idleLocked).
	reheld *Lease

	// asked is the lease that release ends at the request of its own
	// session, which learns of the end from the answer and so is not told
	// of it as well; nil otherwise.
	asked *Lease

	deadlines deadlines   // TTL leases by wake time, see ttl.go
	timer     *time.Timer // fires at deadlines[0]'s wake; nil until needed
	_         [64]byte    // keeps neighbouring shards' mutexes off one cache line
}

// counters are a shard's share of Stats.
type counters struct {
	holders, waiters                                   int
	grants, expiries, forced, preemptions, sessionLost uint64
	wait, hold                                         Histogram
}

func (sh *shard) init(b *Broker) {
	sh.ref.door = sh
	sh.b = b
	sh.keys = make(map[string]*Lease)
}

// leaseHook is told, under the shard's mu, when a lease asked with it is
// granted and when it ends: how a network session learns of grants and
// losses in order, with no goroutine per waiter. It must not block.
//
// Through chains, named and stop the table hands keys off inside a session
// (see chain.go): a hook whose chains reports false (the live-mutex door's,
// which embed lmNoChain) never has a waiter named, nor a Stop asked of it.
type leaseHook interface {
	queued(l *Lease, reqID uint32)
	granted(l *Lease, reqID uint32)
	revoked(l *Lease)
	ended(l *Lease, reason error)

	chains() bool
	named(l *Lease, pred ulid.ULID)
	stop(key string) uint32
}

// acquire grants key to a request with options r, or waits for it when wait
// is set, or fails with ErrLocked.
func (sh *shard) acquire(ctx context.Context, key string, r *request, wait bool) (*Lease, error) {
	l, queued, err := sh.begin(key, r, wait, nil, 0)
	if err != nil || !queued {
		return l, err
	}
	if done := ctx.Done(); done == nil {
		<-l.ready // a plain receive costs less than a select
	} else {
		select {
		case <-l.ready:
		case <-done:
			return nil, sh.cancelWait(ctx, l)
		}
	}
	sh.b.readies.Put(l.ready)
	l.ready = nil
	if l.Err() == ErrClosed { // failed by Close, never a grant's error (errClosed)
		return nil, ErrClosed
	}
	return l, nil
}

// begin grants key to a request with options r now, or queues it when wait
// is set, or fails with ErrLocked. It never blocks. A queued lease is
// granted later: through hook, which is also told of immediate grants, or,
// without a hook, through its ready channel.
func (sh *shard) begin(key string, r *request, wait bool, hook leaseHook, reqID uint32) (l *Lease, queued bool, err error) {
	l = newLease(key, sh, r, hook) // before locking, to keep the critical section short
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.b.closed.Load() {
		return nil, false, ErrClosed
	}
	e, h, err := sh.entryLocked(l, r, hook, reqID, wait)
	if e == nil {
		return h, false, err
	}
	if r.owner != "" {
		if h := e.heldBy(r.owner, hook); h != nil {
			h, err := sh.reenterLocked(h, r, hook, reqID)
			return h, false, err
		}
	}
	// A request goes straight to the head of the queue only past waiters of
	// lower priority: it never overtakes one it would have to queue behind,
	// nor one overtaken maxBypass times already.
	if e.waiters.mayOvertake(l) && e.fits(l) {
		e.waiters.overtaken(e.waiters.head)
		sh.grantLocked(e, l, sh.now(l))
		if hook != nil {
			hook.granted(l, reqID)
		}
		return l, false, nil
	}
	if !wait {
		sh.freeIfIdleLocked(e)
		return nil, false, ErrLocked
	}
	// A waiter has no token yet: until its grant, or its naming (see
	// chain.go), the field holds when it queued, for the wait-time
	// histogram.
	l.e, l.state, l.token = e, stateWaiting, uint64(sh.now(l))
	if hook == nil {
		l.ready = sh.b.readies.Get().(chan struct{})
	} else {
		l.x.reqID = reqID
		hook.queued(l, reqID)
	}
	e.waiters.insert(l)
	sh.st.waiters++
	if p := l.prev; p != nil && p.isNamed() && p.prio() < l.prio() {
		sh.stopLocked(e) // l would overtake waiters named to a client
	} else if hook != nil {
		sh.nameLocked(e) // l may follow its session's lease or named waiters
	}
	sh.maybePreemptLocked(e)
	return l, true, nil
}

// cancelWait takes the waiter l out of its queue after its ctx ended. The
// grant may have won the race, in which case the lease is handed on as if the
// caller had unlocked it at once.
func (sh *shard) cancelWait(ctx context.Context, l *Lease) error {
	sh.mu.Lock()
	switch l.state {
	case stateWaiting:
		sh.dequeueLocked(l)
	case stateHeld:
		<-l.ready
		sh.releaseLocked(l) // an owner may have re-entered meanwhile
	default: // failed by Close
		<-l.ready
	}
	sh.mu.Unlock()
	sh.b.readies.Put(l.ready)
	l.ready = nil
	return ctx.Err()
}

// dequeueLocked takes the waiting lease l out of its queue.
func (sh *shard) dequeueLocked(l *Lease) {
	e := l.e
	e.unqueue(l)
	sh.st.waiters--
	l.e, l.state = nil, stateEnded
	sh.grantNextLocked(e) // l may have held back those behind it
	sh.freeIfIdleLocked(e)
}

// now returns the time, in unix milliseconds, of an event of l: the
// broker's cached clock for an in-process lease, whose grant costs less than
// a clock read, and the clock itself for a session's, beside whose round
// trip a read costs nothing: the cached clock's ticks wake threads, which
// costs the network door more than the reads (see msClock).
func (sh *shard) now(l *Lease) int64 {
	if l.hook() == nil {
		return sh.b.clock.now()
	}
	return time.Now().UnixMilli()
}

// grantLocked makes l a holder of e, or of its key alone when e is nil, at
// now, in unix milliseconds.
func (sh *shard) grantLocked(e *entry, l *Lease, now int64) {
	if e != nil {
		sh.joinLocked(e, l)
	}
	l.state, l.count = stateHeld, 1
	if l.isNamed() { // it keeps the id and token it was named with
		l.x.named, l.x.at = false, now
	} else {
		sh.b.stamp(l, now)
	}
	if l.ttl.Load() != nil {
		sh.startTTLLocked(l, monoNow())
	}
	sh.st.holders++
	sh.st.grants++
	sh.emitLocked(EventAcquired, l)
}

// grantNextLocked grants e's waiters from the head of its queue for as long
// as the head fits, and wakes each.
func (sh *shard) grantNextLocked(e *entry) {
	for w := e.waiters.head; w != nil && e.fits(w); w = e.waiters.head {
		e.unqueue(w)
		sh.st.waiters--
		now := sh.now(w)
		sh.st.wait.observe(time.Duration(now-w.queued()) * time.Millisecond)
		sh.grantLocked(e, w, now)
		if hook := w.hook(); hook != nil {
			hook.granted(w, w.x.reqID)
		} else {
			w.ready <- struct{}{}
		}
	}
	sh.nameLocked(e)
	sh.maybePreemptLocked(e)
}

// dropLocked ends the held lease l for reason without granting its
// successor, and returns the key's entry: nil if l held the key alone and
// no lock-delay follows, in which case the key is idle.
func (sh *shard) dropLocked(l *Lease, reason error) *entry {
	e := l.e
	if e != nil {
		e.holders.remove(l)
		if l.shared {
			e.shared--
		} else {
			e.excl--
		}
	}
	sh.st.holders--
	sh.st.hold.observe(time.Duration(sh.now(l)-l.granted()) * time.Millisecond)
	e = sh.delayLocked(e, l, reason)
	l.e, l.state = nil, stateEnded
	if l.ttl.Load() != nil {
		sh.unscheduleLocked(l)
	}
	// Watchers hear of the end before the holder does, as they hear of a
	// grant before the grantee: whatever the holder does next comes after it
	// in every watch.
	sh.emitLocked(eventType(reason), l)
	if hook := l.hook(); hook != nil && l != sh.asked {
		hook.ended(l, reason)
	}
	l.end(reason)
	if e == nil {
		sh.idleLocked(l)
	}
	return e
}

// endLocked ends the held lease l for reason and hands the key on.
func (sh *shard) endLocked(l *Lease, reason error) {
	if e := sh.dropLocked(l, reason); e != nil {
		sh.grantNextLocked(e)
		sh.freeIfIdleLocked(e)
	}
}

// releaseLocked undoes one grant of the held lease l.
func (sh *shard) releaseLocked(l *Lease) {
	if l.count--; l.count == 0 {
		sh.endLocked(l, ErrReleased)
	}
}

// unlock implements door for in-process leases. It needs no ctx: it never
// waits.
func (sh *shard) unlock(_ context.Context, l *Lease) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.state != stateHeld {
		return l.notHeld()
	}
	sh.releaseLocked(l)
	return nil
}

// release undoes one grant of the lease of key with lock id id, and
// reports whether the lease ended. by, if not nil, is the hook of the
// session asking: if the lease is that session's, the session is not told
// of its end, which its answer to the Release tells the client.
func (sh *shard) release(key string, id ulid.ULID, by leaseHook) (ended bool, err error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.heldLocked(key, id)
	if l == nil {
		return false, ErrNotHeld
	}
	if by != nil && l.hook() == by {
		sh.asked = l
	}
	sh.releaseLocked(l)
	sh.asked = nil
	return l.state == stateEnded, nil
}

// forceUnlock ends every lease of key with ErrForced.
func (sh *shard) forceUnlock(key string) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	lone, e := sh.lookupLocked(key)
	if lone != nil {
		sh.st.forced++
		sh.endLocked(lone, errForced)
		return nil
	}
	if e == nil || e.holders.n == 0 {
		return ErrNotHeld
	}
	for h := e.holders.head; h != nil; {
		next := h.next
		sh.dropLocked(h, errForced)
		sh.st.forced++
		h = next
	}
	sh.grantNextLocked(e)
	sh.freeIfIdleLocked(e)
	return nil
}

// closeLocked ends every lease and fails every waiter of the shard.
func (sh *shard) closeLocked() {
	sh.stopTimerLocked()
	if l := sh.reheld; l != nil { // keys holds the idle lease for its key
		sh.dropLocked(l, errClosed)
	}
	for _, v := range sh.keys {
		e := v.e
		if e == nil {
			if v.state == stateHeld {
				sh.dropLocked(v, errClosed) // no lock-delay: the key is idle
			}
			continue
		}
		for h := e.holders.head; h != nil; {
			next := h.next
			sh.dropLocked(h, errClosed)
			h = next
		}
		for w := e.waiters.head; w != nil; w = e.waiters.head {
			e.unqueue(w)
			sh.st.waiters--
			w.e, w.state = nil, stateEnded
			w.end(ErrClosed)
			if w.ready != nil { // a hook's session ends with the broker
				w.ready <- struct{}{}
			}
		}
		sh.freeIfIdleLocked(e)
	}
}

// The errors of lost leases, made once.
var (
	errExpired     = lost(ErrExpired)
	errForced      = lost(ErrForced)
	errClosed      = lost(ErrClosed)
	errSessionLost = lost(ErrSessionLost)
)

// leaseByID returns the held lease of key with lock id id, or nil.
func (sh *shard) leaseByID(key string, id ulid.ULID) *Lease {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.heldLocked(key, id)
}

// dequeue takes the waiting lease l out of its queue, and reports false if l
// was no longer waiting.
func (sh *shard) dequeue(l *Lease) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.state != stateWaiting {
		return false
	}
	sh.dequeueLocked(l)
	return true
}

// sessionEnded settles a lease whose network session, hook, has ended: a
// waiter leaves its queue; a holder loses the lease with ErrSessionLost, or,
// when asked with KeepOnDisconnect, keeps it, detached, until its TTL.
func (sh *shard) sessionEnded(l *Lease, hook leaseHook) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if l.hook() != hook {
		return
	}
	switch l.state {
	case stateWaiting:
		sh.dequeueLocked(l)
	case stateHeld:
		if l.keep {
			l.x.hook = nil
			sh.stopKeepAliveLocked(l, monoNow())
			return
		}
		sh.st.sessionLost++
		sh.endLocked(l, errSessionLost)
	}
}
