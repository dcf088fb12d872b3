package lmx

import (
	"fmt"

	"github.com/oklog/ulid/v2"
)

// The shard's keys: a key held by one lease and nothing else is that lease
// in the map, and costs no more; a key with more gets an entry (see shard).

// maxFree bounds the recycled entries a shard keeps, so that a burst of keys
// does not pin memory once it has passed.
const maxFree = 32

// A Go map never shrinks: a shard whose map held a burst of keys keeps their
// slots after they are gone (about 50 MiB for 10^6 keys). So a shard rebuilds
// its map once the live keys fall to shrinkRatio of the most it held since
// the last rebuild. Each rebuild copies at most 1/shrinkRatio of the
// deletions since the last, so it costs O(1) a deletion, and a shard whose
// number of keys stays near a steady level never rebuilds. Maps of fewer
// than shrinkMin keys are not worth it.
const (
	shrinkRatio = 8
	shrinkMin   = 1024
)

// newLease makes the lease a request for key with options r asks for, from
// shard sh, on behalf of hook if not nil.
func newLease(key string, sh *shard, r *request, hook leaseHook) *Lease {
	var l *Lease
	if hook != nil {
		// A network session's lease always has its leaseExtra: one
		// allocation for both.
		hl := &hookedLease{x: leaseExtra{hook: hook, lockDelay: -1}}
		l = &hl.Lease
		l.x = &hl.x
		l.key, l.door, l.shared, l.keep, l.noPreempt = key, &sh.ref, r.shared, r.keepOnDisconnect, r.noPreempt
	} else {
		// Written as the object is made, with no write barrier.
		l = &Lease{key: key, door: &sh.ref, shared: r.shared, keep: r.keepOnDisconnect, noPreempt: r.noPreempt}
	}
	if r.ttl > 0 {
		l.ttl.Store(&ttlState{ttl: r.ttl, keepAlive: r.keepAlive})
	}
	if r.priority != 0 {
		l.extra().prio = int32(r.priority)
	}
	if r.owner != "" {
		l.extra().owner = r.owner
	}
	if r.preempt >= 0 {
		l.extra().preempt = &preemption{grace: r.preempt}
	}
	if r.lockDelay >= 0 {
		l.extra().lockDelay = r.lockDelay
	}
	return l
}

// hookedLease is a lease made on behalf of a hook together with its
// leaseExtra, which holds the hook.
type hookedLease struct {
	Lease
	x leaseExtra
}

// entryLocked finds the entry that the new lease l, asked with options r,
// joins, making it if need be, or settles l's request without one: it
// grants l a key nobody has, re-enters a lone holder, or fails. It returns
// the entry, or else the lease granted (l, or the one re-entered) or the
// error.
func (sh *shard) entryLocked(l *Lease, r *request, hook leaseHook, reqID uint32, wait bool) (e *entry, h *Lease, err error) {
	switch v := sh.atLocked(l.key); {
	case (v == nil || v == sh.idle && v.e == nil) && r.limit == 1:
		sh.holdAloneLocked(v, l) // nobody else has the key
		if hook != nil {
			hook.granted(l, reqID)
		}
		return nil, l, nil
	case v == nil || v == sh.idle && v.e == nil:
		e = sh.newEntryLocked(l.key, r.limit)
	case v == sh.idle:
		e, sh.idle = v.e, nil
		e.limit = int32(r.limit)
	default:
		if v.e == nil { // a lone holder
			if h, err := sh.beside(v, r, hook, reqID, wait); h != nil || err != nil {
				return nil, h, err
			}
		}
		e = v.e
		if int(e.limit) != r.limit && !r.ownLimit {
			return nil, nil, fmt.Errorf("%w: key %q has limit %d, asked %d", ErrLimitMismatch, l.key, e.limit, r.limit)
		}
	}
	return e, nil, nil
}

// holdAloneLocked grants the key of l to l, which is its only party; v is
// what keys held for the key: nil, or the idle lease that held it last,
// which keys goes on holding while l is reheld.
func (sh *shard) holdAloneLocked(v, l *Lease) {
	if v != nil {
		sh.reheld = l
	} else {
		sh.keys[l.key] = l
		sh.peak = max(sh.peak, len(sh.keys))
	}
	sh.grantLocked(nil, l, sh.now(l))
}

// beside settles a request with options r for the key that h holds alone:
// it re-enters h, or fails, or gives the key an entry (h.e) for the
// request to join.
func (sh *shard) beside(h *Lease, r *request, hook leaseHook, reqID uint32, wait bool) (*Lease, error) {
	switch {
	case r.limit != 1 && !r.ownLimit:
		return nil, fmt.Errorf("%w: key %q has limit 1, asked %d", ErrLimitMismatch, h.key, r.limit)
	case r.owner != "" && h.owner() == r.owner && h.hook() == hook:
		return sh.reenterLocked(h, r, hook, reqID)
	case !wait && !(h.shared && r.shared):
		return nil, ErrLocked
	}
	e := sh.newEntryLocked(h.key, 1)
	sh.joinLocked(e, h)
	return nil, nil
}

// reenterLocked grants the held lease h once more to its owner.
func (sh *shard) reenterLocked(h *Lease, r *request, hook leaseHook, reqID uint32) (*Lease, error) {
	if h.shared && !r.shared {
		return nil, fmt.Errorf("%w: owner %q holds %q shared and cannot re-enter exclusive", ErrInvalidOption, r.owner, h.key)
	}
	h.count++
	if hook != nil {
		hook.granted(h, reqID)
	}
	return h, nil
}

// atLocked returns what keys holds for key, as if reheld were in keys:
// nil, the idle lease or anchor, a lone holder, or an entry's anchor.
func (sh *shard) atLocked(key string) *Lease {
	v := sh.idle // locking the idle key again needs no lookup
	if v == nil || v.key != key {
		v = sh.keys[key]
	}
	if v == sh.idle && sh.reheld != nil {
		return sh.reheld
	}
	return v
}

// lookupLocked returns the holder of key if it holds the key alone, or
// else the key's entry if it has a holder or a waiter.
func (sh *shard) lookupLocked(key string) (lone *Lease, e *entry) {
	switch v := sh.atLocked(key); {
	case v == nil || v == sh.idle:
		return nil, nil
	case v.e == nil:
		return v, nil
	default:
		return nil, v.e
	}
}

// liveLocked returns the entry of key if it has one with a holder or a
// waiter.
func (sh *shard) liveLocked(key string) *entry {
	_, e := sh.lookupLocked(key)
	return e
}

// heldLocked returns the held lease of key with lock id id, or nil.
func (sh *shard) heldLocked(key string, id ulid.ULID) *Lease {
	lone, e := sh.lookupLocked(key)
	switch {
	case e != nil:
		return e.heldWithID(id)
	case lone != nil && lone.id == id:
		return lone
	}
	return nil
}

// newEntryLocked gives key an entry, in place of whatever keys held for it.
func (sh *shard) newEntryLocked(key string, limit int) *entry {
	if v := sh.idle; v != nil && v.key == key {
		sh.idle, sh.reheld = nil, nil // keys holds the anchor for key now
	}
	var e *entry
	if n := len(sh.free); n > 0 {
		e = sh.free[n-1]
		sh.free = sh.free[:n-1]
	} else {
		e = new(entry)
	}
	e.key, e.limit = key, int32(limit)
	e.anchor.key, e.anchor.e = key, e
	sh.keys[key] = &e.anchor
	sh.peak = max(sh.peak, len(sh.keys))
	return e
}

// joinLocked makes h, which held its key alone, a holder of the key's new
// entry e.
func (sh *shard) joinLocked(e *entry, h *Lease) {
	if h.shared {
		e.shared++
	} else {
		e.excl++
	}
	e.holders.pushBack(h)
	h.e = e
}

// freeIfIdleLocked leaves e in the table, as the shard's idle key, once it
// has no holder and no waiter.
func (sh *shard) freeIfIdleLocked(e *entry) {
	if e.idle() && sh.idle != &e.anchor {
		sh.idleLocked(&e.anchor)
	}
}

// idleLocked makes v, what keys holds for a key that has gone idle, the
// shard's idle one, and drops the one before from the table. When v is
// reheld, its key is the idle one already, and keys holds the idle lease.
func (sh *shard) idleLocked(v *Lease) {
	if v == sh.reheld {
		sh.reheld = nil
		return
	}
	v, sh.idle = sh.idle, v
	switch {
	case v == nil:
		return
	case sh.reheld != nil: // v's key is held: keys holds its holder now
		sh.keys[v.key], sh.reheld = sh.reheld, nil
		return
	}
	delete(sh.keys, v.key)
	if e := v.e; e != nil && len(sh.free) < maxFree {
		*e = entry{}
		sh.free = append(sh.free, e)
	}
	if sh.peak >= shrinkMin && len(sh.keys) <= sh.peak/shrinkRatio && !sh.b.closed.Load() {
		sh.shrinkLocked()
	}
}

// shrinkLocked rebuilds the shard's map at the size it needs now, so that
// the memory of a burst of keys that have gone is given back. Not while the
// broker closes: closeLocked is ranging over the map.
func (sh *shard) shrinkLocked() {
	keys := make(map[string]*Lease, len(sh.keys))
	for k, v := range sh.keys {
		keys[k] = v
	}
	sh.keys, sh.peak = keys, len(keys)
}
