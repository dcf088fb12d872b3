package lmx

import "slices"

// Hand-offs inside a session: the broker's half (shard and entry, first)
// and the client's half (clientConn, below), kept side by side because
// each is right only if the other is.
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
//
// The invariant both halves keep: the client's chain (cc.succ, each named
// call by the lock id it follows) is the broker's chain (the named waiters
// at the head of e.waiters, the last one e.chain) as of the frames each
// side has read from the other. Every change on one side has its mirror on
// the other, and reaches it in order on the connection:
//
//	broker                              client
//	nameLocked sends Next               name links the call
//	a Cancel: unqueue relinks           unlink relinks, then sends the Cancel
//	Release: grant keeps the named id   handOffLocked, as the Release is queued
//	a grant answers a named waiter      answeredNamedLocked unlinks it
//	stopLocked sends Stop               stop unlinks the key's calls
//	stopped drops the names             (Stopped sent after the Releases)
//
// Hence the client hands the key past a Lock only by a Release it queues
// after every frame that changed its chain (the Cancel of a named call, the
// Stopped of a Stop), under one hold of cc.mu: the broker, reading them in
// that order, grants exactly the Lock the client handed the key to.

// chains implements leaseHook: the native session takes hand-offs (named
// and stop, in session.go, tell its client).
func (s *session) chains() bool { return true }

// chainable reports whether the waiter l may be named to its session.
func (l *Lease) chainable() bool {
	return !l.shared && l.ttl.Load() == nil && !l.keep && l.owner() == ""
}

// nameLocked names to the session of e's holder its waiters that queue
// right behind the holder and those named already.
func (sh *shard) nameLocked(e *entry) {
	h := e.holders.head
	if h == nil || e.limit != 1 || e.stop != 0 || h.shared || h.owner() != "" || h.hook() == nil || !h.hook().chains() {
		return
	}
	pred, w := h, e.waiters.head
	if e.chain != nil {
		pred, w = e.chain, e.chain.next
	}
	for ; w != nil && w.hook() == h.hook() && w.chainable(); pred, w = w, w.next {
		x := w.extra()
		x.named, x.at = true, int64(w.token) // the token held when it queued
		sh.b.stamp(w, sh.now(w))
		e.chain = w
		h.hook().named(w, pred.id)
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
		e.stop = e.chain.hook().stop(e.key)
	}
}

// stopped settles session s's answer to the Stop numbered seq about key:
// the waiters still named lose their names, and those that would have
// overtaken them do.
func (sh *shard) stopped(key string, s leaseHook, seq uint32) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.liveLocked(key)
	if e == nil || e.stop == 0 || e.stop != seq || e.chain.hook() != s {
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

// The client's half. Its state is each call's named, pred, nid and ntoken,
// and cc.succ, all guarded by cc.mu.

// answeredNamedLocked takes the named call cl, answered by the broker, out
// of the chain: the Lock named to follow it follows the lease it is
// granted, whose lock id it was named with.
func (cc *clientConn) answeredNamedLocked(cl *call) {
	if cl.named {
		delete(cc.succ, cl.pred)
		cl.named = false
	}
}

// name records that the broker named the queued Lock reqID to follow the
// lease m.pred, with lock id m.id and token m.token.
func (cc *clientConn) name(reqID uint32, m nextMsg) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cl := cc.calls[reqID]
	if cl == nil || !cl.lock || !cl.wait || cl.abandoned {
		return // its Cancel is on its way; the broker will grant it, or not
	}
	if cl.named { // named again, after a Stop
		delete(cc.succ, cl.pred)
	}
	cl.named, cl.pred, cl.nid, cl.ntoken = true, m.pred, m.id, m.token
	cc.succ[m.pred] = cl
}

// unlink takes the named call cl, whose Cancel is about to go, out of the
// chain: the Lock named to follow cl follows cl's predecessor, as it does
// at the broker once the Cancel has taken cl out of the queue.
func (cc *clientConn) unlink(cl *call) {
	delete(cc.succ, cl.pred)
	if next := cc.succ[cl.nid]; next != nil {
		delete(cc.succ, cl.nid)
		next.pred = cl.pred
		cc.succ[cl.pred] = next
	}
	cl.named = false
}

// stop answers the broker's Stop about m.key: no Lock is handed the key on
// any more, and the answer goes after the Releases of those that were.
func (cc *clientConn) stop(m stopMsg) {
	cc.mu.Lock()
	for pred, cl := range cc.succ {
		if cl.key == m.key {
			delete(cc.succ, pred)
			cl.named = false
		}
	}
	cc.mu.Unlock()
	cc.out.add(func(b []byte) []byte { return appendStop(b, opStopped, m) })
	cc.flushAside() // dispatch holds the read role
}

// handOffLocked gives the key of l, whose Release is queued, to the Lock
// the broker named to follow l, if any: that Lock returns at once with the
// lease the broker grants it on the Release. The Release must have been
// queued under the same hold of cc.mu, for the chain is the broker's only
// as long as the frames that changed it are read before the Release.
func (cc *clientConn) handOffLocked(l *Lease) {
	cl := cc.succ[l.id]
	if cl == nil {
		return
	}
	delete(cc.succ, l.id)
	delete(cc.calls, cl.id)
	cc.waiting.remove(cl)
	cl.named = false
	nl := &Lease{key: cl.key, id: cl.nid, token: cl.ntoken, door: &cc.ref, count: 1}
	cc.leases[nl.id] = nl
	cl.ch <- reply{lease: nl, handed: true}
	if cc.reader == cl {
		cc.interrupt() // it reads for the reply it has now
	}
}
