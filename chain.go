package lmx

import "slices"

// Hand-offs inside a session.
//
// A key that many goroutines of one client contend for passes from one to
// the next through the broker: a round trip per hand-off, a Release out and
// a Granted back. The broker saves it where it can. While a session holds a
// key and its own waiters queue right behind the holder, the broker names
// them to the client, in queue order, each with the lock id and token its
// grant will carry (a Next frame). The client's Unlock then gives the key
// to the Lock named to follow the lease at once, its Release already
// queued; the broker makes the same grant when the Release arrives, and its
// Granted frame confirms it.
//
// Named waiters are the head of the queue, all of one session, and nothing
// overtakes them: the broker grants nobody else while the client may still
// hand the key on. A request of higher priority that would overtake one
// queues behind them and has the broker ask the client to stop (a Stop
// frame). The client answers (Stopped) after the Releases of the hand-offs
// it made, and the broker then drops the names and puts the queue back in
// priority order: the request waits longer only for the Locks the client
// handed the key to before it read the Stop.
//
// Only plain Locks are named: exclusive ones on a key of limit 1, without a
// TTL (the client would have to know when the grant's expiry starts),
// without an owner (re-entry) and without KeepOnDisconnect.

// chainable reports whether the waiter l may be named to its session.
func (l *Lease) chainable() bool {
	return !l.shared && l.ttl == nil && !l.keep && l.owner() == ""
}

// nameLocked names to the session of e's holder its waiters that queue
// right behind the holder and those named already.
func (sh *shard) nameLocked(e *entry) {
	h := e.holders.head
	if h == nil || e.limit != 1 || e.stop != 0 || h.shared || h.owner() != "" {
		return
	}
	s, ok := h.hook.(*session)
	if !ok {
		return
	}
	pred, w := h, e.waiters.head
	if e.chain != nil {
		pred, w = e.chain, e.chain.next
	}
	for ; w != nil && w.hook == h.hook && w.chainable(); pred, w = w, w.next {
		x := w.extra()
		x.named, x.at = true, int64(w.token) // the token held when it queued
		w.token = sh.b.tokens.Add(1)
		w.id = sh.newIDLocked(sh.now(w))
		e.chain = w
		s.named(w, pred.id)
	}
}

// unqueue takes the waiter l out of e's queue, and out of its chain if it
// was named.
func (e *entry) unqueue(l *Lease) {
	if e.chain == l {
		if p := l.prev; p != nil && p.isNamed() {
			e.chain = p
		} else {
			e.chain, e.stop = nil, 0 // a Stop's answer, if due, changes nothing
		}
	}
	e.waiters.remove(l)
}

// stopLocked asks the session of e's named waiters to stop handing the key
// on, unless it has been asked already.
func (sh *shard) stopLocked(e *entry) {
	if e.stop == 0 {
		e.stop = e.chain.hook.(*session).stop(e.key)
	}
}

// stopped settles session s's answer to the Stop numbered seq about key:
// the waiters still named lose their names, and those that would have
// overtaken them do.
func (sh *shard) stopped(key string, s *session, seq uint32) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.liveLocked(key)
	if e == nil || e.stop == 0 || e.stop != seq || e.chain.hook != s {
		return // the names ran out first
	}
	var named []*Lease
	for w := e.waiters.head; w != nil && w.isNamed(); w = w.next {
		named = append(named, w)
	}
	for _, w := range named {
		e.unqueue(w)
		w.token = uint64(w.queued()) // a waiter again, as before its naming
		w.x.named, w.x.at = false, 0
	}
	for _, w := range slices.Backward(named) {
		e.waiters.requeue(w)
	}
	sh.grantNextLocked(e)
}
